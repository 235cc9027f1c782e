"""Trained runs: a directory with config.json, model.safetensors and zscore.safetensors.

``write_run`` is the one writer (ridge, the encoder trainer and ``save_pretrained`` with a run
record all go through it); ``open_run`` reads any model type through one interface, so
evaluation, ``embed`` and ``query`` work the same for ridge and the MindEye-style encoder.
A run records its dataset's path relative to the run directory (URIs stay as they are), so a
run moved together with its data still finds it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mindsearch.data.preprocess import ZScore
from mindsearch.errors import MindsearchError
from mindsearch.io import load_tensors, read_json
from mindsearch.run_schema import RUN_FORMAT, check_run  # noqa: F401  (RUN_FORMAT: the one definition)


# model type -> "module:callable(run_dir, config) -> encoder with .encode(voxels, subject)"
ENCODERS = {
    "ridge": "mindsearch.ridge:RidgeEncoder.load",
    "mindeye": "mindsearch.models.encoder:load_run_encoder",
}


def _resolve(target: str):
    module, attr = target.split(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class Run:
    path: Path
    config: dict
    device: str = "cpu"  # where the encoder runs (``open_run(..., device=)``)
    _encoder: object = field(default=None, repr=False)
    _zscore: dict | None = field(default=None, repr=False)

    @property
    def model_type(self) -> str:
        return self.config["model"]

    @property
    def subject(self) -> int:
        return int(self.config["subject"])

    @property
    def subjects(self) -> dict[int, int]:
        """subject -> voxel count for every subject the run can encode."""
        subs = self.config.get("subjects") or {str(self.subject): self.config["n_voxels"]}
        return {int(k): int(v) for k, v in subs.items()}

    @property
    def n_voxels(self) -> int:
        return int(self.config["n_voxels"])

    @property
    def space(self) -> dict:
        return self.config.get("space") or {}

    @property
    def zscore(self) -> ZScore | None:
        """Training statistics of the run's own subject."""
        return self.zscore_for(self.subject)

    def zscore_for(self, subject: int) -> ZScore | None:
        """Training statistics of ``subject``: multi-subject runs store ``subjNN.<name>`` entries."""
        if self._zscore is None:
            path = self.path / "zscore.safetensors"
            self._zscore = load_tensors(path) if path.is_file() else {}
        prefix = f"subj{int(subject):02d}."
        own = {k[len(prefix):]: v for k, v in self._zscore.items() if k.startswith(prefix)}
        if own:
            return ZScore.from_tensors(own)
        if subject == self.subject and "mean" in self._zscore:
            return ZScore.from_tensors(self._zscore)
        return None

    @property
    def data_path(self) -> str | None:
        """The dataset the run was trained on: a relative record resolves against the run
        directory; absolute paths (runs written before relative paths) and URIs are kept."""
        path = (self.config.get("data") or {}).get("path")
        if not path or "://" in str(path) or Path(path).is_absolute():
            return path
        return os.path.normpath(self.path / path)

    def encoder(self):
        if self._encoder is None:
            self._encoder = _resolve(ENCODERS[self.model_type])(self.path, self.config, device=self.device)
        return self._encoder

    def check_voxels(self, voxels: np.ndarray, subject: int | None, source: str | Path) -> int:
        """Validate a voxel array against the run before anything runs; return the subject."""
        subject = self.subject if subject is None else int(subject)
        subs = self.subjects
        if subject not in subs:
            raise MindsearchError(
                f"run {self.path} has no subject {subject} (it knows {sorted(subs)})", source)
        voxels = np.asarray(voxels)
        if voxels.ndim == 1:
            voxels = voxels[None]
        if voxels.ndim != 2:
            raise MindsearchError(f"expected (trials, voxels), got shape {voxels.shape}", source)
        if voxels.shape[1] != subs[subject]:
            raise MindsearchError(
                f"has {voxels.shape[1]} voxels per trial but subject {subject} of run "
                f"{self.path.name} has {subs[subject]}", source)
        if not np.issubdtype(voxels.dtype, np.floating):
            raise MindsearchError(f"voxels must be floating point, got {voxels.dtype}", source)
        if not np.isfinite(voxels).all():
            bad = int((~np.isfinite(voxels)).any(axis=1).sum())
            raise MindsearchError(f"{bad} trial(s) contain NaN or Inf voxels", source)
        return subject

    def encode(self, voxels: np.ndarray, *, subject: int | None = None, session: int | None = None,
               zscore: bool = True, outputs=None, device: str | None = None) -> dict:
        """Embeddings of voxels; ``outputs`` names the ones wanted (default: all the model has).
        ``device`` moves the run's encoder there first (default: the run's device)."""
        if device is not None and device != self.device:
            self.device, self._encoder = device, None
        voxels = np.asarray(voxels, dtype=np.float32)
        if voxels.ndim == 1:
            voxels = voxels[None]
        subject = self.subject if subject is None else int(subject)
        if zscore:
            stats = self.zscore_for(subject)
            if stats is None:
                raise MindsearchError(f"run has no z-scoring statistics for subject {subject}; pass "
                                      "already z-scored voxels (--no-zscore / zscore=False)", self.path)
            voxels = stats.apply(voxels, session)
        return self.encoder().encode(voxels, subject, outputs=outputs)


def open_run(path: str | Path, device: str = "cpu") -> Run:
    """Open a run directory; its encoder loads on ``device`` (``cpu``, ``cuda``, ``cuda:1``...)."""
    path = Path(path)
    if not path.is_dir():
        raise MindsearchError("run directory not found", path)
    config = read_json(path / "config.json")
    check_run(path, config, ENCODERS)  # schema, tensor shapes and z-scores, each error naming its file
    if config.get("format") != RUN_FORMAT:
        raise MindsearchError(f"not a mindsearch run (format {config.get('format')!r}, "
                              f"expected {RUN_FORMAT!r})", path / "config.json")
    if config.get("model") not in ENCODERS:
        raise MindsearchError(f"unknown model type {config.get('model')!r}", path / "config.json")
    if not (path / "model.safetensors").is_file():
        raise MindsearchError("run has no model.safetensors (training unfinished?)", path)
    return Run(path, config, device=device)


def zscore_tensors(zscores: dict) -> dict:
    """``zscore.safetensors`` in ``ZScore.to_tensors`` layout for the run's first subject; with
    several subjects each one's arrays also appear as ``subjNN.<name>`` (read by ``zscore_for``)."""
    out = {}
    for k, (s, z) in enumerate(sorted(zscores.items())):
        arrays = z.to_tensors()
        if k == 0:
            out.update(arrays)
        if len(zscores) > 1:
            out.update({f"subj{int(s):02d}.{name}": a for name, a in arrays.items()})
    return out


def _portable_data(data: dict | None, run_dir: Path) -> dict | None:
    """The data record with its path relative to the run directory. Writers record absolute
    paths; a relative one already is a run record's (e.g. copied from another run beside it)."""
    path = (data or {}).get("path")
    if not path or "://" in str(path) or not Path(path).is_absolute():
        return data
    return {**data, "path": os.path.relpath(Path(path).resolve(), run_dir.resolve())}


def write_run(out: str | Path, config: dict, weights: dict, *, zscore: dict | None = None,
              log: dict | None = None, keep=(), metadata: dict | None = None) -> dict:
    """Write a run directory at ``out`` in one atomic step and return its config record.

    ``config``: the run record (``model``, ``subject``, ``space``, ``data``...; ``format`` and the
    provenance stamp are added); ``weights``: name -> array/tensor for ``model.safetensors``;
    ``zscore``: {subject: ZScore}; ``log``: written as ``train_log.json``; ``keep``: entries of
    an existing ``out`` carried into the new run (the trainer's kept checkpoint).
    """
    from mindsearch.io import atomic_path, save_tensors, write_json
    from mindsearch.provenance import stamp

    out = Path(out)
    record = {"format": RUN_FORMAT, **config}
    record["data"] = _portable_data(record.get("data"), out)
    if "created" not in record:
        record.update(stamp())
    with atomic_path(out) as tmp:
        tmp.mkdir()
        save_tensors(tmp / "model.safetensors", weights, metadata)
        if zscore:
            save_tensors(tmp / "zscore.safetensors", zscore_tensors(zscore))
        write_json(tmp / "config.json", record)
        if log is not None:
            write_json(tmp / "train_log.json", log)
        for name in keep:
            if (out / name).exists():
                os.replace(out / name, tmp / name)
    return record
