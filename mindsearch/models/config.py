"""The model's typed configuration: the one place its defaults live.

``MindEyeConfig`` nests the heads' configs (``None`` = head off), is written to JSON with
``asdict`` (``to_dict``) and read strictly (``from_dict``): an unknown key is an error naming it,
so a typo in a preset or a run from a newer version never silently builds another model. Runs
written before these dataclasses existed carry the same keys and load unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from mindsearch.errors import MindsearchError

BLOCKS = ("mindeye1", "mindeye2")


@dataclass
class ProjectorConfig:
    """The retrieval head: per token LN -> GELU -> Linear, three times (MindEye's ``proj`` /
    MindEye2's ``clip_proj`` at ``hidden = dim``). ``residual`` adds its input to its output
    (with a zero-initialised last layer the head starts as the identity: the ridge start)."""

    hidden: int = 2048
    residual: bool = False


@dataclass
class PriorConfig:
    """The diffusion prior (``prior.DiffusionPrior``). ``image_cond_drop_prob``: share of training
    rows whose noised target is replaced by a learned null (dalle2's ``image_cond_drop_prob``);
    ``sampler``: ``"strided"`` (our re-spaced DDPM) or ``"mindeye2"`` (its 20-step grid)."""

    depth: int = 6
    heads: int = 12
    dim_head: int = 64
    ff_mult: int = 4
    timesteps: int = 100
    cond_drop_prob: float = 0.2
    image_cond_drop_prob: float = 0.0
    embed_scale: float | str = "sqrt_dim"
    sampler: str = "strided"


@dataclass
class LowLevelConfig:
    """The low-level head (``lowlevel.LowLevelHead``): a VAE latent from the trunk's features."""

    channels: int = 64
    size: int = 16
    latent_channels: int = 4
    latent_size: int = 64
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64])
    aux_dim: int = 512
    dropout: float = 0.3


@dataclass
class LatentConfig:
    """The shared latent encoding model a pretraining fits (``latent.LatentEncoder``): targets ->
    a ``dim``-wide latent every subject's voxels are linear in (an MLP of ``width``), lifted into
    the trunk's hidden space. Set by a pretraining with ``latent_start``, never by a preset."""

    dim: int = 256
    width: int = 1024


_SECTIONS = {"projector": ProjectorConfig, "prior": PriorConfig, "lowlevel": LowLevelConfig, "latent": LatentConfig}


@dataclass
class MindEyeConfig:
    """A built model exactly: sizes, which heads exist, and each subject's voxel count.

    ``block``: ``"mindeye1"`` (adapter -> LN/GELU/Dropout(drop_in), then ``x + Dropout(GELU(LN(
    Linear(x))))``) or ``"mindeye2"`` (adapter straight into ``x + Linear(Dropout(GELU(Linear(
    LN(x)))))``, MindEye2's Mixer-style block; no input activation, so with zeroed residual
    outputs the trunk is linear and can start from ridge).
    """

    name: str = "custom"
    hidden: int = 4096
    n_blocks: int = 4
    drop_in: float = 0.5
    drop_block: float = 0.15
    block: str = "mindeye1"
    tokens: int | None = None
    dim: int | None = None
    n_voxels: dict[str, int] = field(default_factory=dict)
    projector: ProjectorConfig | None = field(default_factory=ProjectorConfig)
    prior: PriorConfig | None = field(default_factory=PriorConfig)
    lowlevel: LowLevelConfig | None = None
    latent: LatentConfig | None = None

    def __post_init__(self):
        if self.block not in BLOCKS:
            raise MindsearchError(f"unknown block {self.block!r} (choose from {', '.join(BLOCKS)})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, path=None) -> "MindEyeConfig":
        """Strict: every key must be a field (nested sections too); ``path`` names the file."""
        if not isinstance(data, dict):
            raise MindsearchError("a model config must be a JSON object", path)
        _check_keys(cls, data, "", path)
        values = dict(data)
        for name, section_cls in _SECTIONS.items():
            section = values.get(name)
            if isinstance(section, dict):
                _check_keys(section_cls, section, f"{name}.", path)
                values[name] = section_cls(**section)
            elif name in values and section is not None:
                raise MindsearchError(f"config key {name!r} must be an object or null", path)
        if "n_voxels" in values:
            values["n_voxels"] = {str(s): int(v) for s, v in values["n_voxels"].items()}
        return cls(**values)


def _check_keys(cls, data: dict, prefix: str, path) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MindsearchError(f"unknown model config key(s) {', '.join(prefix + k for k in unknown)} "
                              f"(known: {', '.join(sorted(known))})", path)


__all__ = ["MindEyeConfig", "ProjectorConfig", "PriorConfig", "LowLevelConfig", "LatentConfig", "BLOCKS"]
