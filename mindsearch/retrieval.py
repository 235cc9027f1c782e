"""The MindEye retrieval protocol, exactly.

For each of ``loops`` loops draw ``pool`` test items uniformly without replacement, compare
flattened L2-normalised embeddings by cosine similarity, and count top-1 hits; report the
mean over loops and a 95% interval (1.96 SEM over loops). Pools come from the same legacy
numpy stream MindEye2 uses (``seed_everything(42)`` then ``np.random.choice(n, 300,
replace=False)`` per loop), so the pools are the paper code's pools.

Direction names (see the README): ``brain_to_image`` asks, for each brain sample, whether its
own image is the most similar of the pool's images -- the search-engine direction.
``image_to_brain`` asks, for each image, whether its own brain sample is the most similar of
the pool's brain samples. MindEye's code computes ``fwd_sim = batchwise_cosine_similarity(
brain, clip)``, which returns the *transpose*, and arg-maxes rows: its ``fwd`` (called "image
retrieval" in both papers) is our ``image_to_brain``, its ``bwd`` is our ``brain_to_image``.

This module is the one place the metric lives: evaluation, the trainer's progress lines, the
ridge baseline's alpha choice and the simulator's ceiling all import it, so a tie counts the
same everywhere (as a miss).
"""

from __future__ import annotations

import numpy as np

from mindsearch.indexes.errors import InputError


def normalise(x: np.ndarray) -> np.ndarray:
    """Flatten every row and scale it to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _check(brain: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    brain, images = np.asarray(brain), np.asarray(images)
    if len(brain) != len(images):
        raise InputError(
            f"brain has {len(brain)} rows but images has {len(images)}: row i of each must be "
            "the same test item"
        )
    b, i = normalise(brain), normalise(images)
    if b.shape[1] != i.shape[1]:
        raise InputError(
            f"brain embeddings have {b.shape[1]} values per row, image embeddings {i.shape[1]}: "
            "they are not in the same embedding space"
        )
    if not (np.isfinite(b).all() and np.isfinite(i).all()):
        raise InputError("embeddings contain NaN or Inf")
    return b, i


def top1_in_pool(sim: np.ndarray) -> np.ndarray:
    """Per row of ``sim`` (queries × candidates, diagonal = correct), did the correct one win?

    Ties count as a miss for the query, as ``argmax`` in the anchors would pick the first max
    only by luck; we require the correct candidate to be strictly best.
    """
    correct = np.diag(sim)
    others = sim.copy()
    np.fill_diagonal(others, -np.inf)
    return correct > others.max(axis=1)


def pools(n: int, pool: int = 300, loops: int = 30, seed: int = 42) -> list[np.ndarray]:
    """The protocol's pools: MindEye2's legacy-numpy stream, ``choice(n, pool, replace=False)``
    per loop after ``RandomState(seed)``."""
    rs = np.random.RandomState(seed)
    p = int(min(pool, n))
    return [rs.choice(n, p, replace=False) for _ in range(loops)]


def top1_full_pool(brain: np.ndarray, images: np.ndarray) -> tuple[float, float]:
    """(brain->image, image->brain) top-1 among all rows, row i of both = the same item."""
    b, i = normalise(brain), normalise(images)
    return topk_full_pool(b, i, 1), topk_full_pool(i, b, 1)


def topk_full_pool(queries: np.ndarray, candidates: np.ndarray, k: int) -> float:
    """Fraction of queries whose own candidate (same row) ranks within the top k of all."""
    sim = queries @ candidates.T
    correct = np.diag(sim)[:, None]
    # others at least as good as the own candidate (the own one counts itself once): a tie
    # ranks behind, as in top1_in_pool
    rank = (sim >= correct).sum(axis=1) - 1
    return float(np.mean(rank < k))


def retrieval_scores(
    brain: np.ndarray,
    images: np.ndarray,
    pool: int = 300,
    loops: int = 30,
    seed: int = 42,
) -> dict:
    """Score paired embeddings with the papers' protocol; keys as documented in the README."""
    b, im = _check(brain, images)
    n = len(b)
    if n < 2:
        raise InputError(f"need at least 2 test items, got {n}")
    pool = int(min(pool, n))
    b2i, i2b = [], []
    for idx in pools(n, pool, loops, seed):
        sim = b[idx] @ im[idx].T  # rows: brain samples, columns: images
        b2i.append(top1_in_pool(sim).mean())
        i2b.append(top1_in_pool(sim.T).mean())
    b2i, i2b = np.asarray(b2i), np.asarray(i2b)
    ci95 = _ci95
    out = {
        "brain_to_image_top1": float(b2i.mean()),
        "image_to_brain_top1": float(i2b.mean()),
        "brain_to_image_top1_ci95": ci95(b2i),
        "image_to_brain_top1_ci95": ci95(i2b),
        "full_pool_brain_to_image_top1": topk_full_pool(b, im, 1),
        "full_pool_image_to_brain_top1": topk_full_pool(im, b, 1),
        "full_pool_brain_to_image_top5": topk_full_pool(b, im, 5),
        "full_pool_image_to_brain_top5": topk_full_pool(im, b, 5),
        "pool": pool,
        "loops": int(loops),
        "seed": int(seed),
        "n": int(n),
        "chance_top1": 1.0 / pool,
    }
    # Aliases that match the MindEye code's labels (its fwd/bwd are transposed; module doc).
    out["mindeye_fwd"] = out["image_to_brain_top1"]
    out["mindeye_bwd"] = out["brain_to_image_top1"]
    return out


def hubness_penalties(queries: np.ndarray, reference: np.ndarray, k: int = 10, batch: int = 2048) -> np.ndarray:
    """CSLS's neighbourhood term: each query's mean cosine to its ``k`` nearest rows of ``reference``
    (Conneau et al. 2018, "Word translation without parallel data")."""
    q, r = normalise(queries), normalise(reference)
    k = int(min(k, len(r)))
    out = np.empty(len(q), np.float32)
    for i in range(0, len(q), batch):
        sim = q[i : i + batch] @ r.T
        out[i : i + batch] = np.partition(sim, -k, axis=1)[:, -k:].mean(axis=1)
    return out


def csls_scores(brain: np.ndarray, images: np.ndarray, ref_brain: np.ndarray, ref_images: np.ndarray,
                k: int = 10, pool: int = 300, loops: int = 30, seed: int = 42) -> dict:
    """The protocol's pools scored with CSLS instead of plain cosine: ``2 cos(b, i) - r_img(b) -
    r_brain(i)``, where ``r_img(b)`` is brain query b's mean cosine to its k nearest reference
    *images* and ``r_brain(i)`` image i's mean cosine to its k nearest reference *brain
    embeddings*. The references come from training data (not the test set), so the correction is
    not transductive: an image that sits near many brain embeddings (a hub) is marked down."""
    b, im = _check(brain, images)
    r_b = hubness_penalties(b, ref_images, k)  # per brain query
    r_i = hubness_penalties(im, ref_brain, k)  # per image
    b2i, i2b = [], []
    for idx in pools(len(b), pool, loops, seed):
        sim = 2 * (b[idx] @ im[idx].T) - r_b[idx][:, None] - r_i[idx][None, :]
        b2i.append(top1_in_pool(sim).mean())
        i2b.append(top1_in_pool(sim.T).mean())
    b2i, i2b = np.asarray(b2i), np.asarray(i2b)
    return {"method": "csls", "k": int(k), "reference_brain": int(len(ref_brain)),
            "reference_images": int(len(ref_images)),
            "brain_to_image_top1": float(b2i.mean()), "image_to_brain_top1": float(i2b.mean()),
            "brain_to_image_top1_ci95": _ci95(b2i), "image_to_brain_top1_ci95": _ci95(i2b)}


def reciprocal_rank(brain: np.ndarray, images: np.ndarray) -> float:
    """Mean 1 / rank of each brain row's own image among all rows' images (ties rank behind):
    a smooth top-1 for choosing settings on a few dozen validation images."""
    sim = normalise(brain) @ normalise(images).T
    rank = (sim >= np.diag(sim)[:, None]).sum(axis=1)
    return float(np.mean(1.0 / rank))


def _ci95(x: np.ndarray) -> float:
    return float(1.96 * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def average_by_group(embeddings: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """MindEye2's repetition handling: average model outputs over each image's trials."""
    return np.stack([np.asarray(embeddings[g], dtype=np.float32).mean(axis=0) for g in groups])
