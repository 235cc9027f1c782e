"""Per-subject input adapters (MindEye2's shared-subject ``RidgeRegression``).

Each subject has its own voxel count and anatomy, so each gets one ``Linear(n_voxels, hidden)``
into a hidden space that all subjects share; everything downstream is shared. A new subject is
enrolled by adding an adapter to a trained model (MindEye2 fine-tunes from as little as one
session), either training only that adapter or fine-tuning the whole model.
"""

from __future__ import annotations

import torch
from torch import nn


def subject_key(subject: int) -> str:
    # ModuleDict keys must be strings; NSD numbering is 1-based.
    return f"subj{int(subject):02d}"


class SubjectAdapters(nn.Module):
    def __init__(self, n_voxels: dict[int, int], hidden: int):
        super().__init__()
        self.hidden = hidden
        self.linears = nn.ModuleDict()
        for subject, v in sorted(n_voxels.items()):
            self.add_subject(subject, v)

    @property
    def subjects(self) -> list[int]:
        return sorted(int(k[4:]) for k in self.linears)

    def n_voxels(self, subject: int) -> int:
        return self.linears[subject_key(subject)].in_features

    def add_subject(self, subject: int, n_voxels: int) -> nn.Linear:
        key = subject_key(subject)
        if key in self.linears:
            raise ValueError(f"subject {subject} already has an adapter")
        # Build on the device of the existing adapters (meta for counting, cuda after prepare).
        device = next((p.device for p in self.linears.parameters()), None)
        layer = nn.Linear(int(n_voxels), self.hidden, device=device)
        self.linears[key] = layer
        return layer

    def forward(self, voxels: torch.Tensor, subject: int) -> torch.Tensor:
        key = subject_key(subject)
        if key not in self.linears:
            raise KeyError(f"no adapter for subject {subject} (have {self.subjects})")
        return self.linears[key](voxels)
