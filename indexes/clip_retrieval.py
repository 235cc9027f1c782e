"""Read precomputed embeddings in the clip-retrieval / LAION layout, shard by shard.

Layout (``clip_retrieval/clip_inference/writer.py``)::

    DIR/img_emb/img_emb_{k}.npy          float16 (n_k, d), L2-normalised
    DIR/metadata/metadata_{k}.parquet    row-aligned: image_path and/or url, caption, ...

``k`` is zero-padded in practice; shards are ordered numerically and the position in the
concatenated shards is the vector id. Each shard is yielded as one batch ready for
``Collection.add`` (``id``, ``key``, ``embedding`` float32, ``shard``, optional ``caption``/
``width``/``height``), so a build resumes at the last finished shard.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from mindsearch.indexes.errors import InputError

_SHARD = re.compile(r"^img_emb_(\d+)\.npy$")


def list_shards(root: str | Path) -> list[tuple[str, Path, Path | None]]:
    """``[(shard_id, npy_path, parquet_path_or_None)]`` in numeric order."""
    root = Path(root)
    emb_dir = root / "img_emb"
    if not emb_dir.is_dir():
        raise InputError("not a clip-retrieval output folder (no img_emb/)", root)
    found = []
    for p in emb_dir.iterdir():
        m = _SHARD.match(p.name)
        if m:
            found.append((int(m.group(1)), m.group(1), p))
    if not found:
        raise InputError("no img_emb_{k}.npy files", emb_dir)
    found.sort()
    out = []
    for _, digits, npy in found:
        meta = root / "metadata" / f"metadata_{digits}.parquet"
        out.append((f"img_emb_{digits}", npy, meta if meta.is_file() else None))
    return out


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"not a readable .npy array ({exc})", path) from None
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise InputError(f"expected a 2-D float array, got {arr.dtype} {arr.shape}", path)
    return arr


def read_shard(npy: str | Path, meta: str | Path | None, *, shard: str, start_id: int,
               caption: bool = True, require_metadata: bool = True) -> dict:
    """One shard as a dict batch (embeddings as float32, L2-normalised rows, finite checked)."""
    npy = Path(npy)
    emb = _load_npy(npy)
    n = emb.shape[0]
    vec = np.array(emb, dtype=np.float32)  # a copy: a float32 memory map is read-only, normalised below
    if not np.isfinite(vec).all():
        raise InputError("embeddings contain NaN or infinite values", npy)
    norms = np.linalg.norm(vec, axis=1, keepdims=True)
    if n and (norms == 0).any():
        raise InputError(f"{int((norms == 0).sum())} all-zero embedding row(s)", npy)
    vec /= np.maximum(norms, 1e-30)
    batch = {"id": np.arange(start_id, start_id + n, dtype=np.int64), "embedding": vec, "shard": shard}
    if meta is None:
        if require_metadata:
            raise InputError(f"metadata for shard {shard} is missing (expected metadata/metadata_"
                             f"{shard.split('_')[-1]}.parquet)", npy.parent.parent / "metadata")
        batch["key"] = [f"{shard}/{i}" for i in range(n)]
        return batch
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = Path(meta)
    try:
        md = pq.read_table(meta)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"not a readable parquet file ({exc})", meta) from None
    if md.num_rows != n:
        raise InputError(f"metadata has {md.num_rows} rows but {npy.name} has {n} embeddings (not row-aligned)",
                         meta)
    keycol = next((c for c in ("image_path", "url", "key") if c in md.column_names), None)
    if keycol is None:
        raise InputError("metadata has none of the columns image_path, url, key", meta)
    batch["key"] = md.column(keycol).cast(pa.string())
    if caption and "caption" in md.column_names:
        batch["caption"] = md.column("caption").cast(pa.string())
    for c in ("width", "height"):
        if c in md.column_names:
            batch[c] = md.column(c).cast(pa.int32())
    return batch


def iter_shards(root: str | Path, *, skip: set[str] | list[str] = (), caption: bool = True,
                require_metadata: bool = True) -> Iterator[tuple[str, dict]]:
    """Yield ``(shard_id, batch)`` for every shard not in ``skip`` (ids stay global positions)."""
    skip = set(skip)
    start = 0
    for shard, npy, meta in list_shards(root):
        n = _load_npy(npy).shape[0]
        if shard not in skip:
            yield shard, read_shard(npy, meta, shard=shard, start_id=start, caption=caption,
                                    require_metadata=require_metadata)
        start += n


def dim(root: str | Path) -> int:
    """Embedding dimension of the layout (from its first shard)."""
    return int(_load_npy(list_shards(root)[0][1]).shape[1])
