"""Builders for tiny datasets in each layout (shared by the test_data_* files).

Real files (hdf5, tar shards with .npy members, csv/parquet), tens of voxels, so every
reader path runs exactly as on real data, in milliseconds.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np


def npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def png_bytes(img_chw: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(img_chw.transpose(1, 2, 0) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for key, fields in samples:
            for field, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def behav_row(image_id, subject, session, trial_in_session, trial, shared) -> np.ndarray:
    row = np.full((1, 17), -1.0)
    row[0, [0, 1, 2, 3, 4, 5, 16]] = [image_id, subject, session, 1, trial_in_session, trial, shared]
    return row


def design(n_sessions=3, per_session=12, n_test_images=4, seed=0):
    """Trial structure like NSD in miniature: test images shown 3x spread over sessions,
    train images 1-3x. Returns a list of (session, trial_in_session, trial, image_id, is_test)."""
    rng = np.random.default_rng(seed)
    n = n_sessions * per_session
    images = [i for i in range(n_test_images) for _ in range(3)]
    next_id = n_test_images
    while len(images) < n:
        k = int(rng.integers(1, 4))
        images += [next_id] * k
        next_id += 1
    images = np.array(images[:n])
    rng.shuffle(images)
    return [((t // per_session) + 1, t % per_session, t, int(images[t]), bool(images[t] < n_test_images))
            for t in range(n)]


def make_mindeye2(root: Path, subjects=(1, 2), n_voxels=(10, 13), n_sessions=3, per_session=12,
                  test_dir="new_test", images=True, targets=True, seed=0) -> dict:
    """MindEye2 layout; returns {"betas": {s: array}, "design": {s: rows}, "images", "targets"}."""
    import h5py

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {"betas": {}, "design": {}}
    n_images = 0
    for s, v in zip(subjects, n_voxels):
        rows = design(n_sessions, per_session, seed=seed + s)
        betas = rng.normal(size=(len(rows), v)).astype(np.float32) + s
        with h5py.File(root / f"betas_all_subj{s:02d}_fp32_renorm.hdf5", "w") as f:
            f.create_dataset("betas", data=betas)
        wds = root / "wds" / f"subj{s:02d}"
        for session in range(1, n_sessions + 1):
            samples = [(f"s{t:05d}", {"behav.npy": npy_bytes(behav_row(img, s, sess, tis, t, 0)),
                                      "past_behav.npy": npy_bytes(np.full((15, 17), -1.0))})
                       for sess, tis, t, img, test in rows if sess == session and not test]
            write_tar(wds / "train" / f"{session - 1}.tar", samples)
        samples = [(f"s{t:05d}", {"behav.npy": npy_bytes(behav_row(img, s, sess, tis, t, 1))})
                   for sess, tis, t, img, test in rows if test]
        write_tar(wds / test_dir / "0.tar", samples)
        out["betas"][s], out["design"][s] = betas, rows
        n_images = max(n_images, max(r[3] for r in rows) + 1)
    if images:
        imgs = rng.uniform(size=(n_images, 3, 4, 5)).astype(np.float16)
        with h5py.File(root / "images_4_float16.hdf5", "w") as f:
            f.create_dataset("images", data=imgs)
        out["images"] = imgs
    if targets:
        out["targets"] = write_targets(root / "targets", "sim", np.arange(n_images), rng)
    return out


def write_targets(d: Path, name: str, ids, rng, tokens=2, dim=6, record=True) -> np.ndarray:
    d.mkdir(parents=True, exist_ok=True)
    emb = rng.normal(size=(len(ids), tokens, dim)).astype(np.float16)
    np.save(d / f"{name}.npy", emb)
    np.save(d / f"{name}_ids.npy", np.asarray(ids, np.int64))
    if record:
        (d / f"{name}.json").write_text(json.dumps(
            {"name": name, "model": "sim-v1", "layer": "tokens", "pooling": "first", "weights": "abc",
             "tokens": tokens, "dim": dim}))
    return emb


def make_mindeye1(root: Path, subject=1, n_voxels=9, seed=0, nan_rep=None) -> dict:
    """MindEye1 layout: 2 train shards, 1 val, 1 test; 3 repetitions per sample.

    Returns {"samples": [(split, image_id, (3, V) voxels, image)]} in shard order."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    plan = [("train", 0, [10, 11, 12]), ("train", 1, [13, 10]), ("val", 0, [14]), ("test", 0, [1, 2])]
    out = {"samples": []}
    for split, k, ids in plan:
        samples = []
        for image_id in ids:
            vox = rng.normal(size=(3, n_voxels)).astype(np.float32)
            if nan_rep is not None and image_id == nan_rep:
                vox[2] = np.nan
            img = rng.uniform(size=(3, 6, 7)).astype(np.float32)
            key = f"sample{len(out['samples']):04d}"
            samples.append((key, {"nsdgeneral.npy": npy_bytes(vox), "coco73k.npy": npy_bytes(np.array([image_id])),
                                  "trial.npy": npy_bytes(np.array([0, 1, 2])), "png": png_bytes(img)}))
            out["samples"].append((split, image_id, vox, img))
        write_tar(root / split / f"{split}_subj{subject:02d}_{k}.tar", samples)
    return out


def make_plain(root: Path, fmt="csv", h5_subject=2, n_voxels=(8, 8), split=True, seed=0) -> dict:
    """Plain layout: trials table + voxels_subj01.npy and voxels_subj02.h5."""
    import h5py
    import pandas as pd

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records, vox = [], {}
    for s, v in zip((1, 2), n_voxels):
        rows = design(2, 10, seed=seed + s)
        vox[s] = rng.normal(size=(len(rows) + 3, v)).astype(np.float32)  # extra unused rows are fine
        for sess, _, t, img, test in rows:
            records.append({"subject": s, "session": sess, "trial": t, "image_id": img,
                            "split": "test" if test else "train"})
        if s == h5_subject:
            with h5py.File(root / f"voxels_subj{s:02d}.h5", "w") as f:
                f.create_dataset("voxels", data=vox[s])
        else:
            np.save(root / f"voxels_subj{s:02d}.npy", vox[s])
    table = pd.DataFrame(records).sample(frac=1.0, random_state=seed)  # any row order
    if not split:
        table = table.drop(columns="split")
    if fmt == "csv":
        table.to_csv(root / "trials.csv", index=False)
    else:
        table.to_parquet(root / "trials.parquet", index=False)
    return {"voxels": vox, "table": table}


def test_design_has_three_reps_of_each_test_image():
    rows = design()
    counts = {}
    for *_, img, test in rows:
        if test:
            counts[img] = counts.get(img, 0) + 1
    assert set(counts.values()) == {3}
