"""Recall@k of an index against exact search, with the queries that matter.

autofaiss scores an index with vectors reconstructed from the index itself; brain predictions (like
text queries) lie elsewhere in CLIP space, where quantised / graph indexes lose recall first
(clip-retrieval #76). So the caller GIVES the queries: held-out brain-predicted vectors. The result
records recall@k, per-query latency (p50/p99, one query at a time), batch QPS, the index key and
parameters and the table version, and can be written into the collection's manifest.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from mindsearch.indexes.errors import InputError


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int | None = None) -> float:
    """Mean over queries of |found[:, :k] ∩ truth[:, :k]| / k (ids; -1 never matches)."""
    found = np.asarray(found)
    truth = np.asarray(truth)
    if found.ndim != 2 or truth.ndim != 2 or len(found) != len(truth):
        raise InputError(f"recall_at_k: need two (q, k) id arrays with equal q, got {found.shape} and {truth.shape}")
    k = int(k or truth.shape[1])
    if k <= 0 or k > truth.shape[1] or k > found.shape[1]:
        raise InputError(f"recall_at_k: k={k} exceeds the results given ({found.shape[1]}, {truth.shape[1]})")
    if len(found) == 0:
        return float("nan")
    hits = 0
    for f, t in zip(found[:, :k], truth[:, :k]):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t, assume_unique=False))
    return hits / (k * len(found))


def latency(search: Callable[[np.ndarray], Any], queries: np.ndarray, *, n_single: int = 100,
            repeats: int = 3) -> dict:
    """One-at-a-time latency (p50/p99 ms over ``n_single`` queries) and batch throughput (QPS).

    The first single query is reported separately as ``first_ms`` (cold-ish: caches not yet warm).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n1 = min(n_single, len(queries))
    t = time.perf_counter()
    search(queries[:1])
    first_ms = (time.perf_counter() - t) * 1e3
    times = []
    for i in range(n1):
        t = time.perf_counter()
        search(queries[i:i + 1])
        times.append(time.perf_counter() - t)
    batch = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        search(queries)
        batch.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1e3
    best = min(batch)
    return {"first_ms": round(first_ms, 3), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "batch_size": int(len(queries)),
            "batch_ms_per_query": round(best * 1e3 / len(queries), 4), "qps": round(len(queries) / best, 1)}


def measure(search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
            exact: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
            queries: np.ndarray, k: int = 16, *, n_single: int = 100, repeats: int = 3) -> dict:
    """Recall@k of ``search`` vs ``exact`` on the given ``queries``, plus latency of ``search``."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or len(queries) == 0:
        raise InputError(f"recall queries must be a non-empty (q, d) array, got shape {queries.shape}")
    found, _ = search(queries, k)
    truth, _ = exact(queries, k)
    out = {"k": int(k), "n_queries": int(len(queries)), f"recall@{k}": round(recall_at_k(found, truth, k), 4)}
    out.update(latency(lambda x: search(x, k), queries, n_single=n_single, repeats=repeats))
    return out


def measure_collection(collection, queries: Any, k: int = 16, *, label: str = "brain-heldout",
                       source: str | None = None, n_single: int = 100, repeats: int = 3,
                       record: bool = True) -> dict:
    """Measure a :class:`indexes.collection.Collection` on held-out ``queries`` and record it.

    ``label`` names the query set in ``manifest["recall"]`` (e.g. "brain-heldout", "self");
    ``source`` is free text on where the queries came from (run id, subject, split).
    """
    q = collection._queries(queries)  # noqa: SLF001  (validated + normalised the same way as search)
    res = measure(lambda x, kk: tuple(collection.search(x, kk)), collection.exact_search, q, k,
                  n_single=n_single, repeats=repeats)
    info = collection.info()
    res.update(label=label, source=source, index_key=info["index"]["key"], index_file=info["index"]["file"],
               params=info["index"]["params"], table_version=info["table"]["version"], count=info["count"],
               measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if record:
        collection.record_recall(label, res)
    return res
