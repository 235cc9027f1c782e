"""What a run directory must hold, checked when it is opened, before any model code runs.

``check_run(path, config, model_types)`` validates ``config.json`` against the schema below
(types, shapes, required keys), then the tensors it can check cheaply: the header of
``model.safetensors`` (names and shapes, no data read) against the config, and
``zscore.safetensors`` (small) for shapes, finite values and positive standard deviations.
Each failure is one ``MindsearchError`` naming the file that is wrong. The weights' values
are checked where they are loaded (``check_finite``), since reading a multi-GB file twice
to look for NaN at open time would cost more than the check is worth.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from mindsearch.errors import MindsearchError

RUN_FORMAT = "mindsearch-run/1"


# ----------------------------------------------------------------------------- value checks
# Each returns None when the value is fine, else what it should have been.

def _int(lo: int = 0) -> Callable:
    def check(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= lo
        return None if ok else f"an integer >= {lo}"
    return check


def _optional(check: Callable) -> Callable:
    def inner(v):
        return None if v is None else (None if check(v) is None else f"null or {check(v)}")
    return inner


def _str(v):
    return None if isinstance(v, str) else "a string"


def _shape2(v):
    ok = isinstance(v, list) and len(v) == 2 and all(_int(1)(n) is None for n in v)
    return None if ok else "a list of two integers >= 1 ([tokens, dim])"


def _voxel_counts(v):
    ok = isinstance(v, dict) and v and all(
        isinstance(k, str) and k.isdigit() and int(k) >= 1 and _int(1)(n) is None for k, n in v.items())
    return None if ok else 'an object {"<subject>": <voxel count >= 1>, ...}'


def _object(v):
    return None if isinstance(v, dict) else "an object"


# key -> (required, check). Unknown keys are allowed (provenance, logs).
TOP = {
    "format": (True, _str),
    "model": (True, _str),
    "subject": (True, _int(1)),
    "n_voxels": (True, _int(1)),
    "subjects": (False, _optional(_voxel_counts)),
    "space": (False, _optional(_object)),
    "target_shape": (False, _shape2),
    "seed": (False, _optional(_int(0))),
    "data": (False, _optional(_object)),
    "train": (False, _optional(_object)),
}
SPACE = {"tokens": (False, _optional(_int(1))), "dim": (False, _optional(_int(1)))}
TRAIN = {"prior_sample_steps": (False, _optional(_int(1)))}
DATA = {"path": (False, _optional(_str)), "fingerprint": (False, _optional(_str))}
MINDEYE = {"tokens": (True, _int(1)), "dim": (True, _int(1)), "hidden": (False, _int(1)),
           "n_blocks": (False, _int(0)), "n_voxels": (True, _voxel_counts)}


def _check_fields(obj: dict, schema: dict, where: str, path: Path) -> None:
    for key, (required, check) in schema.items():
        if key not in obj:
            if required:
                raise MindsearchError(f"{where}{key} is missing", path)
            continue
        want = check(obj[key])
        if want is not None:
            raise MindsearchError(f"{where}{key} must be {want}, got {obj[key]!r:.60}", path)


def check_config(config, path: Path, model_types) -> None:
    """Schema of a run's ``config.json`` (``path``); ``model_types``: the fixed registry."""
    if not isinstance(config, dict):
        raise MindsearchError(f"run config must be a JSON object, got {type(config).__name__}", path)
    if config.get("format") != RUN_FORMAT:
        raise MindsearchError(f"not a mindsearch run (format {config.get('format')!r}, "
                              f"expected {RUN_FORMAT!r})", path)
    if not isinstance(config.get("model"), str) or config["model"] not in model_types:
        raise MindsearchError(f"unknown model type {config.get('model')!r:.60} "
                              f"(known: {', '.join(sorted(model_types))})", path)
    _check_fields(config, TOP, "", path)
    for key, schema in (("space", SPACE), ("train", TRAIN), ("data", DATA)):
        if isinstance(config.get(key), dict):
            _check_fields(config[key], schema, f"{key}.", path)
    subject, n_voxels = config["subject"], config["n_voxels"]
    subjects = config.get("subjects")
    if subjects and subjects.get(str(subject)) != n_voxels:
        raise MindsearchError(f"subjects[{subject!r}] is {subjects.get(str(subject))!r} but n_voxels is "
                              f"{n_voxels}", path)
    shape = config.get("target_shape")
    space = config.get("space") or {}
    if shape is not None and space.get("tokens") is not None and space.get("dim") is not None \
            and shape != [space["tokens"], space["dim"]]:
        raise MindsearchError(f"target_shape {shape} disagrees with the space's tokens x dim "
                              f"[{space['tokens']}, {space['dim']}]", path)
    if config["model"] == "ridge" and shape is None:
        raise MindsearchError("target_shape is missing (a ridge run maps voxels to tokens x dim)", path)
    if config["model"] == "mindeye":
        block = config.get("mindeye")
        if not isinstance(block, dict):
            raise MindsearchError("mindeye (the model's architecture) must be an object", path)
        _check_fields(block, MINDEYE, "mindeye.", path)
        counts = {int(k): v for k, v in (subjects or {str(subject): n_voxels}).items()}
        for s, v in counts.items():
            if block["n_voxels"].get(str(s)) != v:
                raise MindsearchError(f"mindeye.n_voxels has {block['n_voxels'].get(str(s))!r} for subject {s} "
                                      f"but the run says {v}", path)
        if shape is not None and shape != [block["tokens"], block["dim"]]:
            raise MindsearchError(f"target_shape {shape} disagrees with the model's tokens x dim "
                                  f"[{block['tokens']}, {block['dim']}]", path)


# ----------------------------------------------------------------------------- tensor checks

def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """name -> shape from a safetensors header (no data is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 -- safetensors raises its own error types
        raise MindsearchError(f"not a readable safetensors file ({str(exc).splitlines()[0] if str(exc) else exc!r})",
                              path) from None


def check_ridge_shapes(shapes: dict, config: dict, path: Path) -> None:
    """coef (tokens*dim, n_voxels) and intercept (tokens*dim,), as the config says."""
    missing = [k for k in ("coef", "intercept") if k not in shapes]
    if missing:
        listed = ", ".join(sorted(shapes)[:3]) + (", ..." if len(shapes) > 3 else "")
        raise MindsearchError(f"no {' or '.join(repr(k) for k in missing)} tensor for a ridge run "
                              f"(it holds {len(shapes)} tensors: {listed or 'none'})", path)
    out = math.prod(config["target_shape"])
    want = {"coef": (out, config["n_voxels"]), "intercept": (out,)}
    for key, shape in want.items():
        if shapes[key] != shape:
            raise MindsearchError(f"{key} has shape {shapes[key]} but the run config (target_shape "
                                  f"{config['target_shape']}, n_voxels {config['n_voxels']}) needs {shape}", path)


def check_zscore(tensors: dict, counts: dict[int, int], subject: int, path: Path) -> None:
    """Every z-score set (plain, or ``subjNN.`` prefixed) has consistent shapes, finite values
    and positive standard deviations, for the voxel count of its subject."""
    import numpy as np

    groups: dict[str, dict] = {}
    for name, value in tensors.items():
        prefix, _, field = name.rpartition(".")
        groups.setdefault(prefix, {})[field] = np.asarray(value)
    for prefix, t in groups.items():
        who = int(prefix[4:]) if prefix.startswith("subj") and prefix[4:].isdigit() else subject
        label = f"{prefix}." if prefix else ""
        missing = [k for k in ("mean", "std", "sessions", "global_mean", "global_std") if k not in t]
        if missing:
            raise MindsearchError(f"z-score set {label or 'of the run'} lacks {', '.join(missing)}", path)
        v = counts.get(who)
        n = t["sessions"].size
        want = {"mean": (n, v), "std": (n, v), "global_mean": (v,), "global_std": (v,)}
        for key, shape in want.items():
            if v is not None and t[key].shape != shape:
                raise MindsearchError(f"{label}{key} has shape {t[key].shape}, expected {shape} "
                                      f"(subject {who}: {v} voxels, {n} sessions)", path)
        for key in ("mean", "std", "global_mean", "global_std"):
            if not np.issubdtype(t[key].dtype, np.floating) or not np.isfinite(t[key]).all():
                raise MindsearchError(f"{label}{key} holds non-finite or non-float values", path)
        for key in ("std", "global_std"):
            if (t[key] <= 0).any():
                raise MindsearchError(f"{label}{key} has {int((t[key] <= 0).sum())} value(s) <= 0 "
                                      "(a standard deviation must be positive)", path)


def check_finite(arrays: dict, path: Path) -> None:
    """Refuse weights holding NaN or Inf, naming the tensor (called where weights are loaded)."""
    import numpy as np

    for name, value in arrays.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise MindsearchError(f"tensor {name!r} holds {int((~np.isfinite(value)).sum())} NaN/Inf value(s)", path)


def check_run(path: Path, config, model_types) -> None:
    """Everything about a run directory that can be checked without loading the model."""
    from mindsearch.io import load_tensors

    path = Path(path)
    check_config(config, path / "config.json", model_types)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise MindsearchError("run has no model.safetensors (training unfinished?)", path)
    shapes = tensor_shapes(weights)
    if config["model"] == "ridge":
        check_ridge_shapes(shapes, config, weights)
    zpath = path / "zscore.safetensors"
    if zpath.is_file():
        counts = {int(k): v for k, v in (config.get("subjects") or {str(config["subject"]): config["n_voxels"]}).items()}
        check_zscore(load_tensors(zpath), counts, config["subject"], zpath)


def check_run_data(run, ds, subject: int) -> None:
    """A run can be scored on ``ds``: the subject is in both, voxel counts agree, a test split exists."""
    counts = run.subjects
    if subject not in counts:
        raise MindsearchError(f"run has no subject {subject} (it knows {sorted(counts)})", run.path / "config.json")
    if subject not in ds.subjects:
        raise MindsearchError(f"dataset has no subject {subject} (it has {ds.subjects})", ds.root)
    if ds.n_voxels(subject) != counts[subject]:
        raise MindsearchError(f"subject {subject} has {ds.n_voxels(subject)} voxels here but the run "
                              f"{run.path} was trained on {counts[subject]}", ds.voxel_file(subject))
    t = ds.trials
    if not ((t["subject"] == subject) & (t["split"] == "test")).any():
        raise MindsearchError(f"no test trials for subject {subject}: nothing to evaluate", ds.root)
