"""The shared latent of a pretrained model: where a new subject's adapter should map.

A pretraining on several subjects can learn, from their voxels, a space every subject's voxels
are linear in: an encoding model ``voxels_s ~ features(target) @ C_s`` with one nonlinear
``features`` map shared by all subjects and a linear head per subject (``training.latent``
fits it). The trunk is then trained to read that latent (lifted to its hidden width by
``to_hidden``), so a new subject's adapter is a *linear* problem with known targets:
``features(target)`` of its own training images. Gradient descent through the trunk
(``training.inversion.trunk_inputs``) only approximates those targets.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class LatentEncoder(nn.Module):
    """Flattened targets (n, T*D) -> standardised latent (n, dim) -> trunk input (n, hidden)."""

    def __init__(self, target_dim: int, dim: int, width: int, hidden: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Linear(target_dim, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, dim)
        )
        self.to_hidden = nn.Linear(dim, hidden)
        # Mean and sd of the features over the pretraining images: the latent is standardised
        # so that the trunk's input noise and the decoders' priors have one scale.
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, targets: torch.Tensor) -> torch.Tensor:
        """The standardised latent of flattened targets."""
        return (self.features(targets) - self.mean) / self.std

    @torch.no_grad()
    def latents(self, targets, batch: int = 2048):
        """numpy in, numpy out (float64), in batches; the module's device and mode are kept."""
        device = self.to_hidden.weight.device
        was = self.training
        self.eval()
        out = [self(torch.as_tensor(np.asarray(targets[i : i + batch], np.float32), device=device)).double().cpu().numpy()
               for i in range(0, len(targets), batch)]
        self.train(was)
        return np.concatenate(out) if out else np.zeros((0, self.mean.numel()))

    def lift(self):
        """``(weight (hidden, dim), bias (hidden,))`` of ``to_hidden`` as float64 numpy."""
        return (self.to_hidden.weight.detach().double().cpu().numpy(), self.to_hidden.bias.detach().double().cpu().numpy())


__all__ = ["LatentEncoder"]
