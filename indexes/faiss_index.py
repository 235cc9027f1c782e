"""FAISS indexes on L2-normalised vectors (cosine = inner product): choose a key, build, search, persist.

The key chooser re-implements autofaiss's ``get_optimal_index_keys_v2`` sizing rules directly on faiss
(autofaiss itself does not import beside numpy 2 / pyarrow >= 16), with one mindsearch policy on top:
``kind="auto"`` stays exact (``Flat``) up to ``exact_max`` vectors (default 1,000,000), because brain
predictions are off-distribution queries on which quantised indexes lose recall.

Every index is wrapped in ``IndexIDMap2`` so it returns the table's ``id`` column directly.
``faiss`` is imported inside functions (the lowest layer must stay cheap to import).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mindsearch.indexes.errors import InputError
from mindsearch.indexes.io import atomic_path

#: autofaiss's default ``max_index_memory_usage`` ("16G").
DEFAULT_MEMORY_BUDGET = 16 * 2**30
#: kind="auto" keeps exact search up to this many vectors (ANCHORS 6.1).
EXACT_MAX = 1_000_000


# --------------------------------------------------------------------------------------------
# vectors
# --------------------------------------------------------------------------------------------
def as_vectors(x: Any, dim: int | None = None, *, path: str | Path | None = None,
               what: str = "vectors") -> np.ndarray:
    """Validate ``x`` as a finite (n, dim) float array and return an L2-normalised float32 copy."""
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what}: not a numeric array ({exc})", path) from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InputError(f"{what}: expected a 2-D array (n, dim), got shape {arr.shape}", path)
    if dim is not None and arr.shape[1] != dim:
        raise InputError(f"{what}: dimension mismatch: got {arr.shape[1]}, expected {dim}", path)
    sq = np.einsum("ij,ij->i", arr, arr)  # one pass: NaN/inf rows give a non-finite squared norm
    if not np.isfinite(sq).all():
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            raise InputError(f"{what}: {int((~finite).sum())} row(s) contain NaN or infinite values", path)
        scale = np.abs(arr).max(axis=1, keepdims=True)  # overflow in float32: rescale first
        arr = arr / np.maximum(scale, 1e-30)
        sq = np.einsum("ij,ij->i", arr, arr)
    if (sq == 0).any():
        raise InputError(f"{what}: {int((sq == 0).sum())} row(s) are all zeros (no direction)", path)
    return arr / np.sqrt(sq)[:, None]


# --------------------------------------------------------------------------------------------
# key choice
# --------------------------------------------------------------------------------------------
def _nlist(n: int) -> int:
    """Number of IVF lists à la autofaiss: below 1M the power of two nearest 4*sqrt(N)."""
    if n < 1_000_000:
        target = 4.0 * math.sqrt(max(n, 1))
        k = 2 ** int(round(math.log2(max(target, 1.0))))
        return max(1, k)
    if n < 10_000_000:
        return 16_384
    if n < 300_000_000:
        return 65_536
    return 131_072


def _ivf_flat_bytes(n: int, d: int, nlist: int) -> int:
    return n * (4 * d + 8) + nlist * 4 * d


def _ivfpq_key(n: int, d: int, budget: int, nlist: int) -> str | None:
    """Largest PQ code (m bytes) that fits, with an OPQ rotation and an HNSW32 coarse quantizer."""
    for m in (256, 128, 64, 48, 32, 16, 8, 4):
        if m > d:
            continue
        dout = (min(d // m, 6) + 1) * m
        size = n * (m + 8) + nlist * (4 * dout + 8 * 32) + 4 * d * dout
        if size <= budget:
            return f"OPQ{m}_{dout},IVF{nlist}_HNSW32,PQ{m}x8"
    return None


def choose_index_key(n: int, d: int, kind: str = "auto", *,
                     memory_budget: int = DEFAULT_MEMORY_BUDGET, exact_max: int = EXACT_MAX) -> str:
    """Return a faiss factory string for ``n`` vectors of dimension ``d``.

    ``kind``: ``"auto"`` (exact ``Flat`` up to ``exact_max``, above it autofaiss's rules),
    ``"flat"``, ``"hnsw"``, ``"ivf"``, ``"ivfpq"``, or any faiss factory string (returned as given).
    """
    if n < 0 or d <= 0:
        raise InputError(f"cannot size an index for n={n}, d={d}")
    kind_l = kind.lower()
    if kind_l == "flat":
        return "Flat"
    if kind_l == "hnsw":
        return "HNSW32"
    if kind_l == "ivf":
        return f"IVF{_nlist(n)},Flat"
    if kind_l == "ivfpq":
        key = _ivfpq_key(n, d, memory_budget, _nlist(n))
        return key or f"IVF{_nlist(n)},PQ{max(4, min(64, d // 16))}x8"
    if kind_l != "auto":
        return kind  # a faiss factory string; validated when built
    if n <= exact_max:
        return "Flat"
    # autofaiss get_optimal_index_keys_v2, above the exact threshold
    if n < 1_000:
        return "Flat"
    if n < 10_000:
        return "HNSW15"
    m = (memory_budget / (4 * n) - d) / 2
    if m >= 8:
        return f"HNSW{min(int(m), 32)}"
    nlist = _nlist(n)
    if n < 1_000_000 and _ivf_flat_bytes(n, d, nlist) <= memory_budget:
        return f"IVF{nlist},Flat"
    key = _ivfpq_key(n, d, memory_budget, nlist)
    if key is None:
        raise InputError(f"no index of {n} x {d} vectors fits in a memory budget of {memory_budget} bytes")
    return key


def estimate_bytes(key: str, n: int, d: int) -> int:
    """Rough in-memory size of ``key`` over ``n`` vectors (for reports; ±20 %)."""
    k = key.upper()
    if k == "FLAT":
        return 4 * n * d + 8 * n
    if k.startswith("HNSW"):
        m = int("".join(c for c in k[4:].split(",")[0].split("_")[0] if c.isdigit()) or 32)
        return n * (4 * d + 8 * m) + 8 * n
    if "PQ" in k:
        m = int(k.split("PQ")[-1].split("X")[0] or 8)
        return n * (m + 16)
    return 4 * n * d + 16 * n


def default_train_size(key: str, n: int) -> int:
    """Training sample: 64 vectors per IVF list (faiss: 30..256 per list), all of ``n`` if smaller."""
    nlist = ivf_nlist(key)
    if nlist:
        return min(n, max(64 * nlist, 10_000))
    if "PQ" in key.upper():
        return min(n, 100_000)
    return 0


def ivf_nlist(key: str) -> int:
    for part in key.split(","):
        p = part.strip().upper()
        if p.startswith("IVF"):
            digits = ""
            for c in p[3:]:
                if not c.isdigit():
                    break
                digits += c
            return int(digits) if digits else 0
    return 0


def needs_training(key: str) -> bool:
    k = key.upper()
    return "IVF" in k or "PQ" in k or k.startswith("OPQ") or "SQ" in k or "LSH" in k


# --------------------------------------------------------------------------------------------
# build / add / search
# --------------------------------------------------------------------------------------------
def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def new_index(key: str, d: int):
    """An empty ``faiss.index_factory(d, key, METRIC_INNER_PRODUCT)`` (InputError for a bad key)."""
    import faiss

    try:
        base = faiss.index_factory(int(d), key, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InputError(f"not a valid faiss index key {key!r}: {str(exc).splitlines()[0][:200]}") from None
    return base


def build_index(vectors: np.ndarray, ids: np.ndarray | None = None, key: str = "Flat", *,
                train_size: int | None = None, seed: int = 0, use_gpu: bool | str = "auto",
                add_batch: int = 65_536, params: dict | None = None):
    """Build ``key`` over unit vectors (n, d) with int64 ``ids`` (default 0..n-1); returns a CPU index.

    ``vectors`` must already be L2-normalised float32 (see :func:`as_vectors`). Training uses a
    seeded random sample of ``train_size`` rows (default :func:`default_train_size`).
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise InputError(f"ids: expected shape ({n},), got {ids.shape}")
    base = new_index(key, d)
    on_gpu = False
    if use_gpu and gpu_available() and not isinstance(base, faiss.IndexHNSW):
        try:  # Flat/IVF/PQ have GPU versions; HNSW does not
            base = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, base)
            on_gpu = True
        except RuntimeError:
            if use_gpu is True:
                raise
    if not base.is_trained:
        if n == 0:
            raise InputError(f"index {key!r} needs training vectors, got none")
        ts = default_train_size(key, n) if train_size is None else min(int(train_size), n)
        ts = max(ts, 1)
        rs = np.random.default_rng(seed)
        sample = vectors if ts >= n else vectors[np.sort(rs.choice(n, ts, replace=False))]
        base.train(sample)
    if on_gpu:
        base = faiss.index_gpu_to_cpu(base)  # add on CPU so the index can be written as is
    index = faiss.IndexIDMap2(base)
    for start in range(0, n, add_batch):
        index.add_with_ids(vectors[start:start + add_batch], ids[start:start + add_batch])
    if params:
        set_search_params(index, **params)
    return index


def add_vectors(index, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Append unit vectors with their ids to a built index (incremental add)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.shape[0]:
        index.add_with_ids(vectors, ids)


def base_index(index):
    """The index inside the ``IndexIDMap2`` wrapper, downcast to its concrete class."""
    import faiss

    # Only the id maps wrap another index; probing ``.index`` on others (a bare IVF index from a
    # sharded build) can return a dangling SWIG pointer that crashes downcast_index.
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.downcast_index(index.index)
    return faiss.downcast_index(index)


def set_search_params(index, *, nprobe: int | None = None, efSearch: int | None = None,
                      **_ignored: Any) -> dict:
    """Set IVF ``nprobe`` / HNSW ``efSearch`` where the index has them; return what was set."""
    import faiss

    done: dict = {}
    base = base_index(index)
    if nprobe is not None:
        ivf = faiss.try_extract_index_ivf(base)
        if ivf is not None:
            ivf.nprobe = int(nprobe)
            done["nprobe"] = int(nprobe)
    if efSearch is not None:
        hnsw = base if isinstance(base, faiss.IndexHNSW) else None
        if hnsw is None:  # IVF{K}_HNSW quantizer
            ivf = faiss.try_extract_index_ivf(base)
            q = faiss.downcast_index(ivf.quantizer) if ivf is not None else None
            hnsw = q if isinstance(q, faiss.IndexHNSW) else None
        if hnsw is not None:
            hnsw.hnsw.efSearch = int(efSearch)
            done["efSearch"] = int(efSearch)
    return done


def search_params(index) -> dict:
    """The index's current search parameters (recorded with results)."""
    import faiss

    out: dict = {}
    base = base_index(index)
    ivf = faiss.try_extract_index_ivf(base)
    if ivf is not None:
        out["nprobe"] = int(ivf.nprobe)
        out["nlist"] = int(ivf.nlist)
        q = faiss.downcast_index(ivf.quantizer)
        if isinstance(q, faiss.IndexHNSW):
            out["efSearch"] = int(q.hnsw.efSearch)
    if isinstance(base, faiss.IndexHNSW):
        out["efSearch"] = int(base.hnsw.efSearch)
        out["efConstruction"] = int(base.hnsw.efConstruction)
    return out


def is_exact(index) -> bool:
    import faiss

    return isinstance(base_index(index), faiss.IndexFlat)


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Search unit ``queries`` (q, d); returns ``(ids int64 (q, k), scores float32 (q, k))``.

    Missing results (fewer than k vectors reachable) are id -1 with score -inf.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if k <= 0:
        raise InputError(f"k must be positive, got {k}")
    scores, ids = index.search(q, int(k))
    if ids.size and ids.min() < 0:
        scores = np.where(ids < 0, np.float32(-np.inf), scores)
    return ids, scores


def exact_search(vectors: np.ndarray, ids: np.ndarray | None, queries: np.ndarray, k: int,
                 chunk: int = 262_144) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of ``queries`` against ``vectors`` (chunked; no index kept)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n, d = vectors.shape
    k = int(k)
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, n, chunk):
        part = vectors[start:start + chunk]
        flat = faiss.IndexFlatIP(d)
        flat.add(part)
        s, i = flat.search(queries, min(k, len(part)))
        i = np.where(i >= 0, i + start, -1)
        s = np.where(i >= 0, s, -np.inf)
        cat_s = np.concatenate([best_s, s], axis=1)
        cat_i = np.concatenate([best_i, i], axis=1)
        order = np.argsort(-cat_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cat_s, order, axis=1)
        best_i = np.take_along_axis(cat_i, order, axis=1)
    if ids is not None:
        ids = np.asarray(ids, dtype=np.int64)
        best_i = np.where(best_i >= 0, ids[np.maximum(best_i, 0)], -1)
    return best_i, best_s


# --------------------------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------------------------
def save_index(index, path: str | Path) -> Path:
    """Write ``index`` atomically (temp file in the same folder + ``os.replace``)."""
    import faiss

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = base_index(index)
    if type(base).__name__.startswith("Gpu"):  # never write a GPU index
        index = faiss.IndexIDMap2(faiss.index_gpu_to_cpu(base))
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return path


def load_index(path: str | Path, *, mmap: bool = False, params: dict | None = None):
    """Read an index written by :func:`save_index`; ``InputError`` naming the file if unreadable."""
    import faiss

    path = Path(path)
    if not path.is_file():
        raise InputError("faiss index file not found", path)
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        index = faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise InputError(f"not a readable faiss index ({str(exc).splitlines()[0][:200]})", path) from None
    # read_index already returns the concrete class. Re-wrapping it with downcast_index would
    # give a non-owning proxy whose owner is then collected: a dangling index (segfault).
    if params:
        set_search_params(index, **params)
    return index


def describe(index, key: str) -> dict:
    """Index record for manifests and results: key, class, size, exactness, search params."""
    base = base_index(index)
    return {"key": key, "class": type(base).__name__, "ntotal": int(index.ntotal), "dim": int(index.d),
            "metric": "inner_product", "exact": is_exact(index), "params": search_params(index)}
