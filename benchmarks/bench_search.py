"""Search benchmark: exact vs ANN over synthetic 768-d CLIP-like vectors, with brain-style queries.

    python -m benchmarks.bench_search --quick
    python -m benchmarks.bench_search --sizes 10000,73000,1000000 --out bench_search.json

For each size N it reports, for exact (``Flat``) and ANN (IVF-Flat by default, nprobe tuned on a
separate set of brain-style queries; ``--ann hnsw`` for HNSW32 with efSearch tuned):
build time and throughput (vectors/s); cold latency (first search right after reading the index
file; file read time separately) and warm latency (p50/p99) for 1 query and for a batch of 300;
recall@16 of ANN vs exact for brain-style queries and for self-queries; the speed-up over exact;
and, up to ``--collection-max`` rows, the overhead of ``Collection.search`` and of the warm, long-lived
``Engine.search`` (reader: cached FAISS index + memory-mapped rows file, hits with paths) over a bare
faiss search of the same index, one query at a time.

Synthetic data: image vectors = normalise(mean + U z + e) with U a random rank-64 basis, z drawn
around 1,000 overlapping cluster centres with a power-law (i^-1/2) spectrum, e isotropic noise of
norm 0.45 (mean pairwise cosine ~0.4, like CLIP image embeddings). Brain-style queries = normalise(0.5 x + n) for held-out image vectors x (not in the
index), with n Gaussian noise orthogonal to the image subspace span(mean, U) and of norm ~1, so
cos(query, x) ~ 0.45 (a typical brain-prediction cosine). Self-queries are indexed vectors, as in
autofaiss's own recall scoring.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

K = 16
RANK = 64
N_CLUSTERS = 1000


# ------------------------------------------------------------------------------------------ data
class Synth:
    def __init__(self, d: int, seed: int = 0):
        rs = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(rs.standard_normal((d, RANK + 1)))
        self.mu = basis[:, 0].astype(np.float32)
        self.U = basis[:, 1:].astype(np.float32)
        self.centres = rs.standard_normal((N_CLUSTERS, RANK)).astype(np.float32)
        # power-law spectrum inside the subspace (CLIP's PCA spectrum decays; flat would be harder)
        spec = (np.arange(1, RANK + 1, dtype=np.float32)) ** -0.5
        self.spectrum = spec / np.sqrt(np.mean(spec ** 2))
        self.d = d
        self.seed = seed

    def images(self, n: int, seed: int, out: np.ndarray | None = None, chunk: int = 100_000) -> np.ndarray:
        rs = np.random.default_rng(seed)
        x = np.empty((n, self.d), dtype=np.float32) if out is None else out
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            z = 0.5 * self.centres[rs.integers(0, N_CLUSTERS, m)] + 0.6 * rs.standard_normal((m, RANK), dtype=np.float32)
            z *= self.spectrum * np.float32(1.2 / np.sqrt(RANK * 0.61))
            v = z @ self.U.T
            v += self.mu
            v += rs.standard_normal((m, self.d), dtype=np.float32) * np.float32(0.45 / np.sqrt(self.d))
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            x[s:s + m] = v
        return x

    def brain_queries(self, held_out: np.ndarray, seed: int, noise: float = 1.0) -> np.ndarray:
        rs = np.random.default_rng(seed)
        n = rs.standard_normal(held_out.shape, dtype=np.float32)
        span = np.concatenate([self.mu[:, None], self.U], axis=1)
        n -= (n @ span) @ span.T  # remove every component inside the image subspace
        n *= noise / np.linalg.norm(n, axis=1, keepdims=True)
        q = 0.5 * held_out + n
        return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------------------ timing
def _timed(fn, reps: int, budget_s: float) -> np.ndarray:
    times = []
    t_end = time.perf_counter() + budget_s
    for i in range(reps):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
        if time.perf_counter() > t_end and len(times) >= 3:
            break
    return np.asarray(times) * 1e3


def _interleaved(fns, reps: int, budget_s: float) -> list[np.ndarray]:
    """Time each of ``fns`` once per round, rounds until ``reps`` or the budget; ms per call."""
    times = [[] for _ in fns]
    t_end = time.perf_counter() + budget_s
    for i in range(reps):
        for fn, out in zip(fns, times):
            t = time.perf_counter()
            fn(i)
            out.append(time.perf_counter() - t)
        if time.perf_counter() > t_end and i >= 2:
            break
    return [np.asarray(t) * 1e3 for t in times]


def latency(index, queries: np.ndarray, path: Path, *, budget_s: float, faiss, params: dict) -> dict:
    """Cold (fresh read of the file, first search) and warm latency, 1 query and a batch of 300."""
    from mindsearch.indexes import faiss_index as fi

    out = {}
    for label, q in (("1", queries[:1]), ("300", queries[:300])):
        t = time.perf_counter()
        fresh = fi.load_index(path, params=params)
        out["load_ms"] = round((time.perf_counter() - t) * 1e3, 2)
        t = time.perf_counter()
        fresh.search(q, K)
        out[f"cold{label}_ms"] = round((time.perf_counter() - t) * 1e3, 3)
        del fresh
    single = _timed(lambda i: index.search(queries[i % len(queries)][None], K), 200, budget_s)
    batch = _timed(lambda i: index.search(queries[:300], K), 10, budget_s)
    out.update(warm1_p50_ms=round(float(np.percentile(single, 50)), 3),
               warm1_p99_ms=round(float(np.percentile(single, 99)), 3), warm1_n=int(len(single)),
               warm300_p50_ms=round(float(np.percentile(batch, 50)), 2),
               warm300_p99_ms=round(float(np.percentile(batch, 99)), 2), warm300_n=int(len(batch)),
               warm300_ms_per_query=round(float(np.percentile(batch, 50)) / min(300, len(queries)), 4))
    return out


def tune(index, queries, truth, name: str, ladder, target: float, faiss) -> tuple[int, list]:
    from mindsearch.indexes import faiss_index as fi
    from mindsearch.indexes.recall import recall_at_k

    tried = []
    for v in ladder:
        fi.set_search_params(index, **{name: v})
        ids, _ = fi.search(index, queries, K)
        r = recall_at_k(ids, truth, K)
        tried.append({name: v, "recall@16": round(r, 4)})
        if r >= target:
            return v, tried
    return ladder[-1], tried


def bench_size(n: int, args, synth: Synth, faiss, tmp: Path) -> list[dict]:
    from mindsearch.indexes import faiss_index as fi
    from mindsearch.indexes.recall import recall_at_k

    d = args.dim
    print(f"[{n}] generating {n} x {d} vectors ...", flush=True)
    x = synth.images(n, seed=1000 + n)
    nq = args.queries
    held = synth.images(2 * nq, seed=2000 + n)
    brain_eval = synth.brain_queries(held[:nq], seed=3)
    brain_tune = synth.brain_queries(held[nq:], seed=4)
    self_q = x[np.random.default_rng(5).choice(n, nq, replace=False)]
    rows = []

    # exact
    faiss.omp_set_num_threads(args.build_threads)
    t = time.perf_counter()
    exact = fi.build_index(x, None, "Flat")
    build_s = time.perf_counter() - t
    p_exact = tmp / f"flat_{n}.faiss"
    fi.save_index(exact, p_exact)
    faiss.omp_set_num_threads(args.threads)
    gt_brain, _ = fi.search(exact, brain_eval, K)
    gt_tune, _ = fi.search(exact, brain_tune, K)
    gt_self, _ = fi.search(exact, self_q, K)
    cos = float(np.mean(np.sum(brain_eval * held[:nq], axis=1)))
    lat = latency(exact, brain_eval, p_exact, budget_s=args.budget, faiss=faiss, params={})
    rows.append({"n": n, "method": "exact", "key": "Flat", "params": {}, "build_s": round(build_s, 2),
                 "build_vps": round(n / build_s), "recall_brain": 1.0, "recall_self": 1.0, **lat,
                 "query_image_cos": round(cos, 3)})
    print(f"[{n}] exact done", flush=True)

    # ANN
    if args.ann == "hnsw":
        key, pname, ladder = "HNSW32", "efSearch", [16, 32, 48, 64, 96, 128, 192, 256, 384, 512]
    else:
        if args.ann == "ivf":  # autofaiss's 4*sqrt(N) below 1M; fewer lists above (k-means cost on 2 cores)
            key = f"IVF{fi._nlist(n) if n < 1_000_000 else args.nlist_1m},Flat"
        else:
            key = args.ann
        nlist = fi.ivf_nlist(key)
        pname, ladder = "nprobe", [p for p in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512)
                                   if p <= max(nlist, 1)]
    faiss.omp_set_num_threads(args.build_threads)
    t = time.perf_counter()
    ann = fi.build_index(x, None, key, train_size=(50 * fi.ivf_nlist(key)) or None)
    ann_build_s = time.perf_counter() - t
    faiss.omp_set_num_threads(args.threads)
    value, tried = tune(ann, brain_tune, gt_tune, pname, ladder, args.target, faiss)
    params = {pname: value}
    fi.set_search_params(ann, **params)
    p_ann = tmp / f"ann_{n}.faiss"
    fi.save_index(ann, p_ann)
    ids_b, _ = fi.search(ann, brain_eval, K)
    ids_s, _ = fi.search(ann, self_q, K)
    # the untuned-for-brain view: the smallest setting that reaches the target on SELF queries
    v_self, _ = tune(ann, self_q, gt_self, pname, ladder, args.target, faiss)
    fi.set_search_params(ann, **{pname: v_self})
    ids_bs, _ = fi.search(ann, brain_eval, K)
    fi.set_search_params(ann, **params)
    lat_a = latency(ann, brain_eval, p_ann, budget_s=args.budget, faiss=faiss, params=params)
    rows.append({"n": n, "method": "ann", "key": key, "params": params, "build_s": round(ann_build_s, 2),
                 "build_vps": round(n / ann_build_s), "recall_brain": round(recall_at_k(ids_b, gt_brain, K), 4),
                 "recall_self": round(recall_at_k(ids_s, gt_self, K), 4), "tuning": tried,
                 "self_tuned_params": {pname: v_self},
                 "recall_brain_at_self_tuned": round(recall_at_k(ids_bs, gt_brain, K), 4), **lat_a})
    ex, an = rows[-2], rows[-1]
    an["speedup1"] = round(ex["warm1_p50_ms"] / max(an["warm1_p50_ms"], 1e-9), 1)
    an["speedup300"] = round(ex["warm300_p50_ms"] / max(an["warm300_p50_ms"], 1e-9), 1)
    print(f"[{n}] ann done: {key} {params} recall_brain={an['recall_brain']}", flush=True)

    # Collection overhead over a bare faiss search of the same index
    if n <= args.collection_max:
        faiss.omp_set_num_threads(args.build_threads)
        coll = _collection_overhead(x, key, params, brain_eval, tmp / f"coll_{n}", args, faiss)
        faiss.omp_set_num_threads(args.threads)
        an.update(coll["ann"])
        ex.update(coll["exact"])
    del exact, ann, x
    return rows


def _collection_overhead(x, key, params, queries, root: Path, args, faiss) -> dict:
    from mindsearch.engine import Engine
    from mindsearch.indexes.collection import Collection

    n, d = x.shape
    coll = Collection.create(root, "bench", {"name": "synthetic", "dim": d}, d)
    engine = Engine(root)
    t = time.perf_counter()
    shard = 250_000
    for i, s in enumerate(range(0, n, shard)):
        m = min(shard, n - s)
        coll.add({"embedding": x[s:s + shard], "key": [f"images/{j:08d}.jpg" for j in range(s, s + m)]},
                 shard=str(i))
        coll.finish_shard(str(i))
    ingest_s = time.perf_counter() - t
    out = {}
    for label, k_, p in (("exact", "flat", {}), ("ann", key, params)):
        coll.build_index(k_, params=p, train_size=(50 * _nl(key)) or None)
        faiss.omp_set_num_threads(args.threads)
        idx = coll.index
        coll.search(queries[:1], K)
        engine.search("bench", queries[:1], k=K)  # warm: the reader loads the new version once
        # interleaved, so a shared machine's changing load hits all three alike
        bare1, coll1, eng1 = _interleaved([lambda i: idx.search(queries[i % len(queries)][None], K),
                                           lambda i: coll.search(queries[i % len(queries)][None], K),
                                           lambda i: engine.search("bench", queries[i % len(queries)][None], k=K)],
                                          300, args.budget)
        bare300 = _timed(lambda i: idx.search(queries[:300], K), 10, args.budget / 2)
        coll300 = _timed(lambda i: coll.search(queries[:300], K), 10, args.budget / 2)
        out[label] = {"coll_ingest_rows_per_s": round(n / ingest_s),
                      "engine_overhead1": round(float(np.median(eng1) / np.median(bare1)), 2),
                      "engine_warm1_p50_ms": round(float(np.median(eng1)), 3),
                      "bare_warm1_p50_ms": round(float(np.median(bare1)), 3),
                      "coll_overhead1": round(float(np.median(coll1) / np.median(bare1)), 2),
                      "coll_overhead300": round(float(np.median(coll300) / np.median(bare300)), 2),
                      "coll_warm1_p50_ms": round(float(np.median(coll1)), 3),
                      "table_version": coll.table_version}
        faiss.omp_set_num_threads(args.build_threads)
    return out


def _nl(key: str) -> int:
    from mindsearch.indexes import faiss_index as fi

    return fi.ivf_nlist(key)


# ------------------------------------------------------------------------------------------ report
COLUMNS = [("n", "N", "{:>8}"), ("method", "method", "{:<6}"), ("key", "index", "{:<12}"),
           ("params", "params", "{:<14}"), ("build_s", "build s", "{:>8}"), ("build_vps", "vec/s", "{:>8}"),
           ("cold1_ms", "cold1 ms", "{:>9}"), ("warm1_p50_ms", "1q p50", "{:>8}"), ("warm1_p99_ms", "1q p99", "{:>8}"),
           ("cold300_ms", "cold300", "{:>9}"), ("warm300_p50_ms", "300q p50", "{:>9}"),
           ("warm300_p99_ms", "300q p99", "{:>9}"), ("recall_brain", "R@16 brain", "{:>10}"),
           ("recall_self", "R@16 self", "{:>9}"), ("speedup1", "x1", "{:>6}"), ("speedup300", "x300", "{:>6}"),
           ("coll_overhead1", "coll/bare1", "{:>10}"), ("coll_overhead300", "coll/b300", "{:>9}"),
           ("engine_warm1_p50_ms", "engine1 ms", "{:>10}"), ("engine_overhead1", "eng/bare1", "{:>9}")]


def table(rows: list[dict]) -> str:
    def fmt(v):
        if isinstance(v, dict):
            return ",".join(f"{k}={x}" for k, x in v.items()) or "-"
        return "-" if v is None else str(v)

    lines = ["  ".join(f.format(h) for _, h, f in COLUMNS)]
    for r in rows:
        lines.append("  ".join(f.format(fmt(r.get(k))) for k, _, f in COLUMNS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_search", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,73000,1000000", help="comma-separated collection sizes")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=300, help="brain-style evaluation queries (and as many for tuning)")
    ap.add_argument("--ann", default="ivf", help="ivf | hnsw | a faiss factory string")
    ap.add_argument("--nlist-1m", type=int, default=2048, help="IVF lists at >= 1M vectors (build time on 2 cores)")
    ap.add_argument("--target", type=float, default=0.96, help="recall@16 the ANN parameter is tuned to (tuning set)")
    ap.add_argument("--threads", type=int, default=1, help="faiss threads for searching")
    ap.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per warm-latency measurement (at most)")
    ap.add_argument("--collection-max", type=int, default=100_000, help="measure Collection overhead up to this N")
    ap.add_argument("--quick", action="store_true", help="small smoke run (sizes 5000,20000, 100 queries)")
    ap.add_argument("--out", type=Path, default=None, help="write results as JSON")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.budget = "5000,20000", min(args.queries, 100), 2.0
    import faiss

    sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    synth = Synth(args.dim, args.seed)
    load0 = os.getloadavg()
    rows: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        for n in sizes:
            rows += bench_size(n, args, synth, faiss, Path(tmp))
    report = {
        "benchmark": "mindsearch search", "k": K, "dim": args.dim, "queries": args.queries,
        "machine": machine(load0),
        "threads": {"search": args.threads, "build": args.build_threads},
        "versions": {"faiss": faiss.__version__, "numpy": np.__version__},
        "data": {"rank": RANK, "clusters": N_CLUSTERS, "brain_query": "normalise(0.5 x + n), n orthogonal to "
                 "span(mean, U), |n| = 1; x held out", "seed": args.seed},
        "ann_target_recall_tuning": args.target, "elapsed_s": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    print(table(rows))
    print(f"search threads {args.threads}; times in ms (300q = whole batch)")
    write_report(report, args.out)
    return 0


def machine(load0) -> dict:
    """The machine record of a benchmark report: figures mean little without the load beside them."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "loadavg_start": [round(v, 2) for v in load0], "loadavg_end": [round(v, 2) for v in os.getloadavg()]}


def write_report(report: dict, out: Path | None) -> None:
    """Print the machine line and write the JSON report (shared by the benchmarks)."""
    m = report["machine"]
    print(f"machine: {m['cpus']} CPUs, load {m['loadavg_start']} -> {m['loadavg_end']}")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
