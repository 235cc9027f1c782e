"""What is in a dataset: the numbers ``mindsearch data inspect`` prints (human or JSON)."""

from __future__ import annotations

import numpy as np


def inspect_dataset(ds) -> dict:
    """Summary per subject plus images and targets; value ranges come from the open-time scan."""
    t = ds.trials
    subjects = []
    for subject in ds.subjects:
        s = t[t["subject"] == subject]
        test = s[s["split"] == "test"]
        reps = s.groupby("image_id").size().value_counts().sort_index()
        sessions = sorted(int(x) for x in s["session"].unique())
        subjects.append({
            "subject": subject,
            "voxels": ds.n_voxels(subject),
            "voxel_file": ds.voxel_file(subject).name,
            "sessions": len(sessions),
            "session_numbers": sessions,
            "trials": int(len(s)),
            "train_trials": int(len(s) - len(test)),
            "test_trials": int(len(test)),
            "unique_images": int(s["image_id"].nunique()),
            "test_images": int(test["image_id"].nunique()),
            "repetitions": {str(int(k)): int(v) for k, v in reps.items()},
            "values": _values(ds.voxel_values(subject)),
        })
    report = {
        "path": str(ds.root),
        "layout": ds.layout,
        "simulated": bool(ds.manifest.get("simulated", False)),
        "pre_averaged": bool(ds.manifest.get("pre_averaged", False)),  # one row per image (Brain-Diffuser)
        "fingerprint": ds.fingerprint(),
        "subjects": [s["subject"] for s in subjects],
        "trials": int(len(t)),
        "unique_images": int(t["image_id"].nunique()),
        "test_images": int(t.loc[t["split"] == "test", "image_id"].nunique()),
        "per_subject": subjects,
        "images": {"present": ds.has_images},
        "targets": {"present": ds.has_targets, "available": list(ds.target_names)},
    }
    if ds.has_images:
        report["images"].update(shape=list(ds.image_shape), file=str(ds.image_file))
    if ds.has_targets:
        ids = ds.target_ids
        report["targets"].update(name=ds.target_space.get("name"), shape=[int(ids.size), *ds.target_shape],
                                 space=ds.target_space, file=str(ds.target_file),
                                 covers_trial_images=bool(np.isin(t["image_id"].unique(), ids).all()))
    return report


def _values(v: dict) -> dict:
    return {k: (None if v.get(k) is None else float(v[k])) for k in ("min", "max", "mean", "std")}


def format_report(r: dict) -> str:
    lines = [f"dataset   {r['path']}",
             f"layout    {r['layout']}{' (simulated)' if r['simulated'] else ''}"
             f"{' (pre-averaged: one row per image)' if r.get('pre_averaged') else ''}   fingerprint {r['fingerprint']}",
             f"trials    {r['trials']}   unique images {r['unique_images']}   test images {r['test_images']}",
             ""]
    head = ("subject", "voxels", "sessions", "trials", "train", "test", "images", "test img", "reps (n:images)",
            "min", "max", "mean", "std")
    rows = [head]
    for s in r["per_subject"]:
        v = s["values"]
        rows.append((str(s["subject"]), str(s["voxels"]), str(s["sessions"]), str(s["trials"]),
                     str(s["train_trials"]), str(s["test_trials"]), str(s["unique_images"]), str(s["test_images"]),
                     " ".join(f"{k}:{n}" for k, n in s["repetitions"].items()),
                     *(_num(v[k]) for k in ("min", "max", "mean", "std"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.append("")
    img = r["images"]
    lines.append(f"images    {'x'.join(map(str, img['shape'])) + '  ' + img['file'] if img['present'] else 'none'}")
    tg = r["targets"]
    if tg["present"]:
        sp = tg["space"]
        lines.append(f"targets   {tg['name']}  {'x'.join(map(str, tg['shape']))}  space model={sp.get('model')} "
                     f"layer={sp.get('layer')} tokens={sp.get('tokens')} dim={sp.get('dim')}")
    else:
        extra = f" (available: {', '.join(tg['available'])})" if tg["available"] else ""
        lines.append(f"targets   none{extra}")
    return "\n".join(lines)


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}"
