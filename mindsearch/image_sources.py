"""Image collections as resumable shards of decoded records.

Three kinds of collection are read:

* ``FolderSource``  -- a folder of image files, searched recursively. Files are sorted by
  their relative path and cut into shards of ``shard_size`` files, so a resumed build sees
  the same shards. ``key`` = relative path (POSIX), ``id`` = None.
* ``HDF5Source``    -- the MindEye2 images file: dataset ``images`` (N, 3, H, W), float16 in
  [0, 1]. ``key`` = ``"h5:{row}"``, ``id`` = row (the NSD 73k index). Shards are row ranges.
* ``WebDatasetSource`` -- webdataset tar shards (one source shard per tar). Samples are grouped
  by the webdataset convention (member path up to the first dot of its basename); the image is
  the first ``jpg``/``jpeg``/``png``/``webp`` member. ``key`` = ``"{tar}:{sample key}"`` where
  ``{tar}`` is the tar's path relative to the source root. ``id`` comes from a ``coco73k.npy``
  member when there is one (MindEye1 shards), else None.

Every shard has a stable ``shard_id`` (it changes when the shard's content list changes) and
is read in two steps so decoding can run in worker threads: ``shard.raw_items()`` yields cheap
undecoded items in order (a path, tar member bytes, an array row) and ``source.decode(raw)``
turns one into an :class:`ImageRecord` (thread-safe). Iterating a shard does both in turn.

A corrupt or unreadable image is reported -- a ``logging`` warning naming the file, plus an
entry ``{"key", "path", "error"}`` in ``source.skipped`` -- and skipped, without losing the rest;
with ``strict=True`` it raises :class:`MindsearchError` naming the file instead.

Only stdlib + numpy at module level; PIL and h5py load when a source is used.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from mindsearch.errors import MindsearchError

log = logging.getLogger("mindsearch.images")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # in order of preference within a sample


@dataclass
class ImageRecord:
    """One decoded image. ``image`` is an RGB ``PIL.Image``; ``width``/``height`` are its
    original size (before any model preprocessing)."""

    key: str
    width: int
    height: int
    image: Any
    id: int | None = None
    shard_id: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class RawItem:
    """An undecoded item: ``data`` is whatever the source's ``decode`` needs."""

    key: str
    path: str  # the file to name in messages (image file, tar, or hdf5)
    data: Any
    shard_id: str
    id: int | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Skipped:
    key: str
    path: str
    error: str

    def as_dict(self) -> dict:
        return {"key": self.key, "path": self.path, "error": self.error}


class Shard:
    """A resumable unit of a source: a stable ``shard_id`` and its raw items in order."""

    def __init__(self, source: "ImageSource", shard_id: str, raw: Callable[[], Iterator[RawItem]],
                 size: int | None):
        self.source = source
        self.shard_id = shard_id
        self._raw = raw
        self.size = size  # number of items (None when unknown before reading, e.g. a tar)

    def raw_items(self) -> Iterator[RawItem]:
        return self._raw()

    def __iter__(self) -> Iterator[ImageRecord]:
        for raw in self.raw_items():
            rec = self.source.decode_or_report(raw)
            if rec is not None:
                yield rec

    def __repr__(self) -> str:
        return f"Shard({self.shard_id!r}, size={self.size})"


class ImageSource:
    """Base class: ``shards()`` (stable order), ``decode(raw)``, ``skipped`` and ``report``."""

    kind = "images"

    def __init__(self, path: str | Path, *, strict: bool = False):
        self.path = Path(path)
        self.strict = strict
        self.skipped: list[dict] = []
        self._lock = threading.Lock()

    # -- to implement -------------------------------------------------------------------
    def shards(self) -> list[Shard]:
        raise NotImplementedError

    def decode(self, raw: RawItem) -> ImageRecord:
        """Decode one raw item; raise any exception for a corrupt image (thread-safe)."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of items when known without reading the data (else raises TypeError)."""
        sizes = [s.size for s in self.shards()]
        if any(s is None for s in sizes):
            raise TypeError(f"{type(self).__name__} does not know its length before reading")
        return int(sum(sizes))

    def __iter__(self) -> Iterator[ImageRecord]:
        for shard in self.shards():
            yield from shard

    def report(self, key: str, path: str, exc: BaseException | str) -> None:
        """Record an unreadable image: raise when strict, else warn and remember it."""
        msg = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        if self.strict:
            raise MindsearchError(f"cannot read image {key!r} ({msg})", path)
        with self._lock:
            self.skipped.append(Skipped(key, path, msg).as_dict())
        where = path if key in (path, "") else f"{path} [{key}]"
        log.warning("skipping unreadable image %s: %s", where, msg)

    def decode_or_report(self, raw: RawItem) -> ImageRecord | None:
        try:
            return self.decode(raw)
        except MindsearchError:
            raise
        except Exception as exc:  # PIL raises many types for corrupt data
            self.report(raw.key, raw.path, exc)
            return None

    def describe(self) -> dict:
        """Where the images are, for an index manifest: hits are opened through it (``read_image``)."""
        return {"kind": self.kind, "path": str(self.path.resolve())}


def _pil_from_bytes_or_path(src: Any):
    from PIL import Image

    f = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src
    with Image.open(f) as im:
        im.load()  # force the full decode here so truncated files fail now, not later
        size = im.size
        rgb = im.convert("RGB")
    return rgb, size


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _digest(names: Iterable[str]) -> str:
    h = hashlib.sha1()
    for n in names:
        h.update(n.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()[:8]


# ---------------------------------------------------------------------------------------
class FolderSource(ImageSource):
    """A folder of image files (recursive), shards of ``shard_size`` files in sorted order.

    ``shard_id`` = ``"files-{index:05d}-{digest}"``: the digest covers the shard's relative file
    names, so a shard whose file list changed is not mistaken for a finished one on resume.
    """

    kind = "folder"

    def __init__(self, path: str | Path, *, shard_size: int = 1000, strict: bool = False,
                 extensions: Iterable[str] = IMAGE_EXTENSIONS):
        super().__init__(path, strict=strict)
        if not self.path.is_dir():
            raise MindsearchError("image folder not found", self.path)
        if shard_size < 1:
            raise MindsearchError(f"shard_size must be >= 1 (got {shard_size})")
        self.shard_size = int(shard_size)
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        files = []
        for dirpath, dirnames, filenames in os.walk(self.path, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts:
                    files.append(Path(dirpath, name).relative_to(self.path).as_posix())
        files.sort()
        self.files: list[str] = files
        if not files:
            raise MindsearchError(f"no image files ({', '.join(exts)}) in this folder", self.path)

    def shards(self) -> list[Shard]:
        out = []
        for i, start in enumerate(range(0, len(self.files), self.shard_size)):
            names = self.files[start:start + self.shard_size]
            sid = f"files-{i:05d}-{_digest(names)}"
            out.append(Shard(self, sid, self._raw_fn(names, sid), len(names)))
        return out

    def _raw_fn(self, names: list[str], sid: str):
        def raw() -> Iterator[RawItem]:
            for rel in names:
                full = self.path / rel
                yield RawItem(key=rel, path=str(full), data=str(full), shard_id=sid,
                              meta={"path": str(full)})
        return raw

    def decode(self, raw: RawItem) -> ImageRecord:
        img, (w, h) = _pil_from_bytes_or_path(raw.data)
        return ImageRecord(raw.key, w, h, img, raw.id, raw.shard_id, dict(raw.meta))


# ---------------------------------------------------------------------------------------
class HDF5Source(ImageSource):
    """MindEye2 images HDF5: dataset ``images`` (N, 3, H, W) float in [0, 1] (float16 upstream).

    Rows are turned into RGB PIL images (``round(x * 255)``, the 8-bit images NSD started
    from) so every source shares one preprocessing path. ``shard_id`` = ``"h5-{start}-{stop}"``.
    ``rows`` restricts the source to some rows (sorted, unique).
    """

    kind = "hdf5"

    def __init__(self, path: str | Path, *, dataset: str = "images", shard_size: int = 1000,
                 rows: Iterable[int] | None = None, read_block: int = 64, strict: bool = False):
        super().__init__(path, strict=strict)
        self.dataset = dataset
        self.shard_size = int(shard_size)
        self.read_block = max(1, int(read_block))
        if not self.path.is_file():
            raise MindsearchError("images HDF5 file not found", self.path)
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                if dataset not in f:
                    raise MindsearchError(f"no {dataset!r} dataset in this HDF5 file "
                                          f"(has: {', '.join(sorted(f.keys())) or 'nothing'})", self.path)
                ds = f[dataset]
                shape, dtype = tuple(ds.shape), ds.dtype
        except MindsearchError:
            raise
        except OSError as exc:
            raise MindsearchError(f"not a readable HDF5 file ({exc})", self.path) from None
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise MindsearchError(f"{dataset!r} must be (N, 3, H, W); got shape {shape}", self.path)
        if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
            raise MindsearchError(f"{dataset!r} has non-numeric dtype {dtype}", self.path)
        self.shape, self.dtype = shape, dtype
        n = shape[0]
        if rows is None:
            self.rows = np.arange(n, dtype=np.int64)
        else:
            self.rows = np.unique(np.asarray(list(rows), dtype=np.int64))
            if self.rows.size and (self.rows[0] < 0 or self.rows[-1] >= n):
                raise MindsearchError(f"rows out of range 0..{n - 1}", self.path)

    def shards(self) -> list[Shard]:
        out = []
        for start in range(0, len(self.rows), self.shard_size):
            rows = self.rows[start:start + self.shard_size]
            if len(rows) == len(self.rows) or rows[-1] - rows[0] + 1 == len(rows):
                sid = f"h5-{rows[0]}-{rows[-1] + 1}"
            else:
                sid = f"h5-{rows[0]}-{rows[-1] + 1}-{_digest(map(str, rows.tolist()))}"
            out.append(Shard(self, sid, self._raw_fn(rows, sid), len(rows)))
        return out

    def _raw_fn(self, rows: np.ndarray, sid: str):
        def raw() -> Iterator[RawItem]:
            import h5py

            try:
                f = h5py.File(self.path, "r")
            except OSError as exc:
                raise MindsearchError(f"not a readable HDF5 file ({exc})", self.path) from None
            with f:
                ds = f[self.dataset]
                for b in range(0, len(rows), self.read_block):
                    block = rows[b:b + self.read_block]
                    try:
                        if block[-1] - block[0] + 1 == len(block):  # contiguous: one slice read
                            arr = ds[int(block[0]):int(block[-1]) + 1]
                        else:
                            arr = ds[block]
                    except Exception:  # a damaged chunk: fall back to row by row
                        arr = None
                    for j, row in enumerate(block.tolist()):
                        if arr is not None:
                            data: Any = arr[j]
                        else:
                            try:
                                data = ds[row]
                            except Exception as exc:  # decode() re-raises it -> reported
                                data = exc
                        yield RawItem(key=f"h5:{row}", path=str(self.path), data=data,
                                      shard_id=sid, id=row)
        return raw

    def decode(self, raw: RawItem) -> ImageRecord:
        from PIL import Image

        if isinstance(raw.data, BaseException):
            raise raw.data
        a = np.asarray(raw.data, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ValueError("non-finite pixel values")
        if np.issubdtype(self.dtype, np.integer):
            u8 = np.clip(a, 0, 255).astype(np.uint8)
        else:
            u8 = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
        u8 = np.ascontiguousarray(np.moveaxis(u8, 0, -1))  # (H, W, C)
        if u8.shape[-1] == 1:
            u8 = np.repeat(u8, 3, axis=-1)
        img = Image.fromarray(u8, "RGB")
        return ImageRecord(raw.key, img.width, img.height, img, raw.id, raw.shard_id, dict(raw.meta))

    def describe(self) -> dict:
        return {**super().describe(), "dataset": self.dataset}


# ---------------------------------------------------------------------------------------
class WebDatasetSource(ImageSource):
    """Webdataset tar shards: ``path`` is one ``.tar``, a folder (searched recursively for
    ``*.tar``), or a glob pattern. One source shard per tar, ``shard_id`` = ``"tar-{name}"``
    with ``name`` the tar's relative path and its size in bytes (so a rewritten tar is new).

    Read with the standard library's ``tarfile`` (webdataset's own reader leaves tars open).
    A truncated or corrupt tar is reported once (naming the tar) after the samples that could
    be read; samples without an image member (metadata-only shards) are ignored.
    """

    kind = "webdataset"

    def __init__(self, path: str | Path, *, strict: bool = False):
        import glob

        p = str(path)
        if any(ch in p for ch in "*?["):
            tars = [Path(t) for t in glob.glob(p, recursive=True) if t.endswith(".tar")]
            root = Path(p.split("*")[0].split("?")[0].split("[")[0])
            root = root if root.is_dir() else root.parent
        elif Path(p).is_dir():
            root = Path(p)
            tars = [t for t in root.rglob("*.tar") if t.is_file()]
        elif Path(p).is_file():
            root = Path(p).parent
            tars = [Path(p)]
        else:
            raise MindsearchError("webdataset tar or folder not found", p)
        super().__init__(root, strict=strict)
        self.spec = p
        self.tars = sorted(tars, key=lambda t: _natural_key(t.relative_to(root).as_posix()))
        if not self.tars:
            raise MindsearchError("no .tar files found", p)

    def shards(self) -> list[Shard]:
        out = []
        for tar in self.tars:
            rel = tar.relative_to(self.path).as_posix()
            sid = f"tar-{rel}-{tar.stat().st_size}"
            out.append(Shard(self, sid, self._raw_fn(tar, rel, sid), None))
        return out

    def _raw_fn(self, tar: Path, rel: str, sid: str):
        def raw() -> Iterator[RawItem]:
            try:
                tf = tarfile.open(tar, "r")
            except (tarfile.TarError, OSError) as exc:
                self.report(rel, str(tar), f"unreadable tar ({exc})")
                return
            with tf:
                current: str | None = None
                members: dict[str, bytes] = {}
                n_images = 0
                try:
                    for m in tf:
                        if not m.isfile():
                            continue
                        d, base = os.path.split(m.name)
                        if "." not in base or base.startswith("."):
                            continue
                        stem, ext = base.split(".", 1)
                        skey = f"{d}/{stem}" if d else stem
                        if skey != current:
                            if current is not None:
                                item = self._sample(tar, rel, sid, current, members)
                                if item is not None:
                                    n_images += 1
                                    yield item
                            current, members = skey, {}
                        ext = ext.lower()
                        if ext in TAR_IMAGE_EXTENSIONS or ext in ("json", "txt", "cls", "coco73k.npy"):
                            f = tf.extractfile(m)
                            members[ext] = f.read() if f is not None else b""
                        else:
                            members.setdefault(ext, None)
                except (tarfile.TarError, OSError, EOFError) as exc:
                    self.report(rel, str(tar), f"corrupt or truncated tar ({exc}); "
                                               f"kept the samples before it")
                    # the partially read last sample is dropped: it may be incomplete
                    return
                if current is not None:
                    item = self._sample(tar, rel, sid, current, members)
                    if item is not None:
                        n_images += 1
                        yield item
                if n_images == 0:
                    log.warning("no images (%s) in %s", "/".join(TAR_IMAGE_EXTENSIONS), tar)
        return raw

    def _sample(self, tar: Path, rel: str, sid: str, skey: str, members: dict) -> RawItem | None:
        ext = next((e for e in TAR_IMAGE_EXTENSIONS if members.get(e) is not None), None)
        if ext is None:
            return None
        meta: dict = {"tar": str(tar), "sample": skey, "ext": ext}
        image_id = None
        for k, v in members.items():
            if v is None or k in TAR_IMAGE_EXTENSIONS:
                continue
            try:
                if k == "json":
                    import json

                    meta["json"] = json.loads(v.decode("utf-8"))
                elif k in ("txt", "cls"):
                    meta[k] = v.decode("utf-8").strip()
                elif k == "coco73k.npy":
                    image_id = int(np.load(io.BytesIO(v), allow_pickle=False).reshape(-1)[0])
            except Exception:  # metadata is optional; a bad member does not lose the image
                pass
        return RawItem(key=f"{rel}:{skey}", path=f"{tar}:{skey}.{ext}", data=members[ext],
                       shard_id=sid, id=image_id, meta=meta)

    def decode(self, raw: RawItem) -> ImageRecord:
        img, (w, h) = _pil_from_bytes_or_path(raw.data)
        return ImageRecord(raw.key, w, h, img, raw.id, raw.shard_id, dict(raw.meta))


# ---------------------------------------------------------------------------------------
def open_source(path: str | Path, *, strict: bool = False, shard_size: int = 1000,
                **kwargs) -> ImageSource:
    """Pick a source from ``path``: ``*.h5``/``*.hdf5`` file -> HDF5, ``*.tar`` (or a glob, or a
    folder holding tars but no images) -> webdataset, a MindEye2 dataset folder (an ``*.hdf5``
    with an ``images`` dataset at its top level) -> HDF5, any other folder -> image files."""
    p = Path(path)
    s = str(path)
    if any(ch in s for ch in "*?[") or p.suffix == ".tar":
        return WebDatasetSource(path, strict=strict)
    if p.is_file():
        if p.suffix.lower() in (".h5", ".hdf5"):
            return HDF5Source(p, strict=strict, shard_size=shard_size, **kwargs)
        raise MindsearchError("not an image collection (expected a folder, .hdf5 or .tar)", p)
    if not p.is_dir():
        raise MindsearchError("image collection not found", p)
    h5 = _find_images_hdf5(p)
    if h5 is not None:
        return HDF5Source(h5, strict=strict, shard_size=shard_size, **kwargs)
    has_images = any(q.suffix.lower() in IMAGE_EXTENSIONS for q in p.rglob("*") if q.is_file())
    if not has_images and any(p.rglob("*.tar")):
        return WebDatasetSource(p, strict=strict)
    return FolderSource(p, strict=strict, shard_size=shard_size)


def _find_images_hdf5(folder: Path) -> Path | None:
    cands = sorted(folder.glob("*.hdf5")) + sorted(folder.glob("*.h5"))
    if not cands:
        return None
    import h5py

    preferred = sorted(cands, key=lambda q: (not q.name.startswith("coco_images"), q.name))
    for q in preferred:
        try:
            with h5py.File(q, "r") as f:
                if "images" in f:
                    return q
        except OSError:
            continue
    return None


# ---------------------------------------------------------------------------------------
# opening a hit again: from an index row (key, url, image_path) and the source it came from
# ---------------------------------------------------------------------------------------
def locate(row: dict, source: dict | None) -> tuple[str | None, str | None]:
    """``(path or URL a person can open, source reference)`` of an indexed image.

    Files give a path; hdf5 rows, tar members and dataset images give a reference
    (``file#item``) that :func:`read_image` (and the service) can read.
    """
    key = row.get("key")
    for col in ("url", "image_path"):
        v = row.get(col)
        if v and ("://" in v or os.path.isabs(v)):
            return v, None
    if not key:
        return None, None
    kind = (source or {}).get("kind")
    if kind == "folder":
        return str(Path(source["path"]) / key), None
    if kind == "hdf5" and key.startswith("h5:"):
        return None, f"{source['path']}#{source.get('dataset', 'images')}/{key[3:]}"
    if kind == "webdataset" and ":" in key:
        rel, _, sample = key.rpartition(":")
        return None, f"{Path(source['path']) / rel}#{sample}"
    if "://" in key or (kind == "clip-retrieval" and os.path.isabs(key)):
        return key, None
    if "#image/" in key or key.startswith("h5:") or kind is not None:
        return None, key
    return key, None  # an index written before sources were recorded: the key as stored


def read_image(row: dict, source: dict | None) -> tuple[bytes, str]:
    """The original image of an index row: ``(bytes, content type)``. Never reads outside the source."""
    import mimetypes

    key = row.get("key") or ""
    kind = (source or {}).get("kind")
    path, ref = locate(row, source)
    if path and "://" in path:
        raise MindsearchError(f"image {key!r} is at a URL ({path}); open it there")
    if kind == "folder":
        base = Path(source["path"])
        full = base / key
        try:
            full.resolve().relative_to(base.resolve())
        except ValueError:
            raise MindsearchError(f"image key {key!r} points outside the source folder", base) from None
        return _file_bytes(full), mimetypes.guess_type(full.name)[0] or "application/octet-stream"
    if kind == "hdf5" and key.startswith("h5:") and key[3:].isdigit():
        import h5py

        try:
            with h5py.File(source["path"], "r") as f:
                ds = f[source.get("dataset", "images")]
                row_i = int(key[3:])
                if row_i >= ds.shape[0]:
                    raise MindsearchError(f"row {row_i} is past the end of the images", source["path"])
                pixels = ds[row_i]
        except OSError as exc:
            raise MindsearchError(f"not a readable HDF5 file ({exc})", source["path"]) from None
        return _png(pixels), "image/png"
    if kind == "webdataset" and ref:
        tar_path, _, sample = ref.rpartition("#")
        base = Path(source["path"])
        try:
            Path(tar_path).resolve().relative_to(base.resolve())
        except ValueError:
            raise MindsearchError(f"image key {key!r} points outside the source folder", base) from None
        try:
            with tarfile.open(tar_path, "r") as tf:
                for ext in TAR_IMAGE_EXTENSIONS:
                    try:
                        member = tf.getmember(f"{sample}.{ext}")
                    except KeyError:
                        continue
                    f = tf.extractfile(member)
                    if f is not None:
                        return f.read(), mimetypes.guess_type(f"x.{ext}")[0] or "image/jpeg"
        except (tarfile.TarError, OSError) as exc:
            raise MindsearchError(f"unreadable tar ({exc})", tar_path) from None
        raise MindsearchError(f"no image member for sample {sample!r}", tar_path)
    if "#image/" in key:
        from mindsearch.data import open_dataset

        root, _, ident = key.rpartition("#image/")
        if kind == "dataset" and Path(root).resolve() != Path(source["path"]).resolve():
            raise MindsearchError(f"image key {key!r} names another dataset", source["path"])
        with open_dataset(root) as ds:
            return _png(ds.images([int(ident)])[0]), "image/png"
    if path and Path(path).is_file():
        return _file_bytes(Path(path)), mimetypes.guess_type(path)[0] or "application/octet-stream"
    raise MindsearchError(f"cannot find the original of image {key!r} (the index does not record its source)")


def _file_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MindsearchError(f"cannot read the image ({exc.strerror or exc})", path) from None


def _png(pixels: np.ndarray) -> bytes:
    """(3, H, W) or (H, W, 3) pixels, float in [0, 1] or integers in [0, 255], as PNG bytes."""
    from PIL import Image

    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if np.issubdtype(a.dtype, np.floating):
        a = np.clip(np.rint(np.nan_to_num(a.astype(np.float32)) * 255.0), 0, 255)
    u8 = np.ascontiguousarray(np.clip(a, 0, 255).astype(np.uint8))
    if u8.ndim == 3 and u8.shape[-1] == 1:
        u8 = np.repeat(u8, 3, axis=-1)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="PNG")
    return buf.getvalue()


__all__ = ["ImageRecord", "RawItem", "Shard", "ImageSource", "FolderSource", "HDF5Source",
           "WebDatasetSource", "open_source", "IMAGE_EXTENSIONS", "locate", "read_image"]
