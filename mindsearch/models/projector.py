"""The retrieval head: a per-token MLP producing MindEye's "disjointed" CLIP-fMRI embeddings.

Contrastive losses only constrain direction, so these embeddings retrieve well but live off the
CLIP manifold (hence "disjointed"); the diffusion prior produces the "aligned" ones. Keeping the
contrastive loss on this head, not on the backbone the prior reads, is MindEye's fix for the
retrieval/reconstruction trade-off (paper Table 4).
"""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """``residual``: output = input + MLP(input); with ``zero_output`` it starts as the identity."""

    def __init__(self, dim: int, hidden: int = 2048, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.GELU(),
            nn.Linear(dim, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.net(tokens)
        return tokens + out if self.residual else out

    def zero_output(self) -> None:
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
