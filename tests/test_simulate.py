"""The simulator writes the documented layout, deterministically, with NSD's structure."""

from __future__ import annotations

import io
import tarfile

import h5py
import numpy as np
import pytest

from mindsearch.errors import MindsearchError
from mindsearch.io import load_tensors, read_json
from mindsearch.simulate import simulate

TINY = dict(n_voxels=200, n_shared=60, n_unique=90, trials_per_session=150, image_size=32,
            mc_min_draws=10, mc_max_draws=60)


def read_shard(path) -> dict:
    """key -> {ext: bytes}"""
    out: dict = {}
    with tarfile.open(path) as t:
        for m in t.getmembers():
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = t.extractfile(m).read()
    return out


def load_npy(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def behav_rows(root, s) -> tuple[np.ndarray, np.ndarray]:
    rows, test = [], []
    for tar in sorted((root / "wds" / f"subj{s:02d}").glob("*/*.tar")):
        for key, files in read_shard(tar).items():
            b = load_npy(files["behav.npy"])
            assert b.shape == (1, 17) and b.dtype == np.float64
            assert key == f"sample{int(b[0, 5]):06d}"
            rows.append(b[0])
            test.append(tar.parent.name == "new_test")
    rows, test = np.array(rows), np.array(test)
    order = np.argsort(rows[:, 5])
    return rows[order], test[order]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "world"
    return simulate(out, "small", subjects=[1, 2], seed=7, **TINY)


def test_files_shapes_dtypes(tiny):
    m = read_json(tiny / "mindsearch.json")
    assert m["format"] == "mindsearch-dataset/1" and m["layout"] == "mindeye2" and m["simulated"]
    assert m["subjects"] == [1, 2] and m["targets"] == "sim" and m["seed"] == 7
    with h5py.File(tiny / "images_32_float16.hdf5") as f:
        im = f["images"]
        assert im.dtype == np.float16 and im.shape[1:] == (3, 32, 32)
    ids = np.load(tiny / "targets" / "sim_ids.npy")
    t = np.load(tiny / "targets" / "sim.npy")
    assert ids.dtype == np.int64 and np.all(np.diff(ids) > 0)
    assert t.shape == (len(ids), 9, 64) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t[:, 0], axis=1), 1.0, rtol=1e-4)  # token 0 pooled, unit
    space = read_json(tiny / "targets" / "sim.json")
    assert space["model"] == "sim-v1" and space["tokens"] == 9 and space["dim"] == 64
    assert len(space["weights"]) == 16
    with h5py.File(tiny / "images_32_float16.hdf5") as f:
        px = f["images"][np.sort(ids[:20])].astype(np.float32)
    assert px.min() >= 0 and px.max() <= 1 and px.std() > 0.05
    gt = read_json(tiny / "ground_truth.json")
    assert gt["protocol"] == {"pool": 300, "loops": 30, "seed": 42}
    for s, v in ((1, 200), (2, 182)):  # NSD's voxel-count ratios
        with h5py.File(tiny / f"betas_all_subj{s:02d}_fp32_renorm.hdf5") as f:
            assert f["betas"].shape == (450, v) and f["betas"].dtype == np.float32
        g = gt["subjects"][str(s)]
        assert g["n_test_images"] == 60
        for mode in ("average_betas", "single_trial"):
            for k in ("brain_to_image_top1", "image_to_brain_top1"):
                assert 0 < g[mode][k] <= 1 and 0 <= g[mode][k + "_se"] < 0.05  # Monte-Carlo SE: small
        assert g["average_betas"]["brain_to_image_top1"] >= g["single_trial"]["brain_to_image_top1"]
        truth = load_tensors(tiny / "truth" / f"subj{s:02d}.safetensors")
        assert truth["test_means"].shape == (60, v) and truth["session_offset"].shape == (3, v)
        assert truth["noise_load"].shape[0] == v


def test_behav_consistent_with_betas(tiny):
    for s in (1, 2):
        rows, in_test_tar = behav_rows(tiny, s)
        assert len(rows) == 450 and np.array_equal(rows[:, 5], np.arange(450))  # every trial once
        assert np.all(rows[:, 1] == s) and np.all(rows[:, 3] == 0)
        assert np.array_equal(rows[:, 5], (rows[:, 2] - 1) * 150 + rows[:, 4])
        assert np.array_equal(rows[:, 16] == 1, in_test_tar)  # new_test holds exactly the shared
        assert np.all(rows[:, [6, 7, 8, 15]] == -1)
        _, counts = np.unique(rows[:, 0], return_counts=True)
        assert np.all(counts == 3)  # three repetitions of every image
        # train shard k holds session k+1's training trials
        for tar in (tiny / "wds" / f"subj{s:02d}" / "train").glob("*.tar"):
            sess = {load_npy(f["behav.npy"])[0, 2] for f in read_shard(tar).values()}
            assert sess == {int(tar.stem) + 1}
    r1, _ = behav_rows(tiny, 1)
    r2, _ = behav_rows(tiny, 2)
    shared1 = np.unique(r1[r1[:, 16] == 1, 0])
    shared2 = np.unique(r2[r2[:, 16] == 1, 0])
    assert np.array_equal(shared1, shared2) and len(shared1) == 60
    assert not set(r1[r1[:, 16] == 0, 0]) & set(r2[r2[:, 16] == 0, 0])
    t1 = load_tensors(tiny / "truth" / "subj01.safetensors")
    assert np.array_equal(t1["test_image_ids"], shared1.astype(np.int64))
    # shared images are the same pixels and targets for everyone (one image file, one id each)
    ids = np.load(tiny / "targets" / "sim_ids.npy")
    assert set(shared1.astype(int)) <= set(ids.tolist())


def test_deterministic(tiny, tmp_path):
    again = simulate(tmp_path / "again", "small", subjects=[1, 2], seed=7, **TINY)
    other = simulate(tmp_path / "other", "small", subjects=[1], seed=8, **TINY)
    for name in ("betas_all_subj01_fp32_renorm.hdf5", "betas_all_subj02_fp32_renorm.hdf5"):
        with h5py.File(tiny / name) as a, h5py.File(again / name) as b:
            assert np.array_equal(a["betas"][:], b["betas"][:])
    assert np.array_equal(np.load(tiny / "targets/sim.npy"), np.load(again / "targets/sim.npy"))
    assert read_json(tiny / "ground_truth.json") == read_json(again / "ground_truth.json")
    with h5py.File(tiny / "betas_all_subj01_fp32_renorm.hdf5") as a, \
            h5py.File(other / "betas_all_subj01_fp32_renorm.hdf5") as b:
        assert not np.array_equal(a["betas"][:], b["betas"][:])
    assert read_json(other / "targets/sim.json")["weights"] != read_json(tiny / "targets/sim.json")["weights"]


def test_ncsnr_matches_drawn(tiny):
    """Estimate ncsnr from the three repetitions (as NSD does) and compare with the truth."""
    truth = load_tensors(tiny / "truth" / "subj01.safetensors")
    rows, _ = behav_rows(tiny, 1)
    with h5py.File(tiny / "betas_all_subj01_fp32_renorm.hdf5") as f:
        b = f["betas"][:].astype(np.float64)
    s = rows[:, 2].astype(int) - 1
    b = (b - truth["session_offset"][s]) / truth["session_scale"][s]
    ids = rows[:, 0]
    reps = np.stack([b[ids == i] for i in np.unique(ids)])  # (images, 3, V)
    noise_var = reps.var(axis=1, ddof=1).mean(0)
    signal_var = np.maximum(reps.mean(1).var(0, ddof=1) - noise_var / 3, 0)
    est = np.sqrt(signal_var / noise_var)
    true = truth["ncsnr"]
    np.testing.assert_allclose(noise_var.mean(), 1.0, rtol=0.05)  # noise sd 1 by construction
    assert np.corrcoef(est, true)[0, 1] > 0.7
    assert abs(np.median(est) / np.median(true) - 1) < 0.2
    assert 0.3 < np.median(true) < 0.55  # NSD's nsdgeneral median is about 0.4


def test_existing_out_refused(tiny):
    with pytest.raises(MindsearchError, match="not empty"):
        simulate(tiny, "small", **TINY)


def test_cli_refuses_existing_out(tiny):
    from click.testing import CliRunner

    from mindsearch.cli.main import cli

    res = CliRunner().invoke(cli, ["simulate", str(tiny)])
    assert res.exit_code == 2
    assert "error:" in res.output and "not empty" in res.output and "Traceback" not in res.output


def test_bad_settings(tmp_path):
    with pytest.raises(MindsearchError, match="unknown simulate setting"):
        simulate(tmp_path / "x", "small", n_voxel=3)
    with pytest.raises(MindsearchError, match="preset"):
        simulate(tmp_path / "x", "huge")
    with pytest.raises(MindsearchError, match="subjects"):
        simulate(tmp_path / "x", "small", subjects="1,x")
    assert not (tmp_path / "x").exists()


def test_cli_writes(tmp_path):
    from click.testing import CliRunner

    from mindsearch.cli.main import cli

    args = ["simulate", str(tmp_path / "w"), "--subjects", "2", "--seed", "1", "--layout", "both"]
    for k, v in TINY.items():
        args += ["--set", f"{k}={v}"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    root = tmp_path / "w"
    assert (root / "betas_all_subj02_fp32_renorm.hdf5").is_file()
    me1 = root / "mindeye1"
    assert read_json(me1 / "mindsearch.json")["layout"] == "mindeye1"
    assert (me1 / "targets" / "sim.npy").is_file()
    train = read_shard(me1 / "train" / "train_subj02_0.tar")
    test = read_shard(me1 / "test" / "test_subj02_0.tar")
    assert len(train) == 90 and len(test) == 60
    truth = load_tensors(root / "truth" / "subj02.safetensors")
    test_ids = sorted(int(load_npy(f["coco73k.npy"])) for f in test.values())
    assert test_ids == truth["test_image_ids"].tolist()
    f = next(iter(test.values()))
    vox = load_npy(f["nsdgeneral.npy"])
    assert vox.shape == (3, 182) and vox.dtype == np.float32
    assert load_npy(f["trial.npy"]).shape == (3,)
    from PIL import Image

    assert Image.open(io.BytesIO(f["png"])).size == (32, 32)
    # session-wise z-scored with training statistics: training samples are near mean 0, sd 1
    allv = np.concatenate([load_npy(x["nsdgeneral.npy"]) for x in train.values()])
    assert abs(allv.mean()) < 0.05 and abs(allv.std() - 1) < 0.05


def test_mindeye1_only_layout(tmp_path):
    root = simulate(tmp_path / "me1", "small", layout="mindeye1", **TINY)
    assert read_json(root / "mindsearch.json")["layout"] == "mindeye1"
    assert not list(root.glob("betas_*.hdf5")) and not (root / "wds").exists()
    assert not (root / ".work").exists()
    assert (root / "train" / "train_subj01_0.tar").is_file() and (root / "test" / "test_subj01_0.tar").is_file()
    assert (root / "ground_truth.json").is_file() and (root / "targets" / "sim.npy").is_file()


def test_force_replaces(tiny, tmp_path):
    out = simulate(tmp_path / "f", "small", seed=1, **TINY)
    (out / "marker").write_text("old")
    simulate(out, "small", seed=2, force=True, **TINY)
    assert not (out / "marker").exists() and read_json(out / "mindsearch.json")["seed"] == 2
