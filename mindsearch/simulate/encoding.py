"""One subject's known encoding model: how voxels respond to images, and their noise.

Raw beta of trial t (image i, session s) at voxel v:
    b = scale[s, v] * (mu_i[v] + eps[v]) + offset[s, v]
    mu_i = phi(z_i) @ W + c          per-voxel signal sd = ncsnr[v] (over the world's images)
    eps  ~ N(0, Sigma),  Sigma = L L^T + diag(d),  diag(Sigma) = 1
so ncsnr keeps NSD's meaning (signal sd / trial-to-trial noise sd). L (V x rank) is the noise
shared across voxels (a few global fluctuations, as in real fMRI); sessions get a mild gain and
offset per voxel, the drift that per-session z-scoring exists to remove.
"""

from __future__ import annotations

import numpy as np

from mindsearch.simulate import ncsnr as ncsnr_mod

TAG_SUBJECT, TAG_NOISE = 100, 200


class SubjectModel:
    def __init__(self, world, cfg: dict, subject: int, n_sessions: int, seed: int,
                 feature_cov: np.ndarray, feature_mean: np.ndarray):
        self.subject, self.seed = int(subject), int(seed)
        v = int(cfg["voxels"][subject])
        rng = np.random.default_rng([seed, TAG_SUBJECT, subject])
        self.ncsnr, self.ncsnr_source = ncsnr_mod.draw(rng, v, subject)
        w = rng.standard_normal((feature_cov.shape[0], v))
        sd = np.sqrt(np.einsum("fv,fv->v", feature_cov @ w, w))
        w *= self.ncsnr / np.maximum(sd, 1e-12)
        self.weights = w.astype(np.float32)  # (F, V)
        self.intercept = (-(feature_mean @ w)).astype(np.float32)
        rank = int(cfg["noise_rank"])
        lo, hi = cfg["shared_noise"]
        frac = rng.uniform(lo, hi, size=v) if rank > 0 else np.zeros(v)
        q = rng.standard_normal((v, max(rank, 1)))[:, :rank]
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        self.noise_load = (q * np.sqrt(frac)[:, None]).astype(np.float32)  # L (V, rank)
        self.noise_diag = (1.0 - frac).astype(np.float32)  # d (V,): variances
        self.session_scale = np.exp(cfg["session_scale_sd"] * rng.standard_normal((n_sessions, v))).astype(np.float32)
        base = cfg["baseline_sd"] * rng.standard_normal(v)
        self.session_offset = (base + cfg["session_offset_sd"] * rng.standard_normal((n_sessions, v))).astype(np.float32)
        self._world = world

    @property
    def n_voxels(self) -> int:
        return len(self.ncsnr)

    def means(self, ids) -> np.ndarray:
        return self._world.features(ids) @ self.weights + self.intercept

    def noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        v, r = self.noise_load.shape
        eps = rng.standard_normal((n, v), dtype=np.float32) * np.sqrt(self.noise_diag)
        if r:
            eps += rng.standard_normal((n, r), dtype=np.float32) @ self.noise_load.T
        return eps

    def session_rng(self, session: int) -> np.random.Generator:
        """Each session's noise has its own stream, so sessions can be generated one at a time."""
        return np.random.default_rng([self.seed, TAG_NOISE, self.subject, int(session)])

    def raw(self, clean: np.ndarray, sessions: np.ndarray) -> np.ndarray:
        """Apply the session gain and offset to clean+noise responses (rows = trials)."""
        s = np.asarray(sessions) - 1
        return clean * self.session_scale[s] + self.session_offset[s]

    def unraw(self, betas: np.ndarray, sessions: np.ndarray) -> np.ndarray:
        """Undo :meth:`raw` (what the Bayes decoder, who knows the model, does first)."""
        s = np.asarray(sessions) - 1
        return (betas - self.session_offset[s]) / self.session_scale[s]

    def precision_times(self, x: np.ndarray) -> np.ndarray:
        """Sigma^-1 @ x for x (V, k) by Woodbury, never forming the V x V matrix."""
        x = np.asarray(x, dtype=np.float64)
        dinv = 1.0 / self.noise_diag.astype(np.float64)
        y = dinv[:, None] * x
        l = self.noise_load.astype(np.float64)
        if l.shape[1] == 0:
            return y
        core = np.eye(l.shape[1]) + l.T @ (dinv[:, None] * l)
        return y - dinv[:, None] * (l @ np.linalg.solve(core, l.T @ y))
