"""``mindsearch query``: brain samples in, nearest images out (or images in, brain samples out)."""

from __future__ import annotations

from pathlib import Path

import click

from mindsearch.cli.common import emit_json, table

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
@click.option("--model", default=None, help="With --image FILE: open_clip model of the store's space.")
@click.option("--weights", default=None, help="With --image FILE: weights of that model.")
@click.option("--root", type=click.Path(file_okay=False), default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True, help="JSON lines: one object per hit.")
@click.option("--data", type=click.Path(), default=None, help="With --trial: the dataset holding the trials.")
@click.option("--trial", default=None, help="Query a dataset's trials directly: trial numbers, or test.")
@click.option("--local", is_flag=True, help="Run in this process even when a `mindsearch serve` is running.")
def query(voxels, embedding, image, store, run_dir, index_name, subject, session, no_zscore, k,
          no_rerank, model, weights, root, as_json, data, trial, local):
    """Find the images nearest to brain samples (or, with --image --store, the reverse).

    Defaults come from `mindsearch use` (or `mindsearch demo`); while a `mindsearch serve`
    is running, queries go through it.
    """
    from mindsearch.errors import MindsearchError

    from mindsearch.cli.export_cmd import trial_inputs

    # --trial reads the dataset; an exported .npy brings its trial table: subject and session come along
    trial_voxels, subject, session = trial_inputs(voxels, embedding, data, trial, subject, session)
    if not (local or image) and click.get_current_context().get_parameter_source("root").name != "COMMANDLINE":
        from mindsearch.service.client import query_service

        hits = query_service(voxels=voxels, embedding=embedding, trial_voxels=trial_voxels, k=k,
                             index=index_name, run=run_dir, subject=subject, session=session,
                             zscore=not no_zscore, rerank=False if no_rerank else None)
        if hits is not None:
            _print(hits, as_json, ["rank", "id", "path", "score"],
                   title=lambda i: f"query {i}: top {k} of index {hits[i][0]['index'] if hits[i] else '-'}")
            return
    from mindsearch.engine import Engine

    engine = Engine(root)
    if image:
        if not store:
            raise MindsearchError("--image searches a brain table: give --store NAME")
        emb, space = _image_embedding(engine, image, index_name, model, weights)
        blocks = engine.query_brain(store, emb, space=space, k=k)
        _print(blocks, as_json, ["rank", "subject", "session", "trial", "image_id", "score"],
               title=lambda i: f"brain samples nearest to {image} (store {store})")
        return
    if (voxels is None) + (embedding is None) + (trial_voxels is None) != 2:
        raise MindsearchError("give exactly one of --voxels, --embedding, --trial or --image")
    index_name = index_name or _only_index(engine)
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
                              zscore=not no_zscore, rerank=rerank, source=voxels or f"{data}#trial/{trial}")
    else:
        from mindsearch.voxels import load_npy

        emb = load_npy(embedding, what="embeddings")
        blocks = engine.search(index_name, emb, k=k, rerank=rerank)
    hits = [[h.as_dict() for h in block] for block in blocks]
    _print(hits, as_json, ["rank", "id", "path", "score"],
           title=lambda i: f"query {i}: top {k} of index {index_name}")


def _only_index(engine) -> str:
    from mindsearch.errors import MindsearchError

    names = engine.list()
    if len(names) != 1:
        raise MindsearchError(f"choose an index with --index ({len(names)} under {engine.root}: "
                              f"{', '.join(names) or 'none'}; another root: --root DIR or MINDSEARCH_HOME, "
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
    coll = engine.open(index_name)
    ident = int(image) if str(image).lstrip("-").isdigit() else None
    if ident is None:
        rows = coll.table.search().where(f"key = '{image}'").select(["id"]).limit(1).to_arrow()
        if rows.num_rows == 0:
            raise MindsearchError(f"no image with key {image!r} in index {index_name!r}")
        ident = int(rows.column("id")[0].as_py())
    cols = ["embedding"] + (["tokens"] if coll.tokens_shape else [])
    rows = coll.fetch([ident], cols)
    if rows.num_rows == 0:
        raise MindsearchError(f"no image with id {ident} in index {index_name!r}")
    col = "tokens" if coll.tokens_shape else "embedding"
    emb = np.asarray(rows.column(col).to_pylist(), np.float32)
    return emb, coll.space


def _print(blocks, as_json, columns, title):
    if as_json:
        for block in blocks:
            for hit in block:
                emit_json(hit)
        return
    for i, block in enumerate(blocks):
        if len(blocks) > 1 or i == 0:
            click.echo(title(i))
        click.echo(table([[_fmt(h.get(c)) for c in columns] for h in block], columns))
        if i + 1 < len(blocks):
            click.echo("")


def _fmt(v):
    return f"{v:.4f}" if isinstance(v, float) else str(v)
