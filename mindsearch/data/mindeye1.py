"""MindEye1 layout: webdataset shards ``{train,val,test}/{split}_subj0S_{k}.tar``.

Each sample holds ``nsdgeneral.npy`` (3, V), the three repetitions of one image, plus
``coco73k.npy`` (image id), ``trial.npy`` and the image. A sample becomes three trials
(``trial = 3 * sample + rep``), session 0 (unknown). ``val`` is training data, as the
MindEye1 code merges it.

Tars cannot be memory-mapped, so on first open the voxels are streamed once into a
``.npy`` cache (written atomically) and served from a memmap afterwards; the cache is
reused while the shards' names, sizes and mtimes are unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np

from mindsearch.data.arrays import NpyMatrix, cache_dir
from mindsearch.data.dataset import BrainDataset
from mindsearch.data.shards import load_npy, natural_key, read_member, samples
from mindsearch.errors import MindsearchError

SHARD = re.compile(r"^(train|val|test)_subj0*(\d+)_(\d+)\.tar$")
SPLIT_DIRS = ("train", "val", "test")
IMAGE_FIELDS = ("jpg", "jpeg", "png")
REPS = 3
CACHE_VERSION = "mindeye1-cache/1"


def detect(root: Path) -> bool:
    return bool(shards(root))


def shards(root: Path) -> dict[int, list[tuple[str, Path]]]:
    found: dict[int, list[tuple[str, Path]]] = {}
    for split in SPLIT_DIRS:
        d = Path(root) / split
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.tar"), key=natural_key):
            m = SHARD.match(p.name)
            if m and m.group(1) == split:
                found.setdefault(int(m.group(2)), []).append((split, p))
    return found


def _cache_key(root: Path, shard_list) -> str:
    h = hashlib.sha256(CACHE_VERSION.encode())
    for _, p in shard_list:
        st = p.stat()
        h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _count(shard_list) -> tuple[int, int, Path]:
    """Pass 1 (headers only): number of samples, and the voxel count from the first sample."""
    n, n_voxels, first = 0, None, None
    for _, tar in shard_list:
        for key, fields in samples(tar, set()):
            n += 1
            info = fields.get("nsdgeneral.npy")
            if n_voxels is None and info is not None:
                arr = load_npy(read_member(tar, info.offset_data, info.size), f"nsdgeneral.npy of {key!r}", tar)
                if arr.ndim != 2:
                    raise MindsearchError(f"nsdgeneral.npy of sample {key!r} has shape {arr.shape}, "
                                          f"expected ({REPS}, n_voxels)", tar)
                n_voxels, first = int(arr.shape[1]), tar
    if n == 0:
        raise MindsearchError("no samples in the shards", shard_list[0][1].parent)
    if n_voxels is None:
        raise MindsearchError("no sample has nsdgeneral.npy", shard_list[0][1])
    return n, n_voxels, first


class _Values:
    """Running min/max/mean/std over the written voxel rows (what inspect reports)."""

    def __init__(self):
        self.lo, self.hi, self.total, self.total_sq, self.count = np.inf, -np.inf, 0.0, 0.0, 0

    def add(self, rows: np.ndarray) -> None:
        if rows.size:
            wide = rows.astype(np.float64).ravel()
            self.lo, self.hi = min(self.lo, wide.min()), max(self.hi, wide.max())
            self.total += wide.sum()
            self.total_sq += float(np.dot(wide, wide))
            self.count += wide.size

    def record(self) -> dict:
        mean = self.total / self.count if self.count else 0.0
        var = max(self.total_sq / self.count - mean * mean, 0.0) if self.count else 0.0
        return {"min": float(self.lo) if self.count else None, "max": float(self.hi) if self.count else None,
                "mean": float(mean), "std": float(var ** 0.5), "count": int(self.count)}


def _build(subject: int, shard_list, root: Path, npy_path: Path) -> dict:
    """Pass 2: stream every sample's voxels into the cache; return the sample index."""
    from mindsearch.io import atomic_path

    n_samples, n_voxels, first = _count(shard_list)
    index = {"format": CACHE_VERSION, "subject": subject, "n_voxels": n_voxels,
             "shards": [str(p.relative_to(root)) for _, p in shard_list],
             "image_id": [], "split": [], "present": [], "images": {}}
    values = _Values()
    with atomic_path(npy_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_samples * REPS, n_voxels))
        i = 0
        for shard_no, (split, tar) in enumerate(shard_list):
            for key, fields in samples(tar, {"nsdgeneral.npy", "coco73k.npy"}):
                vox, image_id = _sample(key, fields, tar, n_voxels, first)
                present = [bool(np.isfinite(r).all()) for r in vox]
                vox = np.where(np.asarray(present)[:, None], vox, 0.0)
                out[i * REPS:(i + 1) * REPS] = vox
                values.add(vox[np.asarray(present)])
                index["image_id"].append(image_id)
                index["split"].append("test" if split == "test" else "train")
                index["present"].append(present)
                picture = next((fields[f] for f in IMAGE_FIELDS if f in fields), None)
                if picture is not None and str(image_id) not in index["images"]:
                    index["images"][str(image_id)] = [shard_no, picture.offset_data, picture.size]
                i += 1
        out.flush()
        del out
    index["values"] = values.record()
    return index


def _sample(key: str, fields: dict, tar: Path, n_voxels: int, first: Path) -> tuple[np.ndarray, int]:
    for need in ("nsdgeneral.npy", "coco73k.npy"):
        if need not in fields:
            raise MindsearchError(f"sample {key!r} has no {need}", tar)
    vox = load_npy(fields["nsdgeneral.npy"], f"nsdgeneral.npy of sample {key!r}", tar)
    if vox.ndim != 2 or vox.shape[0] != REPS:
        raise MindsearchError(f"nsdgeneral.npy of sample {key!r} has shape {vox.shape}, "
                              f"expected ({REPS}, n_voxels)", tar)
    if vox.shape[1] != n_voxels:
        raise MindsearchError(f"voxel count mismatch: sample {key!r} has {vox.shape[1]} voxels, "
                              f"{first.name} has {n_voxels}", tar)
    if not np.issubdtype(vox.dtype, np.floating):
        raise MindsearchError(f"nsdgeneral.npy of sample {key!r} must be floating point, got {vox.dtype}", tar)
    # A repetition stored as all-NaN is a missing repetition (images with < 3 trials);
    # NaN/Inf anywhere else is corrupt data.
    finite = np.isfinite(vox)
    partial = ~finite.all(axis=1) & ~np.isnan(vox).all(axis=1)
    if partial.any():
        raise MindsearchError(f"non-finite voxel values (NaN or Inf) in nsdgeneral.npy of sample {key!r}", tar)
    coco = load_npy(fields["coco73k.npy"], f"coco73k.npy of sample {key!r}", tar).reshape(-1)
    if coco.size != 1 or not np.issubdtype(coco.dtype, np.number) or coco[0] < 0 or coco[0] != np.round(coco[0]):
        raise MindsearchError(f"coco73k.npy of sample {key!r} is not one image id ({coco!r})", tar)
    return vox.astype(np.float32, copy=False), int(coco[0])


def _load_or_build(subject: int, shard_list, root: Path, cache: Path) -> tuple[dict, Path]:
    key = _cache_key(root, shard_list)
    npy = cache / f"mindeye1_subj{subject:02d}_{key}.npy"
    meta = npy.with_suffix(".json")
    if npy.is_file() and meta.is_file():
        try:
            index = json.loads(meta.read_text())
            if index.get("format") == CACHE_VERSION and _cache_intact(npy, index):
                return index, npy
        except (OSError, json.JSONDecodeError, AttributeError, TypeError):
            pass  # rebuild a damaged cache
    for stale in cache.glob(f"mindeye1_subj{subject:02d}_*"):
        if stale.stem != npy.stem:
            stale.unlink(missing_ok=True)
    from mindsearch.io import write_json

    index = _build(subject, shard_list, root, npy)
    write_json(meta, index)  # written last: its presence marks a complete cache
    return index, npy


def _cache_intact(npy: Path, index: dict) -> bool:
    """The cached matrix holds every row its index promises (a damaged cache is rebuilt, not blamed)."""
    from mindsearch.data.arrays import check_npy_header

    try:
        with open(npy, "rb") as f:
            shape, dtype = check_npy_header(f, npy.stat().st_size, npy)
    except MindsearchError:
        return False
    return shape == (len(index["image_id"]) * REPS, index["n_voxels"]) and dtype == np.float32


class TarImages:
    """Images decoded on request from their tar members (located when the cache was built)."""

    def __init__(self, locations: dict[int, tuple[Path, int, int]], root: Path):
        self._where = locations
        self._shape = None
        self.path = Path(root)

    @property
    def shape(self) -> tuple[int, int, int]:
        if self._shape is None:
            self._shape = self._decode(next(iter(self._where))).shape
        return self._shape

    def _decode(self, image_id: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        tar, offset, size = self._where[image_id]
        try:
            with Image.open(io.BytesIO(read_member(tar, offset, size))) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise MindsearchError(f"image of id {image_id} cannot be decoded ({exc})", tar) from None
        return arr.transpose(2, 0, 1)

    def read(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        missing = [int(i) for i in ids if int(i) not in self._where]
        if missing:
            raise MindsearchError(f"no image for image id {missing[0]}", self.path)
        decoded = {int(i): self._decode(int(i)) for i in np.unique(ids)}
        shapes = {a.shape for a in decoded.values()}
        if len(shapes) > 1:
            raise MindsearchError(f"images have different sizes {sorted(shapes)}", self.path)
        if not decoded:
            return np.empty((0, *self.shape), np.float32)
        return np.stack([decoded[int(i)] for i in ids])

    def close(self) -> None:
        pass


def open_mindeye1(root: Path, manifest: dict) -> BrainDataset:
    import pandas as pd

    root = Path(root)
    found = shards(root)
    if not found:
        raise MindsearchError("no {train,val,test}/{split}_subj0N_{k}.tar shards", root)
    cache = cache_dir(root)
    matrices, rows, files, pictures = {}, [], [], {}
    for subject, shard_list in sorted(found.items()):
        index, npy = _load_or_build(subject, shard_list, root, cache)
        matrices[subject] = NpyMatrix(npy, values=index["values"])
        files.extend(p for _, p in shard_list)
        for i, (image_id, split, present) in enumerate(zip(index["image_id"], index["split"], index["present"])):
            for rep, ok in enumerate(present):
                if ok:
                    rows.append((subject, 0, i * REPS + rep, image_id, split))
        for image_id, (shard_no, offset, size) in index["images"].items():
            pictures.setdefault(int(image_id), (shard_list[shard_no][1], offset, size))
    trials = pd.DataFrame(rows, columns=["subject", "session", "trial", "image_id", "split"])
    images = TarImages(pictures, root) if pictures else None
    return BrainDataset(root, "mindeye1", trials, matrices, manifest=manifest, images=images,
                        files=files, table_path=root)
