"""Low-level targets for ``train_mindeye``: the dataset's VAE latents, the head sized to them.

Kept out of ``trainer.py`` so the loop stays about training: this turns a VAE path into what
``train_arrays`` takes (a lookup ids -> latents, model-config overrides, a run-config record).
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


__all__ = ["prepare_lowlevel", "vae_device"]
