"""MindEye's losses against hand computations written with explicit loops (numpy, float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mindsearch.training.losses import clip_loss, lowlevel_loss, mixco, mixco_nce, soft_clip_loss, total_loss  # noqa: E402
from mindsearch.training.schedules import (  # noqa: E402
    cosine_anneal,
    make_optimizer,
    make_scheduler,
    mixup_epochs,
    softclip_temperature,
)


def _unit_rows(x):
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_softmax_row(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def _softmax_row(row):
    return [math.exp(v) for v in _log_softmax_row(row)]


def _batch(seed=0, n=5, t=3, d=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, t, d, generator=g), torch.randn(n, t, d, generator=g)


def _sim(p, t, temp):
    p, t = _unit_rows(p), _unit_rows(t)
    n = len(p)
    return [[float(p[i] @ t[j]) / temp for j in range(n)] for i in range(n)]


def test_clip_loss_matches_loops():
    preds, targs = _batch()
    temp = 0.1
    s = _sim(preds.numpy(), targs.numpy(), temp)
    n = len(s)
    row = -sum(_log_softmax_row(s[i])[i] for i in range(n)) / n
    col = -sum(_log_softmax_row([s[j][i] for j in range(n)])[i] for i in range(n)) / n
    assert float(clip_loss(preds, targs, temp=temp)) == pytest.approx((row + col) / 2, rel=1e-5)


def test_soft_clip_loss_matches_loops():
    preds, targs = _batch(1)
    temp = 0.2
    s = _sim(preds.numpy(), targs.numpy(), temp)  # brain_clip[i][j]
    c = _sim(targs.numpy(), targs.numpy(), temp)  # clip_clip[i][j]
    n = len(s)
    loss1 = loss2 = 0.0
    for i in range(n):
        soft = _softmax_row(c[i])
        ls_row = _log_softmax_row(s[i])
        ls_col = _log_softmax_row([s[j][i] for j in range(n)])  # row i of brain_clip.T
        loss1 -= sum(soft[j] * ls_row[j] for j in range(n))
        loss2 -= sum(soft[j] * ls_col[j] for j in range(n))
    expected = (loss1 / n + loss2 / n) / 2
    assert float(soft_clip_loss(preds, targs, temp=temp)) == pytest.approx(expected, rel=1e-5)


def test_mixco_nce_matches_loops():
    preds, targs = _batch(2, n=6)
    perm = torch.tensor([3, 1, 0, 5, 4, 2])  # rows 1 and 4 are "mixed with themselves"
    betas = torch.tensor([0.3, 0.6, 1.0, 0.9, 0.2, 1.0])
    temp = 0.05
    s = _sim(preds.numpy(), targs.numpy(), temp)
    n = len(s)
    probs = [[0.0] * n for _ in range(n)]
    for i in range(n):
        probs[i][i] += float(betas[i])
        probs[i][int(perm[i])] += 1 - float(betas[i])
    for i in range(n):
        assert sum(probs[i]) == pytest.approx(1.0)
    row = col = 0.0
    for i in range(n):
        ls_row = _log_softmax_row(s[i])
        ls_col = _log_softmax_row([s[j][i] for j in range(n)])
        row -= sum(probs[i][j] * ls_row[j] for j in range(n))
        col -= sum(probs[j][i] * ls_col[j] for j in range(n))
    expected = (row / n + col / n) / 2
    assert float(mixco_nce(preds, targs, perm, betas, temp=temp)) == pytest.approx(expected, rel=1e-5)


def test_bimixco_without_mixing_is_clip_loss():
    preds, targs = _batch(3, n=7)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    ones = torch.ones(7)
    assert float(mixco_nce(preds, targs, perm, ones, temp=0.006)) == pytest.approx(
        float(clip_loss(preds, targs, temp=0.006)), rel=1e-6
    )


def test_mixco_mixes_half_and_keeps_input():
    torch.manual_seed(0)
    x = torch.randn(200, 10)
    x0 = x.clone()
    mixed, perm, betas, select = mixco(x)
    assert torch.equal(x, x0)
    assert 60 < int(select.sum()) < 140  # ~half (s_thresh 0.5)
    assert torch.all(betas[~select] == 1)
    assert torch.equal(mixed[~select], x[~select])
    i = int(torch.nonzero(select)[0])
    expect = betas[i] * x[i] + (1 - betas[i]) * x[perm[i]]
    assert torch.allclose(mixed[i], expect, atol=1e-6)
    # Beta(0.15, 0.15) is U-shaped: most mixing weights sit near 0 or 1.
    b = betas[select]
    assert float(((b < 0.1) | (b > 0.9)).float().mean()) > 0.5


def test_lowlevel_and_total_loss():
    g = torch.Generator().manual_seed(4)
    pred, target = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    l1 = float(np.abs(pred.numpy() - target.numpy()).mean()) / 0.18215
    assert float(lowlevel_loss(pred, target)) == pytest.approx(l1, rel=1e-5)
    aux_p, aux_t = torch.randn(3, 5, 2, 2, generator=g), torch.randn(3, 5, 2, 2, generator=g)
    with_cont = l1 + 0.1 * float(soft_clip_loss(aux_p, aux_t, temp=0.075))
    assert float(lowlevel_loss(pred, target, aux_p, aux_t)) == pytest.approx(with_cont, rel=1e-5)
    c, p = torch.tensor(2.0), torch.tensor(0.5)
    assert float(total_loss(c, p)) == pytest.approx(2.0 + 30 * 0.5)


def test_cosine_anneal_rises_from_start_to_end():
    temps = cosine_anneal(0.004, 0.0075, 161)
    assert temps[0] == pytest.approx(0.004) and temps[-1] == pytest.approx(0.0075)
    assert np.all(np.diff(temps) >= 0)
    assert temps[80] == pytest.approx((0.004 + 0.0075) / 2)
    assert cosine_anneal(0.004, 0.0075, 1).tolist() == [0.004]


def test_schedule_phases_and_optimizer_groups():
    assert mixup_epochs(240, 0.33) == 79
    assert softclip_temperature(79, 240, 0.33) == pytest.approx(0.004)
    assert softclip_temperature(239, 240, 0.33) == pytest.approx(0.0075)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = make_optimizer(model)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and len(decay["params"]) == 1  # the Linear weight only
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3
    sched = make_scheduler(opt, 3e-4, total_steps=100, epochs=10)  # warm-up = 2 epochs = 20 steps
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert int(np.argmax(lrs)) in (19, 20) and max(lrs) == pytest.approx(3e-4, rel=1e-3)
    assert lrs[-1] < 3e-4 / 1000


def test_weight_decay_on_norm_weights_is_an_option():
    """Default: biases and norm weights are exempt; decay_norms (the anchors' behaviour) exempts
    only biases; lr_scales put the ridge start's linear path in its own, slower group."""
    from torch import nn

    from mindsearch.training.schedules import param_groups

    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    ln_w = model[1].weight

    def decayed(groups):
        return [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]

    assert not any(p is ln_w for p in decayed(param_groups(model, 0.01)))
    assert any(p is ln_w for p in decayed(param_groups(model, 0.01, decay_norms=True)))
    assert all(not p.ndim == 1 or p is ln_w for p in decayed(param_groups(model, 0.01, decay_norms=True)))
    scaled = param_groups(model, 0.01, lr_scales={"0.": 0.1})
    slow = [p for g in scaled if g["lr_scale"] == 0.1 for p in g["params"]]
    assert {id(p) for p in slow} == {id(model[0].weight), id(model[0].bias)}
