"""Fault suite, bad data files: every damaged file a dataset reader meets is one line
``error: <that file>: ...``, exit 2, no traceback, and the dataset is left as it was.

Each case builds a small dataset (builders of test_data_build), damages one file and names
the file the error must blame. A seeded fuzz then mutates .npy bytes, headers and tar
shards: any outcome but a clean load or a MindsearchError fails.
"""

from __future__ import annotations

import tarfile

import h5py
import numpy as np
import pandas as pd
import pytest
from faults_kit import assert_one_error, npy_bytes, npy_with_header, run_cli, snapshot
from test_data_build import make_mindeye1, make_mindeye2, make_plain, write_targets, write_tar

from mindsearch.data import open_dataset
from mindsearch.errors import MindsearchError

BETAS = "betas_all_subj01_fp32_renorm.hdf5"


# ----------------------------------------------------------------------------- builders

def plain(root):
    made = make_plain(root)
    ids = np.unique(made["table"]["image_id"].to_numpy())
    write_targets(root / "targets", "sim", ids, np.random.default_rng(0))
    return root


def nan_targets(r):
    arr = np.load(r / "targets" / "sim.npy")
    arr[:, 0, 0] = np.nan
    return put(r / "targets" / "sim.npy", npy_bytes(arr))


def me2(root):
    make_mindeye2(root, subjects=(1,), n_voxels=(6,))
    return root


def me1(root):
    make_mindeye1(root)
    return root


def put(path, data: bytes):
    path.write_bytes(data)
    return path


def h5_write(path, key, data):
    path.unlink(missing_ok=True)
    with h5py.File(path, "w") as f:
        if key == "group":
            f.create_group("voxels")
        else:
            f.create_dataset(key, data=data)
    return path


def retar(tar_path, change):
    """Rewrite a shard with ``change(samples)`` applied (samples: [(key, {field: bytes})])."""
    with tarfile.open(tar_path) as tf:
        samples = {}
        for m in tf:
            key, field = m.name.split(".", 1)
            samples.setdefault(key, {})[field] = tf.extractfile(m).read()
    items = list(samples.items())
    change(items)
    write_tar(tar_path, items)
    return tar_path


def first_tar(root):
    return sorted((root / "wds" / "subj01" / "train").glob("*.tar"))[0]


def me1_tar(root):
    return root / "train" / "train_subj01_0.tar"


def set_field(field, data):
    def change(items):
        items[0][1][field] = data
    return change


def vox_npy(r):
    return r / "voxels_subj01.npy"


def vox_h5(r):
    return r / "voxels_subj02.h5"


def table(r):
    return r / "trials.csv"


def edit_table(r, fn):
    df = pd.read_csv(table(r))
    fn(df)
    df.to_csv(table(r), index=False)
    return table(r)


def nan_at(arr, value=np.nan):
    arr = arr.copy()
    arr[3, 2] = value
    return arr


INSPECT = ("data", "inspect")
TRAIN = ("train", "--model", "ridge", "--subject", "1", "--alpha", "1")


# (name, builder, damage(root) -> blamed file, command)
CASES = [
    # .npy voxels (plain layout)
    ("npy_header_1e12", plain, lambda r: put(vox_npy(r), npy_with_header((10**12,))), INSPECT),
    ("npy_header_2d_huge", plain, lambda r: put(vox_npy(r), npy_with_header((10**6, 10**6))), INSPECT),
    ("npy_v2_header_huge", plain, lambda r: put(vox_npy(r), npy_with_header((10**9, 8), version=(2, 0))), INSPECT),
    ("npy_truncated", plain, lambda r: put(vox_npy(r), vox_npy(r).read_bytes()[:150]), INSPECT),
    ("npy_empty", plain, lambda r: put(vox_npy(r), b""), INSPECT),
    ("npy_text", plain, lambda r: put(vox_npy(r), b"1,2,3\n4,5,6\n"), INSPECT),
    ("npy_garbled_header", plain, lambda r: put(vox_npy(r), b"\x93NUMPY\x01\x00\x10\x00{'descr': <f4 ,}\n" + b"\0" * 64),
     INSPECT),
    ("npy_pickle", plain, lambda r: put(vox_npy(r), npy_bytes(np.array([{"a": 1}], dtype=object), True)), INSPECT),
    ("npy_int_dtype", plain, lambda r: put(vox_npy(r), npy_bytes(np.ones((40, 8), np.int32))), INSPECT),
    ("npy_complex_dtype", plain, lambda r: put(vox_npy(r), npy_bytes(np.ones((40, 8), np.complex64))), INSPECT),
    ("npy_structured_dtype", plain,
     lambda r: put(vox_npy(r), npy_bytes(np.zeros(40, dtype=[("a", "<f4"), ("b", "<f4")]))), INSPECT),
    ("npy_3d", plain, lambda r: put(vox_npy(r), npy_bytes(np.ones((40, 8, 2), np.float32))), INSPECT),
    ("npy_zero_voxels", plain, lambda r: put(vox_npy(r), npy_bytes(np.ones((40, 0), np.float32))), INSPECT),
    ("npy_nan", plain, lambda r: put(vox_npy(r), npy_bytes(nan_at(np.load(vox_npy(r))))), INSPECT),
    ("npy_inf", plain, lambda r: put(vox_npy(r), npy_bytes(nan_at(np.load(vox_npy(r)), np.inf))), INSPECT),
    # HDF5 voxels
    ("h5_truncated", plain, lambda r: put(vox_h5(r), vox_h5(r).read_bytes()[:800]), INSPECT),
    ("h5_garbage", plain, lambda r: put(vox_h5(r), b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4), INSPECT),
    ("h5_empty", plain, lambda r: put(vox_h5(r), b""), INSPECT),
    ("h5_group_not_dataset", plain, lambda r: h5_write(vox_h5(r), "group", None), INSPECT),
    ("h5_int_dtype", plain, lambda r: h5_write(vox_h5(r), "voxels", np.ones((40, 8), np.int16)), INSPECT),
    ("h5_string_dtype", plain, lambda r: h5_write(vox_h5(r), "voxels", np.array([b"ab"] * 40)), INSPECT),
    ("h5_nan", plain, lambda r: h5_write(vox_h5(r), "voxels", nan_at(np.ones((40, 8), np.float32))), INSPECT),
    ("h5_1d", plain, lambda r: h5_write(vox_h5(r), "voxels", np.ones(40, np.float32)), INSPECT),
    # trial tables
    ("csv_empty", plain, lambda r: put(table(r), b""), INSPECT),
    ("csv_binary", plain, lambda r: put(table(r), bytes(range(256)) * 8), INSPECT),
    ("csv_missing_column", plain, lambda r: edit_table(r, lambda d: d.pop("image_id")),
     INSPECT),
    ("csv_float_trial", plain, lambda r: edit_table(r, lambda d: d.__setitem__("trial", d["trial"] + 0.5)), INSPECT),
    ("csv_negative_image", plain, lambda r: edit_table(r, lambda d: d.__setitem__("image_id", -d["image_id"] - 1)),
     INSPECT),
    ("csv_nan_subject", plain, lambda r: edit_table(r, lambda d: d.__setitem__("subject", np.nan)), INSPECT),
    ("csv_bad_split", plain, lambda r: edit_table(r, lambda d: d.__setitem__("split", "holdout")), INSPECT),
    ("csv_trial_past_voxels", plain, lambda r: edit_table(r, lambda d: d.__setitem__("trial", d["trial"] + 1000)),
     INSPECT),
    ("parquet_truncated", lambda r: make_plain(r, fmt="parquet") and r,
     lambda r: put(r / "trials.parquet", (r / "trials.parquet").read_bytes()[:300]), INSPECT),
    # targets (read by training)
    ("targets_nan", plain, nan_targets, TRAIN),
    ("targets_header_huge", plain, lambda r: put(r / "targets" / "sim.npy", npy_with_header((10**12, 2, 6))), INSPECT),
    ("targets_int", plain, lambda r: put(r / "targets" / "sim.npy", npy_bytes(np.ones((40, 2, 6), np.int8))), INSPECT),
    ("targets_truncated", plain,
     lambda r: put(r / "targets" / "sim.npy", (r / "targets" / "sim.npy").read_bytes()[:200]), INSPECT),
    ("target_ids_header_huge", plain, lambda r: put(r / "targets" / "sim_ids.npy", npy_with_header((10**12,), "<i8")),
     INSPECT),
    ("target_ids_float", plain, lambda r: put(r / "targets" / "sim_ids.npy", npy_bytes(np.arange(40.0))), INSPECT),
    ("target_ids_pickle", plain,
     lambda r: put(r / "targets" / "sim_ids.npy", npy_bytes(np.array(list(range(40)), dtype=object), True)), INSPECT),
    ("space_record_list", plain, lambda r: put(r / "targets" / "sim.json", b"[1, 2]"), INSPECT),
    ("space_record_tokens_wrong", plain, lambda r: put(r / "targets" / "sim.json", b'{"tokens": "two", "dim": 6}'),
     INSPECT),
    # MindEye2 layout
    ("betas_truncated", me2, lambda r: put(r / BETAS, (r / BETAS).read_bytes()[:1500]), INSPECT),
    ("betas_garbage", me2, lambda r: put(r / BETAS, b"not hdf5 at all" * 50), INSPECT),
    ("behav_tar_truncated", me2, lambda r: put(first_tar(r), first_tar(r).read_bytes()[:1700]), INSPECT),
    ("behav_tar_garbage", me2, lambda r: put(first_tar(r), bytes(range(256)) * 20), INSPECT),
    ("behav_npy_header_huge", me2, lambda r: retar(first_tar(r), set_field("behav.npy", npy_with_header((10**12,)))),
     INSPECT),
    ("behav_npy_pickle", me2,
     lambda r: retar(first_tar(r), set_field("behav.npy", npy_bytes(np.array([None] * 17, dtype=object), True))),
     INSPECT),
    ("behav_npy_strings", me2, lambda r: retar(first_tar(r), set_field("behav.npy", npy_bytes(np.array(["x"] * 17)))),
     INSPECT),
    ("images_wrong_shape", me2, lambda r: h5_write(r / "images_4_float16.hdf5", "images", np.ones((5, 4, 4), "f2")),
     INSPECT),
    ("manifest_not_json", me2, lambda r: put(r / "mindsearch.json", b"{layout: mindeye2"), INSPECT),
    ("manifest_list", me2, lambda r: put(r / "mindsearch.json", b"[]"), INSPECT),
    ("manifest_layout_list", me2, lambda r: put(r / "mindsearch.json", b'{"layout": ["mindeye2"]}'), INSPECT),
    # MindEye1 layout
    ("me1_tar_truncated", me1, lambda r: put(me1_tar(r), me1_tar(r).read_bytes()[:3000]), INSPECT),
    ("me1_npy_header_huge", me1, lambda r: retar(me1_tar(r), set_field("nsdgeneral.npy", npy_with_header((3, 10**11)))),
     INSPECT),
    ("me1_partial_nan", me1, lambda r: retar(me1_tar(r), set_field("nsdgeneral.npy", npy_bytes(
        np.where(np.eye(3, 9, dtype=bool), np.nan, 1.0).astype(np.float32)))), INSPECT),
    ("me1_coco_float", me1, lambda r: retar(me1_tar(r), set_field("coco73k.npy", npy_bytes(np.array([1.5])))), INSPECT),
]


@pytest.mark.parametrize("name,build,damage,command", CASES, ids=[c[0] for c in CASES])
def test_bad_data_file_is_one_error_naming_it(tmp_path, capsys, name, build, damage, command):
    root = build(tmp_path / "ds")
    blamed = damage(root)
    before = snapshot(root)
    args = [*command, "--data", root, "--out", tmp_path / "run"] if command == TRAIN else [*command, root]
    code, out, err = run_cli(args, capsys)
    assert_one_error(code, err, blamed)
    assert out == ""
    assert snapshot(root) == before, "a refused command changed the dataset"
    assert not (tmp_path / "run").exists(), "a refused training left its --out behind"


def test_no_test_split_is_refused_by_eval(tmp_path, capsys):
    """A dataset without test trials: eval --run says so (it used to score 0 items)."""
    root = plain(tmp_path / "ds")
    code, _, err = run_cli([*TRAIN, "--data", root, "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    df = pd.read_csv(table(root))
    df["split"] = "train"
    df.to_csv(table(root), index=False)
    code, _, err = run_cli(["eval", "retrieval", "--run", tmp_path / "run", "--data", root], capsys)
    assert_one_error(code, err, root)
    assert "no test trials" in err


# ----------------------------------------------------------------------------- seeded fuzz

def _mutate(data: bytes, rng) -> bytes:
    data = bytearray(data)
    op = rng.integers(4)
    if op == 0 and data:  # flip bytes
        for i in rng.integers(0, len(data), size=rng.integers(1, 8)):
            data[i] = rng.integers(256)
    elif op == 1:  # cut
        data = data[: rng.integers(0, len(data) + 1)]
    elif op == 2:  # lie in the header's shape
        text = bytes(data[:128]).replace(b"(40, 8)", f"({rng.integers(1, 10**9)}, 8)".encode())
        data[: len(text)] = text
    else:  # splice junk
        i = rng.integers(0, len(data) + 1)
        data[i:i] = bytes(rng.integers(0, 256, size=rng.integers(1, 64), dtype=np.uint8))
    return bytes(data)


def _open_ok_or_error(root):
    """The only acceptable outcomes: a dataset whose voxels read, or one MindsearchError."""
    try:
        with open_dataset(root) as ds:
            for s in ds.subjects:
                v = ds.voxels(s, np.arange(min(5, ds.n_voxels(s))))
                assert np.isfinite(v).all()
    except MindsearchError:
        pass


def test_fuzz_npy_voxels_and_tables(tmp_path):
    rng = np.random.default_rng(1234)
    root = plain(tmp_path / "ds")
    originals = {p: p.read_bytes() for p in (vox_npy(root), table(root), root / "targets" / "sim_ids.npy")}
    for _ in range(40):
        victim = list(originals)[rng.integers(len(originals))]
        victim.write_bytes(_mutate(originals[victim], rng))
        _open_ok_or_error(root)
        victim.write_bytes(originals[victim])


def test_fuzz_tar_shards(tmp_path):
    rng = np.random.default_rng(99)
    root = me2(tmp_path / "ds")
    tar = first_tar(root)
    original = tar.read_bytes()
    for _ in range(30):
        tar.write_bytes(_mutate(original, rng))
        _open_ok_or_error(root)
    tar.write_bytes(original)


def test_damaged_mindeye1_cache_is_rebuilt(tmp_path, capsys):
    """The voxel cache streamed from MindEye1 shards is ours, not the user's: damaged, it is rebuilt."""
    root = me1(tmp_path / "ds")
    with open_dataset(root) as ds:
        expected = ds.voxels(1, np.arange(6))
    cache = next((root / ".mindsearch_cache").glob("mindeye1_subj01_*.npy"))
    for damaged in (cache.read_bytes()[:200], npy_with_header((10**9, 9))):
        cache.write_bytes(damaged)
        with open_dataset(root) as ds:
            np.testing.assert_array_equal(ds.voxels(1, np.arange(6)), expected)
