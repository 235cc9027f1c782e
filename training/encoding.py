"""The inverted encoding model: the linear decoder a voxel-wise encoding model implies.

Ridge (``training.ridge``) regresses the targets on the voxels. The encoding direction fits each
voxel as a linear function of the target, ``x = B'y + e`` (ridge, ``alpha``), estimates each
voxel's noise variance ``s2`` from its leave-one-out residuals, and decodes with the posterior
mean under an isotropic prior on the target (the decoders of Kay et al. 2008 and Naselaris et
al. 2009 invert encoding models this way):

    y_hat = (B S^-1 B' + p I)^-1 B S^-1 (x - x_mean),   S = diag(s2)

Everything is done in the space of the n training images (kernel form), never the target
dimension, so 257 x 768 or 256 x 1664 targets cost what a 10-d one does. With Y the centred
targets (n, d) and X the centred voxels:

    G = Y Y',  K = (G + alpha I)^-1 X,  B = Y'K,  A = K S^-1 K'
    y_hat = Y' (A G + p I)^-1 K S^-1 (x - x_mean)                (push-through identity)

``p`` is relative to the mean eigenvalue of ``A G`` and ``alpha`` to the mean squared norm of the
centred targets, so one grid serves every embedding space.

Measured on ``standard``, subject 1, brain->image top-1 in 300 x 30 (ridge / this decoder, both
chosen without test data): 1 session 9.1 / 21.1, 2 sessions 11.3 / 34.8, 5 sessions 15.3 / 50.0,
16 sessions 18.5 / 53.1 (``benchmarks/results/issue8_experiments.md``). The gain there does not
come from weighting voxels by reliability (equal noise variances give 21.0 at 1 session); it
comes from fitting the map in the encoding direction and inverting it. It is not universal: in
toy worlds with targets linear in the voxels, or Gaussian features seen by voxels with
independent noise, ridge wins. So ``choose_linear`` lets the two compete by k-fold
cross-validation over every training image, and the default encoder starts from the winner.
"""

from __future__ import annotations

import numpy as np

from mindsearch.retrieval import reciprocal_rank
from mindsearch.training.ridge import ALPHAS, kfold, ridge_path

ALPHAS_REL = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)  # x the mean squared norm of the centred targets
PRIORS_REL = (0.03, 0.1, 0.3)  # x the mean eigenvalue of the likelihood's precision (A G)
SHARES = (0.0, 1 / 3, 0.5, 2 / 3, 0.8, 0.9, 1.0)  # of the mean target subtracted from the outputs
MAX_IMAGES = 6000  # the kernel is n x n: above this many images only ridge competes


class EncodingModel:
    """The kernel-form pieces shared by every (alpha, prior) for one set of training images."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        self.x_mean, self.y_mean = x64.mean(0), y64.mean(0)
        self.yc, self.xc = y64 - self.y_mean, x64 - self.x_mean
        self.gram = self.yc @ self.yc.T
        lam, self.q = np.linalg.eigh(self.gram)
        self.lam = np.clip(lam, 0.0, None)
        self.qx = self.q.T @ self.xc
        self.scale = float(np.trace(self.gram) / len(x64)) or 1.0  # mean squared norm of a centred target

    def likelihood(self, alpha_rel: float):
        """``(A, K S^-1)`` for the encoding ridge ``alpha_rel`` and the voxels' noise variances
        ``s2`` (mean squared leave-one-out residual: ridge residuals are ``alpha K``)."""
        alpha = alpha_rel * self.scale
        f = 1.0 / (self.lam + alpha)
        k = self.q @ (f[:, None] * self.qx)  # (n, V)
        hat = np.clip((self.q**2) @ (self.lam * f), None, 1 - 1e-6)  # the hat matrix's diagonal
        s2 = np.mean((alpha * k / (1.0 - hat)[:, None]) ** 2, axis=0) + 1e-8
        ks = k / s2
        return ks @ k.T, ks, s2

    def solve(self, a: np.ndarray, prior_rel: float, rhs: np.ndarray) -> np.ndarray:
        ag = a @ self.gram
        p = prior_rel * float(np.trace(ag)) / len(ag)
        return np.linalg.solve(ag + max(p, 1e-12) * np.eye(len(ag)), rhs)

    def path(self, x_new: np.ndarray, alphas=ALPHAS_REL, priors=PRIORS_REL):
        """Yield ``((alpha_rel, prior_rel), prediction for x_new)`` (the mean target included,
        as ``ridge_path``'s are)."""
        xn = np.asarray(x_new, np.float64) - self.x_mean
        for alpha in alphas:
            a, ks, _ = self.likelihood(alpha)
            rhs = ks @ xn.T
            for prior in priors:
                yield (float(alpha), float(prior)), self.solve(a, prior, rhs).T @ self.yc + self.y_mean

    def right_factor(self, alpha_rel: float, prior_rel: float) -> np.ndarray:
        """``N`` (n, V) with the decoder's coefficients ``W = Y' N`` (d, V)."""
        a, ks, _ = self.likelihood(alpha_rel)
        return self.solve(a, prior_rel, ks)


def choose_linear(x: np.ndarray, y: np.ndarray, *, kinds=("ridge", "encoding"), ridge_alphas=ALPHAS,
                  shares=SHARES, folds: int = 5, seed: int = 0, max_images: int = MAX_IMAGES,
                  max_bytes: float = 2**31) -> dict | None:
    """The best linear read-out of averaged voxels ``x`` (n images, V) for flattened targets
    ``y`` (n, d) by ``folds``-fold cross-validation over every image, scored by mean reciprocal
    rank in each held-out fold: ridge over ``ridge_alphas`` and the inverted encoding model over
    its grid, each with each share of the mean target subtracted (the outputs' calibration
    against hubness; 0 wins ties). Returns the winner (``kind``, ``alpha``, ``prior``, ``share``),
    its per-share reciprocal ranks (``share_mrr``: several subjects under one output bias
    average them), its score in each fold (``fold_mrr``, for paired comparisons on the same
    folds) and the best score of each kind. None when the targets in float64 would not fit
    in ``max_bytes`` or there are too few images for the folds (the caller then says why)."""
    n = len(x)
    if n < 4 * folds or 8.0 * n * np.asarray(y).shape[1] > max_bytes:
        return None
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    kinds = tuple(k for k in kinds if k != "encoding" or n <= max_images)
    scores: dict = {}
    for keep, part in kfold(n, folds, seed):
        y_mean = y[keep].mean(0)
        paths = []
        if "ridge" in kinds:
            paths.append((("ridge", a, None), p) for a, p in ridge_path(x[keep], y[keep], x[part], ridge_alphas))
        if "encoding" in kinds:
            paths.append((("encoding", a, pr), p) for (a, pr), p in EncodingModel(x[keep], y[keep]).path(x[part]))
        for path in paths:
            for key, pred in path:
                for share in shares:
                    scores.setdefault(key + (float(share),), []).append(reciprocal_rank(pred - share * y_mean, y[part]))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    # Ties: the smaller share, then the stronger regularisation.
    best = max(mean, key=lambda k: (mean[k], -k[3], k[1]))
    kind, alpha, prior, share = best
    by_kind = {kd: max(v for k, v in mean.items() if k[0] == kd) for kd in kinds}
    return {"kind": kind, "alpha": float(alpha), "prior": prior, "share": share, "cv_mrr": mean[best],
            "fold_mrr": list(scores[best]),
            "share_mrr": {f"{k[3]:.3f}": v for k, v in mean.items() if k[:3] == best[:3]},
            "cv_mrr_by_kind": by_kind, "folds": folds, "n_images": n}


def encoding_factors(x: np.ndarray, y: np.ndarray, alpha_rel: float, prior_rel: float):
    """The inverted encoding model fitted on every image, as ``(m, vt, x_mean, y_mean)`` with
    coefficients ``W = m @ vt``: ``m`` (d, r), ``vt`` (r, V) with orthonormal rows, r <= n."""
    model = EncodingModel(x, y)
    u, s, vt = np.linalg.svd(model.right_factor(alpha_rel, prior_rel), full_matrices=False)
    return model.yc.T @ (u * s), vt, model.x_mean, model.y_mean


__all__ = ["EncodingModel", "choose_linear", "encoding_factors", "ALPHAS_REL", "PRIORS_REL", "SHARES"]
