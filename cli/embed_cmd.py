"""``mindsearch embed``: encode voxels with a trained run."""

from __future__ import annotations

from pathlib import Path

import click

from mindsearch.cli.common import emit_json, say


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Trained run.")
@click.option("--voxels", required=True, type=click.Path(dir_okay=False),
              help="(trials, voxels) or (voxels,) float .npy of raw betas (or z-scored: --no-zscore).")
@click.option("--subject", type=int, default=None, help="Subject the voxels come from (default: the run's).")
@click.option("--session", type=int, default=None,
              help="Session of the voxels, to z-score with that session's statistics (default: pooled).")
@click.option("--no-zscore", is_flag=True, help="The voxels are already z-scored.")
@click.option("--which", type=click.Choice(["disjointed", "backbone", "aligned"]), default="disjointed",
              show_default=True, help="Output written to a .npy (a .npz --out gets all of them).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npy or .npz.")
@click.option("--store", default=None, help="Also store the embeddings in this brain table (see `query --store`).")
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Index root (default $MINDSEARCH_HOME/indexes).")
def embed(run_dir, voxels, subject, session, no_zscore, which, out, store, root):
    """Encode voxels: disjointed (retrieval), backbone and, with a prior, aligned embeddings."""
    import numpy as np

    from mindsearch.errors import MindsearchError
    from mindsearch.io import atomic_path
    from mindsearch.runs import open_run
    from mindsearch.voxels import load_voxels

    run = open_run(run_dir)
    x = load_voxels(voxels)
    subject = run.check_voxels(x, subject, voxels)
    outputs = run.encode(x, subject=subject, session=session, zscore=not no_zscore)
    out = Path(out)
    if out.suffix == ".npz":
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
        + ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items()) + f" -> {out}")
    if store:
        from mindsearch.engine import Engine

        info = Engine(root).store_brain(store, run, outputs, subject=subject, session=session,
                                        source=str(voxels))
        emit_json(info)
