"""Deterministic procedural pixels for each latent: a gradient background with a faint grating,
and a few anti-aliased coloured shapes (discs and boxes) whose positions, sizes and colours are
smooth functions of z, so near-duplicate latents give near-duplicate pictures and the pixel
metrics (PixCorr, SSIM, AlexNet) have real image structure to work on.
"""

from __future__ import annotations

import numpy as np

from mindsearch.simulate.world import TAG_RENDER

_PER_SHAPE = 8  # cx, cy, size, aspect, r, g, b, kind
_BACKGROUND = 9  # top rgb, bottom rgb, grating frequency, angle, amplitude


class Renderer:
    def __init__(self, latent_dim: int, n_shapes: int, size: int, seed: int):
        rng = np.random.default_rng([seed, TAG_RENDER])
        self.n_shapes, self.size = int(n_shapes), int(size)
        n_out = _BACKGROUND + self.n_shapes * _PER_SHAPE
        # Latents have norm ~1; gain 3 spreads the sigmoid outputs over most of [0, 1].
        self._proj = (3.0 * rng.standard_normal((latent_dim, n_out))).astype(np.float32)
        self._bias = rng.standard_normal(n_out).astype(np.float32) * 0.5

    def __call__(self, latents: np.ndarray) -> np.ndarray:
        """(n, d) latents -> (n, 3, H, W) float32 in [0, 1]."""
        p = 1.0 / (1.0 + np.exp(-(np.asarray(latents, np.float32) @ self._proj + self._bias)))
        n, h = len(p), self.size
        yy, xx = np.meshgrid(np.linspace(0, 1, h, dtype=np.float32),
                             np.linspace(0, 1, h, dtype=np.float32), indexing="ij")
        top, bottom = p[:, 0:3], p[:, 3:6]
        img = top[:, :, None, None] * (1 - yy) + bottom[:, :, None, None] * yy
        freq = 2.0 + 10.0 * p[:, 6]
        ang = np.pi * p[:, 7]
        phase = (np.cos(ang)[:, None, None] * xx + np.sin(ang)[:, None, None] * yy) * freq[:, None, None]
        img = img + (0.08 * p[:, 8])[:, None, None, None] * np.sin(2 * np.pi * phase)[:, None]
        soft = 1.5 / h  # anti-aliasing width: about one pixel
        for k in range(self.n_shapes):
            q = p[:, _BACKGROUND + k * _PER_SHAPE : _BACKGROUND + (k + 1) * _PER_SHAPE]
            cx, cy = (0.1 + 0.8 * q[:, 0])[:, None, None], (0.1 + 0.8 * q[:, 1])[:, None, None]
            rad = (0.06 + 0.22 * q[:, 2])[:, None, None]
            asp = (0.5 + q[:, 3])[:, None, None]
            dx, dy = (xx - cx) / asp, (yy - cy) * asp
            disc = np.sqrt(dx**2 + dy**2) - rad
            box = np.maximum(np.abs(dx), np.abs(dy)) - rad
            dist = np.where((q[:, 7] > 0.5)[:, None, None], disc, box)
            alpha = np.clip(0.5 - dist / soft, 0.0, 1.0)[:, None]
            img = img * (1 - alpha) + q[:, 4:7, None, None] * alpha
        return np.clip(img, 0.0, 1.0).astype(np.float32)
