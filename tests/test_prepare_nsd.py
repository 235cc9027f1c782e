"""``mindsearch data prepare-nsd`` on tiny files written here in NSD's exact naming and formats.

The voxel values are checked against an independent masking of the written files (nibabel /
h5py, the mask's C order over (X, Y, Z)); the orientation test encodes each voxel's
coordinates in its value, so a transposed mask cannot pass.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner

nib = pytest.importorskip("nibabel")

from mindsearch.cli.main import cli  # noqa: E402
from mindsearch.data import open_dataset  # noqa: E402
from mindsearch.data.nsd_design import synthetic_arrays  # noqa: E402

BETAS = "betas_fithrf_GLMdenoise_RR"
SHAPE = (6, 5, 4)  # (X, Y, Z): all different, so a transposed mask is caught


# -- writing an NSD tree -----------------------------------------------------------------
def stimpattern() -> np.ndarray:
    """NSD's run structure: 12 runs of 63/62 stimulus trials in 75 slots, 750 per session."""
    p = np.zeros((40, 12, 75), np.uint8)
    for r in range(12):
        p[:, r, 3:3 + (63 if r % 2 == 0 else 62)] = 1
    return p


def write_design(root: Path, real: Path | None = None, **broken) -> Path:
    path = root / "nsddata/experiments/nsd/nsd_expdesign.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    if real is not None:
        shutil.copyfile(real, path)
        return path
    a = synthetic_arrays(1000, 9000, reps=3, n_subjects=8, seed=3)
    mat = {"masterordering": a["masterordering"][None] + 1, "subjectim": a["subjectim"] + 1,
           "sharedix": a["sharedix"][None] + 1, "basiccnt": np.zeros((3, 40)), "stimpattern": stimpattern()}
    mat.update(broken)
    scipy.io.savemat(path, mat)
    return path


def write_mask(root: Path, subject: int, shape=SHAPE, seed=0, space="func1pt8mm") -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = rng.choice(np.array([-1, 0, 1], np.int16), size=shape, p=[0.3, 0.3, 0.4])
    path = root / f"nsddata/ppdata/subj{subject:02d}/{space}/roi/nsdgeneral.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(mask, np.eye(4)).to_filename(str(path))
    return mask


def session_volume(session: int, shape=SHAPE, seed=0) -> np.ndarray:
    """(X, Y, Z, 750) int16, as NSD stores betas (percent signal change x 300)."""
    rng = np.random.default_rng([seed, session])
    return rng.integers(-3000, 3000, size=(*shape, 750), dtype=np.int16)


def write_session(root: Path, subject: int, session: int, vol: np.ndarray, fmt: str = "hdf5",
                  space="func1pt8mm") -> Path:
    d = root / f"nsddata_betas/ppdata/subj{subject:02d}/{space}/{BETAS}"
    d.mkdir(parents=True, exist_ok=True)
    if fmt == "hdf5":
        path = d / f"betas_session{session:02d}.hdf5"
        with h5py.File(path, "w") as f:  # MATLAB's (X, Y, Z, 750) seen by h5py: (750, Z, Y, X)
            f.create_dataset("betas", data=vol.transpose(3, 2, 1, 0))
    else:
        path = d / f"betas_session{session:02d}.nii.gz"
        nib.Nifti1Image(vol, np.eye(4)).to_filename(str(path))
    return path


def write_stimuli(root: Path, size=8) -> Path:
    path = root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("imgBrick", data=brick(size))
    return path


def brick(size=8) -> np.ndarray:
    """A (73000, size, size, 3) uint8 imgBrick of random pictures (14 MB at 8 px)."""
    return np.random.default_rng(73).integers(0, 256, size=(73000, size, size, 3), dtype=np.uint8)


def nsd_tree(root: Path, subject=1, sessions=2, fmt="hdf5", real=None, stimuli=False) -> dict:
    design = write_design(root, real)
    mask = write_mask(root, subject)
    vols = {s: session_volume(s) for s in range(1, sessions + 1)}
    for s, v in vols.items():
        write_session(root, subject, s, v, fmt)
    if stimuli:
        write_stimuli(root)
    return {"design": design, "mask": mask, "vols": vols}


def prepare(root, out, *args, ok=True):
    result = CliRunner().invoke(cli, ["data", "prepare-nsd", "--nsd-root", str(root), "--out", str(out), *args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def inspect(out) -> dict:
    result = CliRunner().invoke(cli, ["data", "inspect", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def masked(vol_xyzt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Independent masking: the mask's voxels in C order over (X, Y, Z), trials as rows, / 300."""
    return (vol_xyzt[mask > 0].T / 300.0).astype(np.float32)


# -- the real design: NSD's counts -------------------------------------------------------
def test_prepare_37_sessions_gives_nsds_counts(tmp_path, nsd_fixtures):
    root, out = tmp_path / "nsd", tmp_path / "out"
    tree = nsd_tree(root, sessions=37, real=nsd_fixtures / "nsd_expdesign.mat")
    result = prepare(root, out, "--subject", "1", "--sessions", "1-37", "--images", "none")
    assert "test      2770 trials   982 images" in result.stdout
    assert "37-session" in result.stdout
    r = inspect(out)
    s = r["per_subject"][0]
    n_vox = int((tree["mask"] > 0).sum())
    assert (s["voxels"], s["sessions"], s["trials"]) == (n_vox, 37, 37 * 750)
    assert (s["train_trials"], s["test_trials"], s["test_images"]) == (24980, 2770, 982)
    assert (out / "wds/subj01/test/0.tar").is_file() and not (out / "wds/subj01/new_test").exists()
    with open_dataset(out) as ds:
        t = ds.trials
        for session in (1, 20, 37):
            rows = t[t["session"] == session]["trial"].to_numpy()
            assert np.array_equal(rows, np.arange((session - 1) * 750, session * 750))
            np.testing.assert_array_equal(ds.voxels(1, rows), masked(tree["vols"][session], tree["mask"]))
    summary = json.loads((out / "prepare_nsd_subj01.json").read_text())
    reps = {int(k): v for k, v in summary["counts"]["repetitions"].items()}
    assert sum(reps.values()) == summary["counts"]["unique_images"] and sum(k * v for k, v in reps.items()) == 27750
    assert summary["counts"]["unique_images"] == 8859 + 982


def test_prepare_40_sessions_nifti_gives_new_test(tmp_path, nsd_fixtures):
    root, out = tmp_path / "nsd", tmp_path / "out"
    nsd_tree(root, subject=7, sessions=40, fmt="nii.gz", real=nsd_fixtures / "nsd_expdesign.mat")
    write_mask(root, 7)  # nsd_tree wrote subject 7's mask already; same seed, same mask
    prepare(root, out, "--subject", "7", "--images", "none")  # default: the 40 sessions subject 7 completed
    s = inspect(out)["per_subject"][0]
    assert (s["trials"], s["test_trials"], s["test_images"], s["repetitions"]) == (30000, 3000, 1000, {"3": 10000})
    assert (out / "wds/subj07/new_test/0.tar").is_file()


# -- orientation and the two input forms -------------------------------------------------
def coordinate_volume(shape=SHAPE) -> np.ndarray:
    """Each voxel's value names its (x, y, z), plus the trial: a transposed read gets other values."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    base = (100 * x + 10 * y + z).astype(np.int16)
    return base[..., None] + (np.arange(750, dtype=np.int16) * 7 % 3000)[None, None, None]


def test_orientation_hdf5_and_nifti_agree_with_the_mask(tmp_path):
    vol = coordinate_volume()
    outs = {}
    for fmt in ("hdf5", "nii.gz"):
        root = tmp_path / fmt
        write_design(root)
        mask = write_mask(root, 1)
        write_session(root, 1, 1, vol, fmt)
        outs[fmt] = tmp_path / f"out-{fmt}"
        prepare(root, outs[fmt], "--subject", "1", "--sessions", "1", "--images", "none")
    xs, ys, zs = np.nonzero(mask > 0)  # C order over (X, Y, Z)
    want = ((100 * xs + 10 * ys + zs)[None, :] + (np.arange(750) * 7 % 3000)[:, None]) / 300.0
    for fmt, out in outs.items():
        with open_dataset(out) as ds:
            got = ds.voxels(1, np.arange(750))
        np.testing.assert_allclose(got, want.astype(np.float32), rtol=0, atol=1e-6, err_msg=fmt)


def test_betas_in_the_wrong_orientation_are_refused(tmp_path):
    root, out = tmp_path / "nsd", tmp_path / "out"
    write_design(root)
    write_mask(root, 1)
    path = write_session(root, 1, 1, session_volume(1))
    with h5py.File(path, "w") as f:  # (750, X, Y, Z): not how NSD's hdf5 files are laid out
        f.create_dataset("betas", data=session_volume(1).transpose(3, 0, 1, 2))
    result = prepare(root, out, "--subject", "1", "--sessions", "1", "--images", "none", ok=False)
    assert result.exit_code == 2
    assert "(Z, Y, X) but the mask is (6, 5, 4)" in result.stderr
    assert not (out / "betas_all_subj01_fp32_renorm.hdf5").exists()


# -- resuming, checksums, images, several subjects ---------------------------------------
def test_interrupted_preparation_resumes_per_session(tmp_path, monkeypatch):
    from mindsearch.data import nsd_prepare

    root = tmp_path / "nsd"
    tree = nsd_tree(root, sessions=3)
    fresh = nsd_prepare.prepare_nsd(root, 1, tmp_path / "fresh", sessions="1-3", images=None)

    real_blocks = nsd_prepare.SessionBetas.blocks

    def dying(self, n=nsd_prepare.BLOCK_TRIALS):
        for i, item in enumerate(real_blocks(self, n)):
            if self.session == 3 and i == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(nsd_prepare.SessionBetas, "blocks", dying)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        nsd_prepare.prepare_nsd(root, 1, out, sessions="1-3", images=None)
    work = out / ".prepare-nsd/subj01"
    assert sorted(p.name for p in work.glob("*.npy")) == ["session_01.npy", "session_02.npy"]
    assert not (out / "betas_all_subj01_fp32_renorm.hdf5").exists()
    monkeypatch.setattr(nsd_prepare.SessionBetas, "blocks", real_blocks)
    seen = []
    resumed = nsd_prepare.prepare_nsd(root, 1, out, sessions="1-3", images=None, log=seen.append)
    assert any("resumed: 2 of 3" in m for m in seen)
    assert resumed["outputs"]["betas"]["values_sha256"] == fresh["outputs"]["betas"]["values_sha256"]
    assert not (out / ".prepare-nsd").exists()
    # the summary's input checksums are the files' own
    for rec in resumed["inputs"]["betas"]:
        data = (root / rec["file"]).read_bytes()
        assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["size"] == len(data)
    assert resumed["inputs"]["design"]["sha256"] == hashlib.sha256(tree["design"].read_bytes()).hexdigest()
    # a second run with the same settings does nothing
    again = []
    nsd_prepare.prepare_nsd(root, 1, out, sessions="1-3", images=None, log=again.append)
    assert any("already prepared" in m for m in again)
    # changed betas are noticed: the preparation is redone, and its checksum changes
    write_session(root, 1, 2, session_volume(2, seed=7))  # same size, new values
    redone = []
    changed = nsd_prepare.prepare_nsd(root, 1, out, sessions="1-3", images=None, log=redone.append)
    assert not any("already prepared" in m for m in redone)
    assert changed["outputs"]["betas"]["values_sha256"] != resumed["outputs"]["betas"]["values_sha256"]


def test_images_and_a_second_subject_share_the_directory(tmp_path):
    from PIL import Image

    root, out = tmp_path / "nsd", tmp_path / "out"
    nsd_tree(root, sessions=1, stimuli=True)
    write_mask(root, 2, seed=5)
    write_session(root, 2, 1, session_volume(1, seed=9))
    prepare(root, out, "--subject", "1", "--sessions", "1", "--images", "16")
    prepare(root, out, "--subject", "2", "--sessions", "1", "--images", "16")
    r = inspect(out)
    assert r["subjects"] == [1, 2] and r["images"]["shape"] == [3, 16, 16]
    with open_dataset(out) as ds:
        t = ds.trials
        ids = np.unique(t["image_id"])
        with h5py.File(out / "images_16_float16.hdf5", "r") as f:
            assert int(f["written"][:].sum()) == len(ids)
        pictures = brick()
        for i in (ids[0], ids[-1], t[t["subject"] == 1]["image_id"].iloc[5]):
            want = np.asarray(Image.fromarray(pictures[i]).resize((16, 16), Image.Resampling.BICUBIC))
            np.testing.assert_allclose(ds.images([i])[0], want.transpose(2, 0, 1) / 255.0, atol=1e-3)
    manifest = json.loads((out / "mindsearch.json").read_text())
    assert manifest["subjects"] == [1, 2] and manifest["source"] == "nsd"


def test_responses_fill_the_behaviour_columns(tmp_path):
    import io
    import tarfile

    from mindsearch.data.nsd_design import load_expdesign

    root, out = tmp_path / "nsd", tmp_path / "out"
    tree = nsd_tree(root, sessions=1)
    d = load_expdesign(tree["design"])
    ids = d["subjectim"][0, d["masterordering"][:750]]
    runs = np.repeat(np.arange(1, 13), [63, 62] * 6)
    trial = np.concatenate([np.arange(1, n + 1) for n in [63, 62] * 6])
    resp = root / "nsddata/ppdata/subj01/behav/responses.tsv"
    resp.parent.mkdir(parents=True)
    cols = {"SUBJECT": 1, "SESSION": 1, "RUN": runs, "TRIAL": trial, "73KID": ids + 1, "10KID": 0,
            "TIME": np.arange(750) + 0.5, "ISOLD": 0, "ISCORRECT": 1, "RT": np.linspace(300, 900, 750),
            "CHANGEMIND": 0, "ISOLDCURRENT": 0, "ISCORRECTCURRENT": 1, "TOTAL1": 1, "TOTAL2": 0, "BUTTON": 1}
    import pandas as pd

    pd.DataFrame(cols).to_csv(resp, sep="\t", index=False)
    prepare(root, out, "--subject", "1", "--sessions", "1", "--images", "none")
    with tarfile.open(out / "wds/subj01/train/0.tar") as tf:
        m = tf.getmembers()[0]
        row = np.load(io.BytesIO(tf.extractfile(m).read()))[0]
    t = int(row[5])
    assert row[0] == ids[t] and row[3] == runs[t] and row[4] == trial[t] and np.isclose(row[9], cols["RT"][t])
    cols["73KID"] = ids + 2  # responses that disagree with the design
    pd.DataFrame(cols).to_csv(resp, sep="\t", index=False)
    bad = prepare(root, tmp_path / "out2", "--subject", "1", "--sessions", "1", "--images", "none", ok=False)
    assert bad.exit_code == 2 and "disagrees with the design" in bad.stderr


# -- clear one-line errors, nothing written ----------------------------------------------
def _error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("case", ["space", "missing-session", "mask-shape", "design", "not-a-mat", "protocol",
                                  "float-betas", "not-empty", "no-stimuli"])
def test_errors_are_one_line(tmp_path, case):
    root, out = tmp_path / "nsd", tmp_path / "out"
    nsd_tree(root, sessions=2)
    args = ["--subject", "1", "--sessions", "1-2", "--images", "none"]
    if case == "space":
        args += ["--space", "MNI"]
        want = "space 'MNI' is not supported"
    elif case == "missing-session":
        (root / f"nsddata_betas/ppdata/subj01/func1pt8mm/{BETAS}/betas_session02.hdf5").unlink()
        want = "betas_session02.hdf5: betas of session 2 not found"
    elif case == "mask-shape":
        write_mask(root, 1, shape=(7, 5, 4))
        want = "but the mask is (7, 5, 4)"
    elif case == "design":
        write_design(root, masterordering=np.arange(1, 1001)[None])
        want = "not NSD's experiment design: masterordering has 1000 entries"
    elif case == "protocol":  # NSD's shapes, but not NSD's trial order: 37 sessions give other counts
        for s in range(3, 38):
            write_session(root, 1, s, session_volume(1))
        args[3] = "1-37"
        want = "not NSD's experiment design: 37 sessions give"
    elif case == "not-a-mat":
        (root / "nsddata/experiments/nsd/nsd_expdesign.mat").write_text("masterordering = 1:30000")
        want = "not NSD's experiment design: not a readable .mat file"
    elif case == "float-betas":
        path = root / f"nsddata_betas/ppdata/subj01/func1pt8mm/{BETAS}/betas_session01.hdf5"
        with h5py.File(path, "w") as f:
            f.create_dataset("betas", data=session_volume(1).transpose(3, 2, 1, 0).astype(np.float32))
        want = "NSD's are int16"
    elif case == "not-empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        want = "OUT is not empty"
    else:
        args = args[:-1] + ["224"]
        want = "stimuli not found (download them, or pass --images none)"
    line = _error(prepare(root, out, *args, ok=False))
    assert want in line, line
    assert not (out / "betas_all_subj01_fp32_renorm.hdf5").exists() and not (out / "wds").exists()


# -- from NSD's files to a trained, evaluated run ----------------------------------------
def test_prepare_targets_train_eval(tmp_path):
    """prepare-nsd -> data targets -> train ridge -> eval retrieval, on betas that carry the
    targets (voxels = a linear read-out of each trial's image embedding, plus noise)."""
    from test_brain_diffuser import tiny_vit

    from mindsearch.data.nsd_design import load_expdesign

    cfg = tiny_vit(tmp_path)
    root, out = tmp_path / "nsd", tmp_path / "out"
    tree = nsd_tree(root, sessions=3, stimuli=True)
    prepare(root, out, "--subject", "1", "--sessions", "1-3", "--images", "16")
    result = CliRunner().invoke(cli, ["data", "targets", str(out), "--name", "tiny", "--model", str(cfg),
                                      "--weights", "random:2"])
    assert result.exit_code == 0, result.output
    emb = np.load(out / "targets/tiny.npy").astype(np.float32)[:, 0]
    lookup = dict(zip(np.load(out / "targets/tiny_ids.npy").tolist(), emb))
    d = load_expdesign(tree["design"])
    shown = d["subjectim"][0, d["masterordering"][:3 * 750]]
    rng = np.random.default_rng(11)
    inside = tree["mask"] > 0
    read_out = rng.normal(size=(16, int(inside.sum())))
    for s in (1, 2, 3):
        feats = np.stack([(lookup[int(i)] - emb.mean(0)) / emb.std(0) for i in shown[(s - 1) * 750:s * 750]])
        vol = np.zeros((*SHAPE, 750), np.int16)
        vol[inside] = np.clip(300 * (feats @ read_out + 0.5 * rng.normal(size=(750, inside.sum()))), -32000,
                              32000).astype(np.int16).T
        write_session(root, 1, s, vol)
    prepare(root, out, "--subject", "1", "--sessions", "1-3", "--images", "16", "--force")
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--model", "ridge", "--data", str(out), "--subject", "1",
                                      "--out", str(run)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["eval", "retrieval", "--run", str(run), "--json", "--pool", "50",
                                      "--loops", "5"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    n_test = len(np.unique(shown[d["masterordering"][:2250] < 1000]))
    assert scores["n"] == n_test and scores["brain_to_image_top1"] > 0.3  # chance: 1/50
