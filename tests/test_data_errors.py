"""Every kind of bad input is one MindsearchError naming the file, and exit 2 through the CLI."""

from __future__ import annotations

import tarfile

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_data_build import behav_row, make_mindeye1, make_mindeye2, make_plain, npy_bytes, write_tar

from mindsearch.data import open_dataset
from mindsearch.errors import MindsearchError

BETAS = "betas_all_subj01_fp32_renorm.hdf5"


def me2(root):
    make_mindeye2(root, subjects=(1,), n_voxels=(6,))
    return root


def rewrite_betas(root, **kw):
    with h5py.File(root / BETAS, "r") as f:
        betas = f["betas"][:]
    with h5py.File(root / BETAS, "w") as f:
        f.create_dataset(kw.get("key", "betas"), data=kw["fn"](betas))


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def append_sample(tar_path, key, fields):
    with tarfile.open(tar_path, "r") as tf:
        old = [(m.name.split(".", 1)[0], m.name.split(".", 1)[1], tf.extractfile(m).read()) for m in tf]
    samples = {}
    for k, field, data in old:
        samples.setdefault(k, {})[field] = data
    write_tar(tar_path, [*samples.items(), (key, fields)])


# Each case: build a dataset under root, break it; return (what to open, file the error must name, message regex).
def missing_path(root):
    return root / "nope", root / "nope", "no such file"


def betas_missing_key(root):
    me2(root)
    rewrite_betas(root, key="data", fn=lambda b: b)
    return root, root / BETAS, "no dataset 'betas'"


def betas_wrong_shape(root):
    me2(root)
    rewrite_betas(root, fn=lambda b: b[:, :, None])
    return root, root / BETAS, "must be 2-D"


def betas_wrong_dtype(root):
    me2(root)
    rewrite_betas(root, fn=lambda b: (b * 10).astype(np.int32))
    return root, root / BETAS, "floating point"


def betas_nan(root):
    me2(root)

    def poke(b):
        b[7, 2] = np.nan
        return b

    rewrite_betas(root, fn=poke)
    return root, root / BETAS, "non-finite .* row 7"


def betas_truncated(root):
    me2(root)
    truncate(root / BETAS)
    return root, root / BETAS, "not a readable HDF5"


def behaviour_tar_truncated(root):
    me2(root)
    tar = root / "wds/subj01/train/1.tar"
    truncate(tar, 0.6)
    return root, tar, "not a readable tar"


def behaviour_past_betas(root):
    me2(root)
    tar = root / "wds/subj01/train/0.tar"
    append_sample(tar, "zzz", {"behav.npy": npy_bytes(behav_row(3, 1, 1, 0, 36, 0))})
    return root, tar, "trial 36, past the end"


def behaviour_duplicated_trial(root):
    me2(root)
    tar = root / "wds/subj01/train/2.tar"
    append_sample(tar, "zzz", {"behav.npy": npy_bytes(behav_row(3, 1, 1, 0, 0, 0))})
    return root, tar, "trial 0 of subject 1 appears twice"


def behaviour_wrong_shape(root):
    me2(root)
    tar = root / "wds/subj01/train/0.tar"
    append_sample(tar, "zzz", {"behav.npy": npy_bytes(np.zeros((1, 5)))})
    return root, tar, r"expected \(1, 17\)"


def behaviour_sample_without_behav(root):
    me2(root)
    tar = root / "wds/subj01/new_test/0.tar"
    append_sample(tar, "zzz", {"past_behav.npy": npy_bytes(np.zeros((15, 17)))})
    return root, tar, "has no behav.npy"


def images_wrong_shape(root):
    me2(root)
    with h5py.File(root / "images_4_float16.hdf5", "w") as f:
        f.create_dataset("images", data=np.zeros((20, 4, 4), np.float16))
    return root, root / "images_4_float16.hdf5", r"\(N, 3, H, W\)"


def target_ids_mismatch(root):
    me2(root)
    np.save(root / "targets/sim_ids.npy", np.arange(3))
    return root, root / "targets/sim_ids.npy", "target ids must be"


def manifest_not_json(root):
    me2(root)
    (root / "mindsearch.json").write_text("{layout: ")
    return root, root / "mindsearch.json", "not valid JSON"


def mindeye1_truncated(root):
    make_mindeye1(root)
    tar = root / "train/train_subj01_1.tar"
    truncate(tar, 0.7)
    return root, tar, "not a readable tar"


def mindeye1_voxel_count_mismatch(root):
    make_mindeye1(root)
    tar = root / "test/test_subj01_0.tar"
    append_sample(tar, "zzz", {"nsdgeneral.npy": npy_bytes(np.zeros((3, 4), np.float32)),
                               "coco73k.npy": npy_bytes(np.array([5]))})
    return root, tar, "voxel count mismatch"


def mindeye1_partial_nan(root):
    make_mindeye1(root)
    tar = root / "val/val_subj01_0.tar"
    vox = np.zeros((3, 9), np.float32)
    vox[1, 3] = np.inf
    append_sample(tar, "zzz", {"nsdgeneral.npy": npy_bytes(vox), "coco73k.npy": npy_bytes(np.array([5]))})
    return root, tar, "non-finite"


def mindeye1_missing_key(root):
    make_mindeye1(root)
    tar = root / "val/val_subj01_0.tar"
    append_sample(tar, "zzz", {"nsdgeneral.npy": npy_bytes(np.zeros((3, 9), np.float32))})
    return root, tar, "has no coco73k.npy"


def plain_missing_column(root):
    make_plain(root)
    t = pd.read_csv(root / "trials.csv").drop(columns="image_id")
    t.to_csv(root / "trials.csv", index=False)
    return root, root / "trials.csv", "missing column.*image_id"


def plain_duplicated_trial(root):
    make_plain(root)
    t = pd.read_csv(root / "trials.csv")
    pd.concat([t, t.iloc[:1]]).to_csv(root / "trials.csv", index=False)
    return root, root / "trials.csv", "appears twice"


def plain_bad_split(root):
    make_plain(root)
    t = pd.read_csv(root / "trials.csv")
    t.loc[t.index[3], "split"] = "holdout"
    t.to_csv(root / "trials.csv", index=False)
    return root, root / "trials.csv", "unknown split value 'holdout'"


def plain_trial_past_voxels(root):
    make_plain(root)
    t = pd.read_csv(root / "trials.csv")
    t.loc[t.index[0], "trial"] = 500
    t.to_csv(root / "trials.csv", index=False)
    return root, root / "trials.csv", "points past the end"


def plain_inf_voxels(root):
    make_plain(root)
    v = np.load(root / "voxels_subj01.npy")
    v[4, 1] = -np.inf
    np.save(root / "voxels_subj01.npy", v)
    return root, root / "voxels_subj01.npy", "non-finite .* row 4"


def plain_truncated_npy(root):
    make_plain(root)
    truncate(root / "voxels_subj01.npy")
    return root, root / "voxels_subj01.npy", "not a readable .npy"


def plain_two_files_one_subject(root):
    make_plain(root)
    np.save(root / "voxels_subj02.npy", np.zeros((30, 5), np.float32))
    return root, root / "voxels_subj02.npy", "two voxel files"


def plain_no_voxel_file(root):
    make_plain(root)
    (root / "voxels_subj02.h5").unlink()
    return root, root, "no voxel file for subject 2"


def plain_h5_wrong_key(root):
    make_plain(root)
    with h5py.File(root / "voxels_subj02.h5", "w") as f:
        f.create_dataset("data", data=np.zeros((30, 8), np.float32))
    return root, root / "voxels_subj02.h5", "no dataset 'voxels' or 'betas'"


CASES = [missing_path, betas_missing_key, betas_wrong_shape, betas_wrong_dtype, betas_nan, betas_truncated,
         behaviour_tar_truncated, behaviour_past_betas, behaviour_duplicated_trial, behaviour_wrong_shape,
         behaviour_sample_without_behav, images_wrong_shape, target_ids_mismatch, manifest_not_json,
         mindeye1_truncated, mindeye1_voxel_count_mismatch, mindeye1_partial_nan, mindeye1_missing_key,
         plain_missing_column, plain_duplicated_trial, plain_bad_split, plain_trial_past_voxels,
         plain_inf_voxels, plain_truncated_npy, plain_two_files_one_subject, plain_no_voxel_file,
         plain_h5_wrong_key]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_bad_input_names_the_file(tmp_path, case):
    target, blamed, pattern = case(tmp_path / "ds")
    with pytest.raises(MindsearchError, match=pattern) as info:
        open_dataset(target)
    assert info.value.path == str(blamed)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", CASES[:: 3], ids=lambda c: c.__name__)
def test_cli_reports_one_error_line(tmp_path, case):
    from mindsearch.cli.main import cli

    target, blamed, _ = case(tmp_path / "ds")
    result = CliRunner().invoke(cli, ["data", "inspect", str(target)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {blamed}: ")
    assert "Traceback" not in result.output


def test_lazy_read_errors_are_mindsearch_errors(tmp_path):
    make_plain(tmp_path)
    with open_dataset(tmp_path) as ds:
        with pytest.raises(MindsearchError, match="out of range") as info:
            ds.voxels(1, [0, 10_000])
        assert info.value.path == str(tmp_path / "voxels_subj01.npy")
        with pytest.raises(MindsearchError, match="subject 7 is not"):
            ds.voxels(7, [0])
        with pytest.raises(MindsearchError, match="no images"):
            ds.images([0])


def test_tar_with_unreadable_npy(tmp_path):
    me2(tmp_path)
    tar = tmp_path / "wds/subj01/train/0.tar"
    append_sample(tar, "zzz", {"behav.npy": b"not an npy at all"})
    with pytest.raises(MindsearchError, match="behav.npy of sample 'zzz' is not a readable") as info:
        open_dataset(tmp_path)
    assert info.value.path == str(tar)
