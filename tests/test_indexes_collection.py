"""indexes.collection / indexes.table: round trip, incremental add, resume, failed builds, re-rank."""

from __future__ import annotations

import json

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")
pytest.importorskip("lancedb")
faiss.omp_set_num_threads(1)

from mindsearch.indexes import faiss_index as fi  # noqa: E402
from mindsearch.indexes import collection, recall, table as tbl  # noqa: E402
from mindsearch.indexes.collection import Collection  # noqa: E402
from mindsearch.indexes.errors import InputError  # noqa: E402

D = 16
SPACE = {"name": "sim", "model": "sim-v1", "layer": "tokens", "weights": "x", "tokens": 4, "dim": D}


def _vecs(seed, n, d=D):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _make(tmp_path, shards=2, n=50, **kw):
    c = Collection.create(tmp_path, "imgs", SPACE, D, **kw)
    for s in range(shards):
        c.add({"embedding": _vecs(s, n), "key": [f"s{s}/{i}.jpg" for i in range(n)]}, shard=f"{s:05d}")
        c.finish_shard(f"{s:05d}")
    return c


def test_round_trip_and_exact_agrees_with_numpy(tmp_path):
    c = _make(tmp_path)
    rec = c.build_index()
    assert rec["key"] == "Flat" and rec["exact"] and rec["ntotal"] == 100
    x = _unit(np.concatenate([_vecs(0, 50), _vecs(1, 50)]))
    q = _vecs(99, 5)
    ids, scores = c.search(q, 7)
    sims = _unit(q) @ x.T
    ref = np.argsort(-sims, axis=1)[:, :7]
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, ref, axis=1), atol=1e-5)
    # reopen from disk: same answer, attributable to a table version and an index file
    c2 = Collection.open(tmp_path, "imgs")
    res = c2.search(q, 7)
    np.testing.assert_array_equal(res.ids, ref)
    assert res.info["table"]["version"] == c2.manifest["table"]["version"]
    assert res.info["index"]["file"] == rec["file"] and res.info["collection"] == "imgs"
    rows = c2.fetch(ids[0, :3], ["key", "shard"])
    assert rows.column("id").to_pylist() == ids[0, :3].tolist()
    assert all(k.startswith(f"s{i // 50}/") for k, i in zip(rows.column("key").to_pylist(), ids[0, :3]))
    man = json.loads((tmp_path / "imgs" / "manifest.json").read_text())
    assert man["count"] == 100 and man["shards"]["finished"] == ["00000", "00001"]
    assert man["space"] == SPACE and man["dim"] == D


def test_incremental_add_updates_index(tmp_path, monkeypatch):
    c = _make(tmp_path, shards=1)
    c.build_index()
    old_file = c.manifest["index"]["file"]
    new = _vecs(7, 10)
    c.add({"embedding": new}, shard="extra")
    c.finish_shard("extra")
    assert c.count == 60 and c.manifest["index"]["ntotal"] == 60
    # The replaced file is retired, not deleted: a reader may still be opening it.
    assert (tmp_path / "imgs" / old_file).exists()
    assert old_file in [r["file"] for r in c.manifest["retired"]]
    monkeypatch.setattr(collection, "RETIRE_GRACE_S", 0.0)
    c.record_recall("x", {})  # any later commit by a writer removes files past their grace
    c.add({"embedding": _vecs(8, 2)}, shard="extra2")
    c.finish_shard("extra2")
    assert not (tmp_path / "imgs" / old_file).exists()
    assert [p.name for p in (tmp_path / "imgs" / "faiss").iterdir()] == [c.manifest["index"]["file"].split("/")[1]]
    assert c.manifest["index"]["rows"] is None  # readers fetch rows from LanceDB until the next build
    c2 = Collection.open(tmp_path, "imgs")
    ids, scores = c2.search(new, 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(50, 60))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_resume_after_interrupted_shard(tmp_path):
    c = _make(tmp_path, shards=2)
    c.add({"embedding": _vecs(2, 50)}, shard="00002")  # crash: no finish_shard
    del c
    c = Collection.open(tmp_path, "imgs")
    assert c.finished_shards == ["00000", "00001"] and c.count == 100
    assert c.table.count_rows() == 100  # reads are pinned to the committed version
    # resume: redo shard 2 from scratch, then shard 3
    for s in (2, 3):
        sid = f"{s:05d}"
        if sid in c.finished_shards:
            continue
        c.add({"embedding": _vecs(s, 50)}, shard=sid)
        c.finish_shard(sid)
    c.build_index()
    c = Collection.open(tmp_path, "imgs")
    ids, _ = tbl.vectors(c.table)
    assert c.count == 200 and len(ids) == 200 and len(np.unique(ids)) == 200
    assert sorted(ids.tolist()) == list(range(200))
    assert c.table.count_rows("shard = '00002'") == 50


def test_failed_build_leaves_previous_version(tmp_path, monkeypatch):
    c = _make(tmp_path)
    rec = c.build_index("flat")
    before = (tmp_path / "imgs" / "manifest.json").read_text()
    q = _vecs(5, 3)
    ref_ids, _ = c.search(q, 5)
    with pytest.raises(InputError, match="not a valid faiss index key"):
        c.build_index("NoSuchIndex,Flat")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fi, "save_index", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        c.build_index("hnsw")
    monkeypatch.undo()
    assert (tmp_path / "imgs" / "manifest.json").read_text() == before
    assert sorted(p.name for p in (tmp_path / "imgs" / "faiss").iterdir()) == sorted(
        f.split("/")[1] for f in (rec["file"], rec["rows"]))
    c2 = Collection.open(tmp_path, "imgs")
    assert c2.manifest["index"]["key"] == "Flat"
    np.testing.assert_array_equal(c2.search(q, 5).ids, ref_ids)


def test_two_stage_rerank_picks_token_best(tmp_path):
    T = 4
    rng = np.random.default_rng(3)
    n = 40
    tokens = rng.standard_normal((n, T, D)).astype(np.float32)
    c = Collection.create(tmp_path, "tok", SPACE, D, tokens_shape=(T, D))
    c.add({"tokens": tokens}, shard="0")  # pooled vector = token 0
    c.finish_shard("0")
    c.build_index()
    # query: pooled vector closest to item 0, but full tokens equal to item 5's
    target = 5
    pooled = _unit(tokens[:, 0])
    q_pool = pooled[0] * 1.0 + 0.9 * pooled[target]
    q_tok = tokens[target].copy()
    q_tok[0] = q_pool
    ids_pool, _ = c.search(q_pool[None], 16)
    assert ids_pool[0, 0] == 0 and target in ids_pool[0]
    res = c.search(q_pool[None], 1, rerank_tokens=q_tok[None])
    assert res.ids[0, 0] == target
    flat = _unit(tokens.reshape(n, -1))
    assert res.scores[0, 0] == pytest.approx(float(flat[target] @ _unit(q_tok.reshape(1, -1))[0]), abs=1e-5)
    assert res.info["rerank"] == {"column": "tokens", "shortlist": 16}


def test_recall_recorded_in_manifest(tmp_path):
    c = _make(tmp_path)
    c.build_index("IVF4,Flat", params={"nprobe": 4})
    q = _vecs(11, 20)
    res = recall.measure_collection(c, q, k=5, label="brain-heldout", source="test", n_single=5, repeats=1)
    assert res["recall@5"] == 1.0  # nprobe = nlist: exhaustive
    man = Collection.open(tmp_path, "imgs").manifest
    assert man["recall"]["brain-heldout"]["recall@5"] == 1.0
    assert man["recall"]["brain-heldout"]["params"]["nprobe"] == 4
    assert man["recall"]["brain-heldout"]["table_version"] == man["table"]["version"]


def test_bad_input_names_the_path(tmp_path):
    with pytest.raises(InputError) as e:
        Collection.open(tmp_path, "missing")
    assert e.value.path == str(tmp_path / "missing" / "manifest.json")
    c = _make(tmp_path, shards=1)
    with pytest.raises(InputError, match="dimension mismatch") as e:
        c.add({"embedding": _vecs(0, 3, D + 1)}, shard="x")
    assert e.value.path == str(tmp_path / "imgs")
    bad = _vecs(0, 3)
    bad[1, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        c.add({"embedding": bad}, shard="x")
    with pytest.raises(InputError, match="already finished"):
        c.add({"embedding": _vecs(0, 3)}, shard="00000")
    c.build_index()
    with pytest.raises(InputError, match="dimension mismatch") as e:
        c.search(_vecs(0, 2, D + 2), 3)
    assert e.value.path == str(tmp_path / "imgs" / "manifest.json")
    with pytest.raises(InputError, match="NaN"):
        c.search(np.full((1, D), np.nan), 3)
    with pytest.raises(InputError, match="already exists"):
        Collection.create(tmp_path, "imgs", SPACE, D)
    (tmp_path / "imgs" / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        Collection.open(tmp_path, "imgs")


def test_brain_store_collection_replaces_rows_by_id(tmp_path):
    from mindsearch.indexes.reader import Reader

    extra = {"subject": "int32", "trial": "int64", "run_id": "string"}
    c = Collection.create(tmp_path, "brains", SPACE, 2 * 3, kind="brain", extra_columns=extra)
    first = _vecs(0, 4, 6)
    c.add({"id": [10, 11, 12, 13], "embedding": first, "subject": 1, "trial": [0, 1, 2, 3], "run_id": "r1"},
          shard="s0")
    c.finish_shard("s0")
    c.build_index("flat")
    again = _vecs(1, 2, 6)  # trials 1 and 2 stored again, plus a new one
    c.add({"id": [11, 12, 14], "embedding": np.concatenate([again, _vecs(2, 1, 6)]), "subject": 1,
           "trial": [1, 2, 4], "run_id": "r2"}, shard="s1", replace=True)
    c.finish_shard("s1")
    assert c.count == 5 and c.manifest["index"]["ntotal"] == 5
    r = Reader(tmp_path, "brains")
    ids, scores = r.search(again, 1)
    assert ids[:, 0].tolist() == [11, 12]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    cols = r.columns(np.array([10, 11, 14]), ["run_id", "trial"])
    assert cols == {"run_id": ["r1", "r2", "r2"], "trial": [0, 1, 4]}
    with pytest.raises(InputError, match="repeats ids"):
        c.add({"id": [10], "embedding": first[:1]}, shard="s2")


def test_rows_file_lookups_across_batches(tmp_path):
    """Readers' memory-mapped rows: id -> tokens/key across record batches, missing ids flagged."""
    import pyarrow as pa

    from mindsearch.indexes.rows import FileRows

    rng = np.random.default_rng(0)
    size = 6
    ids = rng.permutation(40).astype(np.int64) * 3  # unsorted, sparse
    tok = rng.standard_normal((40, size)).astype(np.float32)
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("key", pa.string()),
                        pa.field("tokens", pa.list_(pa.float32(), size))])
    with pa.OSFile(str(tmp_path / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
        for s in (0, 7, 25):  # three batches of unequal size
            e = {0: 7, 7: 25, 25: 40}[s]
            w.write_batch(pa.RecordBatch.from_arrays(
                [pa.array(ids[s:e]), pa.array([f"k{i}" for i in ids[s:e]]),
                 pa.FixedSizeListArray.from_arrays(pa.array(tok[s:e].reshape(-1)), size)], schema=schema))
    rows = FileRows(tmp_path / "rows.arrow", expect_rows=40)
    want = np.array([[ids[30], 1], [ids[3], ids[10]]])  # 1 is not an id (ids are multiples of 3)
    got, found = rows.tokens(want, size)
    assert found.tolist() == [[True, False], [True, True]]
    np.testing.assert_array_equal(got[0, 0], tok[30])
    np.testing.assert_array_equal(got[1], tok[[3, 10]])
    assert rows.columns(np.array([ids[39], 1]), ["key"]) == {"key": [f"k{ids[39]}", None]}
    assert rows.find("key", f"k{ids[20]}") == ids[20] and rows.find("key", "k' OR 1=1") is None
    with pytest.raises(InputError, match="holds 40 rows"):
        FileRows(tmp_path / "rows.arrow", expect_rows=41)
