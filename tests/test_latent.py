"""The shared-latent pretraining (``training.latent``): a world in which every subject's voxels
are linear in one nonlinear feature map of the image, which the targets only reach nonlinearly
(the simulator's structure, at test size)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

D, F, T, V = 8, 64, 48, 200  # latent, voxel features, target width, voxels per subject


class World:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.w, self.b = self.rng.standard_normal((D, F)) * 1.5, self.rng.uniform(-np.pi, np.pi, F)
        self.u, self.v = self.rng.standard_normal((D, 64)), self.rng.standard_normal((64, T)) / 8
        self.anatomy = {s: self.rng.standard_normal((F, V)) / np.sqrt(F) * 3 for s in (1, 2, 3)}

    def images(self, n: int):
        """(features phi (n, F), targets (n, T)) of n new images."""
        z = self.rng.standard_normal((n, D)) * 2 / np.sqrt(D)
        return np.cos(z @ self.w + self.b), np.tanh(z @ self.u) @ self.v

    def trials(self, subject: int, phi: np.ndarray, reps: int = 3) -> np.ndarray:
        """``reps`` single trials per image, image-major (n * reps, V)."""
        mean = np.repeat(phi @ self.anatomy[subject], reps, axis=0)
        return (mean + 1.5 * self.rng.standard_normal(mean.shape)).astype(np.float32)


def _average(x, reps=3):
    return x.reshape(-1, reps, x.shape[1]).mean(1)


def test_a_shared_latent_enrols_a_new_subject_better_than_its_own_read_out():
    """Two subjects with 1,500 images each teach the latent and the trunk; a third with 150
    images gets an adapter in closed form. Its 5-fold score and its held-out top-1 beat the best
    linear read-out of its own data (ridge or the inverted encoding model) by a wide margin."""
    from mindsearch.models.factory import create_model
    from mindsearch.retrieval import retrieval_scores
    from mindsearch.training.encoding import EncodingModel, choose_linear
    from mindsearch.training.inversion import _retrieval_output, adapter_from_trunk
    from mindsearch.training.latent import fit_latent, fit_trunk
    from mindsearch.training.ridge import ridge_path

    torch.manual_seed(0)
    w = World()
    x, y = {}, {}
    for s in (2, 3):
        phi, y[s] = w.images(1500)
        x[s] = _average(w.trials(s, phi))
    phi1, y1 = w.images(150)
    x1 = _average(w.trials(1, phi1))
    phit, yt = w.images(300)
    xt = _average(w.trials(1, phit))
    model = create_model("tiny", {2: V, 3: V}, tokens=1, dim=T, use_prior=False, use_projector=False)
    fit = fit_latent(model, x, y, dim=32, width=128, epochs=30)
    mse = fit["voxel_mse"]
    assert fit["epochs"] == 30 and max(mse.values()) < np.mean([x[s].var(0).sum() / V for s in x])  # the heads explain the voxels
    fit_trunk(model, np.concatenate([y[2], y[3]]), noise=0.5, epochs=30)
    model.add_subject(1, V)
    own = choose_linear(x1, y1)
    fit = adapter_from_trunk(model, x1, y1, own, encoding=True)
    assert fit["start"] == "shared latent" and fit["a_weight"].shape == (model.config.hidden, V)
    assert fit["cv"]["trunk_mrr"] > own["cv_mrr"] + 0.1
    model.set_adapter(1, fit["a_weight"], fit["a_bias"])
    model.eval()
    with torch.no_grad():
        ours = _retrieval_output(model, model.adapters(torch.tensor(xt, dtype=torch.float32), 1)).numpy()
    if own["kind"] == "encoding":
        theirs = dict(EncodingModel(x1, y1).path(xt))[(own["alpha"], own["prior"])]
    else:
        theirs = dict(ridge_path(x1, y1, xt, (own["alpha"],)))[own["alpha"]]
    top1 = lambda p: retrieval_scores(p, yt, pool=100, loops=10)["brain_to_image_top1"]  # noqa: E731
    assert top1(ours) > top1(theirs) + 0.1


def test_pretraining_keeps_the_latent_with_the_run_and_fine_tuning_enrols_into_it(tmp_path):
    """``latent_start`` on two subjects: the data-aware schedule trains no further step (the
    start is the model), the latent is saved and rebuilt by ``from_pretrained`` with the same
    outputs, and fine-tuning a new subject from the run starts from the shared latent and keeps
    it over the subject's own read-out when it wins the folds."""
    from mindsearch.models import from_pretrained
    from mindsearch.training.trainer import TrainConfig, train_arrays

    torch.manual_seed(0)
    w = World(1)
    vox, ids, table = {}, {}, []
    for k, (s, n) in enumerate(((2, 1200), (3, 1200), (1, 150))):
        phi, y = w.images(n)
        vox[s] = w.trials(s, phi)
        ids[s] = np.repeat(np.arange(n) + 10_000 * k, 3)
        table.append((np.arange(n) + 10_000 * k, y))
    lookup = np.zeros((30_000, 1, T), np.float32)
    for i, y in table:
        lookup[i, 0] = y
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"name": "p", "block": "mindeye2", "hidden": 128, "n_blocks": 2,
                                  "projector": {"hidden": 32, "residual": True}, "prior": None}))
    base = dict(preset=str(preset), epochs=None, batch_size=16, seed=0, use_prior=False, init="ridge_fallback",
                linear_start="auto", latent_start=32, latent_epochs=20, val_fraction=0.1)
    s = train_arrays({2: vox[2], 3: vox[3]}, {2: ids[2], 3: ids[3]}, lookup, TrainConfig(**base),
                     tmp_path / "pre", progress=False)
    assert s["global_step"] == 0 and s["ridge_start"]["latent"]["dim"] == 32
    assert {s["ridge_start"][k]["start"] for k in ("2", "3")} == {"shared latent"}
    pre = from_pretrained(tmp_path / "pre")
    assert pre.latent is not None and pre.config.latent.dim == 32
    probe = torch.tensor(lookup[ids[2][:5], 0])
    with torch.no_grad():
        again = pre.latent(probe)
    assert torch.isfinite(again).all() and again.std() > 0.1
    cfg = TrainConfig(**{**base, "steps": 3, "lr": 1e-9})
    ft = train_arrays({1: vox[1]}, {1: ids[1]}, lookup, cfg, tmp_path / "ft", progress=False, model=pre)
    start = ft["ridge_start"]["1"]
    assert start["start"] == "shared latent"
    assert not ft["kept_own_ridge_over_pretrained"]
    assert np.mean(start["cv"]["trunk_folds"]) > np.mean(start["cv"]["own_folds"])
    ft_model = from_pretrained(tmp_path / "ft")
    with torch.no_grad():
        np.testing.assert_allclose(ft_model.latent(probe).numpy(), again.numpy(), rtol=1e-5, atol=1e-5)


def test_the_latent_fits_stop_at_their_time_budget():
    """An epoch that would end past the budget is not started (the first always runs), and the
    epochs run are reported, so a slow machine fits less instead of running for hours."""
    from mindsearch.models.factory import create_model
    from mindsearch.training.latent import fit_latent, fit_trunk

    w = World(2)
    phi, y = w.images(200)
    x = _average(w.trials(2, phi))
    model = create_model("tiny", {2: V}, tokens=1, dim=T, use_prior=False, use_projector=False)
    assert fit_latent(model, {2: x}, {2: y}, dim=8, width=32, epochs=50, budget_s=1e-6)["epochs"] == 1
    assert fit_trunk(model, y, noise=0.5, epochs=50, budget_s=1e-6)["epochs"] == 1
    assert fit_trunk(model, y, noise=0.5, epochs=2)["epochs"] == 2
