"""z-scoring from training trials only, per session; repetition averaging; session filters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mindsearch.data import open_dataset
from mindsearch.data.preprocess import ZScore, load_split
from mindsearch.errors import MindsearchError


def build(tmp_path, test_offset=100.0, constant_voxel=False):
    """Two sessions; test trials carry a huge offset so any leak into the stats shows.

    Session 3 has only test trials (it must fall back to pooled training statistics).
    """
    rng = np.random.default_rng(0)
    rows = []
    images = {1: [0, 1, 10, 11, 12, 13, 10], 2: [2, 14, 15, 16, 0, 14, 1], 3: [1, 0, 2, 2]}
    t = 0
    for session, ids in images.items():
        for img in ids:
            rows.append({"subject": 1, "session": session, "trial": t, "image_id": img,
                         "split": "test" if img < 10 else "train"})
            t += 1
    table = pd.DataFrame(rows)
    vox = rng.normal(size=(t, 5)).astype(np.float32) * 2 + np.arange(5)
    vox[table.session.to_numpy() == 2] += 7  # sessions differ: per-session stats matter
    vox[table.split.to_numpy() == "test"] += test_offset
    if constant_voxel:
        vox[:, 4] = 3.0
    vox = vox.astype(np.float32)
    table.to_csv(tmp_path / "trials.csv", index=False)
    np.save(tmp_path / "voxels.npy", vox)
    return table, vox


def test_zscore_statistics_come_from_training_trials_only(tmp_path):
    table, vox = build(tmp_path)
    train = table.split == "train"
    with open_dataset(tmp_path) as ds:
        for split in ("train", "test"):
            z = load_split(ds, 1, split).zscore
            assert z.sessions == [1, 2, 3]
            for i, s in enumerate((1, 2)):
                own = (table.session == s) & train
                np.testing.assert_allclose(z.mean[i], vox[own].mean(0), rtol=1e-5)
                np.testing.assert_allclose(z.std[i], vox[own].std(0), rtol=1e-4)
            # no training trials in session 3: pooled training statistics
            np.testing.assert_allclose(z.mean[2], vox[train].mean(0), rtol=1e-5)
            np.testing.assert_allclose(z.global_std, vox[train].std(0), rtol=1e-4)
        # including test trials would have moved the mean by ~100: it did not
        assert np.abs(z.mean[:2]).max() < 20
        tr = load_split(ds, 1, "train")
        np.testing.assert_allclose(tr.voxels[tr.sessions == 1].mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(tr.voxels[tr.sessions == 2].std(0), 1, atol=1e-4)


def test_average_none_groups_and_average_betas_means(tmp_path):
    table, vox = build(tmp_path)
    with open_dataset(tmp_path) as ds:
        single = load_split(ds, 1, "test", average="none")
        test = table[table.split == "test"]
        np.testing.assert_array_equal(single.trials, test.trial.to_numpy())
        assert list(single.group_ids) == [0, 1, 2]
        for img, g in zip(single.group_ids, single.groups):
            assert set(single.image_ids[g]) == {img}
            assert list(single.trials[g]) == list(test.trial[test.image_id == img])
        z = single.zscore
        np.testing.assert_allclose(single.voxels, z.apply(vox[single.trials], single.sessions), rtol=1e-6)
        avg = load_split(ds, 1, "test", average="betas")
        assert list(avg.image_ids) == [0, 1, 2] and list(avg.n_reps) == [3, 3, 3]
        for row, g in enumerate(single.groups):
            np.testing.assert_allclose(avg.voxels[row], single.voxels[g].mean(0), rtol=1e-5, atol=1e-5)
        assert [list(g) for g in avg.groups] == [[0], [1], [2]]


def test_sessions_filter_keeps_per_session_stats(tmp_path):
    table, vox = build(tmp_path)
    with open_dataset(tmp_path) as ds:
        full = load_split(ds, 1, "train")
        one = load_split(ds, 1, "train", sessions=[2])
        assert set(one.sessions) == {2}
        assert list(one.trials) == list(table.trial[(table.session == 2) & (table.split == "train")])
        np.testing.assert_allclose(one.zscore.mean, full.zscore.mean, rtol=1e-6)
        np.testing.assert_allclose(one.zscore.global_mean, full.zscore.global_mean, rtol=1e-6)
        np.testing.assert_allclose(one.voxels, full.voxels[full.sessions == 2], rtol=1e-5, atol=1e-6)
        with pytest.raises(MindsearchError, match="no session 9"):
            load_split(ds, 1, "train", sessions=[9])


def test_no_zscore_returns_raw_voxels_and_stats_roundtrip(tmp_path):
    table, vox = build(tmp_path, constant_voxel=True)
    with open_dataset(tmp_path) as ds:
        raw = load_split(ds, 1, "train", zscore=False)
        assert raw.zscore is None
        np.testing.assert_array_equal(raw.voxels, vox[raw.trials])
        z = load_split(ds, 1, "test").zscore
    assert np.isfinite(z.apply(vox, table.session)).all()  # constant voxel: std floored, no inf
    again = ZScore.from_tensors(z.to_tensors())
    np.testing.assert_array_equal(again.apply(vox, table.session), z.apply(vox, table.session))
    np.testing.assert_allclose(z.apply(vox[:2], None), (vox[:2] - z.global_mean) / z.global_std, rtol=1e-6)


def test_bad_arguments(tmp_path):
    build(tmp_path)
    with open_dataset(tmp_path) as ds:
        with pytest.raises(MindsearchError, match="split must be"):
            load_split(ds, 1, "val")
        with pytest.raises(MindsearchError, match="average must be"):
            load_split(ds, 1, "train", average="outputs")
        with pytest.raises(MindsearchError, match="subject 4 is not"):
            load_split(ds, 4, "train")
