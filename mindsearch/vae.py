"""Image autoencoders for the low-level (blurry reconstruction) path.

MindEye's low-level head predicts a VAE latent of the stimulus; decoding it gives the blurry image
that seeds img2img. ``ImageAutoencoder`` gives the trainer and the decoder one convention whatever
the autoencoder is: ``encode`` takes images in [0, 1] and returns *scaled* latents (what the head
is trained on, as MindEye1: ``encode(2x-1).latent_dist.mode() * 0.18215`` for the SD VAE), and
``decode`` inverts that back to [0, 1].

Two sources load offline, never from a hub id:
- a diffusers model directory (``AutoencoderKL`` or ``AutoencoderTiny``, from its ``_class_name``);
- a TAESD-family pair ``*_encoder.safetensors`` / ``*_decoder.safetensors`` (madebyollin/taesd keys:
  the original ``nn.Sequential`` indices), built as diffusers' ``AutoencoderTiny``. Newer members
  (TAEF2) add a GroupNorm "pool" branch to the deepest blocks that diffusers' block lacks, so those
  blocks are swapped for a subclass that has it; the load is strict either way.

``dataset_latents`` caches a dataset's latents next to the data so repeated runs reuse them.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from mindsearch.errors import MindsearchError

CACHE_FORMAT = "mindsearch-latents/1"


# ----------------------------------------------------------------------------- TAESD pairs


def _find_pair(path: Path) -> tuple[Path, Path] | None:
    """The (encoder, decoder) safetensors a path names: a folder holding one pair, or one file of it."""
    if path.is_file() and path.name.endswith("_encoder.safetensors"):
        dec = path.with_name(path.name.replace("_encoder.safetensors", "_decoder.safetensors"))
        return (path, dec) if dec.is_file() else None
    if path.is_file() and path.name.endswith("_decoder.safetensors"):
        enc = path.with_name(path.name.replace("_decoder.safetensors", "_encoder.safetensors"))
        return (enc, path) if enc.is_file() else None
    if path.is_dir():
        pairs = [p for p in (_find_pair(e) for e in sorted(path.glob("*_encoder.safetensors"))) if p]
        if len(pairs) > 1:
            raise MindsearchError("holds several encoder/decoder pairs ("
                                  + ", ".join(e.name for e, _ in pairs) + "); name one file", path)
        return pairs[0] if pairs else None
    return None


def _pooled_block_class():
    """diffusers' tiny block plus TAEF2's mid-block ``pool`` (1x1 conv, GroupNorm(4), ReLU, 1x1 conv),
    added to the input before the block, as in the reference TAESD code."""
    from diffusers.models.unets.unet_2d_blocks import AutoencoderTinyBlock
    from torch import nn

    class PooledTinyBlock(AutoencoderTinyBlock):
        def __init__(self, channels: int, hidden: int):
            super().__init__(channels, channels, "relu")
            self.pool = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.GroupNorm(4, hidden),
                                      nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1, bias=False))

        def forward(self, x):
            return super().forward(x + self.pool(x))

    return PooledTinyBlock


def _load_taesd_pair(enc_path: Path, dec_path: Path):
    import torch
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file

    enc, dec = load_file(str(enc_path)), load_file(str(dec_path))
    if "1.weight" not in dec or not any(k.startswith("14.") for k in enc):
        raise MindsearchError("not a TAESD-family encoder/decoder pair (unexpected keys; "
                              "the 32x 'f32' variants are not supported)", enc_path)
    latent_channels = int(dec["1.weight"].shape[1])
    model = AutoencoderTiny(latent_channels=latent_channels)
    # The reference decoder's layer 0 is the latent clamp, which diffusers applies in forward():
    # its Sequential indices are one lower than the original ones. The encoders line up exactly.
    state = {f"encoder.layers.{k}": v for k, v in enc.items()}
    state.update({f"decoder.layers.{int(k.split('.', 1)[0]) - 1}.{k.split('.', 1)[1]}": v for k, v in dec.items()})
    pooled = _pooled_block_class()
    for key, weight in state.items():
        m = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.pool\.0\.weight$", key)
        if m:
            hidden, channels = int(weight.shape[0]), int(weight.shape[1])
            getattr(model, m.group(1)).layers[int(m.group(2))] = pooled(channels, hidden)
    try:
        model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise MindsearchError(f"weights do not fit the TAESD architecture ({str(exc).splitlines()[0]})",
                              enc_path) from None
    return model


# ----------------------------------------------------------------------------- the wrapper


class ImageAutoencoder:
    """A loaded autoencoder with mindsearch's conventions (see the module docstring)."""

    def __init__(self, model, kind: str, fingerprint: str, source: str, device: str = "cpu"):
        self.model = model.to(device).eval().requires_grad_(False)
        self.kind, self.fingerprint, self.source, self.device = kind, fingerprint, source, device
        cfg = model.config
        self.scaling_factor = float(cfg.get("scaling_factor") or 1.0)
        self.shift_factor = float(cfg.get("shift_factor") or 0.0)
        self.latent_channels = int(cfg["latent_channels"])
        if kind == "AutoencoderKL":
            self.downsample = 2 ** (len(cfg["block_out_channels"]) - 1)
        else:
            self.downsample = 2 ** (len(cfg["encoder_block_out_channels"]) - 1)

    @classmethod
    def load(cls, path, device: str = "cpu") -> "ImageAutoencoder":
        """A diffusers VAE directory, a folder with one ``*_encoder/_decoder.safetensors`` pair, one
        file of such a pair, or an explicit ``(encoder, decoder)`` tuple of paths."""
        from mindsearch.io import file_fingerprint

        if isinstance(path, (tuple, list)):
            pair = (Path(path[0]), Path(path[1]))
            for p in pair:
                if not p.is_file():
                    raise MindsearchError("file not found", p)
        else:
            path = Path(path)
            if not path.exists():
                raise MindsearchError("VAE not found (give a local diffusers directory or a TAESD/TAEF2 "
                                      "safetensors folder)", path)
            pair = None if (path / "config.json").is_file() else _find_pair(path)
            if pair is None and not (path / "config.json").is_file():
                raise MindsearchError("not a diffusers VAE directory (no config.json) and no "
                                      "*_encoder.safetensors/*_decoder.safetensors pair", path)
        if pair is not None:
            model = _load_taesd_pair(*pair)
            fp = _combine(file_fingerprint(pair[0]), file_fingerprint(pair[1]))
            return cls(model, "AutoencoderTiny", fp, f"{pair[0]}|{pair[1]}", device)
        return cls(*_load_diffusers_dir(path), str(path), device)

    @property
    def space(self) -> dict:
        """What identifies the latent space (recorded in runs; compared before decoding)."""
        return {"model": self.kind, "weights": self.fingerprint, "latent_channels": self.latent_channels,
                "downsample": self.downsample, "scaling_factor": self.scaling_factor,
                "shift_factor": self.shift_factor}

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        if image_size % self.downsample:
            raise MindsearchError(f"image size {image_size} is not a multiple of the VAE's downsampling "
                                  f"factor {self.downsample}")
        s = image_size // self.downsample
        return (self.latent_channels, s, s)

    def encode(self, images, batch: int = 16) -> np.ndarray:
        """float (n, 3, H, W) in [0, 1] -> float32 scaled latents (n, C, H/f, W/f)."""
        import torch

        x = _as_tensor(images)
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                xb = (x[i : i + batch].to(self.device) * 2 - 1)
                if self.kind == "AutoencoderKL":
                    raw = self.model.encode(xb).latent_dist.mode()  # the mode, as MindEye1: deterministic
                else:
                    raw = self.model.encode(xb).latents
                out.append(((raw - self.shift_factor) * self.scaling_factor).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.latent_channels, 0, 0), np.float32)

    def decode(self, latents, batch: int = 16) -> np.ndarray:
        """Scaled latents (n, C, h, w) -> float32 images (n, 3, h*f, w*f) in [0, 1]."""
        import torch

        z = _as_tensor(latents)
        out = []
        with torch.no_grad():
            for i in range(0, len(z), batch):
                zb = z[i : i + batch].to(self.device) / self.scaling_factor + self.shift_factor
                img = self.model.decode(zb).sample
                out.append(((img + 1) / 2).clamp(0, 1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 3, 0, 0), np.float32)


def _as_tensor(a):
    import torch

    return a.float() if torch.is_tensor(a) else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _combine(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _load_diffusers_dir(path: Path):
    from mindsearch.io import file_fingerprint, read_json

    config = read_json(path / "config.json")
    kind = config.get("_class_name")
    if kind not in ("AutoencoderKL", "AutoencoderTiny"):
        raise MindsearchError(f"unsupported VAE class {kind!r} (AutoencoderKL or AutoencoderTiny)",
                              path / "config.json")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise MindsearchError("no .safetensors weights (pickled .bin weights are never loaded)", path)
    import diffusers

    model = getattr(diffusers, kind).from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    text = json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True)
    fp = _combine(hashlib.sha256(text.encode()).hexdigest(), *(file_fingerprint(w) for w in weights))
    return model, kind, fp


def as_autoencoder(vae, device: str = "cpu") -> ImageAutoencoder:
    return vae if isinstance(vae, ImageAutoencoder) else ImageAutoencoder.load(vae, device=device)


# ----------------------------------------------------------------------------- dataset latents


def resize_images(images: np.ndarray, size: int | None) -> np.ndarray:
    """Square ``size`` px (antialiased bilinear); unchanged when ``size`` is None or already right."""
    if size is None or images.shape[-2:] == (size, size):
        return images
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).numpy()


def _cache_key(ds, vae: ImageAutoencoder, size: int | None) -> str:
    from mindsearch.io import file_fingerprint

    img = getattr(ds, "image_file", None)
    images = file_fingerprint(img) if img is not None and Path(img).is_file() else ds.fingerprint()
    return _combine(CACHE_FORMAT, json.dumps(vae.space, sort_keys=True), str(size), images)


def dataset_latents(ds, vae, ids, size: int | None = None, batch: int = 16) -> np.ndarray:
    """Scaled latents of the dataset images ``ids`` (any order, duplicates allowed), float32.

    Cached as ``DIR/.mindsearch_cache/latents_<key>.npy`` (float16: halves a large dataset's cache at
    ~1e-3 relative precision, far below what the head can fit) with ``latents_<key>_ids.npy``; the
    key covers the VAE's space, ``size`` and the image file. Later calls encode only missing ids.
    """
    from mindsearch.data.arrays import cache_dir
    from mindsearch.io import atomic_path

    vae = as_autoencoder(vae)
    if not ds.has_images:
        raise MindsearchError("the dataset has no images to encode with the VAE", ds.root)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    key = _cache_key(ds, vae, size)
    cache = cache_dir(ds.root)
    lat_path, ids_path = cache / f"latents_{key}.npy", cache / f"latents_{key}_ids.npy"
    have_ids, have = np.zeros(0, np.int64), None
    if lat_path.is_file() and ids_path.is_file():
        try:
            have_ids = np.load(ids_path, allow_pickle=False)
            have = np.load(lat_path, allow_pickle=False)
            if len(have) != len(have_ids):  # a torn pair (interrupted between the two writes): cold cache
                have_ids, have = np.zeros(0, np.int64), None
        except (OSError, ValueError):
            have_ids, have = np.zeros(0, np.int64), None
    missing = np.setdiff1d(np.unique(ids), have_ids)
    if len(missing):
        parts = []
        for i in range(0, len(missing), batch):
            imgs = resize_images(ds.images(missing[i : i + batch]), size)
            parts.append(vae.encode(imgs, batch=batch).astype(np.float16))
        new = np.concatenate(parts)
        all_ids = np.concatenate([have_ids, missing])
        merged = new if have is None else np.concatenate([have, new])
        order = np.argsort(all_ids, kind="stable")
        have_ids, have = all_ids[order], merged[order]
        # Latents first, ids second: readers reject a pair whose lengths disagree.
        for path, arr in ((lat_path, have), (ids_path, have_ids)):
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, arr)
    rows = np.searchsorted(have_ids, ids)
    return np.asarray(have[rows], dtype=np.float32)


# ----------------------------------------------------------------------------- blurry images


# Gaussian sigma of the blurry stage's low-pass, as a share of the image width (1.6 px at 64 px,
# 13 px at 512 px). Predicted latents are shrunk towards the mean and lie off the VAE's manifold;
# the decoder turns that into high-frequency speckle that costs SSIM (on the simulator the raw
# decode ties the mean image at 0.78, the smoothed one beats it by 0.016). 0 = the raw decode.
BLUR = 0.025


def smooth(images: np.ndarray, blur: float = BLUR) -> np.ndarray:
    """Gaussian low-pass of (n, C, H, W) images with sigma ``blur`` x width (0: unchanged)."""
    blur = float(blur)
    if blur < 0:
        raise MindsearchError(f"blur must be >= 0 (got {blur})")
    if blur == 0:
        return images
    from scipy.ndimage import gaussian_filter

    sigma = blur * images.shape[-1]
    return gaussian_filter(np.asarray(images, np.float32), sigma=(0, 0, sigma, sigma), mode="nearest")


def blurry_images(run, voxels, vae, *, subject: int | None = None, session: int | None = None,
                  zscore: bool = True, device: str = "cpu", blur: float = BLUR) -> np.ndarray:
    """MindEye's blurry reconstruction: the run's low-level latents decoded by ``vae`` -> (n, 3, H, W) in [0, 1],
    then low-passed (:func:`smooth`; ``blur=0`` returns MindEye's raw decode).

    ``run``: a ``mindsearch.runs.Run`` or its directory; ``vae``: an ``ImageAutoencoder`` or a path.
    The VAE must be the one the run was trained against (its recorded space is checked).
    """
    from mindsearch.runs import Run, open_run

    run = run if isinstance(run, Run) else open_run(run)
    recorded = (run.config.get("lowlevel_vae") or {}).get("space")
    if run.model_type != "mindeye" or recorded is None:
        raise MindsearchError("this run has no low-level head trained on VAE latents (train with --vae)",
                              run.path)
    vae = as_autoencoder(vae, device=device)
    if recorded.get("weights") != vae.space["weights"] or recorded.get("model") != vae.space["model"]:
        raise MindsearchError(f"the run's low-level head was trained for VAE {recorded.get('model')} "
                              f"{recorded.get('weights')}, not {vae.kind} {vae.fingerprint}", run.path)
    # The encoder runs on ``device`` too, not only the VAE.
    out = run.encode(voxels, subject=subject, session=session, zscore=zscore, outputs=("lowlevel",),
                     device=device)
    if "lowlevel" not in out:
        raise MindsearchError("the run's encoder produced no low-level latents", run.path)
    return smooth(vae.decode(out["lowlevel"]), blur)


__all__ = ["ImageAutoencoder", "dataset_latents", "blurry_images", "smooth", "BLUR", "resize_images", "as_autoencoder"]
