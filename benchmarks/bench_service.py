"""Service benchmark: where a brain query's time goes, from bare FAISS to the cold CLI.

    python -m benchmarks.bench_service --quick
    python -m benchmarks.bench_service --out bench_service.json     # 73k exact + 1M HNSW (long)

For each collection (synthetic 768-d CLIP-like image vectors, see benchmarks/bench_search.py;
default 73,000 with an exact Flat index = NSD's pool, and 1,000,000 with HNSW32) and for 1 and
300 brain-style queries it times:

  bare faiss       the index's own search of ready query vectors
  encode+faiss     a ridge run's encode (z-score + linear map of V voxels) then bare faiss: the floor
  engine (warm)    ``Engine.query`` with the same run and voxels, everything loaded
  http c=1 / c=8   ``POST /v1/query`` (.npy body) to a running ``mindsearch serve``, 1 or 8
                   concurrent keep-alive clients: p50, p99 and queries per second
  cli in-process   a fresh ``mindsearch query --voxels q.npy --local`` process (cold)
  cli via service  a fresh ``mindsearch query --voxels q.npy`` while the service runs
  paired           1 query: the engine and HTTP c=1 again, in alternating blocks of 20, so both
                   see the same machine load; HTTP minus engine there is the service's cost (the
                   target: at most 3 ms p50). The engine's CPU time is recorded on both sides
                   (the service's ``Server-Timing: cpu``): equal CPU with more wall time = waiting for a core.

The run is synthetic but real: a ridge run directory (config.json, model.safetensors,
zscore.safetensors) whose map sends V voxels to exactly the brain-style query vectors, so the
encode cost is a true (V x 768) product.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread, here and in the server and CLI processes started from here (they
# inherit the environment): set before numpy loads, or BLAS threads contend on a busy machine.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import http.client
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_search import Synth, machine, write_report

K = 16
SPACE = {"name": "synthetic", "model": "synthetic-clip", "layer": "final", "pooling": "self",
         "weights": "bench", "tokens": 1, "dim": 768}
TOKEN = "bench-token"


# ------------------------------------------------------------------------------------------ set-up
def make_run(path: Path, n_voxels: int, dim: int, seed: int):
    """A ridge run mapping voxels to query vectors exactly; returns (run path, voxels-from-queries fn)."""
    from mindsearch.io import save_tensors, write_json

    rs = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rs.standard_normal((n_voxels, dim)).astype(np.float32))  # (V, D), orthonormal columns
    coef = np.ascontiguousarray(basis.T)  # (D, V): voxels @ coef.T = queries when voxels = queries @ coef
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / "model.safetensors", {"coef": coef, "intercept": np.zeros(dim, np.float32)})
    ones = np.ones((1, n_voxels), np.float32)
    save_tensors(path / "zscore.safetensors", {"mean": 0 * ones, "std": ones, "sessions": np.array([1]),
                                               "global_mean": 0 * ones[0], "global_std": ones[0]})
    write_json(path / "config.json", {"format": "mindsearch-run/1", "model": "ridge", "subject": 1,
                                      "n_voxels": n_voxels, "subjects": {"1": n_voxels}, "space": SPACE,
                                      "target_shape": [1, dim]})
    return path, lambda q: (q @ coef).astype(np.float32)


def make_index(root: Path, name: str, x: np.ndarray, kind: str, params: dict) -> float:
    from mindsearch.indexes.collection import Collection

    coll = Collection.create(root, name, SPACE, x.shape[1])
    shard = 200_000
    for i, s in enumerate(range(0, len(x), shard)):
        coll.add({"embedding": x[s:s + shard]}, shard=str(i))
        coll.finish_shard(str(i))
    t = time.perf_counter()
    coll.build_index(kind, params=params)
    return time.perf_counter() - t


# ------------------------------------------------------------------------------------------ timing
def timed(fn, reps: int, budget_s: float) -> np.ndarray:
    out, end = [], time.perf_counter() + budget_s
    for i in range(reps):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
        if time.perf_counter() > end and len(out) >= 3:
            break
    return np.asarray(out) * 1e3


def summary(ms: np.ndarray, rows: int) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "n": int(len(ms)), "qps": round(rows * 1e3 / float(np.mean(ms)), 1)}


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, np.float32), allow_pickle=False)
    return buf.getvalue()


def server_timing(response) -> dict:
    """The service's ``Server-Timing`` metrics in ms: ``{"engine": wall, "cpu": CPU of its thread}``."""
    out = {"engine": float("nan"), "cpu": float("nan")}
    for part in (response.getheader("Server-Timing") or "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


def post(conn, path: str, body: bytes) -> tuple[float, dict]:
    """One ``POST /v1/query`` on a keep-alive connection: (seconds, its Server-Timing metrics)."""
    t = time.perf_counter()
    conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {TOKEN}",
                                                   "Content-Type": "application/x-npy"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
    return time.perf_counter() - t, server_timing(r)


def paired(port: int, body: bytes, index: str, engine_call, rounds: int, per: int, budget_s: float) -> dict:
    """The warm in-process engine and HTTP c=1 in alternating blocks of ``per`` queries: both see
    the same machine load, so their difference is the service's cost even while the load moves
    (timed one after the other, as above, the two can be seconds and a load change apart)."""
    path = f"/v1/query?k={K}&index={index}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    engine_ms, engine_cpu, http_ms, server_ms, server_cpu = [], [], [], [], []
    end = time.perf_counter() + budget_s
    for _ in range(rounds):
        for _ in range(per):
            t, c = time.perf_counter(), time.thread_time()
            engine_call()
            engine_ms.append(time.perf_counter() - t)
            engine_cpu.append(time.thread_time() - c)
        for _ in range(per):
            seconds, st = post(conn, path, body)
            http_ms.append(seconds)
            server_ms.append(st["engine"] / 1e3)
            server_cpu.append(st["cpu"] / 1e3)
        if time.perf_counter() > end:
            break
    conn.close()

    def p50(x):
        return round(float(np.nanpercentile(np.asarray(x) * 1e3, 50)), 3)

    out = {"engine_p50_ms": p50(engine_ms), "http_c1_p50_ms": p50(http_ms), "server_engine_p50_ms": p50(server_ms),
           "engine_cpu_p50_ms": p50(engine_cpu), "server_engine_cpu_p50_ms": p50(server_cpu), "n": len(http_ms),
           "block": per}
    out["gap_ms"] = round(out["http_c1_p50_ms"] - out["engine_p50_ms"], 3)
    return out


def http_bench(port: int, body: bytes, rows: int, clients: int, reps: int, budget_s: float, index: str) -> dict:
    """``clients`` threads, each with its own keep-alive connection, posting the same query."""
    path = f"/v1/query?k={K}&index={index}"
    lat: list[float] = []
    inside: list[float] = []  # the engine's ms inside the server (its Server-Timing header)
    lock = threading.Lock()
    end = time.perf_counter() + budget_s
    per_client = max(1, reps // clients)

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, server = [], []
        for _ in range(per_client):
            seconds, st = post(conn, path, body)
            mine.append(seconds)
            server.append(st["engine"])
            if time.perf_counter() > end and len(mine) >= 3:
                break
        conn.close()
        with lock:
            lat.extend(mine)
            inside.extend(server)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "n": int(len(ms)), "qps": round(len(ms) * rows / wall, 1),
            "server_engine_p50_ms": round(float(np.nanpercentile(inside, 50)), 3)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINDSEARCH_")}
    return dict(env, MINDSEARCH_HOME=str(home))


def cli_times(args_list: list[str], home: Path, reps: int) -> dict:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "mindsearch.cli.main", *args_list], env=env_for(home),
                           capture_output=True, text=True, timeout=600)
        times.append(time.perf_counter() - t)
        if p.returncode != 0:
            raise RuntimeError(p.stderr)
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3), "n": reps}


def import_profile(home: Path) -> dict:
    """Where a cold in-process query's start-up goes: import times of the heavy modules."""
    code = ("import time, json; out = {}\n"
            "for m in ('numpy', 'mindsearch.cli.main', 'torch', 'pyarrow', 'lancedb', 'faiss', 'pandas'):\n"
            "    t = time.perf_counter(); __import__(m); out[m] = round(time.perf_counter() - t, 3)\n"
            "print(json.dumps(out))")
    p = subprocess.run([sys.executable, "-c", code], env=env_for(home), capture_output=True, text=True, timeout=300)
    return json.loads(p.stdout) if p.returncode == 0 else {"error": p.stderr[-300:]}


# ------------------------------------------------------------------------------------------ one size
def bench_size(n: int, kind: str, params: dict, args, synth: Synth, tmp: Path) -> list[dict]:
    from mindsearch.engine import Engine
    from mindsearch.runs import open_run

    queries = synth.brain_queries(synth.images(300, seed=2000 + n), seed=3)
    root = tmp / f"idx{n}"
    name = f"synthetic-{n}"
    built = root / name / "build_seconds.txt"
    if built.is_file():  # --work: an index a previous run built (same seed and sizes)
        build_s = float(built.read_text())
        print(f"[{n}] reusing the {kind} index in {root} (built in {build_s:.0f} s)", flush=True)
    else:
        print(f"[{n}] generating {n} x {args.dim} vectors, building {kind} ...", flush=True)
        x = synth.images(n, seed=1000 + n)
        build_s = make_index(root, name, x, kind, params)
        built.write_text(f"{build_s:.3f}")
        del x
    run_path, to_voxels = make_run(tmp / f"run{n}", args.voxels, args.dim, seed=n)
    voxels = to_voxels(queries)
    engine = Engine(root)
    run = open_run(run_path)
    coll = engine.open(name)
    index = coll.index
    from mindsearch.indexes import faiss_index as fi

    def encode_search(q):
        emb = run.encode(q, session=1, outputs=("disjointed",))["disjointed"][:, 0]
        return fi.search(index, fi.as_vectors(emb, what="queries"), K)

    # sanity: the engine finds what bare faiss finds for the same (encoded) queries
    ids_bare, _ = fi.search(index, fi.as_vectors(queries[:5], what="queries"), K)
    ids_engine = [[h.id for h in b] for b in engine.query(name, voxels[:5], run, k=K, session=1)]
    agree = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids_bare, ids_engine)]))
    print(f"[{n}] engine vs bare faiss top-{K} overlap {agree:.3f}", flush=True)

    rows = []
    b = args.budget
    for nq in (1, 300):
        q, v = queries[:nq], voxels[:nq]
        reps = 200 if nq == 1 else 10
        row = {"n": n, "index": coll.manifest["index"]["key"], "params": params, "queries": nq,
               "build_s": round(build_s, 1), "overlap_engine_bare": round(agree, 3)}
        qv = fi.as_vectors(q, what="queries")
        row["bare_faiss"] = summary(timed(lambda i: fi.search(index, qv, K), reps, b), nq)
        row["encode_faiss"] = summary(timed(lambda i: encode_search(v), reps, b), nq)
        row["engine"] = summary(timed(lambda i: engine.query(name, v, run, k=K, session=1), reps, b), nq)
        if nq == 1:  # where the engine's time goes beyond encode + faiss
            ids = fi.search(index, qv, K)[0]
            row["engine_open_ms"] = summary(timed(lambda i: engine.open(name), 20, b), 1)["p50_ms"]
            row["fetch_paths_ms"] = summary(timed(lambda i: coll.fetch(ids, ["key"]), 20, b), 1)["p50_ms"]
        rows.append(row)
        print(f"[{n}] {nq} queries: bare {row['bare_faiss']['p50_ms']} ms, encode+faiss "
              f"{row['encode_faiss']['p50_ms']} ms, engine {row['engine']['p50_ms']} ms"
              + (f" (Engine.open {row['engine_open_ms']} ms, path fetch {row['fetch_paths_ms']} ms)"
                 if nq == 1 else ""), flush=True)

    # HTTP and the cold CLI against a real `mindsearch serve`.
    home = tmp / f"home{n}"
    home.mkdir(exist_ok=True)
    np.save(tmp / "q1.npy", voxels[:1])
    port = free_port()
    log = open(tmp / f"serve{n}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mindsearch.cli.main", "serve", "--root", str(root), "--run",
                             str(run_path), "--port", str(port), "--token", TOKEN],
                            env=env_for(home), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not start: {(tmp / f'serve{n}.log').read_text()}")
                time.sleep(0.3)
        for row in rows:
            nq = row["queries"]
            body = npy(voxels[:nq])
            http_bench(port, body, nq, 1, 3, b, name)  # warm the connection path
            for c in (1, 8):
                row[f"http_c{c}"] = http_bench(port, body, nq, c, 200 if nq == 1 else 16, b, name)
            print(f"[{n}] {nq} queries over HTTP: c=1 p50 {row['http_c1']['p50_ms']} ms (engine inside the server {row['http_c1']['server_engine_p50_ms']} ms), "
                  f"c=8 p50 {row['http_c8']['p50_ms']} ms ({row['http_c8']['qps']} q/s)", flush=True)
        one = rows[0]
        one["paired"] = paired(port, npy(voxels[:1]), name, lambda: engine.query(name, voxels[:1], run, k=K, session=1),
                               rounds=10, per=20, budget_s=2 * b)
        pr = one["paired"]
        print(f"[{n}] 1 query, engine and HTTP c=1 in alternating blocks: engine {pr['engine_p50_ms']} ms "
              f"(CPU {pr['engine_cpu_p50_ms']}), HTTP {pr['http_c1_p50_ms']} ms (engine inside the server "
              f"{pr['server_engine_p50_ms']} ms, CPU {pr['server_engine_cpu_p50_ms']}): HTTP adds {pr['gap_ms']} ms",
              flush=True)
        common = ["query", "--voxels", str(tmp / "q1.npy"), "--k", str(K), "--index", name, "--session", "1"]
        rows[0]["cli_via_service"] = cli_times(common, home, args.cli_reps)
        rows[0]["cli_in_process"] = cli_times(common + ["--local", "--root", str(root), "--run", str(run_path)],
                                              home, args.cli_reps)
        print(f"[{n}] cold CLI: in-process {rows[0]['cli_in_process']['median_s']} s, via the service "
              f"{rows[0]['cli_via_service']['median_s']} s", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return rows


# ------------------------------------------------------------------------------------------ report
def table(rows: list[dict]) -> str:
    head = ["N", "index", "q", "bare faiss", "encode+faiss", "engine", "http c=1", "http c=1 p99", "http c=8",
            "c=8 p99", "c=8 q/s", "cli local s", "cli svc s", "paired gap"]
    lines = ["  ".join(f"{h:>12}" for h in head)]
    for r in rows:
        cells = [r["n"], r["index"], r["queries"], r["bare_faiss"]["p50_ms"], r["encode_faiss"]["p50_ms"],
                 r["engine"]["p50_ms"], r.get("http_c1", {}).get("p50_ms", "-"), r.get("http_c1", {}).get("p99_ms", "-"),
                 r.get("http_c8", {}).get("p50_ms", "-"), r.get("http_c8", {}).get("p99_ms", "-"),
                 r.get("http_c8", {}).get("qps", "-"), r.get("cli_in_process", {}).get("median_s", "-"),
                 r.get("cli_via_service", {}).get("median_s", "-"), r.get("paired", {}).get("gap_ms", "-")]
        lines.append("  ".join(f"{str(c):>12}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_service", description=__doc__.splitlines()[0])
    ap.add_argument("--exact-n", type=int, default=73_000, help="collection size searched exactly (NSD's pool)")
    ap.add_argument("--hnsw-n", type=int, default=1_000_000, help="collection size searched with HNSW32")
    ap.add_argument("--ef-search", type=int, default=512, help="HNSW efSearch (the library's default)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--voxels", type=int, default=15724, help="voxels per trial (NSD subject 1's nsdgeneral)")
    ap.add_argument("--budget", type=float, default=10.0, help="seconds per measurement (at most)")
    ap.add_argument("--cli-reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke run: 20,000 exact, 100,000 HNSW, 4,000 voxels")
    ap.add_argument("--out", type=Path, default=None, help="write results as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None,
                    help="keep indexes here and reuse them on the next run (the 1M HNSW build takes ~25 min)")
    args = ap.parse_args(argv)
    if args.quick:
        args.exact_n, args.hnsw_n, args.voxels, args.budget, args.cli_reps = 20_000, 100_000, 4000, 3.0, 2
    synth = Synth(args.dim, args.seed)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_service_") as scratch:
        tmp = args.work or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        profile = import_profile(tmp)
        for n, kind, params in ((args.exact_n, "flat", {}), (args.hnsw_n, "HNSW32", {"efSearch": args.ef_search})):
            if n:
                rows += bench_size(n, kind, params, args, synth, tmp)
    report = {"benchmark": "mindsearch service", "k": K, "dim": args.dim, "voxels": args.voxels,
              "machine": machine(load0),
              "import_seconds": profile, "elapsed_s": round(time.perf_counter() - t0, 1), "rows": rows}
    print(table(rows))
    print(f"p50 in ms unless marked; q/s = query rows per second; cold CLI: median seconds of a fresh process "
          f"(1 query); paired gap: HTTP c=1 minus the in-process engine, timed in alternating blocks. "
          f"Imports in a fresh process (s): {profile}")
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
