"""A whole index (manifest + FAISS files + table) under one object-store URI (indexes/remote.py).

The life cycle runs twice: on ``memory://`` (obstore's in-process store; the table in a local folder,
as LanceDB keeps no memory table between connections) for speed, and on a real S3-compatible server
(moto on 127.0.0.1, marked slow) where the table lives under the same URI. What is checked: a remote
build answers exactly like a local build of the same rows; FAISS files are downloaded once into the
cache; a warm reader sees a new version after its ttl; of two writers of one version the second
gets a clear error and the first one's version stays whole; a manifest naming a file outside the
index is refused before anything is downloaded.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("lancedb")
pytest.importorskip("faiss")

sys.path.insert(0, str(Path(__file__).parent))

from mindsearch.indexes.errors import InputError  # noqa: E402

SPACE = {"name": "t", "model": "m", "layer": "final", "pooling": "self", "weights": "w", "tokens": 1, "dim": 8}
_roots = itertools.count()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A fresh $MINDSEARCH_HOME: the cache of remote files starts empty."""
    monkeypatch.setenv("MINDSEARCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def s3server():
    pytest.importorskip("moto")
    pytest.importorskip("boto3")
    from s3server import aws_environment, s3_server

    with s3_server() as env, aws_environment(env):
        yield env


@pytest.fixture(params=["memory", pytest.param("s3", marks=pytest.mark.slow)])
def store(request, tmp_path):
    """``(root URI, table_uri)``: a fresh root on each kind of store."""
    n = next(_roots)
    if request.param == "memory":
        return f"memory://test/r{n}", str(tmp_path / "tables" / f"r{n}")
    env = request.getfixturevalue("s3server")
    return f"s3://{env['bucket']}/remote/r{n}", None


def _rows(seed: int, n: int, start: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"embedding": rng.normal(size=(n, 8)).astype(np.float32), "key": [f"img{start + i}" for i in range(n)]}


def _build(root, name, table_uri=None, shards=((0, 30),)):
    from mindsearch.indexes.collection import Collection

    with Collection.create(root, name, SPACE, 8, table_uri=table_uri, exist_ok=True) as coll:
        for seed, n in shards:
            shard = f"s{seed}"
            if shard not in coll.finished_shards:
                coll.add(_rows(seed, n, start=coll.count), shard=shard)
                coll.finish_shard(shard)
        return coll.build_index("flat")


def _found(reader) -> int:
    """How many rows a reader's index holds (the hits of a k=100 search that are not padding)."""
    return int((reader.search(np.ones((1, 8), np.float32), 100).ids >= 0).sum())


def _keys(root):
    import obstore as obs

    from mindsearch.indexes.remote import open_store

    return sorted(m["path"] for batch in obs.list(open_store(root), None) for m in batch
                  if "/lance/" not in m["path"])


def test_remote_index_answers_like_a_local_one(store, tmp_path, home):
    from mindsearch.engine import Engine

    root, table_uri = store
    _build(root, "cats", table_uri)
    _build(tmp_path / "local", "cats")
    q = np.random.default_rng(9).normal(size=(3, 8)).astype(np.float32)

    remote, local = Engine(root).search("cats", q, k=5), Engine(tmp_path / "local").search("cats", q, k=5)
    assert [[(h.id, h.path, round(h.score, 5)) for h in b] for b in remote] == \
           [[(h.id, h.path, round(h.score, 5)) for h in b] for b in local]
    assert Engine(root).list() == ["cats"]

    keys = _keys(root)  # one URI: manifest and the versioned FAISS/rows files under ROOT/NAME
    man = json.loads(_get(root, "cats/manifest.json"))
    assert "cats/manifest.json" in keys and f"cats/{man['index']['file']}" in keys
    assert f"cats/{man['index']['rows']}" in keys
    assert (man["table"]["uri"] == "lance") == (table_uri is None)


def _get(root, key) -> bytes:
    import obstore as obs

    from mindsearch.indexes.remote import open_store

    return bytes(obs.get(open_store(root), key).bytes())


def test_faiss_file_is_cached_by_version(store, home):
    import obstore as obs

    from mindsearch.indexes.reader import Reader
    from mindsearch.indexes.remote import open_store

    root, table_uri = store
    rec = _build(root, "dogs", table_uri)
    q = np.ones((1, 8), np.float32)
    first = Reader(root, "dogs").search(q, 4)
    cached = list(home.glob(f"cache/remote/*/dogs/{rec['file']}"))
    assert len(cached) == 1 and cached[0].stat().st_size > 0
    # Gone from the store, the file is still found: a second open never downloads it again.
    obs.delete(open_store(root), f"dogs/{rec['file']}")
    again = Reader(root, "dogs").search(q, 4)
    assert np.array_equal(first.ids, again.ids)


def test_a_warm_reader_sees_a_new_version_after_its_ttl(store):
    from mindsearch.indexes.reader import Reader

    root, table_uri = store
    _build(root, "birds", table_uri)
    fast, slow = Reader(root, "birds", ttl=0.3), Reader(root, "birds", ttl=3600)
    v1 = fast.snapshot().version
    assert _found(fast) == 30
    _build(root, "birds", table_uri, shards=((0, 30), (1, 12)))  # append a shard, rebuild: a new version
    time.sleep(0.35)
    snap = fast.snapshot()
    assert snap.version > v1 and snap.manifest["count"] == 42
    assert _found(fast) == 42
    hits = fast.search(np.asarray(_rows(1, 12)["embedding"][:1]), 1)
    assert fast.columns(hits.ids[0], ["key"])["key"] == ["img30"]  # a row of the new shard
    # Within its ttl a reader does not ask the store: the version it holds is the one it answers with.
    assert slow.snapshot().version == v1 and _found(slow) == 30


def test_the_losing_writer_gets_a_clear_error(store, home, monkeypatch):
    """Two machines (two caches) continue from the same version; the manifest's conditional put
    lets exactly one commit. The loser's uploads are removed; a re-run continues from the winner."""
    from mindsearch.indexes.collection import Collection
    from mindsearch.indexes.reader import Reader

    root, table_uri = store
    _build(root, "fish", table_uri)
    base = json.loads(_get(root, "fish/manifest.json"))["version"]
    monkeypatch.setenv("MINDSEARCH_HOME", str(home / "machine-a"))
    a = Collection.open(root, "fish").lock()
    monkeypatch.setenv("MINDSEARCH_HOME", str(home / "machine-b"))
    b = Collection.open(root, "fish").lock()
    try:
        a.add(_rows(5, 6, start=30), shard="from-a")
        a.finish_shard("from-a")
        a.build_index("flat")
        won = json.loads(_get(root, "fish/manifest.json"))
        before = _keys(root)
        with pytest.raises(InputError, match=rf"another writer committed version {won['version']} .* re-run"):
            b.add(_rows(6, 4, start=30), shard="from-b")
            b.finish_shard("from-b")
            b.build_index("flat")
    finally:
        a.close()
        b.close()
    assert won["version"] > base and _keys(root) == before  # the loser left nothing behind
    r = Reader(root, "fish")
    assert r.snapshot().manifest == won and _found(r) == 36
    assert r.columns(r.search(_rows(5, 1)["embedding"], 1).ids[0], ["key"])["key"] == ["img30"]

    # The loser re-runs: it continues from the winner's version, both shards are in.
    with Collection.open(root, "fish") as b:
        b.add(_rows(6, 4, start=36), shard="from-b")
        b.finish_shard("from-b")
        b.build_index("flat")
    coll = Collection.open(root, "fish")
    assert coll.count == 40 and coll.table.count_rows() == 40
    assert coll.finished_shards == ["s0", "from-a", "from-b"]


def test_two_creators_of_one_index(home, monkeypatch, tmp_path):
    from mindsearch.indexes.collection import Collection

    root = f"memory://test/r{next(_roots)}"
    monkeypatch.setenv("MINDSEARCH_HOME", str(home / "machine-a"))
    Collection.create(root, "x", SPACE, 8, table_uri=str(tmp_path / "ta")).close()
    monkeypatch.setenv("MINDSEARCH_HOME", str(home / "machine-b"))
    with pytest.raises(InputError, match="already exists"):
        Collection.create(root, "x", SPACE, 8, table_uri=str(tmp_path / "tb"))


@pytest.mark.parametrize("bad", ["../../outside.faiss", "faiss/../../x.faiss", "/etc/passwd", "lance/x.faiss"])
def test_a_manifest_naming_a_file_outside_is_refused(bad, home, tmp_path):
    import obstore as obs

    from mindsearch.indexes.reader import Reader
    from mindsearch.indexes.remote import open_store

    root = f"memory://test/r{next(_roots)}"
    _build(root, "evil", str(tmp_path / "t"))
    man = json.loads(_get(root, "evil/manifest.json"))
    man["index"]["file"] = bad
    obs.put(open_store(root), "evil/manifest.json", json.dumps(man).encode())
    before = sorted(p for p in home.rglob("*") if p.is_file())
    with pytest.raises(InputError, match="outside|not inside|relative path") as err:
        Reader(root, "evil")
    assert err.value.path == f"{root}/evil/manifest.json"
    assert sorted(p for p in home.rglob("*") if p.is_file()) == before  # nothing downloaded anywhere


def test_index_list_info_and_query_commands(tmp_path, home):
    from click.testing import CliRunner

    from mindsearch.cli.main import cli

    root = f"memory://test/r{next(_roots)}"
    _build(root, "owls", str(tmp_path / "t"))
    runner = CliRunner()
    res = runner.invoke(cli, ["index", "list", "--root", root, "--json"])
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["name"] for line in res.output.splitlines()] == ["owls"]
    res = runner.invoke(cli, ["index", "info", "owls", "--root", root])
    assert res.exit_code == 0 and f"{root}/owls" in res.output and "Flat faiss/index-000001-" in res.output
    np.save(tmp_path / "q.npy", _rows(0, 1)["embedding"])
    res = runner.invoke(cli, ["query", "--root", root, "--index", "owls", "--embedding", str(tmp_path / "q.npy"),
                              "--k", "3", "--json", "--local"])
    assert res.exit_code == 0, res.output
    assert '"path": "img0"' in res.output
    res = runner.invoke(cli, ["index", "info", "nope", "--root", root])
    assert res.exit_code == 2 and "index manifest not found" in res.output
    res = runner.invoke(cli, ["index", "info", "owls", "--brain", "--root", root])
    assert res.exit_code == 2 and "brain stores live under a local index root" in res.output
    res = runner.invoke(cli, ["index", "rm", "owls", "--root", root])
    assert res.exit_code == 0, res.output
    assert _keys(root) == [] and runner.invoke(cli, ["index", "list", "--root", root, "--json"]).output == ""


@pytest.mark.slow
def test_build_and_serve_from_s3_with_the_cli(s3server, tmp_path, home):
    """`index build --root s3://...` writes everything there; the service's backend answers from it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from mindsearch.cli.main import cli
    from mindsearch.service.backend import Backend

    emb = tmp_path / "emb"
    (emb / "img_emb").mkdir(parents=True)
    (emb / "metadata").mkdir()
    vecs = _rows(3, 20)["embedding"]
    np.save(emb / "img_emb" / "img_emb_00.npy", vecs)
    pq.write_table(pa.table({"image_path": [f"/data/{i}.jpg" for i in range(20)]}),
                   emb / "metadata" / "metadata_00.parquet")
    root = f"s3://{s3server['bucket']}/cli"
    res = CliRunner().invoke(cli, ["index", "build", "--name", "laion", "--embeddings", str(emb),
                                   "--model", "ViT-B-32", "--root", root, "--kind", "flat"])
    assert res.exit_code == 0, res.output
    assert f"in {root}/laion" in res.output
    assert _keys(root)[-1] == "laion/manifest.json" and not (home / "indexes").exists()

    backend = Backend(root)
    assert [i["name"] for i in backend.indexes()] == ["laion"]
    out = backend.query({"embedding": vecs[[4, 7]].tolist(), "k": 2})
    assert [b[0]["path"] for b in out["hits"]] == ["/data/4.jpg", "/data/7.jpg"]


def test_a_shard_in_flight_on_another_machine(store, home, monkeypatch):
    """Machine A is halfway through a shard (rows appended, nothing committed) when machine B starts
    writing and rolls the table back to the manifest. Lance refuses A's next append (an append
    cannot commit over a concurrent restore), B's version holds exactly B's rows, and A's re-run
    lands on top of it: nothing lost, nothing twice."""
    from mindsearch.indexes.collection import Collection
    from mindsearch.indexes.reader import Reader

    root, table_uri = store
    _build(root, "eels", table_uri)
    part1, part2 = _rows(7, 5, start=30), _rows(8, 5, start=35)
    monkeypatch.setenv("MINDSEARCH_HOME", str(home / "machine-a"))
    a = Collection.open(root, "eels").lock()
    a.add(part1, shard="from-a")
    monkeypatch.setenv("MINDSEARCH_HOME", str(home / "machine-b"))
    with Collection.open(root, "eels") as b:
        b.add(_rows(9, 3, start=100), shard="from-b")  # rolls A's first batch back
        with pytest.raises(InputError, match="Incompatible transaction"):
            a.add(part2, shard="from-a")
        b.finish_shard("from-b")
        b.build_index("flat")
    with pytest.raises(InputError, match="another writer committed version"):
        a.finish_shard("from-a")
    a.close()
    r = Reader(root, "eels")
    assert r.snapshot().manifest["shards"]["finished"] == ["s0", "from-b"] and _found(r) == 33

    monkeypatch.setenv("MINDSEARCH_HOME", str(home / "machine-a"))
    with Collection.open(root, "eels") as a:  # A's re-run
        a.add({k: np.concatenate([v, part2[k]]) for k, v in part1.items()}, shard="from-a")
        a.finish_shard("from-a")
    coll = Collection.open(root, "eels")
    keys = coll.table.to_arrow().column("key").to_pylist()
    assert coll.count == len(keys) == len(set(keys)) == 43
    assert sorted(coll.finished_shards) == ["from-a", "from-b", "s0"]


def test_retired_files_leave_the_store_after_their_grace(home, tmp_path, monkeypatch):
    from mindsearch.indexes import collection

    root = f"memory://test/r{next(_roots)}"
    first = _build(root, "ants", str(tmp_path / "t"))
    monkeypatch.setattr(collection, "RETIRE_GRACE_S", 0.0)
    second = _build(root, "ants", str(tmp_path / "t"), shards=((0, 30), (1, 5)))
    keys = _keys(root)
    assert f"ants/{second['file']}" in keys and f"ants/{second['rows']}" in keys
    assert f"ants/{first['file']}" not in keys and f"ants/{first['rows']}" not in keys
    assert not list(home.glob(f"cache/remote/*/ants/{first['file']}"))


@pytest.mark.slow
def test_storage_options_instead_of_the_environment(s3server, monkeypatch):
    """One ``storage_options`` mapping reaches both LanceDB (the table) and obstore (manifest, FAISS)."""
    from mindsearch.indexes.collection import Collection
    from mindsearch.indexes.reader import Reader
    from mindsearch.indexes.remote import store_options

    options = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "aws_region": "us-east-1",
               "aws_endpoint": s3server["AWS_ENDPOINT"], "allow_http": "true"}
    assert store_options(options) == ({k: v for k, v in options.items() if k != "allow_http"},
                                      {"allow_http": "true"})
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP"):
        monkeypatch.delenv(key, raising=False)
    root = f"s3://{s3server['bucket']}/options"
    with Collection.create(root, "ducks", SPACE, 8, storage_options=options) as coll:
        coll.add(_rows(4, 9), shard="s0")
        coll.finish_shard("s0")
        coll.build_index("flat")
    r = Reader(root, "ducks", storage_options=options)
    assert _found(r) == 9 and r.table().count_rows() == 9
