"""Each layout opens with the right trial table, and voxel/image/target rows are the ones written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_data_build import make_mindeye1, make_mindeye2, make_plain, write_targets

from mindsearch.data import open_dataset
from mindsearch.errors import MindsearchError


def test_mindeye2_trials_and_voxels(tmp_path):
    built = make_mindeye2(tmp_path)
    with open_dataset(tmp_path) as ds:
        assert ds.layout == "mindeye2" and ds.subjects == [1, 2]
        assert [ds.n_voxels(s) for s in (1, 2)] == [10, 13]
        t = ds.trials
        assert list(t.columns) == ["subject", "session", "trial", "image_id", "split", "rep"]
        for s in (1, 2):
            rows = built["design"][s]
            mine = t[t.subject == s]
            assert len(mine) == len(rows) == 36
            assert sorted(mine.session.unique()) == [1, 2, 3]
            assert (mine.split == "test").sum() == sum(r[4] for r in rows) == 12
            want_img = {r[2]: r[3] for r in rows}
            assert all(want_img[tr] == im for tr, im in zip(mine.trial, mine.image_id))
            # rep counts repetitions of an image in trial order
            first = mine.groupby("image_id").trial.min()
            assert mine[mine.rep == 0].set_index("image_id").trial.sort_index().equals(first.sort_index())
        # out of order and duplicated requests come back in the requested order
        request = [30, 2, 2, 17, 0, 35, 2]
        np.testing.assert_array_equal(ds.voxels(2, request), built["betas"][2][request])
        assert ds.voxels(1, []).shape == (0, 10)


def test_mindeye2_images_and_targets(tmp_path):
    built = make_mindeye2(tmp_path)
    with open_dataset(tmp_path) as ds:
        assert ds.has_images and ds.image_shape == (3, 4, 5)
        got = ds.images([5, 0, 5])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, built["images"][[5, 0, 5]].astype(np.float32))
        assert ds.has_targets and ds.target_shape == (2, 6)
        assert ds.target_space["model"] == "sim-v1"
        np.testing.assert_array_equal(ds.targets([3, 1]), built["targets"][[3, 1]].astype(np.float32))
        with pytest.raises(MindsearchError, match="no target for image id 999"):
            ds.targets([999])


def test_mindeye2_uses_new_test_else_test_never_both(tmp_path):
    make_mindeye2(tmp_path, subjects=(1,), n_voxels=(5,), test_dir="test")
    with open_dataset(tmp_path) as ds:
        assert (ds.trials.split == "test").sum() == 12
    # both present: new_test wins, test/ is ignored (the two overlap in real data)
    shutil.copytree(tmp_path / "wds/subj01/test", tmp_path / "wds/subj01/new_test")
    with open_dataset(tmp_path) as ds:
        assert (ds.trials.split == "test").sum() == 12


def test_mindeye1_expands_reps_and_caches(tmp_path):
    built = make_mindeye1(tmp_path)
    with open_dataset(tmp_path) as ds:
        assert ds.layout == "mindeye1" and ds.subjects == [1]
        t = ds.trials
        assert len(t) == 3 * len(built["samples"]) == 24
        assert set(t.session) == {0}
        assert (t.split == "test").sum() == 6  # val counts as train
        for i, (split, image_id, vox, img) in enumerate(built["samples"]):
            rows = t[t.trial.isin([3 * i, 3 * i + 1, 3 * i + 2])]
            assert set(rows.image_id) == {image_id}
            assert set(rows.split) == {"test" if split == "test" else "train"}
            np.testing.assert_array_equal(ds.voxels(1, [3 * i + 2, 3 * i, 3 * i + 1]), vox[[2, 0, 1]])
        # image 10 appears in two samples: reps 0..5 in trial order
        assert sorted(t[t.image_id == 10].rep) == list(range(6))
        img = built["samples"][0][3]
        np.testing.assert_allclose(ds.images([10])[0], np.round(img * 255) / 255, atol=1e-6)
    cached = list((tmp_path / ".mindsearch_cache").glob("mindeye1_subj01_*.npy"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    with open_dataset(tmp_path) as ds:
        assert len(ds.trials) == 24
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
    # a changed shard invalidates the cache (and the stale one is removed)
    make_mindeye1(tmp_path, seed=5)
    with open_dataset(tmp_path) as ds:
        np.testing.assert_array_equal(ds.voxels(1, [0]), make_mindeye1(tmp_path / "again", seed=5)["samples"][0][2][:1])
    assert len(list((tmp_path / ".mindsearch_cache").glob("mindeye1_subj01_*.npy"))) == 1


def test_mindeye1_all_nan_repetition_is_a_missing_trial(tmp_path):
    make_mindeye1(tmp_path, nan_rep=14)
    with open_dataset(tmp_path) as ds:
        assert len(ds.trials) == 23
        assert sorted(ds.trials[ds.trials.image_id == 14].rep) == [0, 1]


def test_mindeye1_read_only_dataset_caches_in_temp(tmp_path, monkeypatch):
    import tempfile

    make_mindeye1(tmp_path / "ro")
    # pretend the dataset directory is read-only (tests may run as root, where chmod is moot)
    monkeypatch.setattr("mindsearch.data.arrays.os.access", lambda *a, **k: False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with open_dataset(tmp_path / "ro") as ds:
        assert len(ds.trials) == 24
        assert str(ds.voxel_file(1)).startswith(str(tmp_path / "tmp" / "mindsearch_cache"))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_plain_layout(tmp_path, fmt):
    built = make_plain(tmp_path, fmt=fmt)
    with open_dataset(tmp_path) as ds:
        assert ds.layout == "plain" and ds.subjects == [1, 2]
        assert not ds.has_images and not ds.has_targets
        assert len(ds.trials) == len(built["table"]) == 40
        assert list(ds.trials.trial[ds.trials.subject == 1]) == sorted(ds.trials.trial[ds.trials.subject == 1])
        for s in (1, 2):
            req = [19, 3, 3, 0, 22]
            np.testing.assert_array_equal(ds.voxels(s, req), built["voxels"][s][req])
        assert (ds.trials.split == "test").sum() == 24


def test_plain_trial_table_path_with_voxels_kwarg(tmp_path):
    built = make_plain(tmp_path)
    table = built["table"]
    one = table[table.subject == 1]
    one.to_csv(tmp_path / "one.csv", index=False)
    np.save(tmp_path / "mine.npy", built["voxels"][1])
    with open_dataset(tmp_path / "one.csv", voxels=tmp_path / "mine.npy") as ds:
        assert ds.subjects == [1] and len(ds.trials) == 20
        np.testing.assert_array_equal(ds.voxels(1, [5, 1]), built["voxels"][1][[5, 1]])


def test_plain_without_split_column_is_all_train(tmp_path):
    make_plain(tmp_path, split=False)
    with open_dataset(tmp_path) as ds:
        assert set(ds.trials.split) == {"train"}


def test_targets_explicit_npy_and_ids(tmp_path):
    make_plain(tmp_path)
    rng = np.random.default_rng(1)
    emb = write_targets(tmp_path / "elsewhere", "clip", [7, 3, 0, 1], rng, record=False)
    with open_dataset(tmp_path, targets=tmp_path / "elsewhere/clip.npy") as ds:
        assert ds.has_targets and not ds.has_images
        np.testing.assert_array_equal(ds.targets([0, 7]), emb[[2, 0]].astype(np.float32))
        assert ds.target_space == {"name": "clip", "tokens": 2, "dim": 6}
    np.save(tmp_path / "pooled.npy", np.ones((3, 4), np.float32))
    with open_dataset(tmp_path, targets=str(tmp_path / "pooled.npy"), ids=np.array([5, 6, 7])) as ds:
        assert ds.targets([6]).shape == (1, 1, 4)


def test_targets_default_from_manifest_or_only_set(tmp_path):
    make_mindeye2(tmp_path, subjects=(1,), n_voxels=(4,))
    write_targets(tmp_path / "targets", "other", np.arange(20), np.random.default_rng(2), dim=3)
    with open_dataset(tmp_path) as ds:  # two sets, no manifest: ask which
        assert not ds.has_targets and ds.target_names == ["other", "sim"]
        with pytest.raises(MindsearchError, match="several target sets"):
            ds.targets([0])
    (tmp_path / "mindsearch.json").write_text('{"layout": "mindeye2", "targets": "other"}')
    with open_dataset(tmp_path) as ds:
        assert ds.target_shape == (2, 3)
    with open_dataset(tmp_path, targets="sim") as ds:
        assert ds.target_shape == (2, 6) and ds.manifest["targets"] == "other"
    with pytest.raises(MindsearchError, match="no target set 'nope'"):
        open_dataset(tmp_path, targets="nope")


def test_fingerprint_is_stable_and_tracks_the_trial_table(tmp_path):
    make_plain(tmp_path)
    with open_dataset(tmp_path) as ds:
        first = ds.fingerprint()
    with open_dataset(tmp_path) as ds:
        assert ds.fingerprint() == first and len(first) == 16
    import pandas as pd

    table = pd.read_csv(tmp_path / "trials.csv")
    table.loc[table.index[0], "image_id"] = 99
    table.to_csv(tmp_path / "trials.csv", index=False)
    with open_dataset(tmp_path) as ds:
        assert ds.fingerprint() != first


def test_manifest_layout_wins_over_detection(tmp_path):
    make_plain(tmp_path)
    (tmp_path / "mindsearch.json").write_text('{"layout": "mindeye1"}')
    with pytest.raises(MindsearchError, match="no .*shards"):
        open_dataset(tmp_path)


def test_shards_with_pax_headers_fall_back_to_tarfile(tmp_path):
    from test_data_build import npy_bytes, write_tar

    from mindsearch.data.shards import samples

    long_key = "k" * 120  # > 100 chars: tarfile writes a pax header the fast walk does not parse
    fields = {"behav.npy": npy_bytes(np.arange(17.0)[None]), "jpg": b"xyz"}
    write_tar(tmp_path / "pax.tar", [(long_key, fields), ("short", fields)])
    write_tar(tmp_path / "plain.tar", [("a", fields), ("short", fields)])
    for name in ("pax.tar", "plain.tar"):
        got = list(samples(tmp_path / name, {"behav.npy"}))
        assert [k for k, _ in got][1] == "short" and len(got) == 2
        assert got[0][1]["behav.npy"] == fields["behav.npy"] and got[0][1]["jpg"].size == 3
    data = (tmp_path / "pax.tar").read_bytes()
    (tmp_path / "pax.tar").write_bytes(data[:2000])
    with pytest.raises(MindsearchError, match="not a readable tar"):
        list(samples(tmp_path / "pax.tar", {"behav.npy"}))
