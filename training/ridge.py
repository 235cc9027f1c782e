"""The Brain-Diffuser-style linear baseline: scikit-learn ridge from voxels to targets.

Brain-Diffuser averages the three repetitions before fitting and fixes alpha by hand; we
average too (``average="betas"`` by default) but choose alpha on a validation split held out
by image (so repetitions of one image never straddle the split), scoring each alpha by
validation brain->image top-1 -- the quantity we care about -- via one SVD for the whole grid.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mindsearch.errors import MindsearchError
from mindsearch.retrieval import top1_full_pool

ALPHAS = tuple(float(a) for a in np.logspace(0, 6, 13))


def ridge_path(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, alphas=ALPHAS):
    """Yield ``(alpha, prediction for x_val)`` for every alpha from one thin SVD of the centred
    training rows: ``W(alpha) = V diag(s / (s^2 + alpha)) U^T Y`` (sklearn's ``Ridge(fit_intercept=True)``)."""
    x_mean, y_mean = x_train.mean(0), y_train.mean(0)
    u, s, vt = np.linalg.svd(x_train - x_mean, full_matrices=False)
    uty = u.T @ (y_train - y_mean)
    xv = (x_val - x_mean) @ vt.T  # validation rows in the SVD basis
    for a in alphas:
        yield a, (xv * (s / (s**2 + a))) @ uty + y_mean


def kfold(n: int, k: int = 5, seed: int = 0):
    """Yield ``(keep, part)`` for ``k`` folds of ``n`` shuffled rows: a boolean mask of the rows
    to fit on and the indices of the held-out fold."""
    for part in np.array_split(np.random.default_rng(seed).permutation(n), k):
        keep = np.ones(n, bool)
        keep[part] = False
        yield keep, part


def choose_alpha(x: np.ndarray, y: np.ndarray, val_fraction: float = 0.1, seed: int = 0,
                 alphas=ALPHAS) -> tuple[float, dict]:
    """Pick alpha by validation top-1 on a held-out part of the rows (rows = images)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_val = max(2, int(round(val_fraction * len(x))))
    val, tr = order[:n_val], order[n_val:]
    scores = {a: top1_full_pool(pred, y[val])[0] for a, pred in ridge_path(x[tr], y[tr], x[val], alphas)}
    best = max(alphas, key=lambda a: (scores[a], a))  # ties: the stronger regularisation
    return best, {"val_top1": {f"{a:g}": v for a, v in scores.items()}, "n_val": int(n_val)}


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float):
    from sklearn.linear_model import Ridge

    model = Ridge(alpha=alpha, fit_intercept=True)
    model.fit(x.astype(np.float64, copy=False), y.astype(np.float64, copy=False))
    return model.coef_.astype(np.float32), np.asarray(model.intercept_, np.float32)


def average_by_image(x: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each image's rows (Brain-Diffuser averages repetitions before fitting) and the ids."""
    uniq, inv = np.unique(np.asarray(ids), return_inverse=True)
    sums = np.zeros((len(uniq), x.shape[1]), np.float64)
    np.add.at(sums, inv, x)
    return (sums / np.bincount(inv)[:, None]).astype(np.float32), uniq


def linear_start(x: np.ndarray, y: np.ndarray, rank: int, alpha: float | None = None, seed: int = 0,
                 choice: dict | None = None) -> dict:
    """A linear read-out from ``x`` (n, V) to flattened ``y`` (n, T*D), factored as ``W ~ B A`` of
    rank <= ``rank`` (the truncated SVD of the solution: exact when its rank, at most n, fits), for
    ``MindEyeModel.start_linear``. Ridge with ``alpha`` (chosen on held-out rows by ``choose_alpha``
    when None), or what ``choice`` (``training.encoding.choose_linear``) names: ridge at its alpha
    or the inverted encoding model at its (alpha, prior).

    Both solutions have the form ``W = m @ vt`` with ``m`` (T*D, r) and orthonormal rows ``vt``
    (r, V), r <= n, so only a (T*D x n) matrix is decomposed; ridge's comes from the thin SVD of
    the centred voxels ``X = U S Vt``: ``m = Yc' U diag(s/(s^2+a))`` (sklearn's ``Ridge(fit_intercept=True)``)."""
    info = {}
    kind = (choice or {}).get("kind", "ridge")
    if choice is not None:
        alpha = choice["alpha"]
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    if kind == "encoding":
        from mindsearch.training.encoding import encoding_factors

        m, vt, x_mean, y_mean = encoding_factors(x64, y64, choice["alpha"], choice["prior"])
    else:
        if alpha is None:
            alpha, info = choose_alpha(x, y, seed=seed)
        x_mean, y_mean = x64.mean(0), y64.mean(0)
        u, s, vt = np.linalg.svd(x64 - x_mean, full_matrices=False)
        m = (y64 - y_mean).T @ (u * (s / (s**2 + alpha)))
    p, sig, qt = np.linalg.svd(m, full_matrices=False)
    k = int(min(rank, int((sig > sig[0] * 1e-7).sum()) if len(sig) and sig[0] > 0 else 0))
    root = np.sqrt(sig[:k])
    coef = m @ vt
    intercept = y_mean - coef @ x_mean
    return {"a_weight": (root[:, None] * (qt[:k] @ vt)).astype(np.float32), "a_bias": np.zeros(k, np.float32),
            "b_weight": (p[:, :k] * root).astype(np.float32), "b_bias": intercept.astype(np.float32),
            "coef": coef.astype(np.float32), "alpha": float(alpha), "rank": k, "kind": kind,
            "energy_kept": float((sig[:k] ** 2).sum() / max((sig ** 2).sum(), 1e-30)), "alpha_search": info}


def adapter_for(coef: np.ndarray, intercept: np.ndarray, b_weight: np.ndarray, b_bias: np.ndarray):
    """Another subject's adapter under a shared read-out ``B``: ``A = pinv(B) W``, ``a = pinv(B)(c - b)``."""
    pinv = np.linalg.pinv(b_weight.astype(np.float64))
    return (pinv @ coef).astype(np.float32), (pinv @ (intercept - b_bias)).astype(np.float32)


def train_ridge(data: str | Path, subject: int, out: str | Path, *, average: str = "betas",
                sessions: list[int] | None = None, alpha: float | None = None, seed: int = 0,
                targets: str | None = None, progress=None) -> dict:
    """Fit ridge on one subject's training split and write a run directory at ``out``."""
    from mindsearch.data import open_dataset
    from mindsearch.data.preprocess import load_split
    from mindsearch.runs import write_run

    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    with open_dataset(data, targets=targets) as ds:
        if subject not in ds.subjects:
            raise MindsearchError(f"no subject {subject} in dataset (subjects: {ds.subjects})", data)
        if not ds.has_targets:
            raise MindsearchError("dataset has no target embeddings to learn", data)
        split = load_split(ds, subject, "train", zscore=True, average=average, sessions=sessions)
        if len(split.voxels) < 4:
            raise MindsearchError(f"only {len(split.voxels)} training rows for subject {subject}", data)
        y3 = ds.targets(split.image_ids)
        target_shape = list(y3.shape[1:])
        y = y3.reshape(len(y3), -1).astype(np.float32)
        x = split.voxels
        say(f"ridge: subject {subject}, {x.shape[0]} training rows × {x.shape[1]} voxels -> "
            f"{'×'.join(map(str, target_shape))} targets")
        info = {}
        if alpha is None:
            alpha, info = choose_alpha(x, y, seed=seed)
            say(f"ridge: alpha {alpha:g} chosen on {info['n_val']} validation images "
                f"(top-1 {info['val_top1'][f'{alpha:g}']:.1%})")
        coef, intercept = fit_ridge(x, y, alpha)
        config = {
            "model": "ridge",
            "subject": int(subject),
            "n_voxels": int(x.shape[1]),
            "subjects": {str(subject): int(x.shape[1])},
            "space": ds.target_space,
            "target_shape": target_shape,
            "seed": int(seed),
            "data": {"path": str(Path(data).resolve()), "layout": ds.layout,
                     "fingerprint": ds.fingerprint()},
            "train": {"alpha": float(alpha), "average": average, "sessions": sessions,
                      "n_rows": int(x.shape[0]), "alpha_search": info,
                      "seconds": round(time.perf_counter() - t0, 2)},
        }
        zscore = split.zscore
    return write_run(out, config, {"coef": coef, "intercept": intercept}, zscore={int(subject): zscore})
