"""``mindsearch index``: build, inspect and measure image-embedding indexes."""

from __future__ import annotations

import click

from mindsearch.cli.common import emit_json, say

ROOT_HELP = "Index root (default: $MINDSEARCH_HOME/indexes, else ~/.mindsearch/indexes)."


@click.group()
def index():
    """Build and inspect image-embedding indexes (LanceDB table + FAISS index)."""


@index.command("build")
@click.option("--name", required=True, help="Index name (a directory under the root).")
@click.option("--images", "images", type=click.Path(exists=True), default=None,
              help="A folder of images, an images .hdf5 (MindEye2 layout) or webdataset .tar shards.")
@click.option("--embeddings", type=click.Path(exists=True, file_okay=False), default=None,
              help="Precomputed embeddings in the clip-retrieval/LAION layout (img_emb/, metadata/).")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="A dataset: index its target embeddings by image id (e.g. a simulation).")
@click.option("--model", default="ViT-L-14", show_default=True,
              help="open_clip model name (or model-config JSON) for --images; the space of --embeddings.")
@click.option("--weights", default=None,
              help="Weights file/dir; 'random' opts in to random weights; omitted: the hub (online only). "
                   "With --embeddings: an identifier of the weights that produced them.")
@click.option("--output", type=click.Choice(["final", "hidden", "tokens"]), default="final", show_default=True,
              help="final embedding, MindEye1 257-token hidden states, or MindEye2 patch tokens.")
@click.option("--store-tokens", is_flag=True, help="Store full token embeddings for two-stage re-ranking.")
@click.option("--kind", default="auto", show_default=True,
              help="auto (exact up to ~1M vectors), flat, hnsw, ivf, ivfpq or a faiss factory string.")
@click.option("--strict", is_flag=True, help="Fail on the first unreadable image instead of skipping it.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--shard-size", type=int, default=1000, show_default=True,
              help="Images per shard of a folder/hdf5 source (the unit of resume).")
@click.option("--workers", type=int, default=None, help="Image decoding threads.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--root", type=click.Path(file_okay=False), default=None, help=ROOT_HELP)
@click.option("--table-uri", default=None, help="Put the LanceDB table elsewhere, e.g. s3://bucket/path.")
@click.option("--json", "as_json", is_flag=True)
def build(name, images, embeddings, data, model, weights, output, store_tokens, kind, strict, batch_size,
          shard_size, workers, device, root, table_uri, as_json):
    """Embed and index a collection; re-running resumes an interrupted build."""
    from mindsearch.engine import Engine
    from mindsearch.errors import MindsearchError

    if sum(x is not None for x in (images, embeddings, data)) != 1:
        raise MindsearchError("give exactly one of --images, --embeddings or --data")
    engine = Engine(root)
    if images:
        info = engine.build_from_images(name, images, model=model, weights=weights, output=output,
                                        store_tokens=store_tokens, strict=strict, batch_size=batch_size,
                                        shard_size=shard_size, workers=workers, kind=kind, device=device, progress=say,
                                        table_uri=table_uri)
    elif embeddings:
        space = {"name": f"precomputed:{model}", "model": model, "layer": "final", "pooling": "self",
                 "weights": weights or "unknown"}
        info = engine.build_from_embeddings(name, embeddings, space=space, kind=kind, progress=say,
                                            table_uri=table_uri)
    else:
        info = engine.build_from_dataset(name, data, kind=kind, progress=say)
    if as_json:
        emit_json(info)
    else:
        rec = info["index"]
        click.echo(f"index {name}: {info['count']} images, faiss {rec.get('key')}, table version "
                   f"{info['table_version']}, in {engine.root / name}")
        if info.get("skipped"):
            click.echo(f"{len(info['skipped'])} unreadable image(s) skipped (listed above)")


@index.command("list")
@click.option("--root", type=click.Path(file_okay=False), default=None, help=ROOT_HELP)
def list_(root):
    """List the indexes under the root."""
    from mindsearch.engine import Engine

    engine = Engine(root)
    names = engine.list()
    if not names:
        click.echo(f"no indexes under {engine.root}")
    for n in names:
        m = engine.open(n).manifest
        click.echo(f"{n}\t{m['count']} vectors\t{(m.get('index') or {}).get('key')}\t"
                   f"{m['space'].get('model')}/{m['space'].get('layer')}")


@index.command("info")
@click.argument("name")
@click.option("--root", type=click.Path(file_okay=False), default=None, help=ROOT_HELP)
def info(name, root):
    """Print an index's manifest (space, counts, FAISS parameters, table version, recall)."""
    from mindsearch.engine import Engine

    emit_json(Engine(root).open(name).manifest)


@index.command("recall")
@click.argument("name")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Brain-predicted queries: encode this run's held-out test trials.")
@click.option("--data", type=click.Path(), default=None, help="Dataset of the run (default: its own).")
@click.option("--queries", type=click.Path(dir_okay=False), default=None,
              help="Or ready query embeddings (.npy) -- they should be brain predictions, not images.")
@click.option("--k", type=int, default=16, show_default=True)
@click.option("--root", type=click.Path(file_okay=False), default=None, help=ROOT_HELP)
def recall(name, run_dir, data, queries, k, root):
    """Recall@k of the index against exact search with held-out brain queries (saved in the manifest)."""
    from mindsearch.engine import Engine
    from mindsearch.errors import MindsearchError

    engine = Engine(root)
    if run_dir:
        from mindsearch.eval.run_eval import test_embeddings
        from mindsearch.data import open_dataset
        from mindsearch.runs import open_run

        run = open_run(run_dir)
        with open_dataset(data or run.data_path) as ds:
            q, _ = test_embeddings(run, ds, "single")
        res = engine.measure_recall(name, q, space=run.space, k=k, source=f"run {run_dir} test trials")
    elif queries:
        from mindsearch.voxels import load_npy

        res = engine.measure_recall(name, load_npy(queries, what="queries", min_ndim=2), k=k,
                                    source=str(queries))
    else:
        raise MindsearchError("give --run RUN (its held-out test trials) or --queries FILE.npy")
    emit_json(res)
