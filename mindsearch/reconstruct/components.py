"""The high-level stage's diffusers components: Versatile Diffusion's image UNet, its VAE, a scheduler.

``DiffusionComponents.from_pretrained(DIR)`` reads a local Versatile Diffusion directory in the
diffusers layout (``image_unet/``, ``vae/``, ``scheduler/``; only those three are read, the text
branch is never loaded: MindEye1 sets every dual transformer's ``mix_ratio`` to 0, which leaves
exactly ``image_unet`` conditioned on the 257 image tokens). Weights must be ``.safetensors``:
pickled ``.bin`` files are never loaded. The scheduler is always UniPC (MindEye1), built from the
directory's scheduler config.

``DiffusionComponents.random_tiny(tokens, dim)`` is the explicit opt-in to a tiny random-config
UNet + VAE + scheduler conditioned on ``tokens x dim`` (tests, demos, simulated spaces); the
output of anything built on it says so. ``save_pretrained`` writes the same layout, which is how
the tests exercise the real ``from_pretrained`` path without downloading anything.

torch and diffusers load only inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mindsearch.errors import MindsearchError
from mindsearch.space import describe

SUBFOLDERS = ("image_unet", "vae", "scheduler")
RANDOM_TINY = "random-tiny"
# What VD's image UNet conditions on: open_clip/OpenAI CLIP ViT-L/14, last hidden layer with
# CLS, projected, 257 x 768 (mindsearch's "hidden" output; ANCHORS 2.1).
VD_MODELS = ("ViT-L-14", "ViT-L-14-quickgelu")
VD_LAYER, VD_TOKENS, VD_DIM = "hidden", 257, 768


def _scheduler_from_config(config: dict):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler.from_config(config)


@dataclass
class DiffusionComponents:
    unet: object  # diffusers UNet2DConditionModel
    vae: object  # diffusers AutoencoderKL
    scheduler: object  # diffusers UniPCMultistepScheduler
    source: str  # the directory, or "random-tiny"
    device: str = "cpu"

    @property
    def is_random(self) -> bool:
        return self.source == RANDOM_TINY

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """Output pixels per side: the UNet's sample size times the VAE's downsampling (512 for VD)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def describe(self) -> str:
        kind = "RANDOM tiny components (meaningless images; for tests and demos)" if self.is_random \
            else f"Versatile Diffusion image UNet from {self.source}"
        return f"{kind}, {self.image_size} px, conditioning width {self.cross_attention_dim}"

    def to(self, device: str) -> "DiffusionComponents":
        self.unet.to(device)
        self.vae.to(device)
        self.device = str(device)
        return self

    # -------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(cls, path, device: str = "cpu", dtype=None) -> "DiffusionComponents":
        """A local Versatile Diffusion directory (``image_unet``, ``vae``, ``scheduler``)."""
        from mindsearch.io import read_json

        path = Path(path)
        if not path.is_dir():
            raise MindsearchError("Versatile Diffusion directory not found (give a local diffusers "
                                  "directory with image_unet/, vae/, scheduler/, or --vd random-tiny)", path)
        for sub in ("image_unet", "vae"):
            if not (path / sub / "config.json").is_file():
                raise MindsearchError(f"not a Versatile Diffusion directory: no {sub}/config.json", path)
            if not any((path / sub).glob("*.safetensors")):
                raise MindsearchError(f"{sub}/ has no .safetensors weights (pickled .bin weights are never "
                                      "loaded; convert them with safetensors first)", path / sub)
        sched_file = path / "scheduler" / "scheduler_config.json"
        if not sched_file.is_file():
            raise MindsearchError("not a Versatile Diffusion directory: no scheduler/scheduler_config.json", path)
        unet_cfg = read_json(path / "image_unet" / "config.json")
        if unet_cfg.get("_class_name") != "UNet2DConditionModel":
            raise MindsearchError(f"image_unet is a {unet_cfg.get('_class_name')!r}, expected "
                                  "UNet2DConditionModel", path / "image_unet" / "config.json")
        from diffusers import AutoencoderKL, UNet2DConditionModel

        kw = dict(local_files_only=True, use_safetensors=True)
        if dtype is not None:
            kw["torch_dtype"] = dtype
        unet = UNet2DConditionModel.from_pretrained(str(path), subfolder="image_unet", **kw)
        vae = AutoencoderKL.from_pretrained(str(path), subfolder="vae", **kw)
        scheduler = _scheduler_from_config(read_json(sched_file))
        return cls._ready(unet, vae, scheduler, str(path), device)

    @classmethod
    def random_tiny(cls, tokens: int, dim: int, *, seed: int = 0, image_size: int = 64,
                    device: str = "cpu") -> "DiffusionComponents":
        """Tiny random UNet (conditioned on ``tokens x dim``), VAE (8x) and UniPC scheduler."""
        import torch
        from diffusers import UNet2DConditionModel, UniPCMultistepScheduler

        if image_size % 8:
            raise MindsearchError(f"random-tiny image size must be a multiple of 8 (got {image_size})")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(
                sample_size=image_size // 8, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=int(dim),
                attention_head_dim=8, norm_num_groups=8)
            vae = tiny_autoencoder_kl(image_size)
        # SD / VD's training noise schedule; UniPC as MindEye1
        scheduler = UniPCMultistepScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                            beta_start=0.00085, beta_end=0.012)
        return cls._ready(unet, vae, scheduler, RANDOM_TINY, device)

    @classmethod
    def _ready(cls, unet, vae, scheduler, source, device):
        unet.eval().requires_grad_(False)
        vae.eval().requires_grad_(False)
        return cls(unet, vae, scheduler, source).to(device)

    def save_pretrained(self, directory) -> Path:
        """The Versatile Diffusion layout (``image_unet``, ``vae``, ``scheduler``), safetensors."""
        directory = Path(directory)
        self.unet.save_pretrained(str(directory / "image_unet"), safe_serialization=True)
        self.vae.save_pretrained(str(directory / "vae"), safe_serialization=True)
        self.scheduler.save_pretrained(str(directory / "scheduler"))
        return directory


def tiny_autoencoder_kl(image_size: int = 64):
    """A random 8x-downsampling ``AutoencoderKL`` small enough for a CPU test (seed it outside)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16),
                         layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=image_size)


def save_random_tiny_vae(directory, *, seed: int = 0, image_size: int = 64) -> Path:
    """A tiny random ``AutoencoderKL`` saved as a diffusers directory: the low-level stage's
    ``--vae random-tiny``. The same seed writes the same weights, hence the same fingerprint,
    so a run trained against one rebuild decodes with another."""
    import torch

    directory = Path(directory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tiny_autoencoder_kl(image_size)
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


DTYPES = ("fp32", "fp16", "bf16")


def load_components(vd, *, tokens: int, dim: int, device: str = "cpu", dtype: str = "fp32",
                    image_size: int = 64) -> DiffusionComponents:
    """``--vd``: a directory, ``"random-tiny"``, or ready ``DiffusionComponents``; ``dtype``
    fp32, or fp16 / bf16 on a GPU (MindEye1 ran VD in fp16)."""
    import torch

    if dtype not in DTYPES:
        raise MindsearchError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    if dtype != "fp32" and not str(device).startswith("cuda"):
        raise MindsearchError(f"--dtype {dtype} needs --device cuda (half precision is for GPUs)")
    torch_dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    if isinstance(vd, DiffusionComponents):
        return vd.to(device)
    if vd is None:
        raise MindsearchError("the high-level stage needs Versatile Diffusion: --vd DIR (a local diffusers "
                              "directory with image_unet/, vae/, scheduler/) or --vd random-tiny")
    if str(vd) == RANDOM_TINY:
        comp = DiffusionComponents.random_tiny(tokens, dim, device=device, image_size=image_size)
        if torch_dtype is not None:
            comp.unet.to(torch_dtype)
            comp.vae.to(torch_dtype)
        return comp
    return DiffusionComponents.from_pretrained(vd, device=device, dtype=torch_dtype)


def check_conditioning_space(space: dict, components: DiffusionComponents, run_name: str) -> None:
    """Refuse a run whose embeddings are not what the UNet conditions on.

    Real VD conditions on CLIP ViT-L/14 hidden tokens (257 x 768); random-tiny components are built
    for the run's own token shape, so only the width has to agree with them.
    """
    tokens, dim = int(space.get("tokens") or 0), int(space.get("dim") or 0)
    if dim != components.cross_attention_dim:
        raise MindsearchError(
            f"run {run_name} predicts {tokens}x{dim} tokens in {describe(space)}, but the UNet "
            f"({components.source}) conditions on width {components.cross_attention_dim}")
    if components.is_random:
        return
    if space.get("model") not in VD_MODELS or space.get("layer") != VD_LAYER or (tokens, dim) != (VD_TOKENS, VD_DIM):
        raise MindsearchError(
            f"run {run_name} lives in {describe(space)}; Versatile Diffusion's image UNet conditions on "
            f"CLIP ViT-L/14 hidden tokens ({VD_TOKENS}x{VD_DIM}, layer {VD_LAYER!r}). Train a run on that "
            "space, or pass --vd random-tiny for tiny random components built for this run's tokens "
            "(meaningless images, for tests and demos)")
