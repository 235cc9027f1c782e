"""The on-disk arrays behind a dataset: voxel matrices, image stacks, target embeddings.

Every reader keeps its file open lazily and reads only the rows asked for, so a 30k-trial x
15k-voxel betas file never has to fit in memory. Errors from h5py/numpy are turned into
``MindsearchError(problem, path)`` so the CLI can print one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mindsearch.errors import MindsearchError

# Bounded working set for scans and windowed reads (per block, float64 copy included).
CHUNK_BYTES = 32 << 20


def short(exc: BaseException) -> str:
    """One line of an exception message (h5py's are multi-line)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextlib.contextmanager
def reading(path) -> Iterator[None]:
    """Whatever a reader library raises while reading ``path`` becomes one error naming it.

    The readers already turn the failures they expect into precise messages; this is the net
    for the rest (h5py, pandas and numpy raise many types for damaged files).
    """
    try:
        yield
    except MindsearchError:
        raise
    except Exception as exc:  # noqa: BLE001 -- the policy: a known file's failure is the user's input
        raise MindsearchError(f"cannot read ({type(exc).__name__}: {short(exc)})", path) from None


def check_npy_header(f, size: int, path, what: str | None = None) -> tuple[tuple[int, ...], np.dtype]:
    """Read a .npy header from ``f`` and refuse it unless the data it declares is all there.

    Run before ``np.load`` so a 4 KB file declaring shape (10**12,) is one error, not an
    allocation of terabytes; object arrays (pickles) are refused here too. Returns (shape, dtype).
    """
    fmt = np.lib.format
    lead = "not a readable .npy file" if what is None else f"{what} is not a readable .npy file"
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:  # 3.0 (utf-8 field names) has no public reader
            shape, _, dtype = fmt._read_array_header(f, version)
    except Exception as exc:  # noqa: BLE001 -- numpy raises ValueError, SyntaxError, EOFError...
        raise MindsearchError(f"{lead} ({short(exc)})", path) from None
    if dtype.hasobject:
        raise MindsearchError(f"{lead}: it holds Python objects ({dtype}) and pickles are never loaded", path)
    need = math.prod(int(n) for n in shape) * dtype.itemsize
    have = size - f.tell()
    if need > have:
        raise MindsearchError(f"{lead}: its header declares shape {tuple(shape)} {dtype} ({need:,} bytes) "
                              f"but it holds {max(have, 0):,} bytes of data (truncated?)", path)
    return tuple(int(n) for n in shape), dtype


def read_npy(path, *, mmap: bool = True) -> np.ndarray:
    """The one checked .npy file reader: header checked against the file size, never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise MindsearchError("file not found", path)
    with reading(path):
        with open(path, "rb") as f:
            check_npy_header(f, os.fstat(f.fileno()).st_size, path)
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise MindsearchError(f"not a readable .npy file, truncated? ({short(exc)})", path) from None


def cache_dir(root: Path) -> Path:
    """``ROOT/.mindsearch_cache`` when the dataset directory is writable, else a temp dir.

    The temp fallback is keyed by the dataset's absolute path so read-only datasets
    (shared storage) still get their cache reused between runs.
    """
    root = Path(root)
    d = root / ".mindsearch_cache"
    try:
        d.mkdir(exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    d = Path(tempfile.gettempdir()) / "mindsearch_cache" / key
    d.mkdir(parents=True, exist_ok=True)
    return d


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def scan_values(read_block: Callable[[int, int], np.ndarray], n_rows: int, n_cols: int, path) -> dict:
    """Check a matrix is finite and collect its value range, one bounded block at a time.

    Fast path: a float64 sum of float32 data cannot overflow, so the block holds NaN/Inf
    exactly when its sum is not finite; only then do we look for the offending row.
    """
    rows = max(1, CHUNK_BYTES // (12 * max(n_cols, 1)))
    lo_v, hi_v, total, total_sq, count = np.inf, -np.inf, 0.0, 0.0, 0
    for lo in range(0, n_rows, rows):
        block = np.asarray(read_block(lo, min(lo + rows, n_rows)))
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite values are reported below
            wide = block.astype(np.float64, copy=False).ravel()
            s = wide.sum()
        if not np.isfinite(s):
            bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
            if bad.size:
                raise MindsearchError(f"non-finite voxel values (NaN or Inf) in row {lo + int(bad[0])}", path)
        if wide.size:
            lo_v = min(lo_v, float(wide.min()))
            hi_v = max(hi_v, float(wide.max()))
        total += float(s)
        total_sq += float(np.dot(wide, wide))
        count += wide.size
    mean = total / count if count else 0.0
    var = max(total_sq / count - mean * mean, 0.0) if count else 0.0
    return {"min": lo_v if count else None, "max": hi_v if count else None,
            "mean": mean, "std": var ** 0.5, "count": count}


def checked_values(path: Path, cache: Path | None, scan: Callable[[], dict]) -> dict:
    """``scan()`` once per file version: the result is remembered by size + mtime.

    Re-opening a multi-GB betas file should not re-read it; a changed file is re-checked.
    """
    from mindsearch.io import read_json, write_json

    if cache is None:
        return scan()
    record_path = cache / "checked.json"
    key = str(Path(path).resolve())
    try:
        records = read_json(record_path) if record_path.is_file() else {}
    except MindsearchError:  # a corrupt cache is just a cold cache
        records = {}
    rec = records.get(key)
    stamp = _stamp(Path(path))
    if isinstance(rec, dict) and rec.get("stamp") == stamp and isinstance(rec.get("values"), dict):
        return rec["values"]
    values = scan()
    records[key] = {"stamp": stamp, "values": values}
    try:
        write_json(record_path, records)
    except OSError:  # caching is best effort
        pass
    return values


class Matrix:
    """A (rows, columns) float matrix on disk, read by row index."""

    path: Path
    shape: tuple[int, int]
    values: dict  # min/max/mean/std from the open-time check

    @property
    def n_rows(self) -> int:
        return int(self.shape[0])

    @property
    def n_cols(self) -> int:
        return int(self.shape[1])

    def rows(self, idx) -> np.ndarray:
        """Rows in any order, duplicates allowed, as float32."""
        idx = np.asarray(idx, dtype=np.int64).ravel()
        if idx.size == 0:
            return np.empty((0, self.n_cols), np.float32)
        if idx.min() < 0 or idx.max() >= self.n_rows:
            raise MindsearchError(
                f"row {int(idx.max() if idx.max() >= self.n_rows else idx.min())} out of range "
                f"(file has {self.n_rows} rows)", self.path)
        uniq, inverse = np.unique(idx, return_inverse=True)
        return self._read_sorted(uniq)[inverse]

    def block(self, lo: int, hi: int) -> np.ndarray:
        return self._read_sorted(np.arange(lo, hi, dtype=np.int64))

    def _read_sorted(self, uniq: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class NpyMatrix(Matrix):
    """A ``.npy`` matrix, memory-mapped: fancy indexing touches only the pages it needs."""

    def __init__(self, path: Path, cache: Path | None = None, values: dict | None = None):
        self.path = Path(path)
        arr = read_npy(self.path)
        _check_matrix(arr.shape, arr.dtype, self.path)
        self._arr = arr
        self.shape = (int(arr.shape[0]), int(arr.shape[1]))
        self.values = values if values is not None else checked_values(
            self.path, cache, lambda: scan_values(self.block, self.n_rows, self.n_cols, self.path))

    def block(self, lo: int, hi: int) -> np.ndarray:
        return np.asarray(self._arr[lo:hi])

    def _read_sorted(self, uniq: np.ndarray) -> np.ndarray:
        return np.asarray(self._arr[uniq], dtype=np.float32)

    def close(self) -> None:
        self._arr = None


def open_h5(path: Path):
    import h5py

    path = Path(path)
    if not path.is_file():
        raise MindsearchError("file not found", path)
    try:
        return h5py.File(path, "r")
    except Exception as exc:  # noqa: BLE001 -- OSError mostly; h5py raises others for damaged files
        raise MindsearchError(f"not a readable HDF5 file, truncated? ({short(exc)})", path) from None


def h5_dataset(f, keys: tuple[str, ...], path: Path):
    import h5py

    for key in keys:
        if key in f:
            with reading(path):
                ds = f[key]
            if not isinstance(ds, h5py.Dataset):
                raise MindsearchError(f"{key!r} is a {type(ds).__name__}, not a dataset", path)
            return ds
    found = ", ".join(sorted(f.keys())) or "nothing"
    want = " or ".join(repr(k) for k in keys)
    raise MindsearchError(f"no dataset {want} (found: {found})", path)


class H5Matrix(Matrix):
    """An HDF5 matrix read in row windows.

    h5py point selection needs sorted unique indices and is slow for thousands of rows, so
    dense requests read a contiguous window and pick rows from it; sparse ones use the
    (sorted, unique) point selection.
    """

    def __init__(self, path: Path, keys: tuple[str, ...], cache: Path | None = None):
        self.path = Path(path)
        self._file = open_h5(self.path)
        try:
            self._ds = h5_dataset(self._file, keys, self.path)
            with reading(self.path):
                _check_matrix(self._ds.shape, self._ds.dtype, self.path)
            self.shape = (int(self._ds.shape[0]), int(self._ds.shape[1]))
            self._window = max(1, CHUNK_BYTES // (4 * max(self.n_cols, 1)))
            self.values = checked_values(
                self.path, cache, lambda: scan_values(self.block, self.n_rows, self.n_cols, self.path))
        except BaseException:
            self.close()
            raise

    def block(self, lo: int, hi: int) -> np.ndarray:
        return self._guard(lambda: self._ds[lo:hi])

    def _guard(self, read):
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 -- OSError mostly; h5py raises others for damaged chunks
            raise MindsearchError(f"cannot read voxels, truncated or corrupt? ({short(exc)})", self.path) from None

    def _read_sorted(self, uniq: np.ndarray) -> np.ndarray:
        out = np.empty((uniq.size, self.n_cols), np.float32)
        i = 0
        while i < uniq.size:
            j = int(np.searchsorted(uniq, uniq[i] + self._window, side="left"))
            sel = uniq[i:j]
            lo, hi = int(sel[0]), int(sel[-1]) + 1
            if sel.size * 8 >= hi - lo:
                out[i:j] = self.block(lo, hi)[sel - lo]
            else:
                out[i:j] = self._guard(lambda: self._ds[sel])
            i = j
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _check_matrix(shape, dtype, path) -> None:
    if len(shape) != 2:
        raise MindsearchError(f"voxels must be 2-D (trials, voxels), got shape {tuple(shape)}", path)
    if not np.issubdtype(dtype, np.floating):
        raise MindsearchError(f"voxels must be floating point, got dtype {dtype}", path)
    if shape[1] == 0:
        raise MindsearchError("voxel matrix has 0 voxels", path)


class H5Images:
    """``images`` (N, 3, H, W) in [0, 1]; row = image id."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = open_h5(self.path)
        self._ds = h5_dataset(self._file, ("images",), self.path)
        shape = tuple(int(s) for s in self._ds.shape)
        if len(shape) != 4 or shape[1] != 3:
            self.close()
            raise MindsearchError(f"images must be (N, 3, H, W), got shape {shape}", self.path)
        if not np.issubdtype(self._ds.dtype, np.number):
            self.close()
            raise MindsearchError(f"images must be numbers in [0, 1], got dtype {self._ds.dtype}", self.path)
        self.n = shape[0]
        self.shape = shape[1:]

    def has(self, ids: np.ndarray) -> np.ndarray:
        return (ids >= 0) & (ids < self.n)

    def read(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size == 0:
            return np.empty((0, *self.shape), np.float32)
        missing = ids[~self.has(ids)]
        if missing.size:
            raise MindsearchError(f"image id {int(missing[0])} not in the images ({self.n} rows)", self.path)
        uniq, inverse = np.unique(ids, return_inverse=True)
        try:
            data = self._ds[uniq]
        except Exception as exc:  # noqa: BLE001 -- OSError mostly; h5py raises others for damaged chunks
            raise MindsearchError(f"cannot read images ({short(exc)})", self.path) from None
        return np.asarray(data, dtype=np.float32)[inverse]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Targets:
    """Target embeddings (n, tokens, dim) with the image id of each row."""

    def __init__(self, path: Path, ids, space: dict | None, name: str, space_path: Path | None = None):
        self.path = Path(path)
        self.name = name
        arr = read_npy(self.path)
        if arr.ndim == 2:  # a pooled (n, dim) target is one token
            arr = arr[:, None, :]
        if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.floating):
            raise MindsearchError(
                f"targets must be a float (n, tokens, dim) array, got {arr.dtype} {tuple(arr.shape)}", self.path)
        self._arr = arr
        if isinstance(ids, (str, Path)):
            ids_path = Path(ids)
            ids = read_npy(ids_path, mmap=False)
        else:
            ids_path = self.path
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.shape[0] != arr.shape[0] or not np.issubdtype(ids.dtype, np.integer):
            raise MindsearchError(
                f"target ids must be {arr.shape[0]} integers (one per target row), got {ids.dtype} {tuple(ids.shape)}",
                ids_path)
        ids = ids.astype(np.int64)
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]
        if self._sorted.size > 1 and (np.diff(self._sorted) == 0).any():
            dup = int(self._sorted[np.flatnonzero(np.diff(self._sorted) == 0)[0]])
            raise MindsearchError(f"image id {dup} appears twice in the target ids", ids_path)
        self.ids = ids
        self.shape = (int(arr.shape[1]), int(arr.shape[2]))
        self.space = dict(space or {})
        self.space.setdefault("name", name)
        for key, want in (("tokens", self.shape[0]), ("dim", self.shape[1])):
            got = self.space.setdefault(key, want)
            if got != want:  # blame the record when there is one: the array is what it is
                raise MindsearchError(f"space record says {key}={got!r:.40} but {self.path.name} has {want}",
                                      space_path or self.path)

    def has(self, ids: np.ndarray) -> np.ndarray:
        if self._sorted.size == 0:
            return np.zeros(np.shape(ids), bool)
        pos = np.clip(np.searchsorted(self._sorted, ids), 0, self._sorted.size - 1)
        return self._sorted[pos] == ids

    def read(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size == 0:
            return np.empty((0, *self.shape), np.float32)
        ok = self.has(ids)
        if not ok.all():
            raise MindsearchError(f"no target for image id {int(ids[~ok][0])}", self.path)
        rows = self._order[np.searchsorted(self._sorted, ids)]
        uniq, inverse = np.unique(rows, return_inverse=True)
        with reading(self.path):
            out = np.asarray(self._arr[uniq], dtype=np.float32)
        # Checked per read (targets can be tens of GB): a NaN target would train a NaN model.
        finite = np.isfinite(out.reshape(len(out), -1)).all(axis=1)
        if not finite.all():
            bad = int(self.ids[uniq[np.flatnonzero(~finite)[0]]])
            raise MindsearchError(f"non-finite values (NaN or Inf) in the target of image id {bad}", self.path)
        return out[inverse]

    def close(self) -> None:
        self._arr = None


