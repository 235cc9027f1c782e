"""Brain-Diffuser's processed arrays (``data/prepare_nsddata.py``), read as a pre-averaged dataset.

``processed_data/subjNN/nsd_{train,test}_fmriavg_nsdgeneral_subN.npy`` (images x voxels,
float64, NSD's int16 scale x 300, the repetitions of each image averaged) and optionally
``nsd_{train,test}_stim_subN.npy`` (images x 425 x 425 x 3, 0-255). The root may be
Brain-Diffuser's ``data/`` folder, ``processed_data/`` or one ``subjNN/`` folder.

Each row is one image (``rep`` 0, session 0 = unknown): the dataset is marked
``pre_averaged`` in its manifest. The arrays carry no image ids; Brain-Diffuser's rows are the
images in order of first appearance over the first 37 sessions (train: design positions >
1,000, test: the rest), so with NSD's ``nsd_expdesign.mat`` (``ROOT/nsddata/experiments/nsd/``,
``ROOT/``, or $MINDSEARCH_NSD_EXPDESIGN) rows get NSD's 0-based 73k ids and the row counts are
checked (8,859 / 982). Without it, ids are row numbers (train first, then test): targets must
then use the same numbering.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mindsearch.data.arrays import Matrix, NpyMatrix, cache_dir
from mindsearch.data.dataset import BrainDataset
from mindsearch.errors import MindsearchError

FMRI = re.compile(r"^nsd_(train|test)_fmriavg_nsdgeneral_sub(\d+)\.npy$")
SUBJ_DIR = re.compile(r"^subj0*(\d+)$")
SESSIONS = 37  # Brain-Diffuser's prepare_nsddata.py: num_trials = 37*750


def subject_dirs(root: Path) -> dict[int, Path]:
    """subject -> the folder holding its arrays, for any of the accepted roots."""
    root = Path(root)
    for base in (root / "processed_data", root):
        if base.is_dir():
            found = {int(m.group(1)): p for p in sorted(base.iterdir())
                     if p.is_dir() and (m := SUBJ_DIR.match(p.name)) and _arrays(p)}
            if found:
                return found
    own = _arrays(root)
    return {next(iter(own.values()))[0]: root} if own else {}


def _arrays(folder: Path) -> dict[str, tuple[int, Path]]:
    out = {}
    for p in folder.glob("nsd_*_fmriavg_nsdgeneral_sub*.npy"):
        m = FMRI.match(p.name)
        if m:
            out[m.group(1)] = (int(m.group(2)), p)
    return out


def detect(root: Path) -> bool:
    return bool(subject_dirs(root))


class StackedMatrix(Matrix):
    """The train rows, then the test rows, of two .npy files as one matrix."""

    def __init__(self, parts: list[NpyMatrix]):
        self._parts = parts
        self.path = parts[0].path
        if len({p.n_cols for p in parts}) != 1:
            raise MindsearchError(f"train and test arrays have different voxel counts "
                                  f"({', '.join(f'{p.path.name}: {p.n_cols}' for p in parts)})", parts[-1].path)
        self._starts = np.cumsum([0] + [p.n_rows for p in parts])
        self.shape = (int(self._starts[-1]), parts[0].n_cols)
        self.values = _pooled([p.values for p in parts])

    def _read_sorted(self, uniq: np.ndarray) -> np.ndarray:
        out = np.empty((uniq.size, self.n_cols), np.float32)
        for k, part in enumerate(self._parts):
            sel = (uniq >= self._starts[k]) & (uniq < self._starts[k + 1])
            if sel.any():
                out[sel] = part.rows(uniq[sel] - self._starts[k])
        return out

    def close(self) -> None:
        for p in self._parts:
            p.close()


def _pooled(values: list[dict]) -> dict:
    n = sum(v["count"] for v in values)
    mean = sum(v["mean"] * v["count"] for v in values) / max(n, 1)
    second = sum((v["std"] ** 2 + v["mean"] ** 2) * v["count"] for v in values) / max(n, 1)
    return {"min": min(v["min"] for v in values), "max": max(v["max"] for v in values), "mean": mean,
            "std": max(second - mean * mean, 0.0) ** 0.5, "count": n}


class StimImages:
    """``nsd_{split}_stim_subN.npy`` rows (H, W, 3) in 0-255, served as (3, H, W) in [0, 1]."""

    def __init__(self, paths: list[Path], rows_of: dict[int, tuple[int, int]], root: Path):
        from mindsearch.data.arrays import read_npy

        self._arrs = [read_npy(p) for p in paths]
        for p, a in zip(paths, self._arrs):
            if a.ndim != 4 or a.shape[3] != 3:
                raise MindsearchError(f"stimuli must be (images, H, W, 3), got {a.shape}", p)
        self._where = rows_of
        self.path = Path(paths[0])
        h, w = self._arrs[0].shape[1:3]
        self.shape = (3, int(h), int(w))
        self.n = max(rows_of) + 1 if rows_of else 0

    def read(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        missing = [int(i) for i in ids if int(i) not in self._where]
        if missing:
            raise MindsearchError(f"no image for image id {missing[0]}", self.path)
        out = np.empty((ids.size, *self.shape), np.float32)
        for k, i in enumerate(ids):
            part, row = self._where[int(i)]
            out[k] = np.asarray(self._arrs[part][row], np.float32).transpose(2, 0, 1) / 255.0
        return out

    def close(self) -> None:
        self._arrs = []


def image_ids(subject: int, n_train: int, n_test: int, path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Brain-Diffuser's row order from NSD's design (or row numbers without it)."""
    from mindsearch.data import nsd_design
    from mindsearch.data.nsd_prepare import load_nsd_design

    design = _find_design(path)
    if design is None:
        return np.arange(n_train), np.arange(n_train, n_train + n_test), "row"
    d = load_nsd_design(design)
    sd = nsd_design.design_from_arrays(d["masterordering"], d["subjectim"], 1000, [subject],
                                       sessions=SESSIONS).subjects[subject]

    def first_seen(ids):  # dict insertion order in prepare_nsddata.py
        _, first = np.unique(ids, return_index=True)
        return ids[np.sort(first)]

    train, test = first_seen(sd.image_ids[~sd.is_test]), first_seen(sd.image_ids[sd.is_test])
    if (len(train), len(test)) != (n_train, n_test):
        raise MindsearchError(f"the arrays have {n_train} train / {n_test} test rows, but NSD's design gives "
                              f"subject {subject} {len(train)} / {len(test)} images over Brain-Diffuser's "
                              f"{SESSIONS} sessions (is {design.name} NSD's?)", path)
    return train.astype(np.int64), test.astype(np.int64), "nsd"


def _find_design(folder: Path) -> Path | None:
    from mindsearch.data import nsd_design

    for base in (folder, *folder.parents[:3]):
        for p in (base / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat", base / "nsd_expdesign.mat"):
            if p.is_file():
                return p
    return nsd_design.find_expdesign()


def open_brain_diffuser(root: Path, manifest: dict) -> BrainDataset:
    import pandas as pd

    root = Path(root)
    dirs = subject_dirs(root)
    if not dirs:
        raise MindsearchError("no nsd_{train,test}_fmriavg_nsdgeneral_subN.npy arrays", root)
    cache = cache_dir(root)
    matrices, tables, files, pictures, stim_paths = {}, [], [], {}, []
    id_source = None
    try:
        for subject, folder in sorted(dirs.items()):
            arrays = _arrays(folder)
            for split in ("train", "test"):
                if split not in arrays:
                    raise MindsearchError(f"no nsd_{split}_fmriavg_nsdgeneral_sub{subject}.npy beside "
                                          f"{next(iter(arrays.values()))[1].name}", folder)
                if arrays[split][0] != subject:
                    raise MindsearchError(f"{arrays[split][1].name} is in {folder.name}/", arrays[split][1])
            parts = [NpyMatrix(arrays[s][1], cache) for s in ("train", "test")]
            matrices[subject] = StackedMatrix(parts)
            n_train, n_test = parts[0].n_rows, parts[1].n_rows
            train_ids, test_ids, id_source = image_ids(subject, n_train, n_test, folder)
            ids = np.concatenate([train_ids, test_ids])
            tables.append(pd.DataFrame({"subject": subject, "session": 0, "trial": np.arange(len(ids)),
                                        "image_id": ids, "split": ["train"] * n_train + ["test"] * n_test}))
            files.extend(p.path for p in parts)
            if id_source == "row" and len(dirs) > 1:
                raise MindsearchError("several subjects need NSD's nsd_expdesign.mat to number their images "
                                      "(put it at ROOT/nsd_expdesign.mat or set MINDSEARCH_NSD_EXPDESIGN)", root)
            stims = [folder / f"nsd_{s}_stim_sub{subject}.npy" for s in ("train", "test")]
            if all(p.is_file() for p in stims):
                for k, part_ids in enumerate((train_ids, test_ids)):
                    for row, i in enumerate(part_ids):
                        pictures.setdefault(int(i), (len(stim_paths) + k, row))
                stim_paths.extend(stims)
        images = StimImages(stim_paths, pictures, root) if stim_paths else None
        manifest = {"layout": "brain-diffuser", "pre_averaged": True, "image_ids": id_source,
                    "betas_units": "NSD int16 scale (percent signal change x 300), repetitions averaged",
                    **manifest}
        return BrainDataset(root, "brain-diffuser", pd.concat(tables, ignore_index=True), matrices,
                            manifest=manifest, images=images, files=files, table_path=root)
    except BaseException:
        for m in matrices.values():
            m.close()
        raise
