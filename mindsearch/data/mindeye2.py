"""MindEye2 layout: one betas HDF5 per subject + webdataset shards of behaviour rows.

The shards hold no voxels, only ``behav.npy`` (1, 17) per trial; column 5 is the row in the
betas file. Test trials come from ``new_test/`` (40-session protocol) if present, else
``test/`` (37-session protocol), never both: the two overlap in the real data.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mindsearch.data.arrays import H5Images, H5Matrix, cache_dir, open_h5
from mindsearch.data.dataset import BrainDataset
from mindsearch.data.shards import load_npy, natural_key, samples
from mindsearch.errors import MindsearchError

BETAS = re.compile(r"^betas_all_subj0*(\d+)_fp32_renorm\.(hdf5|h5)$")
SUBJ_DIR = re.compile(r"^subj0*(\d+)$")
PREFERRED_IMAGES = "coco_images_224_float16.hdf5"
# behav.npy columns (MindEye2 README); -1 means NaN.
COL_IMAGE, COL_SUBJECT, COL_SESSION, COL_TRIAL = 0, 1, 2, 5
TRIALS_PER_SESSION = 750


def detect(root: Path) -> bool:
    return any(BETAS.match(p.name) for p in root.iterdir()) or (root / "wds").is_dir()


def betas_files(root: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for p in sorted(root.iterdir()):
        m = BETAS.match(p.name)
        if m:
            subject = int(m.group(1))
            if subject in found:
                raise MindsearchError(f"two betas files for subject {subject} ({found[subject].name}, {p.name})", p)
            found[subject] = p
    return found


def behaviour_dirs(root: Path) -> dict[int, Path]:
    wds = root / "wds"
    if not wds.is_dir():
        return {}
    return {int(m.group(1)): p for p in sorted(wds.iterdir()) if p.is_dir() and (m := SUBJ_DIR.match(p.name))}


def shard_splits(subject_dir: Path) -> list[tuple[str, list[Path]]]:
    # The split comes from the directory, not behav column 16: the test shard *is* the
    # protocol (new_test = 40-session shared1000, test = 37-session subset).
    test_dir = subject_dir / "new_test" if (subject_dir / "new_test").is_dir() else subject_dir / "test"
    out = []
    for split, d in (("train", subject_dir / "train"), ("test", test_dir)):
        if d.is_dir():
            out.append((split, sorted(d.glob("*.tar"), key=natural_key)))
    return out


def read_behaviour(subject: int, subject_dir: Path, n_rows: int, betas: Path):
    """The subject's trials from the behaviour shards, validated against the betas file."""
    import pandas as pd

    behav, keys, sources, splits, tars = [], [], [], [], []
    for split, shard_paths in shard_splits(subject_dir):
        for tar in shard_paths:
            tars.append(tar)
            for key, fields in samples(tar, {"behav.npy"}):
                if "behav.npy" not in fields:
                    raise MindsearchError(f"sample {key!r} has no behav.npy", tar)
                row = load_npy(fields["behav.npy"], f"behav.npy of sample {key!r}", tar)
                if row.size != 17 or not np.issubdtype(row.dtype, np.number):
                    raise MindsearchError(
                        f"behav.npy of sample {key!r} has {row.dtype} shape {row.shape}, expected (1, 17)", tar)
                behav.append(row.reshape(17))
                keys.append(key)
                sources.append(len(tars) - 1)
                splits.append(split)
    if not behav:
        raise MindsearchError("no behaviour rows (expected train/*.tar and new_test/*.tar or test/*.tar)",
                              subject_dir)
    b = np.asarray(behav, dtype=np.float64)
    missing = ~np.isfinite(b) | (b == -1)  # -1 is the shards' NaN

    def fail(mask, problem):
        i = int(np.flatnonzero(mask)[0])
        raise MindsearchError(f"behav.npy of sample {keys[i]!r} {problem(i)}", tars[sources[i]])

    for col, what, required in ((COL_TRIAL, "global trial", True), (COL_IMAGE, "image id", True),
                                (COL_SUBJECT, "subject", False), (COL_SESSION, "session", False)):
        if required and missing[:, col].any():
            fail(missing[:, col], lambda i: f"has no {what} (column {col} is NaN)")
        v = b[:, col]
        bad = ~missing[:, col] & ((v != np.round(v)) | (v < 0))
        if bad.any():
            fail(bad, lambda i: f"has {what} {b[i, col]:g} in column {col}")
    trial = b[:, COL_TRIAL].astype(np.int64)
    if (trial >= n_rows).any():
        fail(trial >= n_rows, lambda i: f"points at trial {trial[i]}, past the end of {betas.name} ({n_rows} rows)")
    owner = np.where(missing[:, COL_SUBJECT], subject, b[:, COL_SUBJECT])
    if (owner != subject).any():
        fail(owner != subject, lambda i: f"is for subject {owner[i]:g}, not subject {subject}")
    session = np.where(missing[:, COL_SESSION], trial // TRIALS_PER_SESSION + 1, b[:, COL_SESSION]).astype(np.int64)
    table = pd.DataFrame({"subject": subject, "session": session, "trial": trial,
                          "image_id": b[:, COL_IMAGE].astype(np.int64), "split": splits,
                          "_source": [str(tars[i]) for i in sources]})
    return table, tars


def find_images(root: Path, exclude: set[Path]) -> H5Images | None:
    candidates = sorted((p for p in root.glob("*.hdf5") if p not in exclude),
                        key=lambda p: (p.name != PREFERRED_IMAGES, p.name))
    for p in candidates:
        f = open_h5(p)
        try:
            has = "images" in f
        finally:
            f.close()
        if has:
            return H5Images(p)
    return None


def open_mindeye2(root: Path, manifest: dict) -> BrainDataset:
    import pandas as pd

    root = Path(root)
    betas, behaviour = betas_files(root), behaviour_dirs(root)
    if not betas:
        raise MindsearchError("no betas_all_subj0N_fp32_renorm.hdf5 file", root)
    for subject in sorted(set(betas) ^ set(behaviour)):
        if subject in betas:
            raise MindsearchError(f"no behaviour shards for subject {subject} (expected wds/subj{subject:02d}/)",
                                  betas[subject])
        raise MindsearchError(f"no betas file for subject {subject} "
                              f"(expected betas_all_subj{subject:02d}_fp32_renorm.hdf5)", behaviour[subject])
    cache = cache_dir(root)
    matrices, tables, files = {}, [], []
    images = None
    try:
        for subject, path in betas.items():
            matrices[subject] = H5Matrix(path, ("betas",), cache)
            table, tars = read_behaviour(subject, behaviour[subject], matrices[subject].n_rows, path)
            tables.append(table)
            files.extend(tars)
        images = find_images(root, set(betas.values()))
        trials = pd.concat(tables, ignore_index=True)
        if images is not None:
            outside = trials["image_id"].to_numpy() >= images.n
            if outside.any():
                bad = trials[outside].iloc[0]
                raise MindsearchError(f"image id {bad['image_id']} is past the end of {images.path.name} "
                                      f"({images.n} images)", bad["_source"])
        return BrainDataset(root, "mindeye2", trials, matrices, manifest=manifest, images=images,
                            files=files, table_path=root / "wds")
    except BaseException:
        for m in matrices.values():
            m.close()
        if images is not None:
            images.close()
        raise
