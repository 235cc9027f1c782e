"""Pretraining through a shared latent encoding model (``cfg.latent_start``).

Several subjects' voxels respond to the same images through different anatomy. The pretraining
start fits what they share, in the encoding direction:
1. **the latent**: ``voxels_s ~ heads_s(features(target))``: one MLP from targets to a
   ``latent_dim``-wide latent, a linear head per subject, mean squared error on each image's
   averaged voxels (``models.latent.LatentEncoder``; the heads are only scaffolding);
2. **the trunk** (``to_hidden`` -> residual blocks -> output linear -> projector) learns to read
   that latent, with Gaussian noise added to it, so it reads a decoded latent too;
3. **the adapters**: each subject's voxels -> latent is then a linear problem with known
   targets, solved in closed form and chosen by cross-validation through the trunk
   (``training.inversion.adapter_from_trunk``).
A new subject fine-tuned from the run gets step 3 alone, from its first session: the latent of
its own training images is ``features(target)``, no gradient descent through the trunk needed.

Why: MindEye2's shared-subject pretraining learns a trunk from voxels alone, and a new subject's
adapter must be learned through it from a few hundred images. Measured on ``standard``
(pretrained on subjects 2, 5, 7, subject 1's first session, 527 images; brain->image top-1 in
300 x 30; ``benchmarks/results/issue8_experiments.md``): the subject's own inverted encoding
model 21.1 %, the adapter fitted to a contrastively pretrained trunk by inversion 20.6 %, this
start 64.0 %. It needs enough pretraining images for the latent to be learnt: on the ``small``
simulation (two subjects of 1,080 images) it lost the folds to the subject's own read-out, which
the fine-tune then keeps.
"""

from __future__ import annotations

import numpy as np

from mindsearch.training.ridge import average_by_image

LR = 1e-3
BATCH = 128
TEMPERATURE = 0.05  # the trunk's contrastive term (outputs and targets L2-normalised)


def _out_of_time(t0: float, done: int, budget_s: float | None) -> bool:
    """Whether another epoch, as long as the mean one so far, would end past the budget."""
    import time

    if not budget_s or not done:
        return False
    elapsed = time.perf_counter() - t0
    return elapsed + elapsed / done > budget_s


def _seeded(seed: int):
    import torch

    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def fit_latent(model, x_by_subject: dict, y_by_subject: dict, *, dim: int, width: int, epochs: int,
               seed: int = 0, say=None, budget_s: float | None = None) -> dict:
    """Attach a ``LatentEncoder`` to ``model`` and fit it with a linear head per subject to the
    subjects' averaged voxels ``x_by_subject`` {s: (n_s, V_s)} from flattened targets
    ``y_by_subject`` {s: (n_s, T*D)}; sets its standardisation. Returns the last epoch's mean
    loss per subject (the voxels are z-scored: 1 is what predicting the mean scores) and the
    epochs run (fewer than ``epochs`` when the next would end past ``budget_s`` seconds)."""
    import time

    import torch

    device = model.backbone.to_tokens.weight.device
    torch.manual_seed(seed)
    latent = model.attach_latent(dim, width)
    latent.requires_grad_(True)
    heads = torch.nn.ModuleDict({str(s): torch.nn.Linear(dim, x.shape[1]) for s, x in x_by_subject.items()}).to(device)
    params = list(latent.features.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, LR, weight_decay=1e-2)
    data = {s: (torch.as_tensor(np.asarray(x, np.float32), device=device),
                torch.as_tensor(np.asarray(y_by_subject[s], np.float32), device=device)) for s, x in x_by_subject.items()}
    gen = _seeded(seed)
    losses = {}
    latent.train()
    t0, done = time.perf_counter(), 0
    for epoch in range(epochs):
        if _out_of_time(t0, done, budget_s):
            break
        sums = {s: 0.0 for s in data}
        for s, (x, y) in data.items():
            order = torch.randperm(len(x), generator=gen).to(device)
            for i in range(0, len(x), BATCH):
                b = order[i : i + BATCH]
                loss = ((heads[str(s)](latent.features(y[b])) - x[b]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sums[s] += loss.item() * len(b)
        losses = {s: sums[s] / len(data[s][0]) for s in data}
        done = epoch + 1
        if say and (epoch + 1) % max(1, epochs // 4) == 0:
            say(f"shared latent, epoch {epoch + 1}/{epochs}: voxel MSE "
                + ", ".join(f"subject {s} {v:.3f}" for s, v in losses.items()))
    latent.eval()
    with torch.no_grad():
        f = torch.cat([latent.features(y) for _, y in data.values()])
        latent.mean.copy_(f.mean(0))
        latent.std.copy_(f.std(0).clamp_min(1e-6))
    latent.requires_grad_(False)
    return {"voxel_mse": {str(s): float(v) for s, v in losses.items()}, "epochs": done}


def fit_trunk(model, targets: np.ndarray, *, noise: float, epochs: int, seed: int = 0, say=None,
              budget_s: float | None = None) -> dict:
    """Train ``latent.to_hidden`` -> backbone -> projector to map the latent of ``targets``
    (flattened, one row per image) plus Gaussian noise of sd ``noise`` back to those targets
    (contrastive + cosine). The latent MLP itself stays fixed. Returns the last epoch's loss and
    the epochs run (``budget_s`` as in ``fit_latent``)."""
    import time

    import torch
    import torch.nn.functional as F

    from mindsearch.training.inversion import _retrieval_output

    device = model.backbone.to_tokens.weight.device
    latent = model.latent
    z = torch.as_tensor(latent.latents(targets).astype(np.float32), device=device)
    y = F.normalize(torch.as_tensor(np.asarray(targets, np.float32), device=device), dim=1)
    parts = [latent.to_hidden, model.backbone] + ([model.projector] if model.projector is not None else [])
    params = [p for part in parts for p in part.parameters()]
    for p in latent.to_hidden.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, LR, weight_decay=1e-2)
    gen = _seeded(seed + 1)
    was = model.training
    model.train()
    last = 0.0
    t0, done = time.perf_counter(), 0
    for epoch in range(epochs):
        if _out_of_time(t0, done, budget_s):
            break
        order = torch.randperm(len(z), generator=gen).to(device)
        total = 0.0
        for i in range(0, len(z), BATCH):
            b = order[i : i + BATCH]
            inp = z[b] + noise * torch.randn(len(b), z.shape[1], generator=gen).to(device)
            out = F.normalize(_retrieval_output(model, latent.to_hidden(inp)), dim=1)
            loss = F.cross_entropy(out @ y[b].T / TEMPERATURE, torch.arange(len(b), device=device)) \
                + (1 - (out * y[b]).sum(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        last = total / len(z)
        done = epoch + 1
        if say and (epoch + 1) % max(1, epochs // 4) == 0:
            say(f"trunk on the shared latent, epoch {epoch + 1}/{epochs}: loss {last:.3f}")
    for p in latent.to_hidden.parameters():
        p.requires_grad_(False)
    model.train(was)
    return {"loss": last, "epochs": done}


def latent_start(model, vox: dict, ids: dict, lookup, cfg, say=None) -> dict:
    """The pretraining start (module doc): fit the latent on every subject's training images,
    the trunk on it, then each subject's adapter. Returns per-subject start info (as
    ``trainer.ridge_start`` does) plus the fit's losses under ``"latent"``."""
    from mindsearch.training.inversion import adapter_from_trunk

    xs, ys = {}, {}
    for s in sorted(vox):
        x, uniq = average_by_image(np.asarray(vox[s], np.float32), ids[s])
        xs[s], ys[s] = x, lookup(uniq).reshape(len(uniq), -1)
    say = say or (lambda m: None)
    # Each fit gets half the run's time budget (the gradient loop's, which a latent start skips),
    # so a machine too slow for the epochs asked fits fewer; the epochs run are recorded.
    budget = cfg.time_budget_s / 2 if cfg.time_budget_s else None
    say(f"shared latent: {cfg.latent_start} dims from {sum(len(x) for x in xs.values())} images of "
        f"{len(xs)} subjects, {cfg.latent_epochs} epochs each for the latent and the trunk"
        + (f", at most {budget / 60:.1f} min each" if budget else "")
        + ", then each subject's adapter by 5-fold cross-validation")
    fit = fit_latent(model, xs, ys, dim=cfg.latent_start, width=model.config.hidden, epochs=cfg.latent_epochs,
                     seed=cfg.seed, say=say, budget_s=budget)
    all_targets = np.concatenate(list(ys.values()))
    _, first = np.unique(np.concatenate([np.unique(ids[s]) for s in sorted(vox)]), return_index=True)
    trunk = fit_trunk(model, all_targets[first], noise=cfg.latent_noise, epochs=cfg.latent_epochs, seed=cfg.seed,
                      say=say, budget_s=budget)
    info = {"latent": {"dim": cfg.latent_start, "epochs": fit["epochs"], "trunk_epochs": trunk["epochs"],
                       "noise": cfg.latent_noise, "voxel_mse": fit["voxel_mse"], "trunk_loss": trunk["loss"]}}
    for n_run, what in ((fit["epochs"], "latent"), (trunk["epochs"], "trunk")):
        if n_run < cfg.latent_epochs:
            say(f"the {what} fit stopped after {n_run} of {cfg.latent_epochs} epochs (time budget)")
    for s in sorted(vox):
        fit = adapter_from_trunk(model, xs[s], ys[s], None, seed=cfg.seed, encoding=cfg.linear_start == "auto")
        model.set_adapter(s, fit["a_weight"], fit["a_bias"])
        info[str(s)] = {k: fit[k] for k in ("alpha", "rank", "start", "cv")}
        say(f"shared-latent start, subject {s}: {fit['how']}; {fit['cv']['folds']}-fold reciprocal rank "
            f"{fit['cv']['trunk_mrr']:.3f}")
    return info


__all__ = ["fit_latent", "fit_trunk", "latent_start"]
