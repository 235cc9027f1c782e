"""The low-level head's side of training: VAE-latent targets, and the head's refit on the kept trunk.

Kept out of ``trainer.py`` so the loop stays about training: ``prepare_lowlevel`` turns a VAE path
into what ``train_arrays`` takes (a lookup ids -> latents, model-config overrides, a run-config
record); ``refit_head`` is the stage after the loop that makes the head fit the trunk the run keeps.

Why a refit: trained jointly, the head is a passenger. The shared trunk follows the contrastive loss
(its gradient is far larger than L1's on latents whose signal is a few per cent of their variance),
the step kept is chosen by retrieval top-1, and a ``ridge_fallback`` run that keeps its ridge start
keeps the head's random initial weights. Measured on the ``small`` simulation: the jointly trained
head's outputs hardly vary across trials (spread 0.01-0.05 against the latents' 0.73, correlation
with the seen image's latent ~0), the same head trained alone on the same voxels reaches 0.2.
"""

from __future__ import annotations

import numpy as np

from mindsearch.errors import MindsearchError


def vae_device(cfg_device: str) -> str:
    import torch

    if cfg_device.startswith("cuda") or (cfg_device == "auto" and torch.cuda.is_available()):
        return cfg_device if cfg_device.startswith("cuda") else "cuda"
    return "cpu"


def prepare_lowlevel(ds, vae, image_ids, preset, size: int | None = None, device: str = "cpu",
                     progress=None) -> tuple:
    """-> ``(lookup, model_overrides, record)`` for the images ``image_ids`` of dataset ``ds``.

    ``size``: square image size the VAE sees (default: the dataset's own, which must be square).
    """
    from mindsearch.models.factory import load_preset
    from mindsearch.models.lowlevel import fit_to_latent
    from mindsearch.vae import as_autoencoder, dataset_latents

    if not ds.has_images:
        raise MindsearchError("--vae trains the low-level head on the stimulus images, but this dataset "
                              "has no images", ds.root)
    vae = as_autoencoder(vae, device=device)
    if size is None:
        h, w = ds.image_shape[-2:]
        if h != w:
            raise MindsearchError(f"the dataset's images are {h}x{w}; pass a square VAE image size", ds.root)
        size = int(h)
    shape = vae.latent_shape(int(size))
    unique = np.unique(np.asarray(image_ids, dtype=np.int64))
    if progress:
        progress(f"encoding {len(unique)} image(s) at {size} px with {vae.kind} -> latents {shape}")
    latents = dataset_latents(ds, vae, unique, size=size)

    def lookup(ids):
        return latents[np.searchsorted(unique, np.asarray(ids, dtype=np.int64))], None

    section = load_preset(preset).get("lowlevel")
    if section is None:
        raise MindsearchError(f"model config {preset!r} has no lowlevel section")
    overrides = {"lowlevel": fit_to_latent(section, shape[0], shape[1])}
    record = {"space": vae.space, "source": vae.source, "image_size": int(size), "latent_shape": list(shape)}
    return lookup, overrides, record


def trunk_features(model, voxels, subject: int, device, batch: int = 1024):
    """The trunk features (n, hidden) the low-level head reads, in eval mode (no dropout)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(voxels), batch):
            h = model.adapters(torch.from_numpy(np.asarray(voxels[i : i + batch], np.float32)).to(device), subject)
            out.append(model.backbone(h)[1].float())
    return torch.cat(out) if out else torch.zeros((0, model.config.hidden), device=device)


def refit_head(model, vox: dict, ids: dict, val: dict, lookup, *, steps: int, lr: float, batch_size: int,
               seed: int, device, say=None, val_every: int = 100) -> dict:
    """Train only ``model.lowlevel`` on the frozen trunk's features: L1 on the latents (MindEye1's
    loss), AdamW at a constant ``lr``, the head's weights at the best validation L1 kept (the last
    ones without a validation set). ``vox``/``ids`` {subject: training trials}; ``val`` {subject:
    (voxels, ids)}; ``lookup`` ids -> (latents, teacher features or None). The features are
    computed once, so a step costs only the head. Returns a record for the training log; with
    ``say``, a progress bar on stderr and one closing line."""
    import sys

    import torch
    from tqdm.auto import tqdm

    from mindsearch.training.losses import lowlevel_loss

    head = model.lowlevel
    model.eval()
    feats = torch.cat([trunk_features(model, vox[s], s, device) for s in sorted(vox)])
    # Latents once per image (trials repeat images), indexed per trial.
    images, row_image = np.unique(np.concatenate([ids[s] for s in sorted(vox)]), return_inverse=True)
    latents = torch.from_numpy(np.asarray(lookup(images)[0], np.float32)).to(device)
    row_image = torch.from_numpy(row_image.reshape(-1)).to(device)
    val_feats = [trunk_features(model, v, s, device) for s, (v, _) in sorted(val.items())]
    val_latents = [torch.from_numpy(np.asarray(lookup(i)[0], np.float32)).to(device) for _, (_, i) in sorted(val.items())]

    def val_l1() -> float:
        head.eval()
        with torch.no_grad():
            total = sum(float(torch.abs(head(f)[0] - y).sum()) for f, y in zip(val_feats, val_latents))
        head.train()
        return total / max(sum(y.numel() for y in val_latents), 1)

    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-2)
    curve = [[0, val_l1()]] if val_feats else []
    best_step, best_state = 0, None
    head.train()
    bar = tqdm(total=steps, file=sys.stderr, desc="low-level head", disable=say is None,
               mininterval=0.5 if sys.stderr.isatty() else 60.0)
    for step in range(1, steps + 1):
        rows = torch.randint(0, len(feats), (batch_size,), generator=gen).to(device)
        loss = lowlevel_loss(head(feats[rows])[0], latents[row_image[rows]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        if val_feats and (step % val_every == 0 or step == steps):
            curve.append([step, val_l1()])
            if curve[-1][1] < min(v for _, v in curve[:-1]):
                best_step, best_state = step, {k: v.detach().clone() for k, v in head.state_dict().items()}
    bar.close()
    if best_state is not None:
        head.load_state_dict(best_state)
    elif not val_feats:
        best_step = steps
    if say and curve:
        say(f"low-level head refitted on the kept trunk: validation L1 {curve[0][1]:.4f} -> "
            f"{dict(curve)[best_step]:.4f} (step {best_step} of {steps})")
    return {"steps": steps, "lr": lr, "chosen_step": best_step, "val_l1_curve": curve}


__all__ = ["prepare_lowlevel", "vae_device", "trunk_features", "refit_head"]
