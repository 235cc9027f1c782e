"""Issue 8's guarantees: validation held out from training images, the ridge start (step 0
retrieves exactly as ridge does), the chosen step, and a training that survives bad moments."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from mindsearch.errors import MindsearchError  # noqa: E402
from mindsearch.retrieval import top1_full_pool  # noqa: E402
from mindsearch.training.trainer import TrainConfig, hold_out_images, train_arrays  # noqa: E402

T, D = 2, 8


def _world(n_img=60, v=40, reps=2, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    targets = rng.standard_normal((n_img, T, D)).astype(np.float32)
    w = rng.standard_normal((T * D, v)).astype(np.float32)
    ids = np.tile(np.arange(n_img), reps)
    x = targets[ids].reshape(len(ids), -1) @ w + noise * rng.standard_normal((len(ids), v))
    return targets, {1: ((x - x.mean(0)) / x.std(0)).astype(np.float32)}, {1: ids}


@pytest.fixture
def ridge_preset(tmp_path):
    path = tmp_path / "small-ridge.json"
    path.write_text(json.dumps({"name": "small-ridge", "block": "mindeye2", "hidden": 64, "n_blocks": 2,
                                "projector": {"hidden": 16, "residual": True}, "prior": None}))
    return str(path)


def _cfg(preset, **kw):
    base = dict(preset=preset, steps=12, batch_size=16, lr=1e-3, seed=0, use_prior=False, init="ridge",
                val_fraction=0.25)
    base.update(kw)
    return TrainConfig(**base)


def test_validation_images_are_held_out_whole():
    ids = {1: np.tile(np.arange(40), 3), 2: np.tile(np.arange(30, 70), 3)}
    val = hold_out_images(ids, 0.1, seed=0)
    assert len(val) == 7 and len(np.unique(val)) == 7 and set(val) <= set(range(70))
    assert np.array_equal(val, hold_out_images(ids, 0.1, seed=0))
    assert len(hold_out_images(ids, 0.0, seed=0)) == 0


def test_step_zero_is_ridge(tmp_path, ridge_preset):
    """The ridge start reproduces the closed-form ridge fit (same alpha, same rows) exactly."""
    from mindsearch.training.ridge import average_by_image, fit_ridge
    from mindsearch.training.trainer import build_model, ridge_start

    targets, vox, ids = _world()
    cfg = _cfg(ridge_preset, ridge_alpha=30.0)
    torch.manual_seed(0)
    model = build_model(cfg, {1: 40}, T, D, targets).eval()
    info = ridge_start(model, vox, ids, lambda i: targets[i], cfg)
    assert info["1"]["rank"] <= 64 and info["1"]["energy_kept"] == pytest.approx(1.0)
    x, uniq = average_by_image(vox[1], ids[1])
    coef, intercept = fit_ridge(x, targets[uniq].reshape(len(uniq), -1), 30.0)
    with torch.no_grad():
        ours = model(torch.from_numpy(x), 1).disjointed.numpy().reshape(len(x), -1)
    np.testing.assert_allclose(ours, x @ coef.T + intercept, rtol=1e-4, atol=1e-4)
    assert top1_full_pool(ours, targets[uniq]) == top1_full_pool(x @ coef.T + intercept, targets[uniq])


def test_training_keeps_the_best_validated_step_from_step_zero(tmp_path, ridge_preset):
    targets, vox, ids = _world()
    s = train_arrays(vox, ids, targets, _cfg(ridge_preset), tmp_path / "run", progress=False)
    curve = dict((int(k), v) for k, v in s["val_curve"])
    assert 0 in curve and s["n_val_images"] == 15
    chosen = s["chosen_step"]
    assert chosen in curve and s["chosen_val_top1"] == curve[chosen] >= curve[0]
    assert chosen == 0 or curve[chosen] == max(curve.values())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["chosen_step"] == s["chosen_step"] and config["train"]["validation_images"] == 15


def test_resume_falls_back_to_the_previous_checkpoint(tmp_path, ridge_preset):
    targets, vox, ids = _world()
    cfg = _cfg(ridge_preset, init="random", ckpt_every_steps=2, val_fraction=0.0)
    train_arrays(vox, ids, targets, cfg, tmp_path / "full", progress=False)
    out = tmp_path / "cut"
    train_arrays(vox, ids, targets, _cfg(ridge_preset, init="random", ckpt_every_steps=2, val_fraction=0.0,
                                         max_steps=5), out, progress=False)
    damaged = out / "checkpoint" / "state.safetensors"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # half-written
    assert (out / "checkpoint.prev" / "state.json").is_file()
    s = train_arrays(vox, ids, targets, cfg, out, resume=True, progress=False)
    assert s["global_step"] == 12 and not s["interrupted"]
    from mindsearch.models import from_pretrained

    a, b = from_pretrained(tmp_path / "full").state_dict(), from_pretrained(out).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_non_finite_loss_stops_and_leaves_the_last_good_checkpoint(tmp_path, ridge_preset, monkeypatch):
    import mindsearch.training.trainer as trainer

    targets, vox, ids = _world()
    real = trainer._step_loss
    calls = {"n": 0}

    def sometimes_nan(*a, **kw):
        loss, parts = real(*a, **kw)
        calls["n"] += 1
        return (loss * float("nan"), parts) if calls["n"] == 7 else (loss, parts)

    monkeypatch.setattr(trainer, "_step_loss", sometimes_nan)
    cfg = _cfg(ridge_preset, init="random", ckpt_every_steps=3, val_fraction=0.0)
    with pytest.raises(MindsearchError, match="step 7.*checkpoint"):
        train_arrays(vox, ids, targets, cfg, tmp_path / "run", progress=False)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["position"]["global_step"] == 6
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_non_finite_inputs_are_rejected_before_training(tmp_path, ridge_preset):
    targets, vox, ids = _world()
    bad = {1: vox[1].copy()}
    bad[1][5, 3] = np.nan
    with pytest.raises(MindsearchError, match="NaN or Inf.*row 5"):
        train_arrays(bad, ids, targets, _cfg(ridge_preset), tmp_path / "a", progress=False)
    t = targets.copy()
    t[7, 0, 0] = np.inf
    with pytest.raises(MindsearchError, match="image id 7"):
        train_arrays(vox, ids, t, _cfg(ridge_preset), tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_fine_tuning_gives_a_new_subject_its_ridge_adapter(tmp_path, ridge_preset):
    """Pretrain on subject 1; subject 2 (other voxels) joins with an adapter fitted by ridge to the
    trunk inputs its images ask for (the trunk untouched), so before any fine-tuning step it
    already retrieves far above chance."""
    from mindsearch.models import from_pretrained
    from mindsearch.training.trainer import build_model, ridge_start

    targets, vox1, ids1 = _world(seed=0)
    rng = np.random.default_rng(5)
    w = rng.standard_normal((T * D, 30)).astype(np.float32)
    x2 = targets[ids1[1]].reshape(len(ids1[1]), -1) @ w + rng.standard_normal((len(ids1[1]), 30))
    vox2 = {2: ((x2 - x2.mean(0)) / x2.std(0)).astype(np.float32)}
    train_arrays(vox1, ids1, targets, _cfg(ridge_preset, steps=5), tmp_path / "pre", progress=False)
    from mindsearch.training.ridge import average_by_image

    pre = from_pretrained(tmp_path / "pre")  # the run that made the trunk stored its inputs' statistics
    with torch.no_grad():
        h = pre.adapters(torch.from_numpy(average_by_image(vox1[1], ids1[1])[0]), 1)
    assert torch.allclose(pre.backbone.input_mean, h.mean(0), atol=1e-4)
    assert torch.allclose(pre.backbone.input_std, h.std(0, unbiased=False), atol=1e-4)
    cfg = _cfg(ridge_preset)
    model = build_model(cfg, {2: 30}, T, D, targets, model=pre)
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("adapters.")}
    info = ridge_start(model, vox2, {2: ids1[1]}, lambda i: targets[i], cfg, subjects=[2])
    assert set(info) == {"2"} and info["2"]["start"] == "trunk inversion"
    for k, v in model.state_dict().items():  # only the new adapter moved: the trunk is the pretrained one
        if k in trunk:
            assert torch.equal(v, trunk[k]), k
    first = np.unique(ids1[1], return_index=True)[1]  # one trial per image
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(vox2[2][first]), 2).disjointed.numpy()
    assert top1_full_pool(out, targets[ids1[1][first]])[0] > 0.3  # chance is 1/60


def test_a_kept_ridge_start_is_the_ridge_baseline(tmp_path, ridge_preset):
    """When no trained step beats the start, the run is ridge refitted on every training image
    (validation images too): the same predictions as training.ridge's fit on those rows."""
    from mindsearch.runs import open_run
    from mindsearch.training.ridge import average_by_image, fit_ridge

    targets, vox, ids = _world()
    s = train_arrays(vox, ids, targets, _cfg(ridge_preset, lr=1e-9, ridge_alpha=30.0), tmp_path / "run",
                     progress=False)
    assert s["chosen_step"] == 0 and s["ridge_refit_on_all_images"]
    x, uniq = average_by_image(vox[1], ids[1])
    coef, intercept = fit_ridge(x, targets[uniq].reshape(len(uniq), -1), 30.0)
    ours = open_run(tmp_path / "run").encode(x, zscore=False, outputs=("disjointed",))["disjointed"]
    np.testing.assert_allclose(ours.reshape(len(x), -1), x @ coef.T + intercept, rtol=1e-3, atol=1e-3)


def test_mean_shift_of_a_kept_ridge_is_cross_validated_and_applied(tmp_path, ridge_preset):
    """A strongly regularised ridge read-out is shrunk towards the mean target; when ridge is
    kept, the share of that mean to subtract is chosen by 5-fold cross-validation over every
    training image (0 competes and wins ties), not on the few validation images, and folded into
    the output bias: the run is ridge minus share x the training images' mean target."""
    from mindsearch.runs import open_run
    from mindsearch.training.encoding import choose_linear
    from mindsearch.training.ridge import average_by_image, fit_ridge
    from mindsearch.training.trainer import MEAN_SHIFTS

    targets, vox, ids = _world(noise=2.0)
    targets = targets + 1.5  # a shared component, as real embedding spaces have
    s = train_arrays(vox, ids, targets, _cfg(ridge_preset, lr=1e-9, ridge_alpha=3000.0, mean_shift=True),
                     tmp_path / "run", progress=False)
    assert s["ridge_refit_on_all_images"]
    scores, share = s["mean_shift"]["cv_mrr"], s["mean_shift"]["share"]
    assert s["mean_shift"]["n_images"] == 60 and "val_mrr" not in s["mean_shift"]
    assert share > 0 and scores[f"{share:.3f}"] == max(scores.values()) > scores["0.000"]
    x, uniq = average_by_image(vox[1], ids[1])
    y = targets[uniq].reshape(len(uniq), -1)
    again = choose_linear(x, y, kinds=("ridge",), ridge_alphas=(3000.0,), shares=MEAN_SHIFTS, seed=0)
    assert again["share"] == share and again["share_mrr"] == pytest.approx(scores)
    coef, intercept = fit_ridge(x, y, 3000.0)
    ours = open_run(tmp_path / "run").encode(x, zscore=False, outputs=("disjointed",))["disjointed"]
    np.testing.assert_allclose(ours.reshape(len(x), -1), x @ coef.T + intercept - share * y.mean(0),
                               rtol=1e-3, atol=1e-3)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["mean_shift_share"] == share


def test_cv_calibration_ties_go_to_no_shift_and_oversize_is_refused():
    """With a zero mean target every share is the same prediction, so 0 wins the tie (the
    scores are real: a good read-out ranks most images first); targets too large for
    ``max_bytes`` give None (the caller then keeps no shift and says why)."""
    from mindsearch.training.encoding import choose_linear

    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 20))
    y = x @ rng.standard_normal((20, 12)) + 0.1 * rng.standard_normal((80, 12))
    res = choose_linear(x, y - y.mean(0), kinds=("ridge",), ridge_alphas=(1e-3,), shares=(0.0, 0.5, 1.0))
    assert res["share"] == 0.0  # y_mean = 0: every share is the same prediction, 0 wins the tie
    assert len(set(res["share_mrr"].values())) == 1 and res["share_mrr"]["0.000"] > 0.5
    assert choose_linear(x, y, kinds=("ridge",), max_bytes=1000) is None


def test_time_budget_caps_the_data_aware_schedule(tmp_path, ridge_preset, capsys):
    """With no steps or epochs the schedule is data-aware; a time budget cuts it to what fits
    (at least one epoch), says so before training, and an interrupted run resumes with the
    count it began with."""
    from mindsearch.training.trainer import auto_steps

    targets, vox, ids = _world()
    cfg = _cfg(ridge_preset, steps=None, epochs=None, time_budget_s=1e-3, max_steps=2, ckpt_every_steps=1)
    first = train_arrays(vox, ids, targets, cfg, tmp_path / "run", progress=True)
    per_epoch = first["steps_per_epoch"]
    assert first["interrupted"] and first["total_steps"] == per_epoch
    assert first["steps_capped_from"] == auto_steps(per_epoch * 16, 16) > per_epoch
    assert "capped by the 1.66667e-05-min time budget" in capsys.readouterr().err
    # A generous budget on resume would allow more steps: the recorded count wins.
    done = train_arrays(vox, ids, targets, dataclasses.replace(cfg, time_budget_s=1e6, max_steps=None),
                        tmp_path / "run", resume=True, progress=False)
    assert not done["interrupted"] and done["total_steps"] == per_epoch == done["global_step"]


def test_ridge_fallback_trains_from_random_weights_and_keeps_ridge_when_it_wins(tmp_path, ridge_preset):
    """``init="ridge_fallback"``: ridge is measured as step 0, training starts from the random
    weights (here it cannot learn: lr ~ 0, so its steps score near chance), and the kept run is
    the ridge baseline refitted on every training image."""
    from mindsearch.runs import open_run
    from mindsearch.training.ridge import average_by_image, fit_ridge

    targets, vox, ids = _world()
    s = train_arrays(vox, ids, targets, _cfg(ridge_preset, lr=1e-9, ridge_alpha=30.0, init="ridge_fallback"),
                     tmp_path / "run", progress=False)
    (_, at_start), *trained = s["val_curve"]
    assert at_start > 0.5 and max(v for _, v in trained) < 0.3  # 15 validation images: chance 1/15
    assert s["chosen_step"] == 0 and s["ridge_refit_on_all_images"]
    x, uniq = average_by_image(vox[1], ids[1])
    coef, intercept = fit_ridge(x, targets[uniq].reshape(len(uniq), -1), 30.0)
    ours = open_run(tmp_path / "run").encode(x, zscore=False, outputs=("disjointed",))["disjointed"]
    np.testing.assert_allclose(ours.reshape(len(x), -1), x @ coef.T + intercept, rtol=1e-3, atol=1e-3)


def test_fine_tuning_keeps_the_new_subjects_own_ridge_when_pretraining_does_not_help(tmp_path, ridge_preset):
    """A model pretrained on unrelated data (shuffled targets) is a bad start for subject 2:
    with ``ridge_fallback`` the subject's own ridge competes at step 0 and, unbeaten, is the
    run: exactly subject 2's ridge refitted on all its training images, as from scratch."""
    from mindsearch.models import from_pretrained
    from mindsearch.runs import open_run
    from mindsearch.training.ridge import average_by_image, fit_ridge

    targets, vox1, ids1 = _world(seed=0)
    shuffled = targets[np.random.default_rng(1).permutation(len(targets))]
    train_arrays(vox1, ids1, shuffled, _cfg(ridge_preset, steps=5), tmp_path / "pre", progress=False)
    rng = np.random.default_rng(5)
    x2 = targets[ids1[1]].reshape(len(ids1[1]), -1) @ rng.standard_normal((T * D, 30)) \
        + rng.standard_normal((len(ids1[1]), 30))
    vox2 = {2: ((x2 - x2.mean(0)) / x2.std(0)).astype(np.float32)}
    s = train_arrays(vox2, {2: ids1[1]}, targets, _cfg(ridge_preset, init="ridge_fallback", lr=1e-9, ridge_alpha=30.0),
                     tmp_path / "ft", progress=False, model=from_pretrained(tmp_path / "pre"))
    assert s["kept_own_ridge_over_pretrained"] and s["chosen_step"] == 0 and s["ridge_refit_on_all_images"]
    x, uniq = average_by_image(vox2[2], ids1[1])
    coef, intercept = fit_ridge(x, targets[uniq].reshape(len(uniq), -1), 30.0)
    run = open_run(tmp_path / "ft")
    ours = run.encode(x, subject=2, zscore=False, outputs=("disjointed",))["disjointed"]
    np.testing.assert_allclose(ours.reshape(len(x), -1), x @ coef.T + intercept, rtol=1e-3, atol=1e-3)
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["train"]["kept_own_ridge_over_pretrained"]


def test_trunk_inputs_recover_what_the_trunk_maps_to_its_targets(ridge_preset):
    """Targets the trunk itself produced from known inputs: the inversion finds inputs whose
    outputs point the same way (cosine near 1), far better than the mean input does."""
    from mindsearch.models.factory import create_model
    from mindsearch.training.inversion import trunk_inputs

    torch.manual_seed(0)
    model = create_model(ridge_preset, {1: 30}, tokens=T, dim=D, use_prior=False).eval()
    h_true = torch.randn(20, model.config.hidden)
    with torch.no_grad():
        tokens, _ = model.backbone(h_true)
        y = model.projector(tokens).reshape(20, -1).numpy()
    found = trunk_inputs(model, y, iters=300)
    with torch.no_grad():
        tokens, _ = model.backbone(torch.from_numpy(found))
        pred = model.projector(tokens).reshape(20, -1)
        start, _ = model.backbone(torch.zeros(20, model.config.hidden))
        start = model.projector(start).reshape(20, -1)
    cos = torch.nn.functional.cosine_similarity(pred, torch.from_numpy(y), dim=1)
    cos0 = torch.nn.functional.cosine_similarity(start, torch.from_numpy(y), dim=1)
    assert cos.min() > 0.9 and cos.mean() > 0.95 and cos.mean() > cos0.mean() + 0.2
    assert all(p.requires_grad for p in model.parameters())  # the model is left trainable


def test_patience_counts_training_progress_not_only_a_new_kept_step(ridge_preset):
    """A margin-protected start (ridge, a pretrained model) keeps the lead while training climbs
    towards it: the peak of the trained steps moves, so those validations are progress (the
    loop's patience resets on (best.step, best.peak)); a step below the peak is not."""
    from mindsearch.training.trainer import StepSelection

    def res(score):
        return {"1": {"n": 300}, "mean_brain_to_image_top1": score}

    sel = StepSelection(_cfg(ridge_preset, init="ridge_fallback"))
    sel.offer(0, res(0.35), None, tag="ridge")
    seen = []
    for step, score in [(10, 0.24), (20, 0.30), (30, 0.37), (40, 0.33), (50, 0.45)]:
        before = (sel.step, sel.peak)
        sel.offer(step, res(score), torch.nn.Linear(1, 1))
        seen.append((sel.step, sel.peak) != before)
    # 0.37 is below 0.35 + 2 standard errors (about 0.055): the start stays kept, yet it is progress
    assert seen == [True, True, True, False, True] and sel.step == 50 and sel.tag is None
    assert sel.state()["peak"] == 0.45
