"""Score a trained run on its dataset's test split with the retrieval protocol.

Repetition handling, named as the anchors do:
- ``betas``: average the z-scored repetitions before the model (MindEye1, Brain-Diffuser);
- ``outputs``: run every trial, average the model's outputs per image (MindEye2);
- ``single``: one trial per image (the first repetition), as MindEye1's Table 8.
On simulated data the Bayes ceiling for the same test set and protocol is reported beside:
``betas`` and ``outputs`` share the 3-repetition ceiling, ``single`` has its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mindsearch.retrieval import average_by_group, csls_scores, retrieval_scores
from mindsearch.errors import MindsearchError

AVERAGING = ("betas", "outputs", "single")


def test_embeddings(run, ds, average: str = "betas", embedding: str = "disjointed",
                    subject: int | None = None):
    """(brain embeddings, image ids) for the test split, one row per test image.

    Voxels are z-scored per session with training-trial statistics by the data layer, the
    same statistics the run was trained with.
    """
    from mindsearch.data.preprocess import load_split
    from mindsearch.run_schema import check_run_data

    if average not in AVERAGING:
        raise MindsearchError(f"unknown averaging {average!r}; choose one of {AVERAGING}")
    subject = run.subject if subject is None else subject
    check_run_data(run, ds, subject)  # subject, voxel count and a test split, before any encoding
    split = load_split(ds, subject, "test", zscore=True,
                       average="betas" if average == "betas" else "none")

    def encode(voxels):
        out = run.encode(voxels, subject=subject, zscore=False, outputs=(embedding,))
        if embedding not in out:
            raise MindsearchError(f"run {run.path} produces no {embedding!r} embeddings")
        return out[embedding]

    if average == "betas":
        return encode(split.voxels), split.image_ids
    ids = np.asarray([split.image_ids[g[0]] for g in split.groups])
    if average == "single":
        return encode(split.voxels[[g[0] for g in split.groups]]), ids
    return average_by_group(encode(split.voxels), split.groups), ids


def ceiling(ds, subject: int, average: str) -> dict:
    """The simulator's Bayes ceiling for this subject's test set, if the dataset has one."""
    gt_path = Path(ds.root) / "ground_truth.json"
    if not gt_path.is_file():
        return {}
    gt = json.loads(gt_path.read_text())
    entry = gt.get("subjects", {}).get(str(subject), {})
    mode = entry.get("single_trial" if average == "single" else "average_betas", {})
    return {f"ceiling_{k}": v for k, v in mode.items() if k.endswith("top1")}


def reference_bank(run, ds, subject: int, embedding: str = "disjointed", limit: int = 3000):
    """Training-split brain embeddings (repetitions averaged) and their images' embeddings, up to
    ``limit`` images: the reference for hubness correction, never the test set."""
    from mindsearch.data.preprocess import load_split

    split = load_split(ds, subject, "train", zscore=True, average="betas")
    rows = np.arange(len(split.image_ids))
    if len(rows) > limit:
        rows = np.sort(np.random.default_rng(0).choice(rows, limit, replace=False))
    brain = run.encode(split.voxels[rows], subject=subject, zscore=False, outputs=(embedding,))[embedding]
    return brain, ds.targets(split.image_ids[rows])


def evaluate_run(run_path, data=None, *, average: str = "betas", pool: int = 300,
                 loops: int = 30, seed: int = 42, subject: int | None = None,
                 embedding: str = "disjointed", hubness: str | None = None, hubness_k: int = 10) -> dict:
    """The protocol's scores for a run; ``hubness="csls"`` adds ``scores["csls"]`` (CSLS with a
    training-split reference bank) beside, never in place of, the plain-cosine numbers."""
    from mindsearch.data import open_dataset
    from mindsearch.runs import open_run

    run = open_run(run_path)
    data = data or run.data_path
    if not data:
        raise MindsearchError("run records no dataset; pass --data", run_path)
    with open_dataset(data) as ds:
        subject = run.subject if subject is None else subject
        brain, ids = test_embeddings(run, ds, average, embedding, subject)
        images = ds.targets(ids)
        scores = retrieval_scores(brain, images, pool=pool, loops=loops, seed=seed)
        scores.update(ceiling(ds, subject, average))
        if hubness == "csls":
            ref_brain, ref_images = reference_bank(run, ds, subject, embedding)
            scores["csls"] = csls_scores(brain, images, ref_brain, ref_images, k=hubness_k, pool=pool,
                                         loops=loops, seed=seed)
        elif hubness is not None:
            raise MindsearchError(f"unknown hubness correction {hubness!r} (choose csls)")
        if ds.fingerprint() != run.config.get("data", {}).get("fingerprint"):
            scores["warning"] = "dataset fingerprint differs from the one the run was trained on"
    scores.update({"run": str(run_path), "model": run.model_type, "subject": subject,
                   "average": average, "embedding": embedding, "space": run.space})
    return scores
