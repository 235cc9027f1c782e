"""Index tables on object storage: the whole life cycle against a real S3-compatible server
(moto's server mode on 127.0.0.1, started here). LanceDB's commit protocol (conditional puts:
``If-None-Match: *`` on the next version's manifest) is the concurrency story on S3; this file
checks that the server honours it (and ``If-Match``, which the manifest of an index wholly on the
store relies on: tests/test_remote_index.py) and that mindsearch's builds, resumes and pinned
reads hold."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("moto")
pytest.importorskip("boto3")
pytest.importorskip("lancedb")
pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).parent))
from s3server import aws_environment, s3_server  # noqa: E402

SPACE = {"name": "t", "model": "m", "layer": "final", "pooling": "self", "weights": "w", "tokens": 1, "dim": 8}


@pytest.fixture(scope="module")
def s3():
    with s3_server() as env, aws_environment(env):
        yield env


def _batch(rng, n, start):
    return {"embedding": rng.normal(size=(n, 8)).astype(np.float32), "key": [f"k{start + i}" for i in range(n)]}


def test_server_honours_conditional_puts(s3):
    import boto3
    from botocore.exceptions import ClientError

    c = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT"])
    c.put_object(Bucket=s3["bucket"], Key="probe", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        c.put_object(Bucket=s3["bucket"], Key="probe", Body=b"2", IfNoneMatch="*")
    # If-Match (AWS S3 since Nov 2024): a remote index's manifest is replaced only if unchanged
    etag = c.head_object(Bucket=s3["bucket"], Key="probe")["ETag"]
    c.put_object(Bucket=s3["bucket"], Key="probe", Body=b"3", IfMatch=etag)
    with pytest.raises(ClientError, match="PreconditionFailed"):
        c.put_object(Bucket=s3["bucket"], Key="probe", Body=b"4", IfMatch=etag)
    assert c.get_object(Bucket=s3["bucket"], Key="probe")["Body"].read() == b"3"


def test_index_life_cycle_on_s3(s3, tmp_path):
    from mindsearch.indexes.collection import Collection
    from mindsearch.indexes.table import connect, open_table

    uri = f"s3://{s3['bucket']}/life"
    rng = np.random.default_rng(0)
    with Collection.create(tmp_path, "idx", SPACE, 8, None, table_uri=uri) as coll:  # the writer lock
        for k, shard in enumerate("ab"):
            coll.add(_batch(rng, 10, 10 * k), shard=shard)
            coll.finish_shard(shard)
        coll.build_index("auto")
        v_built = coll.table_version
    q = rng.normal(size=(2, 8)).astype(np.float32)
    before = Collection.open(tmp_path, "idx").search(q, k=5)

    # Append later: a new shard, the index grows with it.
    with Collection.open(tmp_path, "idx") as coll:
        coll.add(_batch(rng, 7, 20), shard="c")
        coll.finish_shard("c")
    assert Collection.open(tmp_path, "idx").count == 27

    # An interrupted build: rows of shard "d" reach the table, the process dies before the commit.
    proc = subprocess.run([sys.executable, "-c", (
        "import numpy as np, os\n"
        "from mindsearch.indexes.collection import Collection\n"
        f"c = Collection.open({str(tmp_path)!r}, 'idx')\n"
        "c.add({'embedding': np.ones((5, 8), np.float32), 'key': list('vwxyz')}, shard='d')\n"
        "os._exit(9)\n")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert Collection.open(tmp_path, "idx").count == 27  # the manifest never committed shard d
    with Collection.open(tmp_path, "idx") as coll:  # the resumed build redoes it: the half-written rows go
        coll.add(_batch(rng, 5, 27), shard="d")
        coll.finish_shard("d")
    coll = Collection.open(tmp_path, "idx")
    assert coll.count == 32 and coll.table.count_rows() == 32
    keys = coll.table.to_arrow().column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 32 and "v" not in keys

    # Time travel: the table as it was when the index was first built.
    db = connect(uri)
    assert open_table(db, "images", version=v_built).count_rows() == 20
    assert open_table(db, "images").count_rows() == 32

    # A reader pins the manifest's table version: rows another writer appends are not seen.
    pinned = Collection.open(tmp_path, "idx")
    v = pinned.table_version
    raw = open_table(db, "images")
    raw.add(pinned.table.to_arrow().slice(0, 3))  # a foreign append, no manifest update
    assert pinned.table.count_rows() == 32 and Collection.open(tmp_path, "idx").table_version == v
    assert before[0].shape == (2, 5)


def _appender(uri: str, worker: int, rounds: int, errors: list):
    try:
        from mindsearch.indexes.table import connect, open_table

        t = open_table(connect(uri), "rows")
        for r in range(rounds):
            import pyarrow as pa

            t.add(pa.table({"writer": [worker] * 4, "round": [r] * 4, "x": np.arange(4, dtype=np.int64)}))
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(repr(exc))


def test_concurrent_appenders_and_a_reader(s3):
    """Two writers append to one table at once; a reader counts all the while. Every commit lands
    exactly once (Lance retries a commit that lost the conditional put), the reader never fails."""
    import pyarrow as pa

    from mindsearch.indexes.table import connect, open_table

    uri = f"s3://{s3['bucket']}/conc"
    db = connect(uri)
    db.create_table("rows", pa.table({"writer": [0], "round": [-1], "x": np.zeros(1, np.int64)}))
    errors: list = []
    writers = [threading.Thread(target=_appender, args=(uri, w, 6, errors)) for w in (1, 2)]
    seen, stop = [], threading.Event()

    def reader():
        t = open_table(connect(uri), "rows")
        while not stop.is_set():
            try:
                t.checkout_latest()
                seen.append(t.count_rows())
            except Exception as exc:  # noqa: BLE001
                errors.append("reader: " + repr(exc))

    r = threading.Thread(target=reader)
    r.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    stop.set()
    r.join(timeout=30)
    assert not errors, errors
    rows = open_table(db, "rows").to_arrow()
    assert rows.num_rows == 1 + 2 * 6 * 4
    pairs = {(w, r) for w, r in zip(rows.column("writer").to_pylist(), rows.column("round").to_pylist())}
    assert pairs == {(0, -1)} | {(w, r) for w in (1, 2) for r in range(6)}
    assert seen and seen == sorted(seen)  # the reader saw only whole commits, never going back
