"""Presets, the one model factory, and the safetensors + config.json round trip.

A preset (``configs/{tiny,light,paper}.json``) is plain data. ``resolve_config`` fills in what
comes from the data (voxel counts per subject; ``tokens``/``dim`` from the target embeddings)
and which heads are on, giving the config that exactly describes a built model. That resolved
config is what ``save_pretrained`` writes, so ``from_pretrained`` rebuilds the same modules.

``paper`` = MindEye1's sizes (hidden 4096, 257x768 ViT-L/14 tokens; 947.6 M parameters for
backbone + projector at 15,724 voxels); never build it for real on a CPU: count it on the meta
device with ``count_parameters``. ``light`` is the CPU preset (hidden 1024); ``tiny`` is for tests.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from mindsearch.errors import MindsearchError
from mindsearch.models.config import MindEyeConfig

CONFIG_DIR = Path(__file__).parent / "configs"


def list_presets() -> list[str]:
    """Preset names: the JSON files in ``configs/`` (open_clip's way; add a file to add one)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_preset(config: str | Path | dict) -> dict:
    """A preset name, a path to a JSON config, or a dict (copied)."""
    if isinstance(config, dict):
        return copy.deepcopy(config)
    path = _preset_path(config)
    if not path.is_file():
        raise MindsearchError(f"unknown model config (presets: {', '.join(list_presets())})", path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MindsearchError(f"not valid JSON ({exc})", path) from None


def resolve_config(
    config: str | Path | dict,
    n_voxels: dict[int, int],
    tokens: int | None = None,
    dim: int | None = None,
    use_projector: bool | None = None,
    use_prior: bool | None = None,
    use_lowlevel: bool | None = None,
) -> MindEyeConfig:
    """A preset (name, path or dict) + what comes from the data -> the ``MindEyeConfig`` of a model.

    A preset is a model config plus a ``train`` section (training defaults) and, per head, an
    optional ``enabled`` flag; the ``use_*`` arguments override those flags."""
    cfg = load_preset(config)
    source = None if isinstance(config, dict) else _preset_path(config)
    cfg.pop("train", None)  # training defaults are not architecture
    if tokens is not None:
        cfg["tokens"] = int(tokens)
    if dim is not None:
        cfg["dim"] = int(dim)
    if not cfg.get("tokens") or not cfg.get("dim"):
        raise MindsearchError("the model needs tokens and dim (take them from the target embeddings)")
    if not n_voxels:
        raise MindsearchError("the model needs at least one subject's voxel count")
    cfg["n_voxels"] = {str(int(s)): int(v) for s, v in sorted(n_voxels.items())}
    for part, flag in (("projector", use_projector), ("prior", use_prior), ("lowlevel", use_lowlevel)):
        section = cfg.get(part)
        on = section is not None and section.get("enabled", True) if flag is None else bool(flag)
        if on and section is None:
            raise MindsearchError(f"config {cfg.get('name')!r} has no {part} section to enable", source)
        cfg[part] = {k: v for k, v in section.items() if k != "enabled"} if on else None
    return MindEyeConfig.from_dict(cfg, source)


def _preset_path(config) -> Path:
    text = str(config)
    return CONFIG_DIR / f"{text}.json" if text in list_presets() else Path(text)


def create_model(config, n_voxels: dict[int, int], tokens: int | None = None, dim: int | None = None,
                 use_projector: bool | None = None, use_prior: bool | None = None,
                 use_lowlevel: bool | None = None, device=None):
    """Build a ``MindEyeModel``. ``device="meta"`` allocates nothing (for counting paper size)."""
    import torch

    from mindsearch.models.encoder import MindEyeModel

    cfg = resolve_config(config, n_voxels, tokens, dim, use_projector, use_prior, use_lowlevel)
    if device is None:
        return MindEyeModel(cfg)
    with torch.device(device):
        return MindEyeModel(cfg)


def count_parameters(model_or_config, n_voxels: dict[int, int] | None = None, parts=None, **kw) -> int:
    """Parameters of a model, or of a config built on the meta device; ``parts``: submodule names
    (e.g. ``("adapters", "backbone", "projector")``), default all."""
    model = model_or_config
    if not hasattr(model, "parameters"):
        model = create_model(model_or_config, n_voxels, device="meta", **kw)
    if parts is None:
        return sum(p.numel() for p in model.parameters())
    return sum(p.numel() for name in parts if getattr(model, name, None) is not None
               for p in getattr(model, name).parameters())


def save_pretrained(model, directory: str | Path, extra_config: dict | None = None, **run_files) -> dict:
    """``model.safetensors`` + ``config.json``: the resolved model config, or, when
    ``extra_config`` is a run record, a run directory (``mindsearch.runs.write_run``, which also
    takes ``run_files``: ``zscore``, ``log``, ``keep``) carrying it under ``"mindeye"``."""
    from mindsearch.io import atomic_path, save_tensors, write_json
    from mindsearch.runs import write_run

    state = {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    if extra_config is not None:
        record = {**extra_config, "mindeye": model.config.to_dict()}
        return write_run(directory, record, state, metadata={"format": "mindeye"}, **run_files)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_tensors(tmp / "model.safetensors", state, {"format": "mindeye"})
        write_json(tmp / "config.json", model.config.to_dict())
    return model.config.to_dict()


def model_config_of(record: dict, path=None) -> MindEyeConfig:
    """The model config inside a run record (``"mindeye"``) or a bare model ``config.json``."""
    from mindsearch.runs import RUN_FORMAT

    if record.get("format") == RUN_FORMAT:
        if record.get("model") != "mindeye" or "mindeye" not in record:
            raise MindsearchError(f"not a mindeye run (model {record.get('model')!r})", path)
        record = record["mindeye"]
    return MindEyeConfig.from_dict(record, path)


# Buffers that runs written before they existed lack; their constructor values stand in.
OPTIONAL_BUFFERS = ("backbone.input_mean", "backbone.input_std")


def from_pretrained(directory: str | Path, device: str = "cpu"):
    import torch

    from mindsearch.io import load_tensors, read_json
    from mindsearch.models.encoder import MindEyeModel

    directory = Path(directory)
    cfg = model_config_of(read_json(directory / "config.json"), directory / "config.json")
    model = MindEyeModel(cfg)
    from mindsearch.run_schema import check_finite

    arrays = load_tensors(directory / "model.safetensors")
    check_finite(arrays, directory / "model.safetensors")
    state = {k: torch.from_numpy(v) for k, v in arrays.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: the weights are not this config's
        raise MindsearchError(f"weights do not match the config ({str(exc).splitlines()[-1].strip()})",
                              directory / "model.safetensors") from None
    missing = [k for k in missing if k not in OPTIONAL_BUFFERS]
    if missing or unexpected:
        raise MindsearchError(
            f"weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})",
            directory / "model.safetensors",
        )
    return model.to(device).eval()
