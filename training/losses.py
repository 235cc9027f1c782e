"""MindEye's losses, written to match the papers' code (ANCHORS 3.1, 3.2).

All contrastive losses flatten (n, T, D) embeddings and L2-normalise them first, so a 257x768
token grid is compared as one vector (cosine on the flattened grid, as the evaluation does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mindsearch.training.schedules import cosine_anneal

VAE_SCALE = 0.18215  # Stable Diffusion VAE latent scale; MindEye1 divides the L1 loss by it


def _flat_norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.reshape(len(x), -1).float(), dim=-1)


def clip_loss(preds: torch.Tensor, targs: torch.Tensor, temp: float = 0.006) -> torch.Tensor:
    """Bidirectional CLIP loss: mean of brain->image and image->brain cross-entropies."""
    p, t = _flat_norm(preds), _flat_norm(targs)
    logits = p @ t.T / temp
    labels = torch.arange(len(p), device=p.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def mixco(voxels: torch.Tensor, beta: float = 0.15, s_thresh: float = 0.5):
    """MixCo voxel mixing: ``x_i <- b_i x_i + (1 - b_i) x_perm(i)`` for a random ~half of the batch.

    ``b ~ Beta(beta, beta)`` (U-shaped at 0.15: most mixes stay close to one of the two), and
    unmixed rows get ``b = 1``. Draws from the global torch RNG (restored on resume).
    Returns ``(mixed, perm, betas, select)``; the input is not modified.
    """
    n = voxels.shape[0]
    perm = torch.randperm(n)
    betas = torch.distributions.Beta(beta, beta).sample([n]).to(voxels.device, voxels.dtype)
    select = (torch.rand(n) <= s_thresh).to(voxels.device)
    shape = [-1] + [1] * (voxels.dim() - 1)
    mixed = voxels.clone()
    b = betas[select].reshape(shape)
    mixed[select] = voxels[select] * b + voxels[perm.to(voxels.device)][select] * (1 - b)
    betas = torch.where(select, betas, torch.ones_like(betas))
    return mixed, perm.to(voxels.device), betas, select


def mixco_nce(preds, targs, perm, betas, temp: float = 0.006, bidirectional: bool = True) -> torch.Tensor:
    """BiMixCo: CLIP loss with soft targets from the mixing (paper eq. 2).

    Row i's target puts ``b_i`` on its own image and ``1 - b_i`` on the image it was mixed with.
    Upstream assigns ``probs[i, perm[i]] = 1 - b_i``, which loses ``b_i`` when ``perm[i] == i``;
    adding keeps every row summing to 1 (mixing a sample with itself leaves it unmixed).
    """
    p, t = _flat_norm(preds), _flat_norm(targs)
    logits = p @ t.T / temp
    n = len(p)
    probs = torch.diag(betas.float())
    probs[torch.arange(n, device=p.device), perm] += 1 - betas.float()
    loss = -(logits.log_softmax(-1) * probs).sum(-1).mean()
    if bidirectional:
        loss2 = -(logits.T.log_softmax(-1) * probs.T).sum(-1).mean()
        loss = (loss + loss2) / 2
    return loss


def soft_clip_loss(preds, targs, temp: float = 0.006) -> torch.Tensor:
    """SoftCLIP (paper eq. 3, both directions): image-image similarities are the soft labels."""
    p, t = _flat_norm(preds), _flat_norm(targs)
    clip_clip = t @ t.T / temp
    brain_clip = p @ t.T / temp
    soft = clip_clip.softmax(-1)
    loss1 = -(brain_clip.log_softmax(-1) * soft).sum(-1).mean()
    loss2 = -(brain_clip.T.log_softmax(-1) * soft).sum(-1).mean()
    return (loss1 + loss2) / 2


def lowlevel_loss(pred_latent, target_latent, aux_pred=None, aux_target=None, scale: float = VAE_SCALE,
                  cont_weight: float = 0.1, temp: float = 0.075) -> torch.Tensor:
    """MindEye1 low-level: ``L1(latent)/0.18215 + 0.1 * soft contrastive(aux projection, teacher)``.

    The teacher features (VICRegL in the paper) are optional: without them only the L1 term is used.
    """
    loss = F.l1_loss(pred_latent.float(), target_latent.float()) / scale
    if aux_pred is not None and aux_target is not None and cont_weight:
        loss = loss + cont_weight * soft_clip_loss(aux_pred, aux_target, temp=temp)
    return loss


def total_loss(contrastive: torch.Tensor, prior: torch.Tensor | None = None, prior_weight: float = 30.0,
               lowlevel: torch.Tensor | None = None, lowlevel_weight: float = 1.0) -> torch.Tensor:
    """``L = L_contrastive + alpha * L_prior`` (alpha = 30 in MindEye1's code for 257 tokens)."""
    loss = contrastive
    if prior is not None:
        loss = loss + prior_weight * prior
    if lowlevel is not None:
        loss = loss + lowlevel_weight * lowlevel
    return loss


__all__ = ["clip_loss", "mixco", "mixco_nce", "soft_clip_loss", "lowlevel_loss", "total_loss",
           "cosine_anneal", "VAE_SCALE"]
