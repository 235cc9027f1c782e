"""Low-level ("perceptual") head: backbone features -> a Stable-Diffusion-VAE latent.

MindEye1 maps voxels to a 64x16x16 map, then a CNN upsampler modelled on the SD VAE decoder
produces the 4x64x64 latent of the 512-px image, trained with L1 (divided by the VAE's 0.18215
scale) plus an auxiliary soft contrastive loss on a 1x1-conv projection of the map (distilling
VICRegL features). Decoding that latent with the VAE gives the blurry image MindEye uses to
initialise img2img. As in MindEye2, the head reads the shared backbone's hidden features instead
of owning a second backbone.

The upsampler is a small decoder of our own (conv, then per stage: GroupNorm, SiLU, conv,
nearest 2x upsample, conv): diffusers' ``Decoder`` works too but costs a heavy import for what is
a handful of convolutions.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class UpStage(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.net = nn.Sequential(
            _norm(c_in),
            nn.SiLU(),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )

    def forward(self, x):
        return self.net(x)


class LowLevelHead(nn.Module):
    def __init__(
        self,
        hidden: int,
        channels: int = 64,
        size: int = 16,
        latent_channels: int = 4,
        latent_size: int = 64,
        decoder_channels: tuple[int, ...] = (256, 128, 64),
        aux_dim: int = 512,
        dropout: float = 0.3,
    ):
        super().__init__()
        n_up = math.log2(latent_size / size)
        if n_up < 0 or n_up != int(n_up):
            raise ValueError(f"latent_size/size must be a power of two >= 1, got {latent_size}/{size}")
        n_up = int(n_up)
        if len(decoder_channels) != n_up + 1:
            raise ValueError(f"decoder_channels needs {n_up + 1} entries for {n_up} 2x stages")
        self.channels, self.size = channels, size
        self.to_map = nn.Sequential(nn.Linear(hidden, channels * size * size), nn.Dropout(dropout))
        self.map_norm = nn.GroupNorm(1, channels)
        ch = list(decoder_channels)
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, ch[0], 3, padding=1),
            *[UpStage(ch[i], ch[i + 1]) for i in range(n_up)],
            _norm(ch[-1]),
            nn.SiLU(),
            nn.Conv2d(ch[-1], latent_channels, 3, padding=1),
        )
        # MindEye1's maps_projector: 1x1 convs to the teacher's feature width.
        self.aux = nn.Sequential(
            nn.Conv2d(channels, aux_dim, 1, bias=False),
            nn.GroupNorm(1, aux_dim),
            nn.ReLU(),
            nn.Conv2d(aux_dim, aux_dim, 1, bias=False),
            nn.GroupNorm(1, aux_dim),
            nn.ReLU(),
            nn.Conv2d(aux_dim, aux_dim, 1),
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features`` (n, hidden) -> ``(latent (n, C_lat, S_lat, S_lat), aux (n, aux_dim, size, size))``."""
        m = self.to_map(features).reshape(len(features), self.channels, self.size, self.size)
        m = self.map_norm(m)
        return self.decoder(m), self.aux(m)


def fit_to_latent(section: dict, latent_channels: int, latent_size: int) -> dict:
    """A copy of a preset's ``lowlevel`` section resized to output ``latent_channels x latent_size^2``.

    The map size is halved from ``latent_size`` until it is no larger than the preset's (so the head
    keeps its cost) or stops being even; ``decoder_channels`` is cut, or its last width repeated, to
    one entry per 2x stage plus one. The result is what gets saved, so reloading rebuilds it exactly.
    """
    from dataclasses import asdict

    from mindsearch.models.config import LowLevelConfig

    section = {**asdict(LowLevelConfig()), **{k: v for k, v in section.items() if k != "enabled"}}
    out = dict(section)
    size = int(latent_size)
    while size > int(section["size"]) and size % 2 == 0:
        size //= 2
    n_up = int(round(math.log2(latent_size / size)))
    ch = list(section["decoder_channels"])
    ch = ch[: n_up + 1] if len(ch) >= n_up + 1 else ch + [ch[-1]] * (n_up + 1 - len(ch))
    out.update(latent_channels=int(latent_channels), latent_size=int(latent_size), size=size,
               decoder_channels=ch)
    return out
