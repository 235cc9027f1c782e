"""The generative world shared by all subjects: image latents, voxel features, targets.

Every image id has a semantic latent z = category centre + scene offset + exemplar jitter;
scenes hold several exemplars whose latents differ only by the small jitter, the simulator's
version of NSD's dozen near-identical zebras. Two fixed random nonlinear maps read z:
``features`` (phi, what voxels respond to) and ``targets`` (the CLIP-like embedding). They
are different functions of z, so a linear map from voxels to targets is necessarily
imperfect (the room a nonlinear decoder can use), while z itself is recoverable in principle.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

# Independent streams (np.random.default_rng([seed, TAG])) so changing one part of the
# configuration never reshuffles another.
TAG_LATENT, TAG_PHI, TAG_TARGET, TAG_RENDER = 1, 2, 3, 4


class World:
    def __init__(self, cfg: dict, n_images: int, seed: int):
        self.cfg, self.seed, self.n_images = cfg, int(seed), int(n_images)
        d = int(cfg["latent_dim"])
        rng = np.random.default_rng([seed, TAG_LATENT])
        n_scenes = max(1, int(round(n_images / cfg["exemplars_per_scene"])))
        centres = rng.standard_normal((cfg["n_categories"], d))
        scene_cat = rng.integers(cfg["n_categories"], size=n_scenes)
        scenes = centres[scene_cat] + cfg["scene_scale"] * rng.standard_normal((n_scenes, d))
        self.scene = rng.integers(n_scenes, size=n_images)
        self.category = scene_cat[self.scene]
        z = scenes[self.scene] + cfg["exemplar_scale"] * rng.standard_normal((n_images, d))
        self.latents = (z / np.sqrt(d)).astype(np.float32)  # unit-ish norm per image

        rng = np.random.default_rng([seed, TAG_PHI])
        f = int(cfg["n_features"])
        self._phi_w = (rng.standard_normal((d, f)) * cfg["phi_gain"] * 2.0).astype(np.float32)
        self._phi_b = rng.uniform(-np.pi, np.pi, size=f).astype(np.float32)

        rng = np.random.default_rng([seed, TAG_TARGET])
        h, t, dim = int(cfg["target_hidden"]), int(cfg["tokens"]), int(cfg["dim"])
        self._tg_w1 = (rng.standard_normal((d, h)) * cfg["target_gain"] * 2.0).astype(np.float32)
        self._tg_b1 = rng.standard_normal(h).astype(np.float32) * 0.5
        self._tg_w2 = (rng.standard_normal((h, t * dim)) / np.sqrt(h)).astype(np.float32)
        self._tg_bias = (0.3 * rng.standard_normal((t, dim)) / np.sqrt(dim)).astype(np.float32)
        self._tg_bias[0] = 0.0

    def features(self, ids) -> np.ndarray:
        """phi(z): (n, n_features) float32, periodic so no linear read-out can undo it."""
        z = self.latents[np.asarray(ids)]
        return np.cos(z @ self._phi_w + self._phi_b) * np.float32(np.sqrt(2.0 / len(self._phi_b)))

    def targets(self, ids) -> np.ndarray:
        """(n, tokens, dim) float32; token 0 is the pooled vector and has unit norm
        (every token divided by the token-0 norm, like ViT-L/14 hidden states in MindEye)."""
        z = self.latents[np.asarray(ids)]
        hid = np.tanh(z @ self._tg_w1 + self._tg_b1)
        out = (hid @ self._tg_w2).reshape(len(z), self.cfg["tokens"], self.cfg["dim"])
        out += self._tg_bias
        norm = np.linalg.norm(out[:, 0], axis=1)[:, None, None]
        return (out / np.maximum(norm, 1e-6)).astype(np.float32)

    def feature_covariance(self, chunk: int = 8192) -> np.ndarray:
        """Covariance of phi over every image in the world (sets each voxel's signal sd)."""
        f = self._phi_w.shape[1]
        s1, s2 = np.zeros(f), np.zeros((f, f))
        for a in range(0, self.n_images, chunk):
            x = self.features(np.arange(a, min(a + chunk, self.n_images))).astype(np.float64)
            s1 += x.sum(0)
            s2 += x.T @ x
        mean = s1 / self.n_images
        return s2 / self.n_images - np.outer(mean, mean), mean


def fingerprint(cfg: dict, seed: int, n_images: int) -> str:
    """Identifies the target space: same seed + world settings -> same targets."""
    keys = ("latent_dim", "n_categories", "exemplars_per_scene", "scene_scale", "exemplar_scale",
            "target_hidden", "target_gain", "tokens", "dim")
    blob = json.dumps({"seed": int(seed), "model": "sim-v1", "n_images": int(n_images), **{k: cfg[k] for k in keys}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
