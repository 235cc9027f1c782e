"""The high-level stage's sampling loop: img2img with classifier-free guidance over diffusers parts.

MindEye1's ``utils.reconstruction`` written against today's diffusers: the conditioning is the
prior's 257 x 768 tokens, each divided by the CLS token's norm; the unconditional embedding is all
zeros; UniPC; guidance ``noise_uncond + g * (noise_cond - noise_uncond)``; img2img noises the
VAE-encoded init image to the first kept timestep. The strength arithmetic is diffusers'
(``StableDiffusionImg2ImgPipeline.get_timesteps``), reproduced in :func:`img2img_timesteps`
because that pipeline's module cannot be imported without ``transformers``.
"""

from __future__ import annotations

import numpy as np

# MindEye1 encodes the blurry image for img2img after CLIP mean/std normalisation instead of the
# VAE's 2x - 1 (utils.reconstruction, ANCHORS 5.5): kept as an option to reproduce it exactly.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INIT_NORMALIZATIONS = ("vae", "clip")


def img2img_timesteps(scheduler, steps: int, strength: float):
    """(timesteps to run, how many) after ``scheduler.set_timesteps(steps)``; diffusers' arithmetic:
    ``init = min(int(steps * strength), steps)``, start at ``steps - init`` (17 of 20 at 0.85)."""
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps, steps - t_start


def normalize_conditioning(tokens):
    """Every token divided by the CLS token's norm, as Versatile Diffusion expects (per sample)."""
    import torch

    tokens = torch.as_tensor(tokens, dtype=torch.float32)
    return tokens / (tokens[:, :1].norm(dim=-1, keepdim=True) + 1e-6)


def encode_init(components, images, generator, normalization: str = "vae"):
    """[0, 1] images (n, 3, H, W) at the components' size -> scaled latents (a posterior sample, as MindEye1)."""
    import torch

    x = torch.as_tensor(images, dtype=torch.float32)
    if normalization == "clip":
        mean = torch.tensor(CLIP_MEAN)[None, :, None, None]
        std = torch.tensor(CLIP_STD)[None, :, None, None]
        x = (x - mean) / std
    else:
        x = x * 2 - 1
    vae = components.vae
    x = x.to(components.device, vae.dtype)
    latents = vae.encode(x).latent_dist.sample(generator)
    return latents * vae.config.scaling_factor


def decode_latents(components, latents) -> np.ndarray:
    vae = components.vae
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return ((images.float() / 2 + 0.5).clamp(0, 1)).cpu().numpy()


def generate(components, conditioning, *, init_images=None, steps: int = 20, strength: float = 0.85,
             guidance: float = 3.5, generator=None, init_normalization: str = "vae",
             callback=None) -> np.ndarray:
    """Images (B, 3, S, S) in [0, 1] from conditioning (B, T, D), already CLS-normalised.

    ``init_images`` (B, 3, S, S) in [0, 1]: img2img at ``strength`` (1.0 = ignore the image's
    content entirely but still start from its noised latent; MindEye1 skips img2img then);
    None: text-to-image style, from pure noise over all ``steps``.
    ``callback(i, n)`` is called after each denoising step.
    """
    import torch

    unet, scheduler, device = components.unet, components.scheduler, components.device
    dtype = unet.dtype
    cond = torch.as_tensor(conditioning, dtype=torch.float32).to(device, dtype)
    batch = len(cond)
    do_cfg = guidance > 1.0
    embeddings = torch.cat([torch.zeros_like(cond), cond]) if do_cfg else cond
    size = int(unet.config.sample_size)
    shape = (batch, components.latent_channels, size, size)
    scheduler.set_timesteps(steps, device=device)
    with torch.no_grad():
        if init_images is not None:
            timesteps, _ = img2img_timesteps(scheduler, steps, strength)
            if len(timesteps) == 0:  # strength 0: the init image itself, as diffusers returns it
                return np.asarray(init_images, np.float32)
            init = encode_init(components, init_images, generator, init_normalization)
            noise = torch.randn(shape, generator=generator, device=device, dtype=init.dtype)
            latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(batch))
        else:
            timesteps = scheduler.timesteps
            latents = torch.randn(shape, generator=generator, device=device, dtype=dtype)
            latents = latents * scheduler.init_noise_sigma
        for i, t in enumerate(timesteps):
            model_in = torch.cat([latents] * 2) if do_cfg else latents
            model_in = scheduler.scale_model_input(model_in, t)
            noise_pred = unet(model_in, t, encoder_hidden_states=embeddings).sample
            if do_cfg:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + guidance * (text - uncond)
            latents = scheduler.step(noise_pred, t, latents).prev_sample
            if callback is not None:
                callback(i + 1, len(timesteps))
        return decode_latents(components, latents)


__all__ = ["img2img_timesteps", "normalize_conditioning", "encode_init", "decode_latents", "generate",
           "INIT_NORMALIZATIONS"]
