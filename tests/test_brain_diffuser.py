"""Brain-Diffuser's processed arrays as a dataset: row order, pre-averaging, ridge and eval on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner

from mindsearch.cli.main import cli
from mindsearch.data import open_dataset


def write_bd(root: Path, subject: int, n_train: int, n_test: int, n_voxels=24, dim=8, ids=None, stim=True,
             seed=0) -> dict:
    """``processed_data/subjNN/`` as prepare_nsddata.py leaves it (float64, x300 scale), voxels a
    linear read-out of per-image targets plus noise, and ``targets/`` keyed by image id."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    ids = np.arange(n) if ids is None else np.asarray(ids)
    targets = rng.normal(size=(n, 1, dim)).astype(np.float32)
    weights = rng.normal(size=(dim, n_voxels))
    fmri = 300 * (targets[:, 0] @ weights + 0.3 * rng.normal(size=(n, n_voxels)))
    d = root / "processed_data" / f"subj{subject:02d}"
    d.mkdir(parents=True)
    np.save(d / f"nsd_train_fmriavg_nsdgeneral_sub{subject}.npy", fmri[:n_train])
    np.save(d / f"nsd_test_fmriavg_nsdgeneral_sub{subject}.npy", fmri[n_train:])
    pictures = rng.integers(0, 256, size=(n, 5, 5, 3)).astype(np.float64)
    if stim:
        np.save(d / f"nsd_train_stim_sub{subject}.npy", pictures[:n_train])
        np.save(d / f"nsd_test_stim_sub{subject}.npy", pictures[n_train:])
    (root / "targets").mkdir(exist_ok=True)
    order = np.argsort(ids)
    np.save(root / "targets" / "clip.npy", targets[order])
    np.save(root / "targets" / "clip_ids.npy", ids[order].astype(np.int64))
    return {"fmri": fmri, "ids": ids, "pictures": pictures, "targets": targets}


def brain_diffuser_order(design: Path, sub: int):
    """prepare_nsddata.py's loop, as written there (dict insertion order = first appearance)."""
    stim_order = scipy.io.loadmat(design, squeeze_me=True)
    sig_train, sig_test = {}, {}
    for idx in range(37 * 750):
        nsd_id = stim_order["subjectim"][sub - 1, stim_order["masterordering"][idx] - 1] - 1
        target = sig_train if stim_order["masterordering"][idx] > 1000 else sig_test
        target.setdefault(nsd_id, []).append(idx)
    return list(sig_train), list(sig_test)


def tiny_vit(folder: Path) -> Path:
    """A tiny random open_clip config (the image-encoder tests' TINY), as a model-config JSON."""
    pytest.importorskip("open_clip")
    from test_image_encoders import TINY

    cfg = folder / "mindsearch-test-data-vit.json"
    cfg.write_text(json.dumps(TINY))
    return cfg


@pytest.fixture
def no_design(monkeypatch):
    monkeypatch.setenv("MINDSEARCH_NSD_EXPDESIGN", "/nonexistent/nsd_expdesign.mat")


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_rows_get_nsd_ids_in_brain_diffusers_order(tmp_path, nsd_fixtures):
    train, test = brain_diffuser_order(nsd_fixtures / "nsd_expdesign.mat", 1)
    assert (len(train), len(test)) == (8859, 982)
    root = tmp_path / "data"
    built = write_bd(root, 1, 8859, 982, n_voxels=6, ids=train + test)
    shutil.copyfile(nsd_fixtures / "nsd_expdesign.mat", root / "nsd_expdesign.mat")
    r = json.loads(invoke("data", "inspect", root, "--json").stdout)
    assert r["layout"] == "brain-diffuser" and r["trials"] == 9841 and r["test_images"] == 982
    s = r["per_subject"][0]
    assert (s["train_trials"], s["test_trials"], s["repetitions"]) == (8859, 982, {"1": 9841})
    with open_dataset(root) as ds:
        assert ds.manifest["pre_averaged"] and ds.manifest["image_ids"] == "nsd"
        t = ds.trials
        assert list(t["image_id"]) == train + test and list(t["split"]) == ["train"] * 8859 + ["test"] * 982
        np.testing.assert_allclose(ds.voxels(1, [0, 9000]), built["fmri"][[0, 9000]], rtol=1e-6)
        np.testing.assert_allclose(ds.images([test[3]])[0], built["pictures"][8859 + 3].transpose(2, 0, 1) / 255,
                                   rtol=1e-6)
        assert ds.has_targets and ds.targets([train[0]]).shape == (1, 1, 8)


def test_row_counts_that_disagree_with_the_design_are_refused(tmp_path, nsd_fixtures):
    root = tmp_path / "data"
    write_bd(root, 1, 100, 20, stim=False)
    shutil.copyfile(nsd_fixtures / "nsd_expdesign.mat", root / "nsd_expdesign.mat")
    result = CliRunner().invoke(cli, ["data", "inspect", str(root)])
    assert result.exit_code == 2
    assert "100 train / 20 test rows, but NSD's design gives subject 1 8859 / 982" in result.stderr


def test_ridge_trains_and_evaluates_on_the_arrays(tmp_path, no_design):
    root = tmp_path / "bd"
    built = write_bd(root, 2, 400, 100)
    with open_dataset(root) as ds:
        assert ds.layout == "brain-diffuser" and ds.manifest["image_ids"] == "row"
        np.testing.assert_array_equal(ds.trials["image_id"], np.arange(500))
        np.testing.assert_allclose(ds.images([7])[0], built["pictures"][7].transpose(2, 0, 1) / 255, rtol=1e-6)
    run = tmp_path / "run"
    invoke("train", "--model", "ridge", "--data", root, "--subject", 2, "--out", run)
    scores = json.loads(invoke("eval", "retrieval", "--run", run, "--json", "--pool", 50, "--loops", 5).stdout)
    # 8-d targets read linearly from 24 voxels with modest noise: far above chance (1/50)
    assert scores["n"] == 100 and scores["brain_to_image_top1"] > 0.5 and scores["image_to_brain_top1"] > 0.5


def test_layout_roots_and_missing_halves(tmp_path, no_design):
    root = tmp_path / "bd"
    write_bd(root, 5, 30, 10, stim=False)
    sub = root / "processed_data" / "subj05"
    for path in (root, root / "processed_data", sub):
        with open_dataset(path) as ds:
            assert ds.subjects == [5] and len(ds.trials) == 40 and not ds.has_images
    (sub / "nsd_test_fmriavg_nsdgeneral_sub5.npy").unlink()
    result = CliRunner().invoke(cli, ["data", "inspect", str(root)])
    assert result.exit_code == 2 and "no nsd_test_fmriavg_nsdgeneral_sub5.npy" in result.stderr


def test_data_targets_embeds_the_stimuli(tmp_path, no_design):
    cfg = tiny_vit(tmp_path)
    root = tmp_path / "bd"
    write_bd(root, 1, 12, 4)
    shutil.rmtree(root / "targets")
    out = invoke("data", "targets", root, "--name", "tiny", "--model", cfg, "--weights", "random:1",
                 "--batch-size", 5).stdout
    assert "16 images x 1 x 16" in out
    emb = np.load(root / "targets" / "tiny.npy")
    ids = np.load(root / "targets" / "tiny_ids.npy")
    assert emb.shape == (16, 1, 16) and emb.dtype == np.float16 and list(ids) == list(range(16))
    from mindsearch.data.embed_targets import _pil
    from mindsearch.image_encoders import ImageEncoder

    enc = ImageEncoder.create(cfg, "final", "random:1")
    with open_dataset(root) as ds:
        assert ds.has_targets and ds.target_space["dim"] == 16
        want = enc.encode(enc.collate([enc.prepare(_pil(ds.images([9])[0]))]))
    np.testing.assert_allclose(emb[9].astype(np.float32), want[0], rtol=2e-3, atol=2e-3)
