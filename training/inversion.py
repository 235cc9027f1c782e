"""Enrolling a new subject under a trained trunk: the trunk's input for each training image,
then a linear map (ridge or the inverted encoding model) from the subject's voxels to it.

A pretrained model is ``adapter_s`` (linear, per subject) followed by the shared trunk
(residual blocks, output linear, projector). A new subject with one session has too few trials
to learn its adapter by gradient descent through the trunk, and mapping its own ridge solution
through the output linear alone (``ridge.adapter_for``) ignores the trunk's nonlinearity, so the
pretrained start scores below the subject's own ridge. Instead we ask the trunk which input it
wants for each training image:
    h_i = argmin_h 1 - cos(trunk(h), y_i) + lam * mean(((h - m) / s)^2)
by Adam from h = m, where m and s are the mean and sd of the trunk's inputs over its training
images (``Backbone.input_mean``/``input_std``, stored with the run), and fit the adapter in
closed form from averaged voxels to those ``h_i``. Everything after the adapter stays the
pretrained model's, so the subject gets the trunk's nonlinear read-out from its first session.

Measured on ``standard`` (pretrained on subjects 2, 5, 7 for 4,000 steps; subject 1's first
session, 527 images; brain->image top-1 in 300 x 30; ``benchmarks/results/issue8_experiments.md``):
the subject's own ridge 9.1 %; this start 14.5 % (lam 0.001), 14.3 % (0.01 and 0), 150 Adam steps;
from h = 0 with an unscaled penalty (what a run without statistics gets) 10.3 %.
"""

from __future__ import annotations

import numpy as np

from mindsearch.training.ridge import fit_ridge, kfold, ridge_path

LAMBDA = 0.001  # the best of 0, 0.001, 0.01 (all within 0.2 points)
ITERS = 150
LR = 0.05


def _retrieval_output(model, h):
    """The retrieval embedding (n, T*D) the trunk gives hidden inputs ``h`` (n, hidden)."""
    tokens, _ = model.backbone(h)
    return (model.projector(tokens) if model.projector is not None else tokens).reshape(len(h), -1)


def trunk_inputs(model, targets: np.ndarray, lam: float = LAMBDA, iters: int = ITERS, lr: float = LR,
                 batch: int = 1024) -> np.ndarray:
    """The hidden vector (n, hidden) each flattened target (n, T*D) asks of ``model``'s trunk
    (the retrieval output, projector included), found by gradient descent on the vectors only."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    device = next(model.parameters()).device
    mean, sd = model.backbone.input_mean.detach().clone(), model.backbone.input_std.detach().clone()
    out = []
    try:
        for i in range(0, len(targets), batch):
            y = torch.as_tensor(np.asarray(targets[i : i + batch], np.float32), device=device)
            h = mean.repeat(len(y), 1).requires_grad_(True)
            opt = torch.optim.Adam([h], lr=lr)
            for _ in range(iters):
                loss = (1 - F.cosine_similarity(_retrieval_output(model, h), y, dim=1)).mean() + lam * (((h - mean) / sd) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            out.append(h.detach().cpu().numpy())
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden), np.float32)


def trunk_targets(model, targets: np.ndarray):
    """What a new subject's adapter should map to for these flattened targets: the model's shared
    latent (``models.latent``, from a ``latent_start`` pretraining) with the linear ``lift``
    into the trunk's hidden space, else the inverted trunk inputs and ``lift`` None."""
    if model.latent is not None:
        return model.latent.latents(targets), model.latent.lift()
    return trunk_inputs(model, targets), None


DESHRINK = (1.0, 1.5, 2.0)  # the inverted encoding model's inputs, pushed away from the mean by this


def adapter_from_trunk(model, voxels: np.ndarray, targets: np.ndarray, own: dict | None, folds: int = 5,
                       seed: int = 0, encoding: bool = False) -> dict:
    """A linear map from ``voxels`` (n images, V; repetitions averaged) to the trunk inputs their
    ``targets`` ask for, chosen by ``folds``-fold cross-validation of what matters: the reciprocal
    rank of the trunk's outputs for the held-out images. Candidates: ridge over its alphas and,
    with ``encoding``, the inverted encoding model (``training.encoding``) over its grid, its
    posterior-mean inputs scaled away from their mean by ``DESHRINK`` (the trunk is nonlinear, so
    a prediction shrunk towards the mean input lands where the trunk says little).

    ``own`` is the subject's own linear read-out as ``choose_linear`` scored it (same ``folds``
    and ``seed``, so the same folds): ``trunk_folds`` vs ``own_folds`` is a paired comparison over
    every training image (None when ``own`` is: too large to cross-validate). Returns
    ``a_weight`` (hidden, V), ``a_bias``, the chosen candidate and the comparison for
    ``MindEyeModel.set_adapter``."""
    import torch

    from mindsearch.retrieval import reciprocal_rank
    from mindsearch.training.encoding import EncodingModel

    hidden, lift = trunk_targets(model, targets)
    n = len(voxels)
    device = next(model.parameters()).device
    trunk = {}
    was_training = model.training
    model.eval()

    def score(key, h, part):
        if lift is not None:
            h = h @ lift[0].T + lift[1]
        with torch.no_grad():
            pred = _retrieval_output(model, torch.as_tensor(h.astype(np.float32), device=device))
        trunk.setdefault(key, []).append(reciprocal_rank(pred.float().cpu().numpy(), targets[part]))

    for keep, part in kfold(n, folds, seed):
        for a, h in ridge_path(voxels[keep], hidden[keep], voxels[part]):
            score(("ridge", float(a), None, 1.0), h, part)
        if encoding:
            enc = EncodingModel(voxels[keep], hidden[keep])
            for (a, p), h in enc.path(voxels[part]):
                for c in DESHRINK:
                    score(("encoding", a, p, c), enc.y_mean + c * (h - enc.y_mean), part)
    model.train(was_training)
    scores = {k: float(np.mean(v)) for k, v in trunk.items()}
    best = max(scores, key=lambda k: (scores[k], k[0] == "ridge", k[1]))  # ties: ridge, stronger regularisation
    kind, alpha, prior, c = best
    if kind == "ridge":
        weight, bias = fit_ridge(voxels, hidden, alpha)
        how = f"ridge to the trunk inputs (alpha {alpha:g})"
    else:
        from mindsearch.training.encoding import encoding_factors

        m, vt, x_mean, h_mean = encoding_factors(voxels, hidden, alpha, prior)
        weight = c * (m @ vt)
        bias = h_mean - weight @ x_mean
        how = f"the inverted encoding model to the trunk inputs (alpha {alpha:g}, prior {prior:g}, x{c:g})"
    if lift is not None:  # a map to the latent, then to_hidden: one linear adapter
        weight, bias = lift[0] @ weight, lift[0] @ bias + lift[1]
        how = how.replace("the trunk inputs", "the shared latent")
    own_folds = list(own["fold_mrr"]) if own is not None else None
    return {"a_weight": weight.astype(np.float32), "a_bias": bias.astype(np.float32), "alpha": float(alpha),
            "rank": int(weight.shape[0]), "start": "shared latent" if lift is not None else "trunk inversion", "how": how,
            "cv": {"trunk_mrr": scores[best], "ridge_mrr": float(np.mean(own_folds)) if own_folds else None, "trunk_folds": trunk[best],
                   "own_folds": own_folds, "own": (own or {}).get("kind", "ridge"),
                   "folds": folds, "n_images": n, "candidate": [kind, alpha, prior, c],
                   "trunk_mrr_by_candidate": {"/".join(map(str, k)): v for k, v in scores.items()}}}


def input_statistics(model, vox: dict, ids: dict, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd (hidden,) of the trunk's inputs over the training images of ``vox``'s
    subjects (each image's trials averaged first, as a new subject's adapter is fitted)."""
    import torch

    from mindsearch.training.ridge import average_by_image

    device = next(model.parameters()).device
    rows = []
    with torch.no_grad():
        for s in sorted(vox):
            x, _ = average_by_image(np.asarray(vox[s], np.float32), ids[s])
            for i in range(0, len(x), batch):
                rows.append(model.adapters(torch.from_numpy(x[i : i + batch]).to(device), s).float().cpu().numpy())
    h = np.concatenate(rows).astype(np.float64)
    return h.mean(0).astype(np.float32), np.maximum(h.std(0), 1e-6).astype(np.float32)


def set_input_statistics(model, mean: np.ndarray, sd: np.ndarray) -> None:
    import torch

    with torch.no_grad():
        model.backbone.input_mean.copy_(torch.as_tensor(mean))
        model.backbone.input_std.copy_(torch.as_tensor(sd))
