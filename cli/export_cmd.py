"""``mindsearch data export-trials``: a dataset's trials as a voxel .npy, ready for ``query --voxels``."""

from __future__ import annotations

from pathlib import Path

import click

from mindsearch.cli.common import say

SIDECAR = ".trials.csv"


def sidecar_path(npy: str | Path) -> Path:
    """``trial.npy`` -> ``trial.trials.csv``: which subject/session/trial/image each row is."""
    npy = Path(npy)
    return npy.with_name(npy.stem + SIDECAR)


@click.command("export-trials")
@click.option("--data", required=True, type=click.Path(exists=True), help="The dataset (any layout).")
@click.option("--subject", type=int, default=1, show_default=True)
@click.option("--trials", "which", default="test", show_default=True,
              help="test, train, or comma-separated trial numbers (the trial table's `trial` column).")
@click.option("--limit", type=int, default=None, help="Keep only the first N of those trials.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npy (trials, voxels).")
def export_trials(data, subject, which, limit, out):
    """Write raw (not z-scored) voxels of trials to OUT and their table to OUT's .trials.csv.

    `mindsearch query --voxels OUT` reads the table beside it for each row's session, so
    the run z-scores every trial with its own session's statistics.
    """
    import numpy as np

    from mindsearch.errors import MindsearchError
    from mindsearch.io import atomic_path

    out = Path(out)
    if out.suffix != ".npy":
        raise MindsearchError("--out must end in .npy", out)
    rows, voxels = read_trials(data, subject, which)
    if limit is not None:
        rows, voxels = rows.iloc[:limit], voxels[:limit]
    with atomic_path(out) as tmp:
        np.save(tmp, np.ascontiguousarray(voxels, np.float32))
        with atomic_path(sidecar_path(out)) as side:
            rows.to_csv(side, index=False)
    say(f"wrote {len(rows)} trial(s) x {voxels.shape[1]} voxels of subject {subject} to {out} "
        f"(rows described in {sidecar_path(out)})")


def read_trials(data, subject: int | None, which: str):
    """(rows, raw voxels) of a dataset's trials: ``which`` is test, train or trial numbers."""
    import numpy as np

    from mindsearch.cli.common import parse_ints
    from mindsearch.data import open_dataset
    from mindsearch.errors import MindsearchError

    if not data:
        raise MindsearchError("trials need their dataset: give --data DIR (or save one with `mindsearch use --data`)")
    with open_dataset(data) as ds:
        subject = ds.subjects[0] if subject is None else int(subject)
        table = ds.trials[ds.trials["subject"] == subject]
        if table.empty:
            raise MindsearchError(f"subject {subject} is not in this dataset (subjects: {ds.subjects})", data)
        if which in ("test", "train"):
            rows = table[table["split"] == which]
        else:
            wanted = parse_ints(which) or []
            rows = table.set_index("trial", drop=False).reindex(wanted)
            missing = [t for t, ok in zip(wanted, rows["subject"].notna()) if not ok]
            if missing:
                raise MindsearchError(f"subject {subject} has no trial {missing[0]}", data)
        if rows.empty:
            raise MindsearchError(f"no {which} trials for subject {subject}", data)
        rows = rows[["subject", "session", "trial", "image_id"]].astype(np.int64).reset_index(drop=True)
        return rows, ds.voxels(subject, rows["trial"].to_numpy())


def read_sidecar(npy) -> dict | None:
    """The trial table written beside an exported .npy, as columns of ints (None when absent)."""
    import csv

    from mindsearch.errors import MindsearchError

    path = sidecar_path(npy)
    if not path.is_file():
        return None
    try:
        with open(path, newline="") as f:
            records = list(csv.DictReader(f))
        return {c: [int(r[c]) for r in records] for c in ("subject", "session", "trial", "image_id")}
    except (KeyError, ValueError, TypeError) as exc:
        raise MindsearchError(f"not a trial table written by export-trials ({exc})", path) from None


def trial_inputs(voxels, embedding, data, trial, subject, session):
    """``query``'s view of its input: (the dataset trials' voxels or None, subject, session).

    ``--trial`` reads a dataset's trials; ``--voxels T.npy`` reads ``T.trials.csv`` when the export
    wrote one. Subject and session come from either, unless given; the session is one number, or
    one per row when the rows come from different sessions.
    """
    from mindsearch.errors import MindsearchError

    trial_voxels = None
    if trial is not None:
        if voxels or embedding:
            raise MindsearchError("give --trial or --voxels/--embedding, not both")
        rows, trial_voxels = read_trials(data, subject, trial)
        rows = {c: rows[c].tolist() for c in rows.columns}
    else:
        rows = read_sidecar(voxels) if voxels else None
    if rows:
        subject = rows["subject"][0] if subject is None else subject
        if session is None:
            session = rows["session"] if len(set(rows["session"])) > 1 else rows["session"][0]
    return trial_voxels, subject, session
