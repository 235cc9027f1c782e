"""Optimiser, learning-rate and temperature schedules as in MindEye's training scripts.

AdamW with weight decay 1e-2 except on biases and normalisation weights; OneCycleLR to
``max_lr`` 3e-4 with a two-epoch warm-up (``pct_start = 2 / epochs``) and ``final_div_factor``
1000; BiMixCo for the first ``mixup_pct`` of epochs, then SoftCLIP with a temperature that rises
along a cosine from 0.004 to 0.0075 (``cosine_anneal``).
"""

from __future__ import annotations


import numpy as np


def cosine_anneal(start: float, end: float, steps: int) -> np.ndarray:
    """``end + (start - end)/2 * (1 + cos(pi k/(steps-1)))`` for k = 0..steps-1: start -> end."""
    if steps <= 0:
        return np.zeros(0)
    if steps == 1:
        return np.array([float(start)])
    k = np.arange(steps, dtype=np.float64)
    return end + (start - end) / 2 * (1 + np.cos(np.pi * k / (steps - 1)))


def mixup_epochs(epochs: int, mixup_pct: float) -> int:
    """Number of leading BiMixCo epochs (MindEye: ``int(mixup_pct * num_epochs)``)."""
    return int(mixup_pct * epochs)


def softclip_temperature(epoch: int, epochs: int, mixup_pct: float, start=0.004, end=0.0075) -> float:
    first = mixup_epochs(epochs, mixup_pct)
    temps = cosine_anneal(start, end, epochs - first)
    return float(temps[min(max(epoch - first, 0), len(temps) - 1)]) if len(temps) else float(start)


def param_groups(model, weight_decay: float = 1e-2, decay_norms: bool = False,
                 lr_scales: dict[str, float] | None = None) -> list[dict]:
    """Decay matrices only: biases and LayerNorm/GroupNorm weights (all 1-D) are exempt, unless
    ``decay_norms`` (MindEye's anchors exempt only biases: they decay the norms' weights).
    ``lr_scales`` {name prefix: factor}: parameters under a prefix train at that fraction of the
    learning rate (the ridge start's linear path); each group records its ``lr_scale``."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = name.endswith("bias") if decay_norms else p.ndim <= 1
        scale = next((f for prefix, f in (lr_scales or {}).items() if name.startswith(prefix)), 1.0)
        groups.setdefault((not exempt, float(scale)), []).append(p)
    order = sorted(groups, key=lambda k: (not k[0], k[1] != 1.0, k[1]))  # decayed, unscaled first
    return [{"params": groups[k], "weight_decay": weight_decay if k[0] else 0.0, "lr_scale": k[1]} for k in order]


def make_optimizer(model, lr: float = 3e-4, weight_decay: float = 1e-2, decay_norms: bool = False,
                   lr_scales: dict[str, float] | None = None):
    """AdamW, fused where torch supports it (CPU and CUDA): a quarter of a CPU step otherwise."""
    import torch

    groups = param_groups(model, weight_decay, decay_norms, lr_scales)
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr)


def make_scheduler(optimizer, max_lr: float, total_steps: int, epochs: int):
    """OneCycleLR as MindEye; the warm-up fraction is capped at one half for very short runs."""
    import torch

    pct_start = min(2 / max(epochs, 1), 0.5)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[max_lr * g.get("lr_scale", 1.0) for g in optimizer.param_groups],
        total_steps=max(int(total_steps), 4),  # fewer (0: a run that only fits its start) divides by zero
        final_div_factor=1000,
        last_epoch=-1,
        pct_start=pct_start,
    )


__all__ = ["cosine_anneal", "mixup_epochs", "softclip_temperature", "param_groups", "make_optimizer",
           "make_scheduler"]
