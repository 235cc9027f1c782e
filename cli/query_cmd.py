"""``mindsearch query``: brain samples in, nearest images out (or images in, brain samples out)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click

from mindsearch.cli.common import table

ROOT_HELP = "Index root (default: $MINDSEARCH_HOME/indexes, else ~/.mindsearch/indexes)."


@click.command()
@click.option("--voxels", type=click.Path(dir_okay=False), default=None,
              help=".npy of one trial (voxels,) or many (trials, voxels); raw betas unless --no-zscore.")
@click.option("--embedding", type=click.Path(dir_okay=False), default=None,
              help="Query with ready embeddings (.npy) instead of voxels; no run needed.")
@click.option("--image", default=None,
              help="Brain retrieval: an image file (encoded with --model/--weights) or an id/key in --index.")
@click.option("--store", default=None, help="Brain table to search with --image (see `embed --store`).")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None, help="Run that encodes --voxels.")
@click.option("--index", "index_name", default=None, help="Index to search (default: the only one under the root).")
@click.option("--subject", type=int, default=None, help="Subject of the voxels (default: the run's).")
@click.option("--session", type=int, default=None, help="Session of the voxels (z-scoring statistics).")
@click.option("--no-zscore", is_flag=True, help="The voxels are already z-scored.")
@click.option("--k", type=int, default=16, show_default=True)
@click.option("--no-rerank", is_flag=True, help="Skip re-ranking the shortlist with full token embeddings.")
@click.option("--shortlist", type=click.IntRange(min=1), default=16, show_default=True,
              help="Pooled candidates re-ranked by token cosine (MindEye1: 16); independent of --k.")
@click.option("--model", default=None, help="With --image FILE: open_clip model of the store's space.")
@click.option("--weights", default=None, help="With --image FILE: weights of that model.")
@click.option("--root", type=click.Path(file_okay=False), default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True, help="JSON lines: one object per hit (= --format json).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "parquet"]), default=None,
              help="Output: a table per query (default), JSON lines, CSV, or Parquet (needs --out).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the hits to this file instead of stdout (required for --format parquet).")
@click.option("--data", type=click.Path(), default=None, help="With --trial: the dataset holding the trials.")
@click.option("--trial", default=None, help="Query a dataset's trials directly: trial numbers, or test.")
@click.option("--local", is_flag=True, help="Run in this process even when a `mindsearch serve` is running.")
def query(voxels, embedding, image, store, run_dir, index_name, subject, session, no_zscore, k,
          no_rerank, shortlist, model, weights, root, as_json, fmt, out, data, trial, local):
    """Find the images nearest to brain samples (or, with --image --store, the reverse).

    Defaults come from `mindsearch use` (or `mindsearch demo`); while a `mindsearch serve`
    is running, queries go through it.
    """
    from mindsearch.cli.export_cmd import trial_inputs
    from mindsearch.errors import MindsearchError

    fmt = _format(fmt, as_json, out)
    if k < 1:
        raise MindsearchError(f"--k must be at least 1, got {k}")
    # --trial reads the dataset; an exported .npy brings its trial table: subject and session come along
    trial_voxels, subject, session = trial_inputs(voxels, embedding, data, trial, subject, session)
    if not (local or image) and click.get_current_context().get_parameter_source("root").name != "COMMANDLINE":
        from mindsearch.service.client import query_service

        hits = query_service(voxels=voxels, embedding=embedding, trial_voxels=trial_voxels, k=k,
                             index=index_name, run=run_dir, subject=subject, session=session,
                             zscore=not no_zscore, rerank=False if no_rerank else None, shortlist=shortlist)
        if hits is not None:
            _print(hits, fmt, out, ["rank", "id", "path", "score", "score_kind"],
                   title=lambda i: f"query {i}: top {k} of index {hits[i][0]['index'] if hits[i] else '-'}")
            return
    from mindsearch.engine import Engine

    engine = Engine(root)
    if image:
        if not store:
            raise MindsearchError("--image searches a brain table: give --store NAME")
        emb, space = _image_embedding(engine, image, index_name, model, weights)
        blocks = engine.query_brain(store, emb, space=space, k=k)
        _print(blocks, fmt, out, ["rank", "subject", "session", "trial", "image_id", "score", "score_kind"],
               title=lambda i: f"brain samples nearest to {image} (store {store})")
        return
    if (voxels is None) + (embedding is None) + (trial_voxels is None) != 2:
        raise MindsearchError("give exactly one of --voxels, --embedding, --trial or --image")
    index_name = _only_index(engine) if index_name is None else index_name
    rerank = False if no_rerank else None
    if voxels or trial_voxels is not None:
        if not run_dir:
            raise MindsearchError("--voxels needs --run RUN to encode them (or use --embedding); "
                                  "save a default with `mindsearch use --run RUN`")
        from mindsearch.runs import open_run
        from mindsearch.voxels import load_voxels

        run = open_run(run_dir)
        x = load_voxels(voxels) if voxels else trial_voxels
        blocks = engine.query(index_name, x, run, k=k, subject=subject, session=session,
                              zscore=not no_zscore, rerank=rerank, source=voxels or f"{data}#trial/{trial}",
                              shortlist=shortlist)
    else:
        from mindsearch.voxels import load_npy

        emb = load_npy(embedding, what="embeddings")
        blocks = engine.search(index_name, emb, k=k, rerank=rerank, shortlist=shortlist)
    hits = [[h.as_dict() for h in block] for block in blocks]
    _print(hits, fmt, out, ["rank", "id", "path", "score", "score_kind"],
           title=lambda i: f"query {i}: top {k} of index {index_name}")


def _only_index(engine) -> str:
    from mindsearch.errors import MindsearchError

    names = engine.list()
    if not names:
        raise MindsearchError("no index here: build one (`mindsearch index build`) or point --root / "
                              "MINDSEARCH_HOME at the folder that holds it", engine.root)
    if len(names) != 1:
        raise MindsearchError(f"choose an index with --index ({len(names)} under {engine.root}: "
                              f"{', '.join(names)}; another root: --root DIR or MINDSEARCH_HOME, "
                              "or save defaults with `mindsearch use`)")
    return names[0]


def _image_embedding(engine, image, index_name, model, weights):
    """An image's embedding: encode a file, or read a stored one from an index by id or key."""
    import numpy as np

    from mindsearch.errors import MindsearchError

    if Path(image).is_file():
        from PIL import Image

        from mindsearch.image_encoders import ImageEncoder

        if not model:
            raise MindsearchError("--image FILE needs --model (and --weights) of the store's space")
        try:
            with Image.open(image) as im:
                picture = im.convert("RGB")
        except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
            raise MindsearchError(f"cannot read the image ({exc})", image) from None
        enc = ImageEncoder.create(model, weights=weights)
        return enc.encode(enc.collate([enc.prepare(picture)])), enc.space
    if not index_name:
        raise MindsearchError("--image is neither a file nor usable without --index NAME to look it up", image)
    reader = engine.reader(index_name)
    ident = int(image) if str(image).isdigit() else engine.find_key(index_name, str(image))
    if ident is None:
        raise MindsearchError(f"no image with key {image!r} in index {index_name!r}")
    col = "tokens" if reader.tokens_shape else "embedding"
    table = reader.table()
    rows = table.search().where(f"id = {int(ident)}").select([col]).limit(1).to_arrow()
    if rows.num_rows == 0:
        raise MindsearchError(f"no image with id {ident} in index {index_name!r}")
    emb = np.asarray(rows.column(col).to_pylist(), np.float32)
    return emb, reader.space


def _format(fmt, as_json, out) -> str:
    from mindsearch.errors import MindsearchError

    fmt = fmt or ("json" if as_json else "table")
    if as_json and fmt != "json":
        raise MindsearchError(f"--json contradicts --format {fmt}")
    if fmt == "parquet" and not out:
        raise MindsearchError("--format parquet writes a file: give --out FILE.parquet")
    return fmt


def _print(blocks, fmt, out, columns, title):
    """Hits as a table per query, JSON lines, CSV or Parquet; every row carries its query row."""
    rows = [{"query": i, **hit} if "query" not in hit else hit for i, block in enumerate(blocks) for hit in block]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        from mindsearch.io import atomic_path

        with atomic_path(out) as tmp:
            pq.write_table(pa.Table.from_pylist(rows), str(tmp))
        return
    if fmt == "table":
        text = []
        for i, block in enumerate(blocks):
            if len(blocks) > 1 or i == 0:
                text.append(title(i))
            # a hit inside a container (hdf5 row, tar member, dataset image) shows its source reference
            text.append(table([[_fmt(h.get(c) if c != "path" else h.get("path") or h.get("source"))
                                for c in columns] for h in block], columns))
            if i + 1 < len(blocks):
                text.append("")
        text = "\n".join(text) + "\n"
    elif fmt == "json":
        text = "".join(json.dumps(r, default=str, allow_nan=False) + "\n" for r in rows)
    else:
        buf = io.StringIO()
        names = list(dict.fromkeys(c for r in rows for c in r)) or ["query", *columns]
        writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if out:
        from mindsearch.io import atomic_path

        with atomic_path(out) as tmp:
            tmp.write_text(text)
    else:
        _echo(text)


def _echo(text: str) -> None:
    """Print; a reader that closed the pipe early (``| head``) ends the command quietly with 0."""
    import os
    import sys

    try:
        click.echo(text, nl=False)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(0)


def _fmt(v):
    return f"{v:.4f}" if isinstance(v, float) else str(v)
