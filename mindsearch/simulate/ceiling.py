"""The Bayes-optimal identification accuracy of a simulated subject's test set.

The decoder that knows the encoding model (test-image means mu, noise covariance Sigma,
session gains/offsets) scores a brain sample b (session effects undone, c repetitions
averaged, so its noise is N(0, Sigma / c)) against image j by the Gaussian log-likelihood
    l_j(b) = c * (mu_j Sigma^-1 b - 1/2 mu_j Sigma^-1 mu_j)   (+ terms that do not depend on j).
brain_to_image: each brain sample picks argmax_j l_j over the pool's images: the Bayes rule
(maximum posterior under a uniform prior), so no decoder has a higher expected top-1.
image_to_brain: each image i picks the brain sample k with the largest posterior
P(i | b_k) = exp(l_i(b_k)) / sum_j exp(l_j(b_k)) over the pool: the Bayes rule when each
sample's image is an independent uniform draw from the pool. (The protocol's pools are in fact
a permutation; the exact joint rule could do marginally better, so this direction's figure is
the independent-assignment ceiling.)

Expected accuracy is a Monte Carlo over fresh noise, done in score space: with G = mu Sigma^-1
mu^T, the scores of one sample are c (G_i - diag(G)/2) + N(0, c G) exactly, so a draw costs
n_test^2 * rank(G), independent of the number of voxels.
"""

from __future__ import annotations

import numpy as np

from mindsearch.retrieval import pools, top1_in_pool

PROTOCOL = {"pool": 300, "loops": 30, "seed": 42}


def pool_accuracy(loglik: np.ndarray, pool_list) -> tuple[float, float]:
    """Mean top-1 over pools of both Bayes rules; ``loglik[k, j]`` = log p(sample k | image j),
    sample k's true image is image k."""
    b2i, i2b, seen = [], [], {}
    for idx in pool_list:
        key = hash(np.sort(idx).tobytes())  # pool = whole test set: every loop is the same set
        if key not in seen:
            sub = loglik[np.ix_(idx, idx)]
            m = sub.max(axis=1, keepdims=True)
            post = sub - (m + np.log(np.exp(sub - m).sum(axis=1, keepdims=True)))
            seen[key] = (top1_in_pool(sub).mean(), top1_in_pool(post.T).mean())
        b2i.append(seen[key][0])
        i2b.append(seen[key][1])
    return float(np.mean(b2i)), float(np.mean(i2b))


class Ceiling:
    """Everything the Bayes decoder needs for one subject's test images (rows sorted by id)."""

    def __init__(self, model, test_ids: np.ndarray, reps: np.ndarray):
        self.test_ids = np.asarray(test_ids)
        self.reps = np.asarray(reps, dtype=np.float64)  # repetitions available per test image
        mu = model.means(self.test_ids).astype(np.float64)  # (n, V)
        self.proj = model.precision_times(mu.T)  # Sigma^-1 mu^T (V, n)
        g = mu @ self.proj
        self.gram = (g + g.T) / 2
        self.half_diag = np.diag(self.gram) / 2
        w, u = np.linalg.eigh(self.gram)
        keep = w > w.max() * 1e-10
        self._noise_map = (u[:, keep] * np.sqrt(w[keep])).T  # xi @ this ~ N(0, G)

    def loglik_from_projections(self, mean_proj: np.ndarray, c: np.ndarray) -> np.ndarray:
        """``mean_proj[k] = mean over sample k's reps of b Sigma^-1 mu^T`` -> log-likelihoods."""
        c = np.asarray(c, dtype=np.float64)[:, None]
        return c * (mean_proj - self.half_diag)

    def draw_loglik(self, rng: np.random.Generator, c: np.ndarray) -> np.ndarray:
        """Log-likelihoods for one fresh noise draw (sample k = image k, c_k reps averaged)."""
        c = np.asarray(c, dtype=np.float64)
        xi = rng.standard_normal((len(c), self._noise_map.shape[0]))
        noise = (xi @ self._noise_map) / np.sqrt(c)[:, None]
        return self.loglik_from_projections(self.gram + noise, c)

    def expected(self, rng: np.random.Generator, *, target_ci: float = 0.005, min_draws: int = 20,
                 max_draws: int = 400, protocol: dict = PROTOCOL) -> dict:
        """Monte-Carlo expected accuracy, drawing until 1.96 * SE <= target_ci for all four."""
        pl = pools(len(self.test_ids), **protocol)
        modes = {"average_betas": self.reps, "single_trial": np.ones_like(self.reps)}
        acc = {m: [] for m in modes}
        while True:
            for m, c in modes.items():
                acc[m].append(pool_accuracy(self.draw_loglik(rng, c), pl))
            n = len(acc["single_trial"])
            se = {m: np.asarray(a).std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(2, np.inf)
                  for m, a in acc.items()}
            done = all(1.96 * s.max() <= target_ci for s in se.values())
            if n >= max_draws or (n >= min_draws and done):
                break
        out = {}
        for m, a in acc.items():
            a = np.asarray(a)
            out[m] = {"brain_to_image_top1": float(a[:, 0].mean()),
                      "image_to_brain_top1": float(a[:, 1].mean()),
                      "brain_to_image_top1_se": float(se[m][0]),
                      "image_to_brain_top1_se": float(se[m][1]),
                      "mc_draws": int(n)}
        return out


def realised(ceiling: Ceiling, proj_by_image: dict, protocol: dict = PROTOCOL) -> dict:
    """The Bayes decoder's accuracy on the betas actually written. ``proj_by_image[id]`` is the
    list of ``b Sigma^-1 mu^T`` rows of that image's test trials, in trial order (rep 0 first)."""
    pl = pools(len(ceiling.test_ids), **protocol)
    rows = [np.asarray(proj_by_image[i]) for i in ceiling.test_ids]
    avg = np.stack([r.mean(0) for r in rows])
    first = np.stack([r[0] for r in rows])
    c = np.array([len(r) for r in rows])
    out = {}
    for mode, proj, cc in (("average_betas", avg, c), ("single_trial", first, np.ones_like(c))):
        b2i, i2b = pool_accuracy(ceiling.loglik_from_projections(proj, cc), pl)
        out[mode] = {"brain_to_image_top1": b2i, "image_to_brain_top1": i2b}
    return out
