"""The residual MLP backbone: a flattened voxel pattern -> (tokens, dim) CLIP-shaped embeddings.

Architecture (MindEye1 ``BrainNetwork``, paper Algorithm 1): an input layer
``Linear(voxels, h) -> LayerNorm -> GELU -> Dropout(0.5)``, four residual blocks of
``Linear(h, h) -> LayerNorm -> GELU -> Dropout(0.15)`` and one big ``Linear(h, tokens*dim)``.

Following MindEye2, the input ``Linear`` is *not* part of this module: it is the per-subject
adapter (``adapters.SubjectAdapters``), so every subject shares everything after it. With one
subject the parameter count is exactly MindEye1's.

``block="mindeye2"`` is MindEye2's trunk instead (``BrainNetwork`` with ``seq_len=1``): no input
activation, blocks ``x + Linear(Dropout(GELU(Linear(LN(x)))))``. Its token-mixing blocks over a
sequence of length 1 (6 parameters each) are left out: they mix nothing.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, hidden: int, dropout: float = 0.15):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class MixerBlock(nn.Module):
    """MindEye2's residual block: ``x + Linear(Dropout(GELU(Linear(LN(x)))))``."""

    def __init__(self, hidden: int, dropout: float = 0.15):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(hidden),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)

    def zero_output(self) -> None:
        """Make the block the identity (its residual branch outputs zero) until it trains."""
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)


class Backbone(nn.Module):
    """Shared trunk: adapter output (n, hidden) -> backbone tokens (n, tokens, dim) and trunk features."""

    def __init__(
        self,
        hidden: int,
        tokens: int,
        dim: int,
        n_blocks: int = 4,
        drop_in: float = 0.5,
        drop_block: float = 0.15,
        block: str = "mindeye1",
    ):
        super().__init__()
        self.hidden, self.tokens, self.dim = hidden, tokens, dim
        if block == "mindeye2":
            self.input = nn.Identity()
            self.blocks = nn.ModuleList([MixerBlock(hidden, drop_block) for _ in range(n_blocks)])
        else:
            # The norm/activation/dropout that follow MindEye1's lin0; the Linear itself is the adapter.
            self.input = nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(drop_in))
            self.blocks = nn.ModuleList([ResidualBlock(hidden, drop_block) for _ in range(n_blocks)])
        self.to_tokens = nn.Linear(hidden, tokens * dim)
        # Mean and sd of the trunk's inputs (adapter outputs) over the training images, set when
        # training ends: a new subject's adapter is fitted to inputs from this distribution
        # (``training.inversion``). Runs from before they existed load with 0 and 1.
        self.register_buffer("input_mean", torch.zeros(hidden))
        self.register_buffer("input_std", torch.ones(hidden))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(tokens (n, T, D), features (n, hidden))``; features feed the low-level head."""
        x = self.input(h)
        for block in self.blocks:
            x = block(x)
        return self.to_tokens(x).reshape(len(x), self.tokens, self.dim), x
