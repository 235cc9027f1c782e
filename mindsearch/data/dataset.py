"""One dataset abstraction over the layouts people actually have (MindEye2, MindEye1, plain).

A layout reader only has to produce a trial table and one voxel matrix per subject; the
``BrainDataset`` here adds everything else (repetition numbers, validation, targets, the
fingerprint) so every layout behaves the same downstream.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from mindsearch.data.arrays import Matrix, Targets
from mindsearch.errors import MindsearchError

LAYOUTS = ("mindeye2", "mindeye1", "plain", "brain-diffuser")
TRIAL_COLUMNS = ("subject", "session", "trial", "image_id", "split", "rep")
SPLITS = {"train": "train", "val": "train", "validation": "train", "test": "test"}


class BrainDataset:
    """Trials, voxels, images and targets of one dataset; see docs/interfaces.md."""

    def __init__(self, root: Path, layout: str, trials, matrices: dict[int, Matrix], *,
                 manifest: dict | None = None, images=None, files=(), table_path: Path | None = None):
        self.root = Path(root)
        self.layout = layout
        self.manifest = dict(manifest or {})
        self._matrices = dict(matrices)
        self._images = images
        self._files = [Path(f) for f in files]
        self._targets: Targets | None = None
        self._target_problem: str | None = None
        self.target_names: list[str] = []
        self.trials = finalize_trials(trials, table_path or self.root)
        for subject, group in self.trials.groupby("subject"):
            matrix = self._matrices.get(int(subject))
            if matrix is None:
                raise MindsearchError(f"trials for subject {subject} but no voxel file", table_path or self.root)
            top = int(group["trial"].max())
            if top >= matrix.n_rows:
                raise MindsearchError(
                    f"trial {top} of subject {subject} points past the end of {matrix.path.name} "
                    f"({matrix.n_rows} rows)", table_path or self.root)

    # -- trials and voxels -------------------------------------------------------------
    @property
    def subjects(self) -> list[int]:
        return sorted(int(s) for s in self.trials["subject"].unique())

    def _matrix(self, subject: int) -> Matrix:
        try:
            return self._matrices[int(subject)]
        except KeyError:
            raise MindsearchError(f"subject {subject} is not in this dataset (subjects: {self.subjects})",
                                  self.root) from None

    def n_voxels(self, subject: int) -> int:
        return self._matrix(subject).n_cols

    def voxel_file(self, subject: int) -> Path:
        return self._matrix(subject).path

    def voxel_values(self, subject: int) -> dict:
        """min/max/mean/std/count of the subject's voxel file (from the open-time check)."""
        return dict(self._matrix(subject).values)

    def voxels(self, subject: int, trials) -> np.ndarray:
        """float32 (len(trials), n_voxels); any order, duplicates allowed; read lazily."""
        return self._matrix(subject).rows(trials)

    # -- images ------------------------------------------------------------------------
    @property
    def has_images(self) -> bool:
        return self._images is not None

    @property
    def image_shape(self) -> tuple | None:
        return None if self._images is None else tuple(self._images.shape)

    @property
    def image_file(self) -> Path | None:
        return None if self._images is None else self._images.path

    def images(self, ids) -> np.ndarray:
        if self._images is None:
            raise MindsearchError("this dataset has no images", self.root)
        return self._images.read(ids)

    # -- targets -----------------------------------------------------------------------
    @property
    def has_targets(self) -> bool:
        return self._targets is not None

    def _target(self) -> Targets:
        if self._targets is None:
            raise MindsearchError(self._target_problem or "this dataset has no targets", self.root)
        return self._targets

    def targets(self, ids) -> np.ndarray:
        return self._target().read(ids)

    @property
    def target_space(self) -> dict:
        return dict(self._target().space)

    @property
    def target_shape(self) -> tuple[int, int]:
        return self._target().shape

    @property
    def target_ids(self) -> np.ndarray:
        return self._target().ids.copy()

    @property
    def target_file(self) -> Path:
        return self._target().path

    def set_targets(self, targets: Targets | None, problem: str | None = None) -> None:
        self._targets = targets
        self._target_problem = problem
        if targets is not None:
            self._files.append(targets.path)

    # -- bookkeeping -------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Stable hash of the trial table and the data files' sizes (recorded in runs)."""
        h = hashlib.sha256()
        for col in ("subject", "session", "trial", "image_id", "rep"):
            h.update(col.encode())
            h.update(self.trials[col].to_numpy(dtype="<i8").tobytes())
        h.update("\n".join(self.trials["split"].astype(str)).encode())
        files = {*(m.path for m in self._matrices.values()), *self._files}
        if self._images is not None and self._images.path.is_file():
            files.add(self._images.path)
        for f in sorted(files, key=str):
            size = f.stat().st_size if f.is_file() else -1
            h.update(f"{f.name}:{size}\n".encode())
        return h.hexdigest()[:16]

    def close(self) -> None:
        for m in self._matrices.values():
            m.close()
        for obj in (self._images, self._targets):
            if obj is not None:
                obj.close()

    def __enter__(self) -> "BrainDataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"BrainDataset({str(self.root)!r}, layout={self.layout!r}, subjects={self.subjects}, "
                f"trials={len(self.trials)})")


def finalize_trials(trials, path):
    """Validate and normalise a trial table; add ``rep`` (repetition number in trial order)."""
    import pandas as pd

    df = pd.DataFrame(trials).copy()
    missing = [c for c in TRIAL_COLUMNS if c not in df.columns and c != "rep"]
    if missing:
        raise MindsearchError(f"trial table is missing column(s) {', '.join(missing)}", path)
    for col in ("subject", "session", "trial", "image_id"):
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | (values != np.round(values))
        if bad.any():
            raise MindsearchError(f"column {col!r} has a missing or non-integer value in row {int(np.flatnonzero(bad)[0])}",
                                  path)
        df[col] = values.astype(np.int64)
        if (df[col] < 0).any():
            raise MindsearchError(f"column {col!r} has a negative value in row {int(np.flatnonzero(df[col] < 0)[0])}",
                                  path)
    split = df["split"].astype(str).str.strip().str.lower()
    unknown = sorted(set(split) - set(SPLITS))
    if unknown:
        raise MindsearchError(f"unknown split value {unknown[0]!r} (expected train or test)", path)
    df["split"] = split.map(SPLITS).astype(object)
    dup = df.duplicated(["subject", "trial"], keep="first")
    if dup.any():
        row = df[dup].iloc[0]
        raise MindsearchError(f"trial {row['trial']} of subject {row['subject']} appears twice",
                              row["_source"] if "_source" in df.columns else path)
    df = df.sort_values(["subject", "trial"], kind="stable").reset_index(drop=True)
    df["rep"] = df.groupby(["subject", "image_id"], sort=False).cumcount().astype(np.int64)
    return df[list(TRIAL_COLUMNS)]


def open_dataset(path, targets=None, *, ids=None, voxels=None) -> BrainDataset:
    """Open a dataset directory (any layout) or a plain trial table (CSV/Parquet).

    ``targets``: a name under ``DIR/targets/`` or a path to a ``.npy`` (ids from ``ids=`` or
    ``{stem}_ids.npy`` beside it). ``voxels``: the voxel file when ``path`` is a trial table.
    """
    from mindsearch.data.arrays import reading

    path = Path(path)
    if not path.exists():
        raise MindsearchError("no such file or directory", path)
    # The readers name the file they fail on; this net names the dataset for anything left.
    with reading(path):
        return _open(path, targets, ids, voxels)


def _open(path: Path, targets, ids, voxels) -> BrainDataset:
    from mindsearch.data import targets as target_sets
    from mindsearch.io import read_json

    if path.is_file():
        if path.suffix.lower() not in (".csv", ".parquet"):
            raise MindsearchError("not a dataset directory or a trial table (.csv/.parquet)", path)
        from mindsearch.data.plain import open_plain

        ds = open_plain(path.parent, manifest={}, table=path, voxels=voxels)
    else:
        manifest_path = path / "mindsearch.json"
        manifest = read_json(manifest_path) if manifest_path.is_file() else {}
        if not isinstance(manifest, dict):
            raise MindsearchError("manifest must be a JSON object", manifest_path)
        layout = manifest.get("layout") or detect_layout(path)
        if layout not in LAYOUTS:
            raise MindsearchError(f"unknown layout {layout!r} (expected one of {', '.join(LAYOUTS)})",
                                  manifest_path)
        ds = _open_layout(layout, path, manifest, voxels)
    try:
        target_sets.attach(ds, targets, ids)
    except BaseException:
        ds.close()
        raise
    return ds


def _open_layout(layout: str, root: Path, manifest: dict, voxels) -> BrainDataset:
    if layout == "mindeye2":
        from mindsearch.data.mindeye2 import open_mindeye2

        return open_mindeye2(root, manifest)
    if layout == "mindeye1":
        from mindsearch.data.mindeye1 import open_mindeye1

        return open_mindeye1(root, manifest)
    if layout == "brain-diffuser":
        from mindsearch.data.brain_diffuser import open_brain_diffuser

        return open_brain_diffuser(root, manifest)
    from mindsearch.data.plain import open_plain

    return open_plain(root, manifest=manifest, voxels=voxels)


def detect_layout(root: Path) -> str:
    from mindsearch.data import brain_diffuser, mindeye1, mindeye2, plain

    for name, module in (("mindeye2", mindeye2), ("mindeye1", mindeye1), ("plain", plain),
                         ("brain-diffuser", brain_diffuser)):
        if module.detect(root):
            return name
    raise MindsearchError(
        "no dataset found: expected betas_all_subj0N_fp32_renorm.hdf5 + wds/ (MindEye2), "
        "{train,val,test}/*_subj0N_*.tar (MindEye1), trials.csv|parquet + voxels (plain) or "
        "processed_data/subj0N/nsd_{train,test}_fmriavg_nsdgeneral_subN.npy (Brain-Diffuser)", root)
