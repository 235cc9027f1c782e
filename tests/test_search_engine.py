"""The search engine as users drive it: index build, query, brain retrieval, through the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mindsearch.cli.main import cli

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
TINY_SIM = dict(n_voxels=120, n_shared=60, n_unique=90, trials_per_session=150, image_size=32,
                tokens=3, dim=16, mc_min_draws=10, mc_max_draws=40)


def run_cli(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def picture_folder(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for i in range(12):
        arr = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i:02d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    cfg = tmp_path_factory.mktemp("cfg") / "mindsearch-test-engine-vit.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    return folder, cfg


@pytest.fixture(scope="module")
def sim_world(tmp_path_factory):
    from mindsearch.simulate import simulate
    from mindsearch.training.ridge import train_ridge

    root = tmp_path_factory.mktemp("world")
    data = simulate(root / "data", "small", seed=3, **TINY_SIM)
    train_ridge(data, 1, root / "ridge")
    return root, data


def test_build_and_query_folder_matches_brute_force(picture_folder, tmp_path):
    folder, cfg = picture_folder
    root = tmp_path / "idx"
    res = run_cli("index", "build", "--images", folder, "--model", cfg, "--weights", "random:0",
                  "--name", "pics", "--root", root, "--shard-size", "5", "--json")
    assert res.exit_code == 0, res.output
    info = json_lines(res.stdout)[-1]
    assert info["count"] == 12
    assert [Path(s["path"]).name for s in info["skipped"]] == ["broken.png"]

    # Embed the same pictures by hand and query with them: exact search = numpy brute force.
    from mindsearch.image_encoders import ImageEncoder, embed_images
    from mindsearch.image_sources import FolderSource

    enc = ImageEncoder.create(cfg, weights="random:0")
    keys, embs = [], []
    for records, emb in embed_images(FolderSource(folder), enc, progress=False):
        keys += [r.key for r in records]
        embs.append(emb[:, 0])
    embs = np.concatenate(embs)
    np.save(tmp_path / "q.npy", embs[:3])
    res = run_cli("query", "--embedding", tmp_path / "q.npy", "--index", "pics", "--root", root,
                  "--k", "4", "--json")
    assert res.exit_code == 0, res.output
    hits = json_lines(res.stdout)
    assert len(hits) == 12 and {"rank", "id", "path", "score", "index", "index_version", "run"} <= set(hits[0])
    unit = embs / np.linalg.norm(embs, axis=1, keepdims=True)
    sims = unit[:3] @ unit.T
    for q in range(3):
        block = hits[q * 4:(q + 1) * 4]
        expect = np.argsort(-sims[q])[:4]
        assert [Path(h["path"]).name for h in block] == [Path(keys[j]).name for j in expect]
        np.testing.assert_allclose([h["score"] for h in block], sims[q, expect], atol=1e-5)
    assert Path(hits[0]["path"]).name == Path(keys[0]).name  # each image finds itself first


def test_strict_build_fails_naming_the_file(picture_folder, tmp_path):
    folder, cfg = picture_folder
    proc = subprocess.run([sys.executable, "-m", "mindsearch.cli.main", "index", "build", "--images", str(folder),
                           "--model", str(cfg), "--weights", "random:0", "--name", "pics",
                           "--root", str(tmp_path), "--strict"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "broken.png" in proc.stderr and "Traceback" not in proc.stderr


def test_interrupted_build_resumes_without_duplicates(picture_folder, tmp_path, monkeypatch):
    from mindsearch.indexes.collection import Collection
    from mindsearch.engine import Engine

    folder, cfg = picture_folder
    engine = Engine(tmp_path)
    real_finish = Collection.finish_shard
    calls = {"n": 0}

    def crash_on_second(self, shard_id):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash mid-build")
        return real_finish(self, shard_id)

    monkeypatch.setattr(Collection, "finish_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        engine.build_from_images("pics", folder, model=str(cfg), weights="random:0", shard_size=5)
    monkeypatch.setattr(Collection, "finish_shard", real_finish)
    assert len(engine.open("pics").finished_shards) == 1
    info = engine.build_from_images("pics", folder, model=str(cfg), weights="random:0", shard_size=5)
    assert info["count"] == 12
    keys = engine.open("pics").table.to_arrow().column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 12


def test_voxel_query_finds_images_and_attributes_results(sim_world, tmp_path):
    root, data = sim_world
    idx = tmp_path / "idx"
    res = run_cli("index", "build", "--data", data, "--name", "sim", "--root", idx, "--json")
    assert res.exit_code == 0, res.output
    from mindsearch.data import open_dataset
    from mindsearch.data.preprocess import load_split

    with open_dataset(data) as ds:
        test = load_split(ds, 1, "test", zscore=False, average="betas")
        np.save(tmp_path / "q.npy", test.voxels)  # averaged raw betas of the 60 test images
        truth = test.image_ids
    res = run_cli("query", "--voxels", tmp_path / "q.npy", "--run", root / "ridge", "--index", "sim",
                  "--root", idx, "--k", "16", "--json")
    assert res.exit_code == 0, res.output
    hits = json_lines(res.stdout)
    assert len(hits) == 60 * 16
    assert all(h["run"] == str(root / "ridge") and h["index"] == "sim" for h in hits)
    found = sum(any(h["id"] == t for h in hits[i * 16:(i + 1) * 16]) for i, t in enumerate(truth))
    assert found / 60 > 2 * 16 / 150  # the true image is in the top 16 far above chance (16 of 150)
    # A dataset hit names its source, and the engine serves the dataset's own pixels for it.
    import io

    from PIL import Image

    from mindsearch.engine import Engine

    assert hits[0]["path"] is None and hits[0]["source"].endswith(f"#image/{hits[0]['id']}")
    data_png, ctype = Engine(idx).image_bytes("sim", hits[0]["id"])
    with open_dataset(data) as ds:
        pixels = ds.images([hits[0]["id"]])[0]
    got = np.asarray(Image.open(io.BytesIO(data_png)))
    assert ctype == "image/png" and got.shape[:2] == pixels.shape[-2:]
    # The human table prints too.
    np.save(tmp_path / "one.npy", test.voxels[0])
    res = run_cli("query", "--voxels", tmp_path / "one.npy", "--run", root / "ridge", "--root", idx, "--k", "3")
    assert res.exit_code == 0 and "rank" in res.stdout


@pytest.mark.parametrize("problem", ["count", "nan", "int"])
def test_bad_voxels_rejected_before_anything_runs(sim_world, tmp_path, problem):
    root, data = sim_world
    x = np.zeros((2, 120), np.float32)
    if problem == "count":
        x = np.zeros((2, 119), np.float32)
    elif problem == "nan":
        x[1, 5] = np.nan
    elif problem == "int":
        x = x.astype(np.int64)
    np.save(tmp_path / "bad.npy", x)
    proc = subprocess.run([sys.executable, "-m", "mindsearch.cli.main", "query", "--voxels", str(tmp_path / "bad.npy"),
                           "--run", str(root / "ridge"), "--index", "whatever", "--root", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "bad.npy" in proc.stderr and "Traceback" not in proc.stderr
    assert {"count": "119 voxels", "nan": "NaN", "int": "floating"}[problem] in proc.stderr


def test_run_and_index_from_different_spaces_are_refused(sim_world, picture_folder, tmp_path):
    root, data = sim_world
    folder, cfg = picture_folder
    assert run_cli("index", "build", "--images", folder, "--model", cfg, "--weights", "random:0",
                   "--name", "pics", "--root", tmp_path).exit_code == 0
    np.save(tmp_path / "q.npy", np.zeros((1, 120), np.float32))
    proc = subprocess.run([sys.executable, "-m", "mindsearch.cli.main", "query", "--voxels", str(tmp_path / "q.npy"),
                           "--run", str(root / "ridge"), "--index", "pics", "--root", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "cannot be compared" in proc.stderr and "Traceback" not in proc.stderr


def test_brain_store_and_brain_retrieval(sim_world, tmp_path):
    root, data = sim_world
    idx = tmp_path / "idx"
    assert run_cli("index", "build", "--data", data, "--name", "sim", "--root", idx).exit_code == 0
    from mindsearch.data import open_dataset
    from mindsearch.data.preprocess import load_split

    with open_dataset(data) as ds:
        test = load_split(ds, 1, "test", zscore=True, average="betas")
    np.save(tmp_path / "z.npy", test.voxels)
    res = run_cli("embed", "--run", root / "ridge", "--voxels", tmp_path / "z.npy", "--no-zscore",
                  "--out", tmp_path / "e.npz", "--store", "brains", "--root", idx)
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "e.npz", allow_pickle=False) as f:
        brain = f["disjointed"]
    assert brain.shape == (len(test.voxels), 3, 16)
    with open_dataset(data) as ds:
        image = ds.targets(test.image_ids[:1])
    # Brain retrieval from image 0's stored embedding = numpy brute force over the stored rows.
    res = run_cli("query", "--image", str(int(test.image_ids[0])), "--index", "sim", "--store", "brains",
                  "--root", idx, "--k", "10", "--json")
    assert res.exit_code == 0, res.output
    hits = json_lines(res.stdout)
    assert len(hits) == 10 and hits[0]["store"] == "brains"
    assert [h["rank"] for h in hits] == list(range(1, 11))
    unit = lambda x: x.reshape(len(x), -1) / np.linalg.norm(x.reshape(len(x), -1), axis=1, keepdims=True)  # noqa: E731
    sims = (unit(image) @ unit(brain).T)[0]
    assert [h["row"] for h in hits] == list(np.argsort(-sims)[:10])
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(sims)[::-1][:10], atol=1e-5)


def test_image_file_query_encodes_and_checks_the_store_space(sim_world, picture_folder, tmp_path):
    root, data = sim_world
    folder, cfg = picture_folder
    from mindsearch.data import open_dataset
    from mindsearch.data.preprocess import load_split

    with open_dataset(data) as ds:
        test = load_split(ds, 1, "test", zscore=True, average="betas")
    np.save(tmp_path / "z.npy", test.voxels[:5])
    assert run_cli("embed", "--run", root / "ridge", "--voxels", tmp_path / "z.npy", "--no-zscore",
                   "--out", tmp_path / "e.npy", "--store", "brains", "--root", tmp_path).exit_code == 0
    picture = folder / "img00.png"
    base = [sys.executable, "-m", "mindsearch.cli.main", "query", "--image", str(picture), "--store", "brains",
            "--root", str(tmp_path)]
    proc = subprocess.run(base, capture_output=True, text=True)
    assert proc.returncode == 2 and "--model" in proc.stderr
    # The picture is encoded in the tiny CLIP space; the store holds simulator-space samples.
    proc = subprocess.run(base + ["--model", str(cfg), "--weights", "random:0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot be compared" in proc.stderr and "Traceback" not in proc.stderr


def test_embed_store_with_trials_replaces_instead_of_duplicating(sim_world, tmp_path):
    root, data = sim_world
    from mindsearch.data import open_dataset

    with open_dataset(data) as ds:
        table = ds.trials[ds.trials["subject"] == 1].head(6)
    trials = ",".join(str(t) for t in table["trial"])
    args = ["embed", "--run", root / "ridge", "--data", data, "--trials", trials, "--store", "trials",
            "--root", tmp_path]
    first = run_cli(*args)
    assert first.exit_code == 0, first.output
    assert json_lines(first.stdout)[-1]["count"] == 6
    again = run_cli(*args)
    info = json_lines(again.stdout)[-1]
    assert info["count"] == 6 and info["replaced"] == 6
    # The same trials from --voxels with a trials table land on the same rows.
    with open_dataset(data) as ds:
        np.save(tmp_path / "v.npy", ds.voxels(1, table["trial"].tolist()))
    table[["trial", "image_id", "session"]].to_csv(tmp_path / "t.csv", index=False)
    res = run_cli("embed", "--run", root / "ridge", "--voxels", tmp_path / "v.npy", "--trials-table",
                  tmp_path / "t.csv", "--store", "trials", "--root", tmp_path)
    assert json_lines(res.stdout)[-1]["count"] == 6
    from mindsearch.engine import Engine

    reader = Engine(tmp_path).reader("trials", brain=True)
    cols = reader.columns(np.asarray(reader.table().to_arrow().column("id")), ["trial", "image_id", "session"])
    assert sorted(cols["trial"]) == sorted(table["trial"].tolist())
    assert sorted(zip(cols["trial"], cols["image_id"], cols["session"])) == sorted(
        zip(table["trial"], table["image_id"], table["session"]))
    assert "trials" in run_cli("index", "list", "--root", tmp_path).stdout


def test_brain_store_of_the_old_layout_is_migrated_once(tmp_path):
    """Stores written before brain stores were collections (a bare table + a space file) still answer."""
    import pyarrow as pa

    from mindsearch.engine import Engine
    from mindsearch.indexes import table as tbl

    space = {"name": "sim", "model": "sim-v1", "layer": "tokens", "weights": "x", "tokens": 2, "dim": 3}
    rng = np.random.default_rng(0)
    dis = rng.standard_normal((5, 6)).astype(np.float32)
    vec = pa.list_(pa.float32(), 6)
    schema = pa.schema([pa.field("subject", pa.int32()), pa.field("session", pa.int32()),
                        pa.field("trial", pa.int64()), pa.field("image_id", pa.int64()),
                        pa.field("run_id", pa.string()), pa.field("disjointed", vec), pa.field("aligned", vec)],
                       metadata={"mindsearch.table": "brain", "shape": "2x3"})
    db = tbl.connect(tmp_path / "_brain")
    t = tbl.create_table(db, "old", schema)
    t.add(pa.table([pa.array([1] * 5, pa.int32()), pa.array([2] * 5, pa.int32()), pa.array(range(5), pa.int64()),
                    pa.array([7, 8, 9, 7, 8], pa.int64()), pa.array(["run"] * 5),
                    pa.FixedSizeListArray.from_arrays(pa.array(dis.reshape(-1)), 6), pa.nulls(5, vec)],
                   schema=schema))
    (tmp_path / "_brain" / "old.space.json").write_text(json.dumps(space))
    engine = Engine(tmp_path)
    hits = engine.query_brain("old", dis[3], space=space, k=2)[0]
    assert hits[0]["row"] == 3 and hits[0]["image_id"] == 7 and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert engine.stores() == ["old"] and Engine(tmp_path).query_brain("old", dis[1], k=1)[0][0]["trial"] == 1
