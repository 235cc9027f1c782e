"""Faults an index must survive (issue 10): hostile manifests and names, two writers, readers during
builds, kill -9 at chosen points of a write, injected filters, and a seeded fuzz of the manifest reader.

Each case asserts the exit code, the one ``error: <file>: ...`` line, and that nothing was lost."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
faiss = pytest.importorskip("faiss")
faiss.omp_set_num_threads(1)

from click.testing import CliRunner  # noqa: E402

from mindsearch.cli.main import cli  # noqa: E402
from mindsearch.engine import Engine  # noqa: E402
from mindsearch.indexes.errors import InputError  # noqa: E402

D = 8
SPACE = {"name": "precomputed:ViT-L-14", "model": "ViT-L-14", "layer": "final", "pooling": "self",
         "weights": "unknown"}  # what `index build --embeddings` records by default


def layout(root, sizes=(40, 40, 40), dtype=np.float32, seed=0):
    """A clip-retrieval layout (float32 by default: what many users have)."""
    rng = np.random.default_rng(seed)
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    for k, n in enumerate(sizes):
        np.save(root / "img_emb" / f"img_emb_{k}.npy", rng.standard_normal((n, D)).astype(dtype))
        pq.write_table(pa.table({"image_path": [f"/img/{k}/{i}.jpg" for i in range(n)]}),
                       root / "metadata" / f"metadata_{k}.parquet")
    return root


def cli_run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def subprocess_cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "mindsearch.cli.main", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    emb = layout(base / "emb")
    engine = Engine(base / "root")
    engine.build_from_embeddings("e", emb, space=SPACE)
    np.save(base / "q.npy", np.random.default_rng(1).standard_normal((2, D)).astype(np.float32))
    return base, engine


def copy_index(built, tmp_path, name="e"):
    import shutil

    base, _ = built
    shutil.copytree(base / "root" / name, tmp_path / "root" / name)
    return tmp_path / "root"


# ------------------------------------------------------------------------------------ confined writes
@pytest.mark.parametrize("target", ["absolute", "dotdot", "outside-faiss"])
def test_manifest_cannot_make_a_build_delete_outside_faiss(built, tmp_path, target):
    root = copy_index(built, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (root / "e" / "keep.txt").write_text("keep me too")
    man = json.loads((root / "e" / "manifest.json").read_text())
    man["index"]["file"] = {"absolute": str(victim), "dotdot": "../../victim.txt",
                            "outside-faiss": "keep.txt"}[target]
    (root / "e" / "manifest.json").write_text(json.dumps(man))
    res = cli_run("index", "build", "--embeddings", built[0] / "emb", "--name", "e", "--root", root)
    one_error_line(res, "manifest.json", "index file")
    assert victim.read_text() == "keep me" and (root / "e" / "keep.txt").read_text() == "keep me too"
    res = cli_run("query", "--embedding", built[0] / "q.npy", "--index", "e", "--root", root)
    one_error_line(res, "manifest.json")


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "a/b", ".hidden", ""])
def test_names_are_checked_on_every_open(built, tmp_path, name):
    root = copy_index(built, tmp_path)
    (tmp_path / "x").mkdir()
    for args in (["index", "build", "--embeddings", built[0] / "emb", "--name", name, "--root", root],
                 ["index", "info", name, "--root", root],
                 ["index", "rm", name, "--root", root],
                 ["query", "--embedding", built[0] / "q.npy", "--index", name, "--root", root]):
        one_error_line(cli_run(*args), "invalid index name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root", "x"] and not any((tmp_path / "x").iterdir())


# ------------------------------------------------------------------------------------ validated on open
def _doctor(man, case, root):
    m = copy.deepcopy(man)
    if case == "no-dim":
        del m["dim"]
    elif case == "dim-string":
        m["dim"] = "8"
    elif case == "no-table":
        del m["table"]
    elif case == "count-negative":
        m["count"] = -1
    elif case == "index-not-dict":
        m["index"] = [1, 2]
    elif case == "ntotal-mismatch":
        m["index"]["ntotal"] = m["index"]["ntotal"] + 1
    elif case == "faiss-other-dim":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(D + 1))
        faiss.write_index(index, str(root / "e" / m["index"]["file"]))
    elif case == "faiss-other-count":  # a valid index of the right dimension: must not answer silently
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(D))
        index.add_with_ids(np.eye(D, dtype=np.float32), np.arange(D, dtype=np.int64))
        faiss.write_index(index, str(root / "e" / m["index"]["file"]))
    elif case == "faiss-garbage":
        (root / "e" / m["index"]["file"]).write_bytes(b"not faiss")
    elif case == "rows-garbage":
        (root / "e" / m["index"]["rows"]).write_bytes(b"not arrow")
    elif case == "not-json":
        return "{nope"
    elif case == "top-level-list":
        return "[]"
    return json.dumps(m)


CASES = {"no-dim": "manifest.json", "dim-string": "manifest.json", "no-table": "manifest.json",
         "count-negative": "manifest.json", "index-not-dict": "manifest.json",
         "ntotal-mismatch": ".faiss", "faiss-other-dim": ".faiss", "faiss-other-count": ".faiss",
         "faiss-garbage": ".faiss", "rows-garbage": ".arrow", "not-json": "manifest.json",
         "top-level-list": "manifest.json"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_doctored_index_gets_one_error_line_naming_the_file(built, tmp_path, case):
    root = copy_index(built, tmp_path)
    man = json.loads((root / "e" / "manifest.json").read_text())
    (root / "e" / "manifest.json").write_text(_doctor(man, case, root))
    res = cli_run("query", "--embedding", built[0] / "q.npy", "--index", "e", "--root", root)
    one_error_line(res, CASES[case])


def test_lance_rows_disagreeing_with_manifest_refuse_a_write(built, tmp_path):
    root = copy_index(built, tmp_path)
    man = json.loads((root / "e" / "manifest.json").read_text())
    man["count"] += 5
    (root / "e" / "manifest.json").write_text(json.dumps(man))
    res = cli_run("index", "build", "--embeddings", built[0] / "emb", "--name", "e", "--root", root)
    one_error_line(res, "lance", "the manifest says")


def test_deleted_lance_fragment_is_one_error_naming_the_table(built, tmp_path):
    root = copy_index(built, tmp_path)
    data = root / "e" / "lance" / "images.lance" / "data"
    next(data.iterdir()).unlink()
    assert cli_run("query", "--embedding", built[0] / "q.npy", "--index", "e", "--root", root).exit_code == 0
    res = cli_run("index", "build", "--embeddings", built[0] / "emb", "--name", "e", "--root", root,
                  "--kind", "hnsw")
    one_error_line(res, "images.lance", "cannot read the table")


def test_dimension_mismatch_names_the_manifest(built, tmp_path):
    np.save(tmp_path / "q9.npy", np.ones((1, D + 1), np.float32))
    res = cli_run("query", "--embedding", tmp_path / "q9.npy", "--index", "e", "--root", built[0] / "root")
    one_error_line(res, "manifest.json", "dimensions")


def test_fuzzed_manifests_only_ever_raise_input_errors(built, tmp_path):
    """Seeded fuzz: random deletions, type swaps and values in a valid manifest (runs in about a second)."""
    from mindsearch.indexes.reader import Reader

    root = copy_index(built, tmp_path)
    good = json.loads((root / "e" / "manifest.json").read_text())
    rng = np.random.default_rng(0)
    values = [None, -1, 0, 1, 2**40, "x", "../../etc", "/abs", [], [1], {}, {"file": "faiss/x"}, True, 1.5]

    def paths(obj, prefix=()):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield prefix + (k,)
                yield from paths(v, prefix + (k,))

    every = list(paths(good))
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(300):
        m = copy.deepcopy(good)
        for _ in range(int(rng.integers(1, 4))):
            p = every[int(rng.integers(len(every)))]
            parent = m
            try:
                for k in p[:-1]:
                    parent = parent[k]
                if rng.random() < 0.3:
                    del parent[p[-1]]
                else:
                    parent[p[-1]] = values[int(rng.integers(len(values)))]
            except (KeyError, TypeError):
                continue
        (root / "e" / "manifest.json").write_text(json.dumps(m))
        try:
            Reader(root, "e").search(np.ones((1, D), np.float32), 3)
            outcomes["ok"] += 1
        except InputError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100 and sum(outcomes.values()) == 300


# ------------------------------------------------------------------------------------ concurrency
def test_two_concurrent_writers_give_exact_counts(tmp_path):
    emb = layout(tmp_path / "emb", sizes=(200,) * 4)
    cmd = [sys.executable, "-m", "mindsearch.cli.main", "index", "build", "--embeddings", str(emb),
           "--name", "e", "--root", str(tmp_path / "root")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    engine = Engine(tmp_path / "root")
    man = engine.open("e").manifest
    assert man["count"] == 800 and man["index"]["ntotal"] == 800
    table = engine.reader("e").table()
    ids = table.to_arrow().column("id").to_numpy()
    assert len(ids) == len(np.unique(ids)) == 800


def test_second_writer_waits_then_fails_with_a_message(built, tmp_path, monkeypatch):
    from mindsearch.indexes.lock import WriterLock

    root = copy_index(built, tmp_path)
    monkeypatch.setenv("MINDSEARCH_LOCK_TIMEOUT", "0.3")
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom mindsearch.indexes.lock import WriterLock\n"
                             f"held = WriterLock({str(root / 'e')!r}).acquire(); print('held', flush=True); time.sleep(30)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        before = (root / "e" / "manifest.json").read_text()
        res = cli_run("index", "build", "--embeddings", built[0] / "emb", "--name", "e", "--root", root)
        one_error_line(res, "another process", f"pid {proc.pid}")
        assert (root / "e" / "manifest.json").read_text() == before
    finally:
        proc.kill()
        proc.wait()
    assert WriterLock(root / "e").acquire(1).held  # the kernel freed the dead holder's lock


def test_threads_querying_one_engine_while_the_index_is_rebuilt(built, tmp_path, monkeypatch):
    from mindsearch.indexes import collection

    monkeypatch.setattr(collection, "RETIRE_GRACE_S", 0.5)
    root = copy_index(built, tmp_path)
    engine = Engine(root)
    q = np.random.default_rng(2).standard_normal((1, D)).astype(np.float32)
    first = engine.search("e", q, k=5)[0]
    seen, errors, stop = set(), [], threading.Event()

    def query():
        while not stop.is_set():
            try:
                hits = engine.search("e", q, k=5)[0]
                seen.add((hits[0].index_version, tuple(h.id for h in hits)))
            except Exception as exc:  # noqa: BLE001  (any failure is the bug under test)
                errors.append(repr(exc))

    threads = [threading.Thread(target=query) for _ in range(4)]
    for t in threads:
        t.start()
    writer = Engine(root)
    versions = []
    try:
        rng = np.random.default_rng(3)
        for i, kind in enumerate(("hnsw", "flat", "IVF4,Flat")):
            with writer.open("e") as coll:
                # rows pointing away from the query: new versions, the same top 5
                coll.add({"embedding": -q + 0.01 * rng.standard_normal((10, D))}, shard=f"away-{i}")
                coll.finish_shard(f"away-{i}")
                versions.append(coll.build_index(kind, params={"nprobe": 4})["table_version"])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    ids = {s[1] for s in seen}
    assert ids == {tuple(h.id for h in first)}  # every version answers the same exact top 5
    assert {s[0] for s in seen} <= set(versions) | {first[0].index_version}
    assert len({s[0] for s in seen}) >= 2  # the readers moved to a new version without a restart


# ------------------------------------------------------------------------------------ crashes
@pytest.mark.parametrize("point", ["create-after-table", "add-after-append", "finish-before-commit",
                                   "build-before-commit"])
def test_kill_9_at_a_write_point_then_rerun_is_exact(tmp_path, point):
    emb = layout(tmp_path / "emb")
    args = ["index", "build", "--embeddings", emb, "--name", "e", "--root", tmp_path / "root"]
    crashed = subprocess_cli(*args, env={"MINDSEARCH_TEST_CRASH": point})
    assert crashed.returncode == -9, crashed.stderr
    (tmp_path / "root" / "e" / ".manifest.json.stale.tmp").mkdir(exist_ok=True)  # a killed writer's temp
    again = cli_run(*args)
    assert again.exit_code == 0, again.output
    engine = Engine(tmp_path / "root")
    man = engine.open("e").manifest
    assert man["count"] == 120 and man["index"]["ntotal"] == 120
    ids = engine.reader("e").table().to_arrow().column("id").to_numpy()
    assert sorted(ids.tolist()) == list(range(120))
    assert not [p for p in (tmp_path / "root" / "e").rglob("*.tmp")]
    named = {man["index"]["file"], man["index"]["rows"]} | {r["file"] for r in man["retired"]}
    assert {f"faiss/{p.name}" for p in (tmp_path / "root" / "e" / "faiss").iterdir()} <= named


# ------------------------------------------------------------------------------------ filters, output
def test_filter_injection_is_a_plain_key(built):
    base, _ = built
    res = cli_run("query", "--image", "nope' OR id >= 0 OR key = 'y", "--index", "e", "--store", "s",
                  "--root", base / "root")
    one_error_line(res, "no image with key")
    from mindsearch.indexes import table as tbl

    t = Engine(base / "root").reader("e").table()
    assert t.count_rows(f"key = {tbl.sql_string(chr(39) + ' OR id >= 0 OR key = ' + chr(39))}") == 0
    assert Engine(base / "root").find_key("e", "/img/1/3.jpg") == 43


def test_float32_clip_retrieval_shards_build(built):
    base, engine = built  # the module fixture's layout is float32
    assert engine.open("e").manifest["count"] == 120


def test_json_output_into_a_closed_pipe_exits_0_quietly(built):
    base, _ = built
    cmd = (f"{sys.executable} -m mindsearch.cli.main query --embedding {base / 'q.npy'} --index e "
           f"--root {base / 'root'} --k 50 --json | head -c 10; exit ${{PIPESTATUS[0]}}")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "" and len(proc.stdout) == 10
