"""The MindEye-style brain encoder: per-subject adapters -> shared backbone -> heads.

    voxels (n, V_s) --adapter[s]--> (n, hidden) --backbone--> "backbone" tokens (n, T, D)
        "backbone" --projector--> "disjointed" tokens (contrastive; retrieval)
        "backbone" --diffusion prior--> "aligned" tokens (MSE; reconstruction), sampled at inference
        backbone features --low-level head--> VAE latent (optional)

``load_run_encoder`` turns a trained run directory into the object ``mindsearch.runs`` calls.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mindsearch.models.adapters import SubjectAdapters, subject_key
from mindsearch.models.backbone import Backbone
from mindsearch.models.lowlevel import LowLevelHead
from mindsearch.models.prior import DiffusionPrior
from mindsearch.models.projector import Projector


class MindEyeModel(nn.Module):
    def __init__(self, config: dict):
        """``config`` is a resolved config (see ``factory.resolve_config``); use ``create_model``."""
        super().__init__()
        self.config = config
        hidden, tokens, dim = config["hidden"], config["tokens"], config["dim"]
        n_voxels = {int(s): int(v) for s, v in config["n_voxels"].items()}
        self.adapters = SubjectAdapters(n_voxels, hidden)
        self.backbone = Backbone(
            hidden, tokens, dim, config["n_blocks"], config["drop_in"], config["drop_block"]
        )
        proj, prior, low = config.get("projector"), config.get("prior"), config.get("lowlevel")
        self.projector = Projector(dim, proj["hidden"]) if proj else None
        self.prior = (
            DiffusionPrior(
                tokens,
                dim,
                depth=prior["depth"],
                heads=prior["heads"],
                dim_head=prior["dim_head"],
                ff_mult=prior.get("ff_mult", 4),
                timesteps=prior.get("timesteps", 100),
                cond_drop_prob=prior.get("cond_drop_prob", 0.2),
                embed_scale=prior.get("embed_scale", "sqrt_dim"),
            )
            if prior
            else None
        )
        self.lowlevel = (
            LowLevelHead(
                hidden,
                channels=low["channels"],
                size=low["size"],
                latent_channels=low["latent_channels"],
                latent_size=low["latent_size"],
                decoder_channels=tuple(low["decoder_channels"]),
                aux_dim=low["aux_dim"],
                dropout=low.get("dropout", 0.3),
            )
            if low
            else None
        )

    @property
    def subjects(self) -> list[int]:
        return self.adapters.subjects

    def forward(self, voxels, subject, targets: torch.Tensor | None = None) -> dict:
        """One subject (``voxels`` tensor, ``subject`` int) or several (lists, concatenated in order).

        With ``targets`` (n, T, D) and a prior, also returns the prior's ``prior_loss``; computing
        it inside ``forward`` keeps DistributedDataParallel's gradient hooks in charge of it.
        """
        if isinstance(subject, (list, tuple)):
            h = torch.cat([self.adapters(v, s) for v, s in zip(voxels, subject)], dim=0)
        else:
            h = self.adapters(voxels, subject)
        backbone, features = self.backbone(h)
        out = {"backbone": backbone, "features": features}
        out["disjointed"] = self.projector(backbone) if self.projector is not None else backbone
        if self.lowlevel is not None:
            out["lowlevel"], out["lowlevel_aux"] = self.lowlevel(features)
        if targets is not None and self.prior is not None:
            out["prior_loss"], out["prior_x0"] = self.prior.loss(backbone, targets)
        return out

    def add_subject(self, subject: int, n_voxels: int) -> nn.Linear:
        """Enrol a new subject: a fresh adapter into the shared hidden space."""
        layer = self.adapters.add_subject(subject, n_voxels)
        self.config["n_voxels"][str(int(subject))] = int(n_voxels)
        return layer

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
                    parts[k].append(out[k].float().cpu().numpy())
            if "aligned" in parts:
                aligned = self.model.prior.sample(out["backbone"], steps=self.prior_steps, generator=gen)
                parts["aligned"].append(aligned.float().cpu().numpy())
        t, d = self.model.config["tokens"], self.model.config["dim"]
        low = self.model.config.get("lowlevel") or {}
        c, s = low.get("latent_channels", 0), low.get("latent_size", 0)
        empty = {"lowlevel": (0, c, s, s)}
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
