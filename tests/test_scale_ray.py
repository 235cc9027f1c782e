"""Distributed index builds on a local Ray cluster (2 CPUs), checked against one process.

The Ray build must equal the single-process build row for row (ids, keys, embeddings) and still
finish, without duplicates, when a worker process dies mid-build.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("torch")
pytestmark = pytest.mark.slow

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


def _png(rng) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((rng.random((24, 20, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("raybuild")
    rng = np.random.default_rng(0)
    wds = root / "wds"
    wds.mkdir()
    for t in range(5):
        with tarfile.open(wds / f"{t}.tar", "w") as tf:
            for i in range(6):
                data = _png(rng)
                info = tarfile.TarInfo(f"s{t}_{i:03d}.png")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    cfg = root / "mindsearch-test-ray-vit.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    # clip-retrieval / LAION layout: float16 and float32 shards with parquet metadata
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = root / "laion"
    (emb / "img_emb").mkdir(parents=True)
    (emb / "metadata").mkdir()
    for k, dtype in enumerate([np.float16, np.float16, np.float16]):
        n = 7 + k
        np.save(emb / "img_emb" / f"img_emb_{k}.npy", rng.normal(size=(n, 16)).astype(dtype))
        pq.write_table(pa.table({"url": [f"http://example.invalid/{k}/{i}.jpg" for i in range(n)],
                                 "caption": [f"c{k}-{i}" for i in range(n)]}),
                       emb / "metadata" / f"metadata_{k}.parquet")
    return root, wds, cfg, emb


@pytest.fixture(scope="module")
def ray_cluster():
    from mindsearch.distributed import ray_session

    # One local cluster for the module (starting Ray costs seconds); builds join it.
    with ray_session(num_cpus=2) as ray:
        yield ray


def _rows(root: Path, name: str) -> list[tuple]:
    from mindsearch.indexes.collection import Collection

    coll = Collection.open(root, name)
    tab = coll.table.to_arrow().sort_by("id")
    emb = np.asarray(tab.column("embedding").to_pylist(), np.float32)
    return list(zip(tab.column("id").to_pylist(), tab.column("key").to_pylist())), emb, coll


def test_ray_build_equals_single_process(world, ray_cluster, tmp_path):
    from mindsearch.distributed import build_from_images
    from mindsearch.engine import Engine

    _, wds, cfg, _ = world
    single = Engine(tmp_path / "one").build_from_images("pics", wds, model=str(cfg), weights="random:0",
                                                         workers=1)
    dist = build_from_images(tmp_path / "ray", "pics", wds, model=str(cfg), weights="random:0", workers=2)
    assert single["count"] == dist["count"] == 30
    rows1, emb1, c1 = _rows(tmp_path / "one", "pics")
    rows2, emb2, c2 = _rows(tmp_path / "ray", "pics")
    assert rows1 == rows2  # same ids for the same keys, in the same order
    np.testing.assert_allclose(emb1, emb2, atol=1e-5)
    assert c1.finished_shards == c2.finished_shards
    assert c2.index.ntotal == 30

    # A rerun finds every shard finished and adds nothing.
    again = build_from_images(tmp_path / "ray", "pics", wds, model=str(cfg), weights="random:0", workers=2)
    assert again["count"] == 30


def test_killed_worker_is_retried_without_duplicates(world, ray_cluster, tmp_path, monkeypatch):
    from mindsearch.distributed import build_from_images

    _, wds, cfg, _ = world
    marker = tmp_path / "killed-once"
    # The worker embedding shard 2.tar exits hard the first time: Ray restarts it and retries.
    shard_2 = [s for s in _shard_ids(wds) if "-2.tar-" in s][0]
    monkeypatch.setenv("MINDSEARCH_TEST_KILL_SHARD", f"{shard_2}@{marker}")
    res = build_from_images(tmp_path / "ray", "pics", wds, model=str(cfg), weights="random:0", workers=2)
    assert marker.exists()  # the kill really happened
    rows, _, coll = _rows(tmp_path / "ray", "pics")
    assert res["count"] == len(rows) == 30
    assert len({k for _, k in rows}) == 30 and [i for i, _ in rows] == list(range(30))
    assert len(coll.finished_shards) == 5


def _shard_ids(wds: Path) -> list[str]:
    from mindsearch.image_sources import open_source

    return [s.shard_id for s in open_source(wds).shards()]


def test_ray_ingests_precomputed_embeddings_like_one_process(world, ray_cluster, tmp_path):
    from mindsearch.distributed import build_from_embeddings
    from mindsearch.engine import Engine

    _, _, _, emb = world
    space = {"name": "laion", "model": "ViT-L-14", "layer": "final", "pooling": "self", "weights": "x"}
    single = Engine(tmp_path / "one").build_from_embeddings("laion", emb, space=space)
    dist = build_from_embeddings(tmp_path / "ray", "laion", emb, space=space, workers=2)
    assert single["count"] == dist["count"] == 7 + 8 + 9
    rows1, e1, _ = _rows(tmp_path / "one", "laion")
    rows2, e2, _ = _rows(tmp_path / "ray", "laion")
    assert rows1 == rows2
    np.testing.assert_array_equal(e1, e2)


def test_cli_ray_workers_flag(world, ray_cluster, tmp_path):
    from click.testing import CliRunner

    from mindsearch.cli.main import cli

    _, _, _, emb = world
    res = CliRunner().invoke(cli, ["index", "build", "--embeddings", str(emb), "--name", "laion",
                                   "--model", "ViT-L-14", "--root", str(tmp_path), "--ray-workers", "2", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["count"] == 24 and info["workers"] == 2
    res = CliRunner().invoke(cli, ["index", "build", "--data", str(tmp_path), "--name", "x", "--root",
                                   str(tmp_path), "--ray-workers", "2"])
    assert res.exit_code == 2 and "needs no workers" in res.output
