"""Train a MindEye-style encoder: one loop to read top to bottom (nanoGPT's shape), resumable bit for bit.

    model = build_model(...)                      # new (random or ridge start) or fine-tuned
    while global_step < total_steps:              # epoch, position = divmod(global_step, steps/epoch)
        xs, ids = get_batch(epoch, k)             # a pure function of (seed, epoch, k): resumable
        loss = BiMixCo (first third) or SoftCLIP on the projector + 30 * prior MSE (+ low-level)
        AdamW step, OneCycleLR step
        at epoch ends: validation top-1 on images held out from TRAINING; checkpoint
    keep the validated step with the best top-1 (step 0 included); write_run

Validation never sees the test split: ``cfg.val_fraction`` of the training images (all their
trials, across subjects) is held out (``hold_out_images``). With ``init="ridge"`` the model
starts as the closed-form ridge solution (``MindEyeModel.start_linear``), so step 0 retrieves as
ridge does, and since step 0 is a candidate for the chosen step, training can only improve on it
(on validation). The schedule is in optimiser steps: ``steps`` when given, else ``epochs`` x
steps per epoch, else a data-aware default (``auto_steps``).

Checkpoints (``training.checkpoints``) restore weights, optimiser, scheduler, RNGs, position and
the best validated weights; since the data order is recomputed from (seed, epoch) and every random
draw comes from the restored global RNG, a resumed run ends with the same weights as an
uninterrupted one. A non-finite loss stops training with an error that leaves the last good
checkpoint in place. The loop runs under ``accelerate.Accelerator`` so ``accelerate launch``
spreads it over GPUs; by default (one process) it is plain single-device torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mindsearch.errors import MindsearchError
from mindsearch.retrieval import reciprocal_rank, top1_full_pool
from mindsearch.training import checkpoints
from mindsearch.training.checkpoints import CKPT_DIR

LOSSES = ("bimixco_softclip", "clip", "bimixco", "softclip")
INITS = ("random", "ridge", "ridge_fallback")
RIDGE_INITS = ("ridge", "ridge_fallback")


@dataclass
class TrainConfig:
    preset: str = "light"  # model preset (a name in mindsearch/models/configs) or a path to a JSON config
    epochs: int | None = 20  # None with steps None: a data-aware number of steps (auto_steps)
    steps: int | None = None  # optimiser steps of the whole schedule (overrides epochs)
    batch_size: int = 32  # global batch per micro-step, split evenly over subjects
    lr: float = 3e-4  # OneCycleLR max_lr
    weight_decay: float = 1e-2
    decay_norms: bool = False  # also decay LayerNorm/GroupNorm weights (as MindEye's anchors do)
    seed: int = 42
    loss: str = "bimixco_softclip"
    mixup_pct: float = 0.33
    mixco_beta: float = 0.15
    mixco_s_thresh: float = 0.5
    clip_temp: float = 0.006  # BiMixCo / CLIP temperature (fixed)
    softclip_temp_start: float = 0.004
    softclip_temp_end: float = 0.0075
    prior_weight: float = 30.0
    use_prior: bool = True
    use_projector: bool = True
    use_lowlevel: bool = False
    lowlevel_weight: float = 0.5  # MindEye2's weight on (L1/0.18215 + 0.1 * L_cont)
    # After the loop the head is refitted alone on the trunk the run keeps (training/lowlevel.py says
    # why): this many steps on frozen trunk features, the best validation L1 kept; 0 = no refit.
    lowlevel_refit_steps: int = 3000
    lowlevel_refit_lr: float = 1e-3
    init: str = "random"  # "ridge": start as the closed-form ridge solution (needs the mindeye2 block);
    # "ridge_fallback": start from random weights, the ridge solution competing as step 0 (kept when no
    # trained step beats it on validation); fine-tuning a trained model behaves as "ridge"
    ridge_alpha: float | None = None  # ridge start: None = chosen on held-out training images
    # "ridge": the linear start is ridge; "auto": ridge or the inverted encoding model
    # (training/encoding.py), whichever k-fold cross-validation over the training images prefers
    linear_start: str = "ridge"
    # Pretraining (a new model on two or more subjects): > 0 starts from a shared latent encoding
    # model of this width (training/latent.py) instead of the linear start; its fit's epochs and the
    # noise the trunk learns to read it under (in the latent's standard deviations)
    latent_start: int = 0
    latent_epochs: int = 40
    latent_noise: float = 0.5
    linear_lr_scale: float = 0.1  # ridge start: the linear path (adapters, output linear) trains at lr x this
    accumulate: int = 1
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, off on CPU) | no | bf16 | fp16
    val_fraction: float = 0.1  # share of the training images held out for validation (never test)
    val_every: int = 1  # epochs between validations; 0 = only at the end
    val_size: int = 300  # at most this many validation images in the top-1
    select: str = "best"  # "best": keep the validated step with the best top-1 (step 0 included); "last"
    patience: int = 0  # stop after this many validations without improvement (0 = never)
    select_margin: float = 2.0  # ridge start: a trained step must beat step 0 by this many standard errors
    time_budget_s: float | None = None  # data-aware schedules: at most the steps that fit this many seconds here
    mean_shift: bool = False  # after selection, subtract a validated share of the mean target (calibrate_mean_shift)
    ckpt_every_steps: int = 0  # 0 = only at epoch ends
    max_steps: int | None = None  # stop (resumably) after this many optimiser steps
    adapter_only: bool = False  # train only the adapters of the subjects being trained
    prior_sample_steps: int | None = None  # reverse steps when a run encodes "aligned" (None = all)
    keep_checkpoint: bool = False  # keep OUT/checkpoint after the run finishes

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise MindsearchError(f"unknown loss {self.loss!r} (choose from {', '.join(LOSSES)})")
        if self.init not in INITS:
            raise MindsearchError(f"unknown init {self.init!r} (choose from {', '.join(INITS)})")
        if self.linear_start not in ("ridge", "auto"):
            raise MindsearchError(f"linear_start must be ridge or auto, got {self.linear_start!r}")
        if self.select not in ("best", "last"):
            raise MindsearchError(f"select must be best or last, got {self.select!r}")
        if (self.epochs is not None and self.epochs < 1) or (self.steps is not None and self.steps < 1) \
                or self.batch_size < 2 or self.accumulate < 1:
            raise MindsearchError("epochs >= 1, steps >= 1, batch_size >= 2 and accumulate >= 1 are required")
        if not 0 <= self.val_fraction < 1:
            raise MindsearchError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    @classmethod
    def for_preset(cls, preset: str = "light", **overrides) -> "TrainConfig":
        """Defaults from the preset's ``train`` section, then ``overrides``."""
        from mindsearch.models.factory import load_preset

        defaults = dict(load_preset(preset).get("train") or {})
        defaults.update(overrides)
        return cls(preset=preset, **defaults)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def auto_steps(n_trials: int, batch_size: int) -> int:
    """The data-aware default schedule: 30 passes over the data, at least 1,500 and at most
    20,000 optimiser steps (a fixed epoch count gives small datasets too few steps to learn)."""
    per_epoch = max(n_trials // batch_size, 1)
    return int(min(max(30 * per_epoch, 1500), 20000))


# ----------------------------------------------------------------------------- data


def epoch_order(seed: int, epoch: int, subject: int, n: int) -> np.ndarray:
    """The shuffled trial order of one subject's epoch: a pure function, so resuming recomputes it."""
    return np.random.default_rng([int(seed), int(epoch), int(subject)]).permutation(n)


def hold_out_images(ids_by_subject: dict, fraction: float, seed: int) -> np.ndarray:
    """Image ids held out for validation: ``fraction`` of the training images (all subjects
    together), so every trial of a validation image leaves training and repetitions never
    straddle the split."""
    every = np.unique(np.concatenate([np.asarray(i) for i in ids_by_subject.values()]))
    n_val = int(round(fraction * len(every)))
    if fraction <= 0 or n_val < 2:
        return np.zeros(0, np.int64)
    return np.sort(np.random.default_rng([int(seed), 7]).choice(every, n_val, replace=False))


def _as_lookup(targets_lookup) -> Callable[[np.ndarray], np.ndarray]:
    if callable(targets_lookup):
        return lambda ids: np.asarray(targets_lookup(np.asarray(ids)), dtype=np.float32)
    arr = np.asarray(targets_lookup)
    return lambda ids: arr[np.asarray(ids)].astype(np.float32)


def _check_finite(vox: dict, ids: dict, lookup) -> None:
    """Reject NaN/Inf voxels or targets before any training (one error line, nothing written)."""
    for s, x in vox.items():
        for i in range(0, len(x), 4096):
            bad = ~np.isfinite(np.asarray(x[i : i + 4096]))
            if bad.any():
                row = i + int(np.argwhere(bad.any(axis=1))[0, 0])
                raise MindsearchError(f"subject {s}: training voxels contain NaN or Inf (first at trial row {row})")
    every = np.unique(np.concatenate(list(ids.values())))
    for i in range(0, len(every), 1024):
        t = lookup(every[i : i + 1024])
        if not np.isfinite(t).all():
            bad = every[i : i + 1024][~np.isfinite(t.reshape(len(t), -1)).all(axis=1)]
            raise MindsearchError(f"target embeddings contain NaN or Inf (image id {int(bad[0])})")


# ----------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig, n_voxels: dict, tokens: int, dim: int, sample_targets, model=None,
                overrides: dict | None = None):
    """A new model from the preset (seeded), or ``model`` (fine-tuning: subjects it lacks get
    new adapters, its target shape must match)."""
    import torch

    from mindsearch.models.factory import create_model

    if model is None:
        model = create_model(_with_overrides(cfg.preset, overrides), n_voxels, tokens=tokens, dim=dim,
                             use_projector=cfg.use_projector, use_prior=cfg.use_prior,
                             use_lowlevel=cfg.use_lowlevel)
        if model.prior is not None and model.config.prior.embed_scale == "auto":
            model.prior.set_embed_scale(torch.from_numpy(sample_targets))
    else:
        if (model.config.tokens, model.config.dim) != (tokens, dim):
            raise MindsearchError(
                f"the initial model maps to {model.config.tokens}x{model.config.dim} but the "
                f"targets are {tokens}x{dim}"
            )
        for s, v in n_voxels.items():
            if s not in model.subjects:
                model.add_subject(s, v)
            elif model.adapters.n_voxels(s) != v:
                raise MindsearchError(f"subject {s}: the model expects {model.adapters.n_voxels(s)} voxels, "
                                      f"the data has {v}")
    if cfg.adapter_only:
        model.train_only(sorted(n_voxels))
    return model


def _choose_start(x: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> dict | None:
    """``cfg.linear_start="auto"``: ridge vs the inverted encoding model by k-fold CV over these
    images (``training.encoding.choose_linear``); None for a ridge start, or when too large."""
    if cfg.linear_start != "auto":
        return None
    from mindsearch.training.encoding import SHARES, choose_linear

    alphas = {"ridge_alphas": (cfg.ridge_alpha,)} if cfg.ridge_alpha else {}
    return choose_linear(x, y, seed=cfg.seed, shares=SHARES, **alphas)


def _start_line(s, info: dict) -> str:
    c = info.get("choice")
    if not c:
        return f"ridge start, subject {s}: alpha {info['alpha']:g}, rank {info['rank']}"
    what = "the inverted encoding model" if c["kind"] == "encoding" else "ridge"
    other = ", ".join(f"{k} {v:.3f}" for k, v in c["cv_mrr_by_kind"].items())
    return (f"linear start, subject {s}: {what} (alpha {c['alpha']:g}"
            + (f", prior {c['prior']:g}" if c["prior"] is not None else "")
            + f"), rank {info['rank']}; {c['folds']}-fold reciprocal rank {other}")


def ridge_start(model, vox: dict, ids: dict, lookup, cfg: TrainConfig, say=None, subjects=None,
                choices: dict | None = None) -> dict:
    """Set a new model to the linear start of its first subject (ridge, or with
    ``cfg.linear_start="auto"`` the cross-validated best of ridge and the inverted encoding model;
    factored through the hidden width) and the other subjects' adapters to their own linear
    starts under the shared read-out. On a trained model (fine-tuning) only ``subjects`` (the new
    ones) get adapters: a linear map to the trunk inputs their training images ask for
    (``training.inversion``). Each image's trials are averaged first, as the ridge baseline does.
    ``choices`` {subject: ``choose_linear`` result} already made on these images are reused."""
    from mindsearch.training.ridge import adapter_for, average_by_image, linear_start

    info = {}
    shared = None
    for s in sorted(vox) if subjects is None else subjects:
        x, uniq = average_by_image(np.asarray(vox[s], np.float32), ids[s])
        y = lookup(uniq).reshape(len(uniq), -1)
        if subjects is not None:
            # A trained trunk: the adapter maps to the inputs the trunk wants for these images.
            from mindsearch.training.encoding import choose_linear
            from mindsearch.training.inversion import adapter_from_trunk
            from mindsearch.training.ridge import choose_alpha

            # The subject's own read-out, scored on the folds the trunk start is scored on.
            choice = _choose_start(x, y, cfg) if cfg.linear_start == "auto" else choose_linear(
                x, y, kinds=("ridge",), ridge_alphas=(cfg.ridge_alpha or choose_alpha(x, y, seed=cfg.seed)[0],),
                shares=(0.0,), seed=cfg.seed)
            own = adapter_from_trunk(model, x, y, choice, seed=cfg.seed, encoding=cfg.linear_start == "auto")
            model.set_adapter(s, own["a_weight"], own["a_bias"])
            info[str(s)] = {**{k: own[k] for k in ("alpha", "rank", "start", "cv")}, "choice": choice}
            if say:
                say(f"trunk start, subject {s}: {own['how']}, rank {own['rank']}")
            continue
        choice = (choices or {}).get(s) or _choose_start(x, y, cfg)
        fit = linear_start(x, y, model.config.hidden, alpha=cfg.ridge_alpha, seed=cfg.seed, choice=choice)
        if shared is None:
            shared = fit
            # Balance the factors so the hidden activations have unit RMS, as a trained trunk's do:
            # the residual blocks' corrections are then relative to a signal of known size.
            rms = float(np.sqrt(np.mean((x @ shared["a_weight"].T) ** 2))) or 1.0
            shared["a_weight"], shared["b_weight"] = shared["a_weight"] / rms, shared["b_weight"] * rms
            model.start_linear(s, shared["a_weight"], shared["a_bias"], shared["b_weight"], shared["b_bias"])
            info[str(s)] = {k: shared[k] for k in ("alpha", "rank", "energy_kept", "kind")}
        else:
            a, b = adapter_for(fit["coef"], fit["b_bias"], shared["b_weight"], shared["b_bias"])
            model.set_adapter(s, a, b)
            info[str(s)] = {"alpha": fit["alpha"], "rank": int(a.shape[0]), "kind": fit["kind"]}
        info[str(s)]["choice"] = choice
        if say:
            say(_start_line(s, info[str(s)]))
    return info


# ----------------------------------------------------------------------------- choosing the step


class StepSelection:
    """The validated step a run keeps: the best brain->image top-1 so far, with its weights
    (``select="best"``); step 0 competes only when it is a model worth keeping (a ridge start, a
    run being fine-tuned). Leaving a ridge start takes a clear win, not a lucky draw of a small
    validation set: ``select_margin`` binomial standard errors of the start's top-1."""

    def __init__(self, cfg: TrainConfig, start_is_candidate: bool = True):
        self.cfg, self.step, self.score, self.weights, self.curve = cfg, None, -1.0, None, []
        self.start_is_candidate = start_is_candidate
        self.tag = None  # "ridge": the best is the new subjects' own ridge (fine-tuning's fallback)
        self.peak = -1.0  # the best trained step's score, kept or not: is training still improving?

    def offer(self, step: int, res: dict, model, tag: str | None = None) -> None:
        """``tag="ridge"``: a step-0 candidate that is not ``model``'s weights (rebuilt, not stored)."""
        score = res["mean_brain_to_image_top1"]
        if tag is None:
            self.curve.append([step, score])
        if step > 0:
            self.peak = max(self.peak, score)
        if step == 0 and not self.start_is_candidate:
            return  # random weights are measured (the curve's origin), never kept
        n = sum(r["n"] for r in res.values() if isinstance(r, dict))
        margin = 0.0
        if self.step == 0 and self.cfg.init in RIDGE_INITS and n:
            margin = self.cfg.select_margin * math.sqrt(max(self.score * (1 - self.score), 1 / n) / n)
        if score > self.score + margin:
            self.step, self.score, self.tag = step, score, tag
            if self.cfg.select == "best":
                self.weights = None if tag else {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def state(self) -> dict:
        return {"val_curve": self.curve, "best_step": self.step, "best_score": self.score, "best_tag": self.tag,
                "peak": self.peak}

    def restore(self, position: dict, weights: dict) -> None:
        self.curve = position.get("val_curve", [])
        self.step, self.score = position.get("best_step"), position.get("best_score", -1.0)
        self.tag, self.peak = position.get("best_tag"), position.get("peak", -1.0)
        self.weights = weights or None


# ----------------------------------------------------------------------------- one step


def _phase(cfg: TrainConfig, epoch: int, epochs: int) -> tuple[str, float]:
    """Which contrastive loss this epoch (of ``epochs``) uses, and its temperature."""
    from mindsearch.training.schedules import mixup_epochs, softclip_temperature

    if cfg.loss == "clip":
        return "clip", cfg.clip_temp
    if cfg.loss == "bimixco" or (cfg.loss == "bimixco_softclip" and epoch < mixup_epochs(epochs, cfg.mixup_pct)):
        return "bimixco", cfg.clip_temp
    pct = cfg.mixup_pct if cfg.loss == "bimixco_softclip" else 0.0
    return "softclip", softclip_temperature(epoch, epochs, pct, cfg.softclip_temp_start, cfg.softclip_temp_end)


def _step_loss(model, voxels: list, subjects: list, targets, phase: str, temp: float, cfg: TrainConfig,
               lowlevel_targets=None):
    import torch

    from mindsearch.training.losses import clip_loss, lowlevel_loss, mixco, mixco_nce, soft_clip_loss, total_loss

    perm = betas = None
    if phase == "bimixco":
        # Mix within each subject (voxel spaces differ); offset perms into the concatenated batch.
        mixed, perms, bs, offset = [], [], [], 0
        for v in voxels:
            m, p, b, _ = mixco(v, cfg.mixco_beta, cfg.mixco_s_thresh)
            mixed.append(m)
            perms.append(p + offset)
            bs.append(b)
            offset += len(v)
        voxels, perm, betas = mixed, torch.cat(perms), torch.cat(bs)
    out = model(voxels, subjects, targets=targets if cfg.use_prior else None)
    preds = out.disjointed
    if phase == "bimixco":
        contrastive = mixco_nce(preds, targets, perm, betas, temp=temp)
    elif phase == "clip":
        contrastive = clip_loss(preds, targets, temp=temp)
    else:
        contrastive = soft_clip_loss(preds, targets, temp=temp)
    low = None
    if lowlevel_targets is not None and out.lowlevel is not None:
        latents, feats = lowlevel_targets
        low = lowlevel_loss(out.lowlevel, latents, out.lowlevel_aux, feats)
    loss = total_loss(contrastive, out.prior_loss, cfg.prior_weight, low, cfg.lowlevel_weight)
    parts = {"contrastive": float(contrastive.detach())}
    if out.prior_loss is not None:
        parts["prior"] = float(out.prior_loss.detach())
    if low is not None:
        parts["lowlevel"] = float(low.detach())
    return loss, parts


def validate(model, val: dict, lookup, device, size: int = 300, batch: int = 256) -> dict:
    """Top-1 of the retrieval embeddings among up to ``size`` validation images, each image's
    outputs averaged over its trials (MindEye2's test-time averaging)."""
    import torch

    was_training = model.training
    model.eval()
    res = {}
    with torch.no_grad():
        for s, (vox, ids) in sorted(val.items()):
            keep = np.unique(ids)[:size]
            rows = np.flatnonzero(np.isin(ids, keep))
            if len(keep) < 2:
                continue
            outs = []
            for i in range(0, len(rows), batch):
                xb = torch.from_numpy(np.asarray(vox[rows[i : i + batch]], dtype=np.float32)).to(device)
                outs.append(model([xb], [s]).disjointed.float().cpu().numpy())
            out = np.concatenate(outs).reshape(len(rows), -1)
            inv = np.searchsorted(keep, ids[rows])
            mean = np.zeros((len(keep), out.shape[1]), np.float64)
            np.add.at(mean, inv, out)
            brain, images = mean / np.bincount(inv)[:, None], lookup(keep).reshape(len(keep), -1)
            fwd, bwd = top1_full_pool(brain, images)
            res[str(s)] = {"brain_to_image_top1": fwd, "image_to_brain_top1": bwd,
                           "brain_to_image_mrr": reciprocal_rank(brain, images), "n": int(len(keep))}
    model.train(was_training)
    if res:
        for key in ("brain_to_image_top1", "brain_to_image_mrr"):
            res[f"mean_{key}"] = float(np.mean([r[key] for r in res.values() if isinstance(r, dict)]))
    return res


MEAN_SHIFTS = (0.0, 1 / 3, 0.5, 2 / 3, 0.8, 0.9)


def mean_target(lookup, image_ids: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """The mean target over ``image_ids``, flattened, read in chunks (NSD-size grids are GBs)."""
    total, n = None, 0
    for i in range(0, len(image_ids), chunk):
        t = lookup(image_ids[i : i + chunk]).reshape(min(chunk, len(image_ids) - i), -1).astype(np.float64)
        total = t.sum(0) if total is None else total + t.sum(0)
        n += len(t)
    return (total / max(n, 1)).astype(np.float32)


def shift_output(model, delta: np.ndarray) -> None:
    """Add ``delta`` (T*D,) to the retrieval embedding through the output linear's bias: exact
    for a model without projector, and the projector's input for a residual one."""
    import torch

    bias = model.backbone.to_tokens.bias
    with torch.no_grad():
        bias.add_(torch.as_tensor(delta.reshape(-1), dtype=bias.dtype, device=bias.device))


def calibrate_mean_shift(model, val: dict, lookup, y_mean: np.ndarray, device, size: int = 300,
                         shares=MEAN_SHIFTS) -> dict:
    """Choose on validation the share ``lam`` of the mean target to subtract from the outputs.

    A regression read-out (ridge, the ridge start) is shrunk towards the mean target, and under
    cosine retrieval that shared component makes every prediction look alike (hubness);
    the choice is by mean reciprocal rank (smoother than top-1 on a few dozen images);
    ``y_mean + c (pred - y_mean)`` with c > 1 undoes the shrinkage, and up to scale it is
    ``pred - (1 - 1/c) y_mean``. Measured on ``standard`` with ridge: +1.5 to +2.3 points
    brain->image from 1 to 16 sessions. ``lam = 0`` (no change) is a candidate and wins ties,
    so validation never gets worse; the model is left unchanged (``shift_output`` applies it)."""
    if model.projector is not None and not model.projector.residual:
        return {"share": 0.0, "val_top1": {}, "reason": "a non-residual projector hides the output bias"}
    scores = {}
    for lam in shares:
        shift_output(model, -lam * y_mean)
        res = validate(model, val, lookup, device, size)
        shift_output(model, lam * y_mean)
        if not res:
            return {"share": 0.0, "val_top1": {}}
        scores[float(lam)] = (res["mean_brain_to_image_mrr"], res["mean_brain_to_image_top1"])
    best = max(scores, key=lambda lam: (scores[lam][0], -lam))
    return {"share": best, "val_mrr": {f"{lam:.3f}": v[0] for lam, v in scores.items()},
            "val_top1": {f"{lam:.3f}": v[1] for lam, v in scores.items()}}


def _kept_start_shift(vox: dict, ids: dict, lookup, fitted: dict, cfg: TrainConfig) -> dict:
    """``calibrate_mean_shift``'s choice for a kept linear start, by k-fold cross-validation over
    every training image of each subject (``training.encoding.choose_linear``: already done with
    ``linear_start="auto"``; for a ridge start, ridge at its fitted alpha), the folds' reciprocal
    ranks averaged over subjects, since the subjects share one output bias."""
    from mindsearch.training.encoding import choose_linear
    from mindsearch.training.ridge import average_by_image

    per_subject = []
    for s in sorted(vox):
        c = fitted[str(s)].get("choice")
        if c is None:
            x, uniq = average_by_image(np.asarray(vox[s], np.float32), ids[s])
            c = choose_linear(x, lookup(uniq).reshape(len(uniq), -1), kinds=("ridge",),
                              ridge_alphas=(fitted[str(s)]["alpha"],), shares=MEAN_SHIFTS, seed=cfg.seed)
        if c is None:
            return {"share": 0.0, "reason": "too many images x target values to cross-validate the calibration"}
        per_subject.append(c)
    keys = set.intersection(*(set(c["share_mrr"]) for c in per_subject))
    mrr = {k: float(np.mean([c["share_mrr"][k] for c in per_subject])) for k in sorted(keys)}
    best = max(mrr, key=lambda k: (mrr[k], -float(k)))
    return {"share": float(best), "cv_mrr": mrr, "folds": per_subject[0]["folds"],
            "n_images": int(sum(c["n_images"] for c in per_subject))}


def _epoch_line(record: dict) -> str:
    line = f"epoch {record['epoch']}: {record['phase']} loss {record['loss']:.4f}, lr {record['lr']:.2e}"
    for s, v in (record.get("val") or {}).items():
        if isinstance(v, dict) and "brain_to_image_top1" in v:
            line += (f"; val subject {s} top-1 /{v['n']}: brain->image "
                     f"{v['brain_to_image_top1']:.1%}, image->brain {v['image_to_brain_top1']:.1%}")
    return line


def _with_overrides(preset, overrides: dict | None):
    """The preset itself when nothing overrides it (so configs stay as before), else a merged dict."""
    if not overrides:
        return preset
    from mindsearch.models.factory import load_preset

    config = load_preset(preset)
    for section, values in overrides.items():
        base = config.get(section)
        config[section] = {**base, **values} if isinstance(base, dict) and isinstance(values, dict) else values
    return config


def train_arrays(
    voxels_by_subject: dict,
    image_ids_by_subject: dict,
    targets_lookup,
    cfg: TrainConfig,
    out_dir,
    resume: bool = False,
    val: dict | None = None,
    progress: bool = True,
    *,
    model=None,
    zscore: dict | None = None,
    run_info: dict | None = None,
    lowlevel_lookup: Callable | None = None,
    model_overrides: dict | None = None,
) -> dict:
    """Train on single trials. ``voxels_by_subject`` {s: (n, V) float32, z-scored};
    ``image_ids_by_subject`` {s: (n,)}; ``targets_lookup``: ids -> (n, T, D) (callable or array
    indexed by image id); ``val`` {s: (voxels, image_ids)}: explicit validation sets (default:
    ``cfg.val_fraction`` of the training images held out); ``model`` an initial ``MindEyeModel``
    (fine-tuning); ``zscore`` {s: ZScore} for the run; ``run_info`` {"space", "data", ...} for
    config.json; ``lowlevel_lookup`` ids -> (latents, teacher features or None) when
    ``cfg.use_lowlevel``; ``model_overrides`` {section: {key: value}} merged into the preset.
    Returns a summary dict (also written to ``OUT/train_log.json``)."""
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from mindsearch.models.factory import save_pretrained
    from mindsearch.training.schedules import make_optimizer, make_scheduler

    t_start = time.time()
    out_dir = Path(out_dir)
    say = (lambda m: tqdm.write(m, file=sys.stderr)) if progress else (lambda m: None)
    if resume and not checkpoints.has_checkpoint(out_dir) and (out_dir / "train_log.json").is_file() \
            and (out_dir / "model.safetensors").is_file():
        # Resuming a finished run is a no-op: hand back what it recorded.
        done = json.loads((out_dir / "train_log.json").read_text())
        done["already_complete"] = True
        return done

    # --- 1. data: subjects, targets, the validation images held out from training
    subjects = sorted(int(s) for s in voxels_by_subject)
    if not subjects:
        raise MindsearchError("no training subjects")
    vox = {s: voxels_by_subject[s] for s in subjects}
    ids = {s: np.asarray(image_ids_by_subject[s], dtype=np.int64) for s in subjects}
    for s in subjects:
        if len(vox[s]) != len(ids[s]):
            raise MindsearchError(f"subject {s}: {len(vox[s])} voxel rows but {len(ids[s])} image ids")
    lookup = _as_lookup(targets_lookup)
    sample_targets = lookup(np.unique(ids[subjects[0]])[:1024])
    if sample_targets.ndim != 3:
        raise MindsearchError(f"targets must be (n, tokens, dim), got shape {sample_targets.shape}")
    tokens, dim = int(sample_targets.shape[1]), int(sample_targets.shape[2])
    if cfg.use_lowlevel and lowlevel_lookup is None:
        raise MindsearchError("use_lowlevel needs low-level targets (VAE latents), which were not given")
    _check_finite(vox, ids, lookup)
    val_images = np.zeros(0, np.int64)
    every_vox, every_ids = dict(vox), dict(ids)  # before validation is held out
    if val is None:
        val_images = hold_out_images(ids, cfg.val_fraction, cfg.seed)
        val = {}
        for s in subjects:
            held = np.isin(ids[s], val_images)
            if held.any():
                val[s] = (np.asarray(vox[s])[held], ids[s][held])
                vox[s], ids[s] = np.asarray(vox[s])[~held], ids[s][~held]
    val_sets = {int(s): (v, np.asarray(i)) for s, (v, i) in val.items()}
    out_dir.mkdir(parents=True, exist_ok=True)

    # --- 2. model (seeded, so initial weights are a function of the seed), device, optimiser
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    n_voxels = {s: int(vox[s].shape[1]) for s in subjects}
    new = subjects if model is None else [s for s in subjects if s not in model.subjects]
    fresh = model is None
    model = build_model(cfg, n_voxels, tokens, dim, sample_targets, model, model_overrides)
    ridge_info = None
    start_weights = None
    latent = bool(cfg.latent_start and fresh and len(subjects) > 1)
    if latent:
        # Pretraining: the shared latent start is step 0's candidate and, with the data-aware
        # schedule, the run (total_steps 0 below); a new subject's adapter maps to this latent.
        from mindsearch.training.latent import latent_start

        ridge_info = latent_start(model, vox, ids, lookup, cfg, say)
    elif cfg.init in RIDGE_INITS and new:
        if cfg.init == "ridge_fallback" and fresh:
            start_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ridge_info = ridge_start(model, vox, ids, lookup, cfg, say, subjects=None if fresh else new)
    # Fine-tuning new subjects only: their own ridge (what training from scratch would keep) is a
    # step-0 candidate too, so a pretrained start never leaves a subject worse off than no
    # pretraining; if it wins, it is fitted again (closed form) on every training image, never stored.
    def fresh_model():
        return build_model(cfg, n_voxels, tokens, dim, sample_targets, None, model_overrides)

    fallback = bool(cfg.init == "ridge_fallback" and not fresh and new and set(new) == set(subjects) and val_sets)

    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if want_cuda and torch.cuda.is_bf16_supported() else "no"
    handlers = []
    if (model.prior is not None and not cfg.use_prior) or (model.lowlevel is not None and not cfg.use_lowlevel):
        # A head that exists but gets no loss would make DistributedDataParallel wait for its grads.
        from accelerate.utils import DistributedDataParallelKwargs

        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    accelerator = Accelerator(cpu=not want_cuda, mixed_precision=mp, kwargs_handlers=handlers)
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index

    per_subject_bs = cfg.batch_size // len(subjects)
    if per_subject_bs < 2 or per_subject_bs % world:
        raise MindsearchError(f"batch_size {cfg.batch_size} must give each of {len(subjects)} subjects >= 2 "
                              f"samples, divisible by {world} processes")
    local_bs = per_subject_bs // world
    steps_per_epoch = min(len(ids[s]) // (per_subject_bs * cfg.accumulate) for s in subjects)
    if steps_per_epoch < 1:
        raise MindsearchError(f"too few trials for one step of batch {cfg.batch_size} x {cfg.accumulate}")

    @functools.lru_cache(maxsize=2 * len(subjects))
    def order(epoch: int, s: int) -> np.ndarray:
        return epoch_order(cfg.seed, epoch, s, len(ids[s]))

    def get_batch(epoch: int, k: int):
        """Micro-batch ``k`` of ``epoch``: this process's slice of every subject's rows."""
        xs, batch_ids = [], []
        for s in subjects:
            rows = order(epoch, s)[k * per_subject_bs : (k + 1) * per_subject_bs]
            rows = np.sort(rows[rank * local_bs : (rank + 1) * local_bs])  # sorted: h5-friendly reads
            xs.append(torch.from_numpy(np.asarray(vox[s][rows], dtype=np.float32)).to(device))
            batch_ids.append(ids[s][rows])
        batch_ids = np.concatenate(batch_ids)
        low = None
        if cfg.use_lowlevel:
            lat, feats = lowlevel_lookup(batch_ids)
            low = (torch.from_numpy(np.asarray(lat, np.float32)).to(device),
                   None if feats is None else torch.from_numpy(np.asarray(feats, np.float32)).to(device))
        return xs, torch.from_numpy(lookup(batch_ids)).to(device), low, len(batch_ids)

    if cfg.steps is not None:
        total_steps = cfg.steps
    elif cfg.epochs is not None:
        total_steps = steps_per_epoch * cfg.epochs
    elif latent:
        # The shared-latent start is the pretrained model: gradient steps through one set of
        # voxels would bend the trunk away from the latent later subjects are enrolled into.
        # --steps N trains on from it (step 0 stays a candidate).
        total_steps = 0
    else:
        total_steps = auto_steps(steps_per_epoch * per_subject_bs * cfg.accumulate, per_subject_bs * cfg.accumulate)
    model.to(device)
    per_step, capped_from = None, None
    if cfg.steps is None and cfg.epochs is None and cfg.time_budget_s and total_steps:
        saved = checkpoints.saved_position(out_dir) if resume else None
        if saved and saved.get("total_steps"):
            total_steps = int(saved["total_steps"])  # the budget was fitted once, when the run began
        else:
            # The data-aware count, capped by the time budget on this machine (measured, so a
            # loaded machine trains fewer steps; the count is recorded and resuming keeps it).
            per_step = _seconds_per_step(model, get_batch, subjects, cfg)
            fit = max(int(cfg.time_budget_s / per_step), min(total_steps, steps_per_epoch))
            if fit < total_steps:
                capped_from, total_steps = total_steps, fit
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    effective_batch = per_subject_bs * len(subjects) * cfg.accumulate
    if progress and accelerator.is_main_process:
        # what ran where: a multi-process launch splits each global batch, it does not multiply it
        tqdm.write(f"device {device}, {world} process(es), {local_bs * len(subjects)} samples per process "
                   f"per micro-step, effective batch {effective_batch}", file=sys.stderr)

    # With a ridge start the residual branches learn the correction; the linear path moves slowly.
    scales = {"adapters.": cfg.linear_lr_scale, "backbone.to_tokens.": cfg.linear_lr_scale} \
        if cfg.init == "ridge" or (cfg.init == "ridge_fallback" and not fresh) else None
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, decay_norms=cfg.decay_norms, lr_scales=scales)
    scheduler = make_scheduler(optimizer, cfg.lr, total_steps, n_epochs)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)

    # --- 3. state: fresh, or restored from the last readable checkpoint
    global_step, history, epoch_losses = 0, [], []
    # Step 0 is a candidate when it is a real model: a ridge start or a run being fine-tuned.
    best = StepSelection(cfg, start_is_candidate=cfg.init in RIDGE_INITS or not fresh or latent)
    if resume and checkpoints.has_checkpoint(out_dir):
        state, extra = checkpoints.load(out_dir, raw, optimizer, scheduler, warn=say)
        pos = state["position"]
        global_step, history, epoch_losses = pos["global_step"], pos.get("history", []), pos.get("epoch_losses", [])
        best.restore(pos, extra)
        saved = state["config"]
        if (saved.get("seed"), saved.get("epochs"), saved.get("steps")) != (cfg.seed, cfg.epochs, cfg.steps):
            raise MindsearchError("resume: the checkpoint was made with a different seed or schedule",
                                  out_dir / CKPT_DIR)

    def evaluate_and_select(step: int) -> dict:
        res = validate(raw, val_sets, lookup, device, cfg.val_size)
        if res:
            best.offer(step, res, raw)
        return res

    def save_checkpoint():
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            position = {"global_step": global_step, "total_steps": total_steps, "history": history,
                        "epoch_losses": list(epoch_losses), **best.state()}
            checkpoints.save(out_dir, raw, optimizer, scheduler, {"position": position, "config": cfg.to_dict()},
                             extra=best.weights)

    if fallback:
        # The subject's own ridge competes unless cross-validation over all training images
        # already prefers the trunk start (53 validation images at one session cannot tell
        # 14 % from 9 % apart under the margin rule; 5 folds over 527 images can).
        # The trunk start must win clearly: by ``select_margin`` standard errors of the folds'
        # paired differences (at one session a 0.244 vs 0.231 win in 5 folds was a 19.3 vs 21.1 %
        # loss on test).
        cv = [ridge_info[str(s)]["cv"] for s in new]
        if any(c["own_folds"] is None for c in cv):
            say("the new subject's own read-out was too large to cross-validate: it competes on validation")
        else:
            diff = np.mean([np.subtract(c["trunk_folds"], c["own_folds"]) for c in cv], axis=0)
            se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
            trunk_mrr, ridge_mrr = (float(np.mean([c[k] for c in cv])) for k in ("trunk_mrr", "ridge_mrr"))
            fallback = float(diff.mean()) <= cfg.select_margin * se
            say(f"pretrained start vs the new subject's own {cv[0]['own']} read-out, {cv[0]['folds']}-fold reciprocal "
                f"rank: {trunk_mrr:.3f} vs {ridge_mrr:.3f} (difference {diff.mean():+.3f} ± {se:.3f} s.e.; "
                + ("the own read-out competes)" if fallback else "the pretrained start is clearly better)"))
    if global_step == 0 and fallback:
        own_ridge = fresh_model()
        ridge_start(own_ridge, vox, ids, lookup, cfg, choices={s: ridge_info[str(s)]["choice"] for s in new})
        own = validate(own_ridge, val_sets, lookup, "cpu", cfg.val_size)
        if own:
            best.offer(0, own, None, tag="ridge")
            say(f"the new subject's own linear read-out: validation brain->image top-1 {own['mean_brain_to_image_top1']:.1%} "
                "(kept unless the pretrained model beats it)")
    if global_step == 0 and val_sets:
        res0 = evaluate_and_select(0)  # where training starts; a ridge start must be beaten to be left
        if res0:
            say(f"step 0: validation brain->image top-1 {res0['mean_brain_to_image_top1']:.1%}"
                + (" (the linear start, kept unless training beats it)" if start_weights else "")
                + (" (the pretrained model)" if fallback else ""))
    if global_step == 0 and start_weights is not None:
        # ridge_fallback: ridge was measured (and kept as the step-0 candidate); train from random weights.
        raw.load_state_dict(start_weights)
    if global_step == 0 and progress and total_steps:
        per_step = per_step or _seconds_per_step(model, get_batch, subjects, cfg)
        say(_expected_time(per_step, cfg, total_steps, steps_per_epoch, capped_from))

    # --- 4. the loop: one optimiser step per iteration; epoch and position derive from global_step
    # Off a terminal (logs, CI) a redrawn bar is noise: refresh rarely, and print a line per epoch.
    bar = tqdm(total=total_steps, initial=global_step, file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 60.0,
               disable=not progress or not accelerator.is_main_process, desc="train")
    last_loss, val_res, samples_seen, t_loop = float("nan"), {}, 0, time.time()
    stale, stopped_early = 0, False
    model.train()
    while global_step < total_steps:
        epoch, step = divmod(global_step, steps_per_epoch)
        phase, temp = _phase(cfg, epoch, n_epochs)
        for micro in range(cfg.accumulate):
            xs, targets, low_t, n_rows = get_batch(epoch, step * cfg.accumulate + micro)
            # Only the last micro-batch synchronises gradients across processes.
            sync = accelerator.no_sync(model) if micro < cfg.accumulate - 1 else contextlib.nullcontext()
            with sync, accelerator.autocast():
                loss, parts = _step_loss(model, xs, subjects, targets, phase, temp, cfg, low_t)
                if not torch.isfinite(loss):
                    bar.close()
                    where = out_dir / CKPT_DIR if checkpoints.has_checkpoint(out_dir) else None
                    raise MindsearchError(
                        f"training stopped: the loss became {float(loss.detach())} at step {global_step + 1} "
                        f"(epoch {epoch}); " + (f"the last good checkpoint is {where} (resume with --resume, "
                                                "perhaps at a lower learning rate)" if where else
                                                "no checkpoint was written yet; try a lower learning rate"),
                        out_dir)
                accelerator.backward(loss / cfg.accumulate)
            epoch_losses.append(float(loss.detach()))
            samples_seen += n_rows * world
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        global_step += 1
        last_loss = epoch_losses[-1]
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{last_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                        sps=f"{samples_seen / max(time.time() - t_loop, 1e-9):.0f}", refresh=False)
        if global_step % steps_per_epoch == 0 or global_step == total_steps:  # an epoch ends
            record = {"epoch": epoch, "phase": phase, "temp": temp, "step": global_step,
                      "loss": float(np.mean(epoch_losses)), "lr": scheduler.get_last_lr()[0]}
            if val_sets and ((cfg.val_every and (epoch + 1) % cfg.val_every == 0) or global_step == total_steps):
                # Patience counts validations without progress of training itself: a curve still
                # climbing towards a margin-protected start (ridge, a pretrained model) is not stale.
                before = (best.step, best.peak)
                val_res = record["val"] = evaluate_and_select(global_step)
                stale = 0 if (best.step, best.peak) != before else stale + 1
                stopped_early = bool(cfg.patience) and stale >= cfg.patience and global_step < total_steps
            history.append(record)
            epoch_losses = []
            if progress and accelerator.is_main_process:
                tqdm.write(_epoch_line(record), file=sys.stderr)
            save_checkpoint()
            if stopped_early:
                say(f"stopping early: no validation gain in {cfg.patience} validations")
                break
        elif cfg.ckpt_every_steps and global_step % cfg.ckpt_every_steps == 0:
            save_checkpoint()
        if cfg.max_steps is not None and global_step >= cfg.max_steps and global_step < total_steps:
            if global_step % steps_per_epoch and not (cfg.ckpt_every_steps and global_step % cfg.ckpt_every_steps == 0):
                save_checkpoint()
            break
    bar.close()
    interrupted = global_step < total_steps and not stopped_early

    chosen = global_step
    if not interrupted and cfg.select == "best" and best.step is not None:
        chosen = best.step
        if best.tag == "ridge":
            # Neither the pretrained start nor fine-tuning beat the subject's own ridge: the run
            # is that ridge, fitted on every training image below, as from scratch.
            raw = fresh_model()
        elif chosen != global_step:
            raw.load_state_dict(best.weights)
    summary = {
        "out_dir": str(out_dir),
        "interrupted": interrupted,
        "epochs": n_epochs,
        "steps_per_epoch": steps_per_epoch,
        "global_step": global_step,
        "total_steps": total_steps,
        "steps_capped_from": capped_from,  # the data-aware count before the time budget, if it cut it
        "chosen_step": chosen,
        "chosen_val_top1": best.score if best.step is not None else None,
        "stopped_early": stopped_early,
        "val_curve": best.curve,
        "n_val_images": int(len(val_images)),
        "ridge_start": ridge_info,
        "final_loss": last_loss,
        "val": val_res,
        "history": history,
        "device": str(device),
        "world_size": world,
        "effective_batch": effective_batch,
        "mixed_precision": mp,
        "n_params": sum(p.numel() for p in raw.parameters()),
        "n_trainable": sum(p.numel() for p in raw.parameters() if p.requires_grad),
        "seconds": time.time() - t_start,
        "samples_per_s": samples_seen / max(time.time() - t_loop, 1e-9),
    }
    if interrupted:
        return summary
    shift = None
    ridge_kept = bool(chosen == 0 and ridge_info and not latent and (fresh or best.tag == "ridge") and len(val_images))
    summary["kept_own_ridge_over_pretrained"] = best.tag == "ridge"
    y_mean = mean_target(lookup, np.unique(np.concatenate([every_ids[s] for s in subjects]))) \
        if cfg.mean_shift and val_sets else None
    if ridge_kept:
        # Training did not beat the ridge start: keep ridge, refitted on every training image
        # (validation included), which is what the ridge baseline fits; its calibration is then
        # chosen by cross-validation over all those images, not the few validation ones.
        summary["ridge_start"] = ridge_start(raw, every_vox, every_ids, lookup, cfg, say)
        summary["ridge_refit_on_all_images"] = True
        if y_mean is not None:
            shift = _kept_start_shift(every_vox, every_ids, lookup, summary["ridge_start"], cfg)
    elif y_mean is not None:
        shift = calibrate_mean_shift(raw, val_sets, lookup, y_mean, device, cfg.val_size)
    if shift is not None:
        summary["mean_shift"] = shift
    if shift and shift["share"]:
        shift_output(raw, -shift["share"] * y_mean)
        key, how = f"{shift['share']:.3f}", "validation" if "val_mrr" in shift else f"{shift['folds']}-fold"
        scores = shift.get("val_mrr") or shift["cv_mrr"]
        say(f"output calibration: minus {shift['share']:.2f} x the mean target ({how} reciprocal rank "
            f"{scores['0.000']:.3f} -> {scores[key]:.3f})")
    if chosen != global_step:
        say(f"keeping step {chosen} of {global_step} (best validation top-1 {best.score:.1%})")
    if cfg.use_lowlevel and raw.lowlevel is not None and cfg.lowlevel_refit_steps:
        from mindsearch.training.lowlevel import refit_head

        # Last, once the trunk is final (a kept ridge start is refitted just above).
        summary["lowlevel_refit"] = refit_head(raw, vox, ids, val_sets, lowlevel_lookup,
                                               steps=cfg.lowlevel_refit_steps, lr=cfg.lowlevel_refit_lr,
                                               batch_size=cfg.batch_size, seed=cfg.seed, device=device,
                                               say=say if progress and accelerator.is_main_process else None)

    # What the trunk's inputs look like, for fitting a later subject's adapter (training.inversion).
    # Written by the run that made the trunk; fine-tuning keeps them (its adapters aim at them).
    if fresh or best.tag == "ridge":
        from mindsearch.training.inversion import input_statistics, set_input_statistics

        set_input_statistics(raw, *input_statistics(raw, every_vox, every_ids))

    # --- 5. the run directory
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        info = run_info or {}
        record = {
            "model": "mindeye",
            "subject": subjects[0],
            "n_voxels": n_voxels[subjects[0]],
            "subjects": {str(s): v for s, v in n_voxels.items()},
            "space": info.get("space"),
            "target_shape": [tokens, dim],
            "seed": cfg.seed,
            "data": info.get("data"),
            "train": {**cfg.to_dict(), "chosen_step": chosen, "total_steps": total_steps,
                      "validation_images": int(len(val_images)),
                      "mean_shift_share": shift["share"] if shift else 0.0,
                      "kept_own_ridge_over_pretrained": best.tag == "ridge"},
            **{k: info[k] for k in ("from_run", "lowlevel_vae") if k in info},
        }
        save_pretrained(raw, out_dir, extra_config=record, zscore=zscore, log=summary,
                        keep=(CKPT_DIR,) if cfg.keep_checkpoint else ())
        if not cfg.keep_checkpoint:
            checkpoints.remove(out_dir)
    return summary


def _seconds_per_step(model, get_batch, subjects, cfg, repeats: int = 3) -> float:
    """Time forward + backward passes on the first batch (RNG state untouched, gradients
    discarded): the median after a warm-up, plus a quarter for the optimiser step."""
    import torch

    times = []
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        xs, targets, low, _ = get_batch(0, 0)
        phase, temp = _phase(cfg, 0, 1)
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            loss, _ = _step_loss(model, xs, subjects, targets, phase, temp, cfg, low)
            loss.backward()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    for p in model.parameters():
        p.grad = None
    return float(np.median(times[1:])) * 1.25 * cfg.accumulate


def _expected_time(per_step: float, cfg, total_steps: int, steps_per_epoch: int, capped_from=None) -> str:
    minutes = per_step * total_steps / 60
    why = ""
    if capped_from:
        why = f", the data-aware {capped_from} capped by the {cfg.time_budget_s / 60:g}-min time budget"
    elif cfg.steps is None and cfg.epochs is None:
        why = ", the data-aware default"
    return (f"training {total_steps} steps{why} ({steps_per_epoch} per epoch, batch {cfg.batch_size}): "
            f"expected about {minutes:.1f} min here ({per_step:.2f} s per step)")


def train_mindeye(data_path, subjects, cfg: TrainConfig, out_dir, from_run=None, resume: bool = False,
                  sessions=None, targets=None, progress: bool = True, vae=None,
                  vae_size: int | None = None) -> dict:
    """Train on a dataset directory (any layout ``mindsearch.data.open_dataset`` reads).

    Single-trial training on each subject's z-scored train split (optionally only ``sessions``);
    validation on ``cfg.val_fraction`` of its images, held out from training (the test split is
    never read here).
    ``from_run``: a mindeye run to fine-tune (new subjects get new adapters; with
    ``cfg.adapter_only`` only those are trained).
    ``vae``: a VAE (diffusers directory or TAESD/TAEF2 safetensors folder, see ``mindsearch.vae``)
    whose latents of the training and validation images become the low-level head's targets; it
    turns ``cfg.use_lowlevel`` on and sizes the head to the latent. ``vae_size``: the square image
    size the VAE sees (default: the dataset's).
    """
    from mindsearch.data import open_dataset
    from mindsearch.data.preprocess import load_split

    subjects = [int(s) for s in (subjects if isinstance(subjects, (list, tuple)) else [subjects])]
    ds = open_dataset(data_path, targets=targets)
    with ds:
        if not ds.has_targets:
            raise MindsearchError("the dataset has no target embeddings (pass targets=)", ds.root)
        if vae is not None and not ds.has_images:
            raise MindsearchError("--vae trains the low-level head on the stimulus images, but this dataset "
                                  "has no images", ds.root)
        missing = [s for s in subjects if s not in ds.subjects]
        if missing:
            raise MindsearchError(f"no subject(s) {missing} in the dataset (has {ds.subjects})", ds.root)
        vox, ids, zs = {}, {}, {}
        for s in subjects:
            # Only the training split is read: validation is held out from its images, never test.
            tr = load_split(ds, s, "train", zscore=True, average="none", sessions=sessions)
            vox[s], ids[s], zs[s] = tr.voxels, tr.image_ids, tr.zscore
        info = {
            "space": ds.target_space,
            "data": {"path": str(Path(ds.root).resolve()), "layout": ds.layout, "fingerprint": ds.fingerprint(),
                     "sessions": sessions},
        }
        model = None
        if from_run is not None:
            from mindsearch.models.factory import from_pretrained

            model = from_pretrained(from_run)
            info["from_run"] = str(from_run)
        low_lookup = overrides = None
        if vae is not None:
            from mindsearch.training.lowlevel import prepare_lowlevel, vae_device

            if not cfg.use_lowlevel:
                cfg = dataclasses.replace(cfg, use_lowlevel=True)
            used = np.concatenate([ids[s] for s in subjects])
            say = (lambda m: print(m, file=sys.stderr)) if progress else None
            low_lookup, overrides, info["lowlevel_vae"] = prepare_lowlevel(
                ds, vae, used, cfg.preset, size=vae_size, device=vae_device(cfg.device), progress=say)
            if model is not None:
                _check_lowlevel_head(model, info["lowlevel_vae"]["latent_shape"], from_run)
        return train_arrays(vox, ids, ds.targets, cfg, out_dir, resume=resume, progress=progress, model=model, zscore=zs, run_info=info,
                            lowlevel_lookup=low_lookup, model_overrides=overrides)


def _check_lowlevel_head(model, latent_shape, from_run) -> None:
    """Fine-tuning keeps the run's head: it must already output the VAE's latent shape."""
    low = model.config.lowlevel
    have = None if not low else [low.latent_channels, low.latent_size, low.latent_size]
    if have != list(latent_shape):
        what = "no low-level head" if have is None else f"a low-level head for latents {have}"
        raise MindsearchError(f"the run to fine-tune has {what}, but the VAE gives latents {list(latent_shape)}",
                              from_run)


__all__ = ["TrainConfig", "train_arrays", "train_mindeye", "validate", "epoch_order", "hold_out_images",
           "build_model", "LOSSES"]
