"""Resumable training state: ``OUT/checkpoint/{state.safetensors,state.json}``.

A checkpoint holds the model weights, the AdamW state flattened to tensors, the scheduler state,
the torch/numpy/python RNG states (as uint8 tensors) and the loop's position. Each one is written
atomically and the one before it is kept as ``checkpoint.prev``, so a checkpoint damaged after
the fact (a full disk, a copy cut short) costs one interval of training, not the run: ``load``
falls back to the previous one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np

from mindsearch.errors import MindsearchError

CKPT_DIR = "checkpoint"
PREV_DIR = "checkpoint.prev"


def has_checkpoint(out_dir: Path) -> bool:
    return any((Path(out_dir) / d / "state.json").is_file() for d in (CKPT_DIR, PREV_DIR))


def saved_position(out_dir: Path) -> dict | None:
    """The loop position of the checkpoint ``load`` would read first (no tensors), or None."""
    for d in (CKPT_DIR, PREV_DIR):
        path = Path(out_dir) / d / "state.json"
        try:
            return json.loads(path.read_text()).get("position")
        except (OSError, ValueError):
            continue
    return None


def save(out_dir: Path, model, optimizer, scheduler, state: dict, extra: dict | None = None) -> None:
    """Write ``OUT/checkpoint`` atomically; the previous one becomes ``OUT/checkpoint.prev``.
    ``extra``: more named tensors (the best validated weights), given back by ``load``."""
    import torch
    from safetensors.torch import save_file

    from mindsearch.io import atomic_path

    out_dir = Path(out_dir)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"optim.{pid}.{k}"] = t.detach().cpu().contiguous()
    for k, v in (extra or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.uint32).view(np.uint8).copy())
    py_state = random.getstate()
    record = {
        **state,
        "optimizer_param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "rng_numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    current, prev = out_dir / CKPT_DIR, out_dir / PREV_DIR
    if (current / "state.json").is_file():
        shutil.rmtree(prev, ignore_errors=True)
        os.replace(current, prev)
    with atomic_path(current) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(record, default=_json_default))


def _json_default(o):
    if isinstance(o, tuple):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(type(o).__name__)


def load(out_dir: Path, model, optimizer, scheduler, warn=None) -> tuple[dict, dict]:
    """Restore the newest readable checkpoint (``checkpoint``, else ``checkpoint.prev``); returns
    its JSON record (position, history, config...) and its ``extra`` tensors. ``warn(msg)``
    hears about a fallback."""
    out_dir = Path(out_dir)
    errors = []
    for name in (CKPT_DIR, PREV_DIR):
        path = out_dir / name
        if not (path / "state.json").is_file():
            continue
        try:
            return _load_one(path, model, optimizer, scheduler)
        except Exception as exc:  # a damaged file: safetensors, JSON or shape errors alike
            errors.append(f"{name}: {exc}")
            if warn:
                warn(f"checkpoint {path} is unreadable ({type(exc).__name__}); trying the previous one")
    raise MindsearchError("no readable checkpoint to resume from (" + "; ".join(errors) + ")", out_dir)


def _load_one(path: Path, model, optimizer, scheduler) -> tuple[dict, dict]:
    import torch
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    groups = state["optimizer_param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, gauss = state["rng_numpy"]
    keys = tensors["rng.numpy"].numpy().view(np.uint32)
    np.random.set_state((name, keys, pos, has_gauss, gauss))
    v, internal, g = state["rng_python"]
    random.setstate((v, tuple(internal), g))
    return state, {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}


def remove(out_dir: Path) -> None:
    for name in (CKPT_DIR, PREV_DIR):
        shutil.rmtree(Path(out_dir) / name, ignore_errors=True)


__all__ = ["save", "load", "remove", "has_checkpoint", "CKPT_DIR", "PREV_DIR"]
