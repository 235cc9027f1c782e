"""Plain layout: a trial table (CSV or Parquet) plus one voxel matrix per subject.

``DIR/trials.csv|parquet`` (subject, session, trial, image_id[, split]) and
``DIR/voxels_subj01.npy|.h5`` per subject, or ``DIR/voxels.npy|.h5`` for a single subject;
row of the voxel file = ``trial``. A missing ``split`` column means every trial is training.
"""

from __future__ import annotations

import re
from pathlib import Path

from mindsearch.data.arrays import H5Matrix, NpyMatrix, cache_dir, short
from mindsearch.data.dataset import BrainDataset, finalize_trials
from mindsearch.errors import MindsearchError

TABLES = ("trials.parquet", "trials.csv")
VOXELS = re.compile(r"^voxels(?:_subj0*(\d+))?\.(npy|h5|hdf5)$")
H5_KEYS = ("voxels", "betas")
COLUMNS = ("subject", "session", "trial", "image_id")


def detect(root: Path) -> bool:
    return any((Path(root) / t).is_file() for t in TABLES)


def read_table(path: Path):
    import pandas as pd

    try:
        if path.suffix.lower() == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path)
    except FileNotFoundError:
        raise MindsearchError("file not found", path) from None
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable tables
        raise MindsearchError(f"not a readable trial table ({short(exc)})", path) from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise MindsearchError(f"trial table is missing column(s) {', '.join(missing)} "
                              f"(has: {', '.join(df.columns) or 'none'})", path)
    if "split" not in df.columns:
        df["split"] = "train"
    return df[[*COLUMNS, "split"]]


def open_matrix(path: Path, cache: Path):
    if path.suffix.lower() == ".npy":
        return NpyMatrix(path, cache)
    return H5Matrix(path, H5_KEYS, cache)


def voxel_files(root: Path) -> dict[int | None, Path]:
    """subject -> voxel file (None for the single-subject ``voxels.*``)."""
    found: dict[int | None, Path] = {}
    for p in sorted(Path(root).iterdir()):
        m = VOXELS.match(p.name)
        if not m:
            continue
        subject = int(m.group(1)) if m.group(1) else None
        if subject in found:
            raise MindsearchError(f"two voxel files for the same subject ({found[subject].name}, {p.name}); "
                                  "keep one", p)
        found[subject] = p
    return found


def open_plain(root: Path, manifest: dict, table: Path | None = None, voxels=None) -> BrainDataset:
    root = Path(root)
    if table is None:
        present = [root / t for t in TABLES if (root / t).is_file()]
        if not present:
            raise MindsearchError("no trials.csv or trials.parquet", root)
        if len(present) > 1:
            raise MindsearchError("both trials.csv and trials.parquet are present; keep one", root)
        table = present[0]
    trials = finalize_trials(read_table(table), table)  # validated before subjects are trusted
    subjects = sorted(int(s) for s in trials["subject"].unique())
    files = {} if voxels is not None else voxel_files(root)
    if voxels is not None or None in files:
        single = Path(voxels) if voxels is not None else files.pop(None)
        if len(subjects) != 1:
            raise MindsearchError(f"{single.name} is one subject's voxels but the table has subjects {subjects}; "
                                  "name the files voxels_subj0N.*", table)
        if subjects[0] in files:
            raise MindsearchError(f"two voxel files for subject {subjects[0]} "
                                  f"({single.name}, {files[subjects[0]].name}); keep one", single)
        files[subjects[0]] = single
    for s in subjects:
        if s not in files:
            raise MindsearchError(f"no voxel file for subject {s} (expected voxels_subj{s:02d}.npy or .h5)", root)
    cache = cache_dir(root)
    matrices = {}
    try:
        for s in subjects:
            matrices[s] = open_matrix(files[s], cache)
        return BrainDataset(root, "plain", trials, matrices, manifest=manifest, table_path=table)
    except BaseException:
        for m in matrices.values():
            m.close()
        raise
