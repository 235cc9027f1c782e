"""``mindsearch embed``: encode voxels with a trained run."""

from __future__ import annotations

from pathlib import Path

import click

from mindsearch.cli.common import emit_json, say


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Trained run.")
@click.option("--voxels", default=None, type=click.Path(dir_okay=False),
              help="(trials, voxels) or (voxels,) float .npy of raw betas (or z-scored: --no-zscore).")
@click.option("--data", default=None, type=click.Path(exists=True),
              help="Or a dataset: encode its --trials (their sessions and image ids are stored with --store).")
@click.option("--trials", default=None, help="With --data: comma-separated trial numbers of --subject.")
@click.option("--trials-table", default=None, type=click.Path(dir_okay=False, exists=True),
              help="With --voxels: CSV/Parquet with one row per voxel row: trial, image_id, session, subject.")
@click.option("--subject", type=int, default=None, help="Subject the voxels come from (default: the run's).")
@click.option("--session", type=int, default=None,
              help="Session of the voxels, to z-score with that session's statistics (default: pooled).")
@click.option("--no-zscore", is_flag=True, help="The voxels are already z-scored.")
@click.option("--which", type=click.Choice(["disjointed", "backbone", "aligned"]), default="disjointed",
              show_default=True, help="Output written to a .npy (a .npz --out gets all of them).")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Output .npy or .npz.")
@click.option("--store", default=None,
              help="Also store the embeddings in this brain store (see `query --store`); storing the "
                   "same trials again replaces them.")
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Index root (default $MINDSEARCH_HOME/indexes).")
def embed(run_dir, voxels, data, trials, trials_table, subject, session, no_zscore, which, out, store, root):
    """Encode voxels: disjointed (retrieval), backbone and, with a prior, aligned embeddings."""
    import numpy as np

    from mindsearch.cli.common import parse_ints
    from mindsearch.errors import MindsearchError
    from mindsearch.io import atomic_path
    from mindsearch.runs import open_run
    from mindsearch.voxels import load_voxels

    if (voxels is None) == (data is None):
        raise MindsearchError("give exactly one of --voxels FILE or --data DIR --trials N,...")
    if out is None and store is None:
        raise MindsearchError("give --out FILE (.npy/.npz) and/or --store NAME")
    run = open_run(run_dir)
    meta = None
    if data is not None:
        if trials_table:
            raise MindsearchError("--trials-table goes with --voxels; with --data use --trials")
        trial_list = parse_ints(trials)
        if not trial_list:
            raise MindsearchError("--data needs --trials N,... (trial numbers of --subject)")
        subject = run.subject if subject is None else subject
        x, meta = _dataset_trials(data, subject, trial_list)
        source = f"{data} trials {trials}"
    else:
        x = load_voxels(voxels)
        source = str(voxels)
        if trials:
            raise MindsearchError("--trials selects trials of --data; with --voxels use --trials-table")
        if trials_table:
            meta = _read_trials_table(trials_table, len(x))
            subs = set(meta.pop("subject").tolist()) if "subject" in meta else set()
            if len(subs) > 1 or (subject is not None and subs and subs != {int(subject)}):
                raise MindsearchError(f"the trials table's subjects {sorted(subs)} disagree with one --subject "
                                      f"{subject}; store one subject at a time", trials_table)
            subject = subs.pop() if subs and subject is None else subject
    subject = run.check_voxels(x, subject, voxels or data)
    if meta is not None and session is None and not no_zscore:
        outputs = _encode_by_session(run, x, subject, meta["session"])
    else:
        outputs = run.encode(x, subject=subject, session=session, zscore=not no_zscore)
    if out is None:
        pass
    elif (out := Path(out)).suffix == ".npz":
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **outputs)
    elif out.suffix == ".npy":
        if which not in outputs:
            raise MindsearchError(f"run {run_dir} produces no {which!r} embeddings "
                                  f"(it has {sorted(outputs)})")
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, outputs[which])
    else:
        raise MindsearchError("output must end in .npy or .npz", out)
    say(f"encoded {len(x)} trial(s) of subject {subject} with {run.model_type} run {run_dir}: "
        + ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items()) + (f" -> {out}" if out else ""))
    if store:
        from mindsearch.engine import Engine

        kw = {"session": session}
        if meta is not None:
            kw = {"session": meta["session"], "trials": meta["trial"], "image_ids": meta["image_id"]}
        info = Engine(root).store_brain(store, run, outputs, subject=subject, source=source, **kw)
        emit_json(info)


def _dataset_trials(data, subject, trials):
    """Voxels of a subject's trials and their (trial, image_id, session) from the dataset's table."""
    import numpy as np

    from mindsearch.data import open_dataset
    from mindsearch.errors import MindsearchError

    with open_dataset(data) as ds:
        table = ds.trials[ds.trials["subject"] == int(subject)].set_index("trial")
        missing = [t for t in trials if t not in table.index]
        if missing:
            raise MindsearchError(f"subject {subject} has no trial(s) {missing[:5]}", data)
        rows = table.loc[trials]
        meta = {"trial": np.asarray(trials, np.int64), "image_id": rows["image_id"].to_numpy(np.int64),
                "session": rows["session"].to_numpy(np.int64)}
        return ds.voxels(int(subject), trials), meta


def _read_trials_table(path, n):
    """A CSV/Parquet trials table row-aligned with --voxels: trial, image_id, session (, subject)."""
    import numpy as np

    from mindsearch.errors import MindsearchError

    try:
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        t = pq.read_table(path) if str(path).endswith(".parquet") else pcsv.read_csv(path)
    except Exception as exc:  # pyarrow raises several types for a malformed file
        raise MindsearchError(f"not a readable trials table ({str(exc).splitlines()[0][:200]})", path) from None
    need = ["trial", "image_id", "session"]
    missing = [c for c in need if c not in t.column_names]
    if missing:
        raise MindsearchError(f"trials table lacks column(s) {missing} (needs {need}, optional subject)", path)
    if t.num_rows != n:
        raise MindsearchError(f"trials table has {t.num_rows} rows, --voxels has {n}", path)
    try:
        meta = {c: np.asarray(t.column(c).to_numpy(zero_copy_only=False), np.int64)
                for c in need + (["subject"] if "subject" in t.column_names else [])}
    except (TypeError, ValueError):
        raise MindsearchError("trials table columns must be integers", path) from None
    return meta


def _encode_by_session(run, x, subject, sessions):
    """Encode rows with their own session's z-scoring statistics, in the input order."""
    import numpy as np

    out = {}
    for s in np.unique(sessions):
        sel = np.flatnonzero(sessions == s)
        part = run.encode(x[sel], subject=subject, session=int(s), zscore=True)
        for k, v in part.items():
            if k not in out:
                out[k] = np.zeros((len(x),) + tuple(v.shape[1:]), v.dtype)
            out[k][sel] = v
    return out
