"""The MindEye-style brain encoder: per-subject adapters -> shared backbone -> heads.

    voxels (n, V_s) --adapter[s]--> (n, hidden) --backbone--> "backbone" tokens (n, T, D)
        "backbone" --projector--> "disjointed" tokens (contrastive; retrieval)
        "backbone" --diffusion prior--> "aligned" tokens (MSE; reconstruction), sampled at inference
        backbone features --low-level head--> VAE latent (optional)

``load_run_encoder`` turns a trained run directory into the object ``mindsearch.runs`` calls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mindsearch.models.adapters import SubjectAdapters, subject_key
from mindsearch.models.backbone import Backbone
from mindsearch.models.config import LatentConfig, MindEyeConfig
from mindsearch.models.latent import LatentEncoder
from mindsearch.models.lowlevel import LowLevelHead
from mindsearch.models.prior import DiffusionPrior
from mindsearch.models.projector import Projector


@dataclass
class MindEyeOutput:
    """What ``MindEyeModel.forward`` returns; heads that are off (or not asked for) give ``None``."""

    backbone: torch.Tensor  # (n, T, D): what the prior reads
    features: torch.Tensor  # (n, hidden): trunk features, read by the low-level head
    disjointed: torch.Tensor  # (n, T, D): the retrieval embedding (the projector's, else the backbone)
    lowlevel: torch.Tensor | None = None  # (n, C, S, S) VAE latent
    lowlevel_aux: torch.Tensor | None = None  # (n, aux_dim, s, s) for the soft contrastive term
    prior_loss: torch.Tensor | None = None  # with targets and a prior
    prior_x0: torch.Tensor | None = None


class MindEyeModel(nn.Module):
    def __init__(self, config: MindEyeConfig | dict):
        """``config``: a resolved ``MindEyeConfig`` (``factory.resolve_config``) or its dict (as a
        run's ``config.json`` holds it, read strictly); use ``create_model``."""
        super().__init__()
        if isinstance(config, dict):
            config = MindEyeConfig.from_dict(config)
        self.config = config
        c = config
        n_voxels = {int(s): int(v) for s, v in c.n_voxels.items()}
        self.adapters = SubjectAdapters(n_voxels, c.hidden)
        self.backbone = Backbone(c.hidden, c.tokens, c.dim, c.n_blocks, c.drop_in, c.drop_block, block=c.block)
        self.projector = (Projector(c.dim, c.projector.hidden, residual=c.projector.residual)
                          if c.projector else None)
        self.prior = DiffusionPrior(c.tokens, c.dim, **asdict(c.prior)) if c.prior else None
        self.lowlevel = None
        if c.lowlevel:
            low = asdict(c.lowlevel)
            low["decoder_channels"] = tuple(low["decoder_channels"])
            self.lowlevel = LowLevelHead(c.hidden, **low)
        self.latent = None
        if c.latent:
            self._build_latent(c.latent)

    def _build_latent(self, lc: LatentConfig) -> None:
        self.latent = LatentEncoder(self.config.tokens * self.config.dim, lc.dim, lc.width, self.config.hidden)
        self.latent.requires_grad_(False)  # fitted by training.latent, never by the retrieval loss

    def attach_latent(self, dim: int, width: int) -> LatentEncoder:
        """Give the model a shared latent encoding model (``models.latent``; a pretraining
        fits it); it is saved with the weights and rebuilt by ``from_pretrained``."""
        self.config.latent = LatentConfig(dim=int(dim), width=int(width))
        device = self.backbone.to_tokens.weight.device
        self._build_latent(self.config.latent)
        self.latent.to(device)
        return self.latent

    @property
    def subjects(self) -> list[int]:
        return self.adapters.subjects

    def forward(self, voxels, subject, targets: torch.Tensor | None = None) -> MindEyeOutput:
        """One subject (``voxels`` tensor, ``subject`` int) or several (lists, concatenated in order).

        With ``targets`` (n, T, D) and a prior, also returns the prior's ``prior_loss``; computing
        it inside ``forward`` keeps DistributedDataParallel's gradient hooks in charge of it.
        """
        if isinstance(subject, (list, tuple)):
            h = torch.cat([self.adapters(v, s) for v, s in zip(voxels, subject)], dim=0)
        else:
            h = self.adapters(voxels, subject)
        backbone, features = self.backbone(h)
        disjointed = self.projector(backbone) if self.projector is not None else backbone
        out = MindEyeOutput(backbone, features, disjointed)
        if self.lowlevel is not None:
            out.lowlevel, out.lowlevel_aux = self.lowlevel(features)
        if targets is not None and self.prior is not None:
            out.prior_loss, out.prior_x0 = self.prior.loss(backbone, targets)
        return out

    def add_subject(self, subject: int, n_voxels: int) -> nn.Linear:
        """Enrol a new subject: a fresh adapter into the shared hidden space."""
        layer = self.adapters.add_subject(subject, n_voxels)
        self.config.n_voxels[str(int(subject))] = int(n_voxels)
        return layer

    @torch.no_grad()
    def start_linear(self, subject: int, a_weight, a_bias, b_weight, b_bias) -> None:
        """Make the model, for ``subject``, the linear map ``x -> B (A x + a) + b`` (MindEye2's
        linear adapter, then its output Linear), with every residual branch (trunk blocks and a
        residual projector) outputting zero: a ridge solution factored as ``B A`` makes step 0
        of training reproduce ridge exactly. ``A``: (k, V), ``B``: (T*D, k), k <= hidden;
        adapter rows past k keep their random init with zero read-out, so they can still learn."""
        if self.config.block != "mindeye2":
            raise ValueError("a linear start needs the mindeye2 block (no activation after the adapter)")
        if self.projector is not None and not self.projector.residual:
            raise ValueError("a linear start needs no projector or a residual one")
        k = a_weight.shape[0]
        self.set_adapter(subject, a_weight, a_bias)
        out = self.backbone.to_tokens
        out.weight.zero_()
        out.weight[:, :k] = torch.as_tensor(b_weight, dtype=out.weight.dtype)
        out.bias.copy_(torch.as_tensor(b_bias, dtype=out.bias.dtype).reshape(-1))
        for block in self.backbone.blocks:
            block.zero_output()
        if self.projector is not None:
            self.projector.zero_output()

    @torch.no_grad()
    def set_adapter(self, subject: int, a_weight, a_bias) -> None:
        """Set the first k rows of ``subject``'s adapter (the rest keep their values)."""
        layer = self.adapters.linears[subject_key(subject)]
        k = a_weight.shape[0]
        layer.weight[:k] = torch.as_tensor(a_weight, dtype=layer.weight.dtype)
        layer.bias[:k] = torch.as_tensor(a_bias, dtype=layer.bias.dtype)

    def train_only(self, subjects: list[int]) -> list[str]:
        """Freeze everything except the adapters of ``subjects``; returns the trainable names."""
        keep = tuple(f"adapters.linears.{subject_key(s)}." for s in subjects)
        names = []
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith(keep))
            if p.requires_grad:
                names.append(name)
        return names

    def save_pretrained(self, directory: str | Path, extra_config: dict | None = None) -> None:
        from mindsearch.models.factory import save_pretrained

        save_pretrained(self, directory, extra_config)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> "MindEyeModel":
        from mindsearch.models.factory import from_pretrained

        return from_pretrained(directory, device=device)


class RunEncoder:
    """What ``mindsearch.runs`` calls: z-scored voxels -> float32 numpy embeddings."""

    def __init__(self, model: MindEyeModel, device: str = "cpu", prior_steps: int | None = None,
                 batch_size: int = 256, seed: int = 0):
        self.model = model.to(device).eval()
        self.device, self.prior_steps, self.batch_size, self.seed = device, prior_steps, batch_size, seed

    @torch.no_grad()
    def encode(self, voxels_zscored, subject: int, outputs=None) -> dict:
        """``outputs``: the names wanted (default all); sampling "aligned" runs the prior's
        whole reverse process, so callers that only retrieve should not ask for it."""
        import numpy as np

        x = np.asarray(voxels_zscored, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"voxels must be (n, V), got shape {x.shape}")
        subject = int(subject)
        if subject not in self.model.subjects:
            from mindsearch.errors import MindsearchError

            raise MindsearchError(f"this run has no adapter for subject {subject} (has {self.model.subjects})")
        v = self.model.adapters.n_voxels(subject)
        if x.shape[1] != v:
            from mindsearch.errors import MindsearchError

            raise MindsearchError(f"subject {subject} expects {v} voxels, got {x.shape[1]}")
        # One fixed generator per call: the same voxels give the same aligned samples.
        gen = torch.Generator().manual_seed(self.seed)
        want = set(outputs) if outputs is not None else {"disjointed", "backbone", "aligned", "lowlevel"}
        parts: dict[str, list] = {k: [] for k in ("disjointed", "backbone") if k in want}
        if self.model.prior is not None and "aligned" in want:
            parts["aligned"] = []
        if self.model.lowlevel is not None and "lowlevel" in want:
            parts["lowlevel"] = []  # scaled VAE latents; mindsearch.vae.blurry_images decodes them
        for i in range(0, len(x), self.batch_size):
            xb = torch.from_numpy(x[i : i + self.batch_size]).to(self.device)
            out = self.model(xb, subject)
            for k in ("disjointed", "backbone", "lowlevel"):
                if k in parts:
                    parts[k].append(getattr(out, k).float().cpu().numpy())
            if "aligned" in parts:
                aligned = self.model.prior.sample(out.backbone, steps=self.prior_steps, generator=gen)
                parts["aligned"].append(aligned.float().cpu().numpy())
        t, d = self.model.config.tokens, self.model.config.dim
        low = self.model.config.lowlevel
        empty = {"lowlevel": (0, low.latent_channels, low.latent_size, low.latent_size) if low else (0,)}
        return {
            k: (np.concatenate(p, 0) if p else np.zeros(empty.get(k, (0, t, d)), np.float32)).astype(np.float32)
            for k, p in parts.items()
        }


def load_run_encoder(run_dir: str | Path, config: dict, device: str = "cpu") -> RunEncoder:
    """Loader registered as ``mindsearch.runs.ENCODERS["mindeye"]``."""
    from mindsearch.models.factory import from_pretrained

    model = from_pretrained(run_dir, device=device)
    steps = (config.get("train") or {}).get("prior_sample_steps")
    return RunEncoder(model, device=device, prior_steps=steps)
