"""Large FAISS indexes the autofaiss way: train once on a sample, add shards in parallel, merge.

One process adding a billion vectors to one index is the bottleneck autofaiss removes: the
IVF quantizer is trained on a sample, each worker process adds its shards of vectors to its own
copy of the empty trained index and writes it to disk, and the partial indexes are merged into
one, either in memory (``IndexIVF.merge_from``) or on disk (``faiss.contrib.ondisk.merge_ondisk``:
the inverted lists go to one ``.ivfdata`` file that is memory-mapped at search time, so the
index never needs to fit in RAM). Inverted lists are appended shard by shard in shard order, so
the merged index equals the one a single process builds from the same trained quantizer.

Only IVF keys (``IVF…,Flat``, ``IVF…,PQ…``, ``OPQ…,IVF…``) can be built this way: HNSW graphs
cannot be merged, and a Flat index needs no training.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mindsearch.indexes.errors import InputError
from mindsearch.indexes.faiss_index import needs_training, new_index, save_index


def _ivf(index):
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        raise InputError(f"a sharded build needs an IVF index, not {type(faiss.downcast_index(index)).__name__}")
    return ivf


def train_empty(key: str, sample: np.ndarray, path: str | Path) -> Path:
    """Train ``key`` on unit vectors ``sample`` and write the empty trained index to ``path``."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if not needs_training(key):
        raise InputError(f"index {key!r} needs no training: build it directly, not in shards")
    index = new_index(key, sample.shape[1])
    _ivf(index)
    index.train(sample)
    return save_index(index, path)


def _load_vectors(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"not a readable .npy array ({exc})", path) from None


def add_shard(trained: str | Path, vectors: str | Path, ids: str | Path, out: str | Path,
              batch: int = 65_536) -> dict:
    """Worker: add one shard of unit vectors (``.npy`` files) to a copy of the trained index."""
    import faiss

    faiss.omp_set_num_threads(1)  # one core per worker process
    index = faiss.read_index(str(trained))
    vec, idx = _load_vectors(str(vectors)), _load_vectors(str(ids))
    if vec.ndim != 2 or vec.shape[1] != index.d or idx.shape != (len(vec),):
        raise InputError(f"shard has vectors {vec.shape} and ids {idx.shape}; the index has d={index.d}",
                         vectors)
    for start in range(0, len(vec), batch):
        index.add_with_ids(np.ascontiguousarray(vec[start:start + batch], np.float32),
                           np.ascontiguousarray(idx[start:start + batch], np.int64))
    save_index(index, out)
    return {"shard": str(vectors), "ntotal": int(index.ntotal), "file": str(out)}


def merge(trained: str | Path, parts: Sequence[str | Path], out: str | Path, *, ondisk: bool = False):
    """Merge partial indexes (same trained quantizer) in the given order; write and return it.

    ``ondisk=True`` keeps the inverted lists in ``<out>.ivfdata`` (memory-mapped when read).
    """
    import faiss

    out = Path(out)
    if ondisk:
        from faiss.contrib.ondisk import merge_ondisk

        index = faiss.read_index(str(trained))
        merge_ondisk(index, [str(p) for p in parts], str(out) + ".ivfdata")
        save_index(index, out)
        return index
    index = faiss.read_index(str(trained))
    ivf = _ivf(index)
    for p in parts:
        part = faiss.read_index(str(p))
        ivf.merge_from(_ivf(part), 0)
        index.ntotal = ivf.ntotal
    save_index(index, out)
    return index


def build_sharded(key: str, shards: Sequence[tuple[str | Path, str | Path]], out: str | Path, *,
                  sample: np.ndarray, workers: int = 2, ondisk: bool = False) -> dict:
    """The whole recipe: train on ``sample``, add ``shards`` [(vectors.npy, ids.npy), ...] on
    ``workers`` processes, merge into ``out``. Returns a record with the timing of each stage."""
    import time

    if workers < 1:
        raise InputError(f"workers must be >= 1 (got {workers})")
    out = Path(out)
    work = out.parent / f".{out.name}.parts"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    trained = train_empty(key, sample, work / "trained.faiss")
    t1 = time.perf_counter()
    parts = [work / f"part-{i:06d}.faiss" for i in range(len(shards))]
    # spawn: a forked child of a process that already ran faiss/OpenMP threads can deadlock
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(add_shard, trained, v, i, p) for (v, i), p in zip(shards, parts)]
        added = [f.result() for f in futures]
    t2 = time.perf_counter()
    index = merge(trained, parts, out, ondisk=ondisk)
    t3 = time.perf_counter()
    for p in [*parts, trained]:
        os.unlink(p)
    os.rmdir(work)
    return {"key": key, "ntotal": int(index.ntotal), "file": str(out), "ondisk": ondisk, "workers": workers,
            "shards": len(shards), "added": sum(a["ntotal"] for a in added), "train_s": round(t1 - t0, 3),
            "add_s": round(t2 - t1, 3), "merge_s": round(t3 - t2, 3)}


__all__ = ["train_empty", "add_shard", "merge", "build_sharded"]
