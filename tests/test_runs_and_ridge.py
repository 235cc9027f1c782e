"""Ridge runs end to end: training, the run format, encoding, evaluation against the ceiling."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from mindsearch.cli.main import cli
from mindsearch.errors import MindsearchError
from mindsearch.io import save_tensors, write_json

TINY_SIM = dict(n_voxels=150, n_shared=60, n_unique=150, trials_per_session=150, image_size=32,
                tokens=3, dim=16, mc_min_draws=10, mc_max_draws=40)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mindsearch.simulate import simulate

    root = tmp_path_factory.mktemp("ridge_world")
    data = simulate(root / "data", "small", subjects=[1, 2], seed=5, **TINY_SIM)
    res = CliRunner().invoke(cli, ["train", "--model", "ridge", "--data", str(data), "--subject", "1",
                                   "--out", str(root / "ridge"), "--json"])
    assert res.exit_code == 0, res.output
    return root, data, json.loads(res.stdout.strip().splitlines()[-1])


def test_ridge_run_directory_and_config(world):
    root, data, summary = world
    run = root / "ridge"
    assert {p.name for p in run.iterdir()} >= {"config.json", "model.safetensors", "zscore.safetensors"}
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["format"] == "mindsearch-run/1" and cfg["model"] == "ridge" and cfg["subject"] == 1
    assert cfg["target_shape"] == [3, 16] and cfg["space"]["model"] == "sim-v1"
    assert cfg["data"]["fingerprint"] and cfg["versions"]["numpy"]
    assert cfg["train"]["alpha"] in [float(a) for a in np.logspace(0, 6, 13)]
    assert summary["train"]["alpha"] == cfg["train"]["alpha"]


def test_ridge_matches_sklearn_on_the_same_rows(world):
    from sklearn.linear_model import Ridge

    from mindsearch.data import open_dataset
    from mindsearch.data.preprocess import load_split
    from mindsearch.runs import open_run

    root, data, _ = world
    run = open_run(root / "ridge")
    with open_dataset(data) as ds:
        tr = load_split(ds, 1, "train", zscore=True, average="betas")
        te = load_split(ds, 1, "test", zscore=True, average="betas")
        y = ds.targets(tr.image_ids).reshape(len(tr.image_ids), -1)
    ref = Ridge(alpha=run.config["train"]["alpha"]).fit(tr.voxels, y)
    ours = run.encode(te.voxels, zscore=False)["disjointed"].reshape(len(te.voxels), -1)
    np.testing.assert_allclose(ours, ref.predict(te.voxels), rtol=1e-3, atol=1e-4)


def test_encode_applies_the_sessions_training_statistics(world):
    from mindsearch.data import open_dataset
    from mindsearch.data.preprocess import load_split
    from mindsearch.runs import open_run

    root, data, _ = world
    run = open_run(root / "ridge")
    with open_dataset(data) as ds:
        te = load_split(ds, 1, "test", zscore=True, average="none")
        raw = ds.voxels(1, te.trials[:4])
    direct = run.encode(te.voxels[:4], zscore=False)["disjointed"]
    for i in range(4):
        via_raw = run.encode(raw[i], session=int(te.sessions[i]))["disjointed"]
        np.testing.assert_allclose(via_raw[0], direct[i], rtol=1e-4, atol=1e-4)


def test_evaluation_reports_ridge_between_chance_and_ceiling(world):
    root, data, _ = world
    res = CliRunner().invoke(cli, ["eval", "retrieval", "--run", str(root / "ridge"), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["n"] == 60 and s["pool"] == 60
    assert 1 / 60 < s["brain_to_image_top1"] < s["ceiling_brain_to_image_top1"] <= 1
    assert 0 < s["ceiling_image_to_brain_top1"] <= 1
    single = json.loads(CliRunner().invoke(cli, ["eval", "retrieval", "--run", str(root / "ridge"),
                                                 "--average", "single", "--json"]).stdout)
    # one trial carries less signal than three: both the model and the ceiling drop
    assert single["ceiling_brain_to_image_top1"] < s["ceiling_brain_to_image_top1"]


def test_open_run_rejects_what_is_not_a_run(tmp_path, world):
    from mindsearch.runs import open_run

    with pytest.raises(MindsearchError, match="not found"):
        open_run(tmp_path / "nope")
    (tmp_path / "r").mkdir()
    write_json(tmp_path / "r" / "config.json", {"format": "something-else"})
    with pytest.raises(MindsearchError, match="not a mindsearch run"):
        open_run(tmp_path / "r")
    cfg = json.loads((world[0] / "ridge" / "config.json").read_text())
    write_json(tmp_path / "r" / "config.json", cfg)
    with pytest.raises(MindsearchError, match="model.safetensors"):
        open_run(tmp_path / "r")


def test_multi_subject_statistics_are_looked_up_per_subject(tmp_path, world):
    from mindsearch.runs import open_run

    root, _, _ = world
    run_dir = tmp_path / "multi"
    run_dir.mkdir()
    cfg = json.loads((root / "ridge" / "config.json").read_text())
    write_json(run_dir / "config.json", cfg)
    (run_dir / "model.safetensors").write_bytes((root / "ridge" / "model.safetensors").read_bytes())

    def stats(v):
        return {"sessions": np.array([1]), "mean": np.full((1, 150), v, np.float32),
                "std": np.ones((1, 150), np.float32), "global_mean": np.full(150, v, np.float32),
                "global_std": np.ones(150, np.float32)}

    save_tensors(run_dir / "zscore.safetensors", {**stats(1.0), **{f"subj01.{k}": a for k, a in stats(1.0).items()},
                                                  **{f"subj02.{k}": a for k, a in stats(5.0).items()}})
    run = open_run(run_dir)
    x = np.full((1, 150), 5.0, np.float32)
    assert run.zscore_for(2).apply(x)[0, 0] == 0.0
    assert run.zscore_for(1).apply(x)[0, 0] == 4.0
    assert run.zscore_for(7) is None


def test_train_cli_bad_input_is_one_line(tmp_path, world):
    root, data, _ = world
    cases = [
        ["train", "--model", "ridge", "--data", str(tmp_path / "missing"), "--subject", "1", "--out", str(tmp_path / "o")],
        ["train", "--model", "ridge", "--data", str(data), "--subject", "9", "--out", str(tmp_path / "o")],
        ["train", "--data", str(data), "--subject", "1", "--set", "no_such_setting=1", "--out", str(tmp_path / "o")],
    ]
    for argv in cases:
        proc = subprocess.run([sys.executable, "-m", "mindsearch.cli.main", *argv], capture_output=True, text=True)
        assert proc.returncode == 2, (argv, proc.stderr)
        errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr
        assert not (tmp_path / "o").exists()


def test_demo_runs_end_to_end(tmp_path):
    res = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "demo"), "--skip-encoder"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "ridge" in out and "Bayes ceiling" in out and "the true image is" in out
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    ridge = summary["results"]["ridge"]
    assert 0.05 < ridge["brain_to_image_top1"] < ridge["ceiling_brain_to_image_top1"]
    rank = summary["search"]["true_rank"]
    assert 1 <= rank <= 1500 and f"the true image ranks {rank} for this single trial" in out
    # a second demo into the same directory replaces the first
    assert CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "demo"), "--skip-encoder"]).exit_code == 0
    # but a directory that is not a demo's is refused
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    res = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "mine")])
    assert res.exit_code == 2 and (tmp_path / "mine" / "keep.txt").exists()


def test_a_run_moved_with_its_data_still_finds_it(tmp_path, world):
    """Runs record the data path relative to themselves; absolute records (older runs) still work."""
    import shutil

    from mindsearch.runs import open_run

    root, data, _ = world
    cfg = json.loads((root / "ridge" / "config.json").read_text())
    assert not cfg["data"]["path"].startswith("/")
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved / data.name)
    shutil.copytree(root / "ridge", moved / "ridge")
    assert open_run(moved / "ridge").data_path == str(moved / data.name)
    res = CliRunner().invoke(cli, ["eval", "retrieval", "--run", str(moved / "ridge"), "--json"])
    assert res.exit_code == 0, res.output
    assert "warning" not in json.loads(res.stdout)
    cfg["data"]["path"] = str(data.resolve())  # a run written before the change
    write_json(moved / "ridge" / "config.json", cfg)
    assert open_run(moved / "ridge").data_path == str(data.resolve())


def test_eval_hubness_is_reported_beside_the_protocol(world):
    root, data, _ = world
    plain = json.loads(CliRunner().invoke(cli, ["eval", "retrieval", "--run", str(root / "ridge"), "--json"]).stdout)
    res = CliRunner().invoke(cli, ["eval", "retrieval", "--run", str(root / "ridge"), "--hubness", "csls", "--json"])
    assert res.exit_code == 0, res.output
    both = json.loads(res.stdout)
    csls = both.pop("csls")
    assert both == plain  # the protocol's numbers are untouched
    assert csls["method"] == "csls" and csls["reference_images"] > 0
    assert 1 / 60 < csls["brain_to_image_top1"] <= 1 and 1 / 60 < csls["image_to_brain_top1"] <= 1
    res = CliRunner().invoke(cli, ["eval", "retrieval", "--brain", "b.npy", "--images", "i.npy", "--hubness", "csls"])
    assert res.exit_code == 2 and "--hubness needs --run" in res.output
