"""ground_truth.json against a plain dense re-implementation of the Bayes decoder."""

from __future__ import annotations

import io
import tarfile

import h5py
import numpy as np
import pytest

from mindsearch.io import load_tensors, read_json
from mindsearch.simulate import simulate

# Few voxels so the ceiling is well below 100 % and the check has something to measure.
TINY = dict(n_voxels=60, n_shared=80, n_unique=40, trials_per_session=120, image_size=16,
            mc_min_draws=40, mc_max_draws=200, mc_target_ci=0.01)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = simulate(tmp_path_factory.mktemp("ceil") / "w", "small", seed=3, **TINY)
    truth = load_tensors(root / "truth" / "subj01.safetensors")
    gt = read_json(root / "ground_truth.json")["subjects"]["1"]
    return root, truth, gt


def dense_loglik(truth, b_mean, c):
    """log p(b_mean | image j) up to terms constant in j, with the full covariance inverted."""
    mu = truth["test_means"].astype(np.float64)
    sigma = truth["noise_load"].astype(np.float64) @ truth["noise_load"].T.astype(np.float64)
    sigma += np.diag(truth["noise_diag"].astype(np.float64))
    prec = np.linalg.inv(sigma)
    d = b_mean[:, None, :] - mu[None, :, :]  # (samples, images, V)
    return -0.5 * np.asarray(c, np.float64)[:, None] * np.einsum("kjv,vw,kjw->kj", d, prec, d)


def accuracy(ll):
    """n <= 300: every protocol pool is the whole test set, so the loop mean is this."""
    hit = np.arange(len(ll))
    b2i = np.mean(ll.argmax(1) == hit)
    post = ll - np.log(np.exp(ll - ll.max(1, keepdims=True)).sum(1, keepdims=True)) - ll.max(1, keepdims=True)
    i2b = np.mean(post.argmax(0) == hit)
    return b2i, i2b


def test_ceiling_not_trivial(world):
    _, _, gt = world
    assert 0.2 < gt["single_trial"]["brain_to_image_top1"] < 0.98
    assert gt["average_betas"]["brain_to_image_top1"] > gt["single_trial"]["brain_to_image_top1"]


def test_ceiling_matches_fresh_noise(world):
    """Simulate fresh noisy test betas from the truth file; the dense Bayes decoder's mean
    accuracy agrees with ground_truth.json within a few standard errors."""
    _, truth, gt = world
    mu = truth["test_means"].astype(np.float64)
    n, v = mu.shape
    load, diag = truth["noise_load"].astype(np.float64), truth["noise_diag"].astype(np.float64)
    rng = np.random.default_rng(123)
    res = {"average_betas": [], "single_trial": []}
    for _ in range(40):
        eps = rng.standard_normal((n, 3, v)) * np.sqrt(diag) + rng.standard_normal((n, 3, load.shape[1])) @ load.T
        b = mu[:, None, :] + eps
        res["average_betas"].append(accuracy(dense_loglik(truth, b.mean(1), np.full(n, 3))))
        res["single_trial"].append(accuracy(dense_loglik(truth, b[:, 0], np.ones(n))))
    for mode, acc in res.items():
        acc = np.asarray(acc)
        for k, name in enumerate(("brain_to_image_top1", "image_to_brain_top1")):
            se = np.hypot(acc[:, k].std(ddof=1) / np.sqrt(len(acc)), gt[mode][name + "_se"])
            assert abs(acc[:, k].mean() - gt[mode][name]) < 4 * se + 1e-3, (mode, name, acc[:, k].mean(), gt[mode][name])


def test_realised_matches_written_betas(world):
    """The dense decoder on the betas actually written reproduces the 'realised' figures."""
    root, truth, gt = world
    rows = []
    with tarfile.open(root / "wds" / "subj01" / "new_test" / "0.tar") as t:
        for m in t.getmembers():
            rows.append(np.load(io.BytesIO(t.extractfile(m).read()))[0])
    rows = np.array(rows)
    rows = rows[np.argsort(rows[:, 5])]
    trials = rows[:, 5].astype(int)
    with h5py.File(root / "betas_all_subj01_fp32_renorm.hdf5") as f:
        b = f["betas"][:][trials].astype(np.float64)
    s = rows[:, 2].astype(int) - 1
    b = (b - truth["session_offset"][s]) / truth["session_scale"][s]
    ids = truth["test_image_ids"]
    avg = np.stack([b[rows[:, 0] == i].mean(0) for i in ids])
    first = np.stack([b[rows[:, 0] == i][0] for i in ids])
    c = np.array([(rows[:, 0] == i).sum() for i in ids])
    assert np.all(c == truth["test_reps"]) and np.all(c == 3)
    for mode, x, cc in (("average_betas", avg, c), ("single_trial", first, np.ones_like(c))):
        b2i, i2b = accuracy(dense_loglik(truth, x, cc))
        assert b2i == pytest.approx(gt["realised"][mode]["brain_to_image_top1"], abs=1e-9)
        assert i2b == pytest.approx(gt["realised"][mode]["image_to_brain_top1"], abs=1e-9)


@pytest.mark.slow
def test_small_preset_ceiling_above_ridge(tmp_path):
    """The calibrated demo world: ridge is well above chance and well below the ceiling."""
    from sklearn.linear_model import Ridge

    root = simulate(tmp_path / "small", "small")
    rows = []
    for tar in sorted((root / "wds" / "subj01").glob("*/*.tar")):
        with tarfile.open(tar) as t:
            rows += [np.load(io.BytesIO(t.extractfile(m).read()))[0] for m in t.getmembers()]
    rows = np.array(rows)
    rows = rows[np.argsort(rows[:, 5])]
    with h5py.File(root / "betas_all_subj01_fp32_renorm.hdf5") as f:
        x = f["betas"][:]
    ids, sess, test = rows[:, 0].astype(int), rows[:, 2].astype(int), rows[:, 16] == 1
    for q in np.unique(sess):
        m, tr = sess == q, (sess == q) & ~test
        x[m] = (x[m] - x[tr].mean(0)) / x[tr].std(0)
    tid = np.load(root / "targets" / "sim_ids.npy")
    y = np.load(root / "targets" / "sim.npy").reshape(len(tid), -1)
    pos = {int(i): k for k, i in enumerate(tid)}

    def averaged(mask):
        u = np.unique(ids[mask])
        return np.stack([x[mask & (ids == i)].mean(0) for i in u]), y[[pos[i] for i in u]]

    xtr, ytr = averaged(~test)
    xte, yte = averaged(test)
    pred = Ridge(alpha=1000.0).fit(xtr, ytr).predict(xte)
    p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    t = yte / np.linalg.norm(yte, axis=1, keepdims=True)
    ridge_b2i = np.mean((p @ t.T).argmax(1) == np.arange(len(p)))
    ceiling = read_json(root / "ground_truth.json")["subjects"]["1"]["average_betas"]["brain_to_image_top1"]
    assert 0.1 < ridge_b2i < 0.6
    assert ceiling > 0.85 and ceiling > ridge_b2i + 0.3
