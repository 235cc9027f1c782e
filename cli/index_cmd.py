"""``mindsearch index``: build, inspect and measure image-embedding indexes."""

from __future__ import annotations

import click

from mindsearch.cli.common import emit_json, say, table

ROOT_HELP = ("Index root: a folder or an object-store URI such as s3://bucket/prefix (default: "
             "$MINDSEARCH_HOME/indexes, else ~/.mindsearch/indexes).")


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
@click.option("--ray-workers", type=click.IntRange(min=1), default=None,
              help="Spread the embedding (or LAION shard reading) over N Ray workers; this process stays "
                   "the one writer (pip install 'mindsearch[distributed]').")
@click.option("--ray-address", default=None,
              help="With --ray-workers: join this Ray cluster (auto, ray://host:10001) instead of starting "
                   "a local one.")
@click.option("--json", "as_json", is_flag=True)
def build(name, images, embeddings, data, model, weights, output, store_tokens, kind, strict, batch_size,
          shard_size, workers, device, root, table_uri, ray_workers, ray_address, as_json):
    """Embed and index a collection; re-running resumes an interrupted build."""
    from mindsearch.engine import Engine
    from mindsearch.errors import MindsearchError

    if sum(x is not None for x in (images, embeddings, data)) != 1:
        raise MindsearchError("give exactly one of --images, --embeddings or --data")
    engine = Engine(root)
    if ray_workers and data:
        raise MindsearchError("--ray-workers embeds --images or reads --embeddings; --data needs no workers")
    if ray_workers and images:
        from mindsearch import distributed

        info = distributed.build_from_images(engine.root, name, images, model=model, weights=weights,
                                             output=output, store_tokens=store_tokens, strict=strict,
                                             batch_size=batch_size, shard_size=shard_size, workers=ray_workers,
                                             kind=kind, device=device, address=ray_address, progress=say,
                                             table_uri=table_uri)
    elif ray_workers:
        from mindsearch import distributed

        space = _precomputed_space(model, weights)
        info = distributed.build_from_embeddings(engine.root, name, embeddings, space=space, workers=ray_workers,
                                                 kind=kind, address=ray_address, progress=say,
                                                 table_uri=table_uri)
    elif images:
        info = engine.build_from_images(name, images, model=model, weights=weights, output=output,
                                        store_tokens=store_tokens, strict=strict, batch_size=batch_size,
                                        shard_size=shard_size, workers=workers, kind=kind, device=device, progress=say,
                                        table_uri=table_uri)
    elif embeddings:
        space = _precomputed_space(model, weights)
        info = engine.build_from_embeddings(name, embeddings, space=space, kind=kind, progress=say,
                                            table_uri=table_uri)
    else:
        info = engine.build_from_dataset(name, data, kind=kind, progress=say)
    if as_json:
        emit_json(info)
    else:
        rec = info["index"]
        click.echo(f"index {name}: {info['count']} images, faiss {rec.get('key')}, table version "
                   f"{info['table_version']}, in {engine.root}/{name}")
        if info.get("skipped"):
            click.echo(f"{len(info['skipped'])} unreadable image(s) skipped (listed above)")


def _precomputed_space(model, weights) -> dict:
    """The space record of clip-retrieval / LAION embeddings: the model that made them, pooled."""
    return {"name": f"precomputed:{model}", "model": model, "layer": "final", "pooling": "self",
            "weights": weights or "unknown"}


def _manifests(root):
    """``[(name, kind, manifest)]`` of the indexes and brain stores under the root (no LanceDB)."""
    from mindsearch.engine import BRAIN_DIR, default_root
    from mindsearch.indexes import manifest as mf
    from mindsearch.indexes.remote import is_remote

    base = default_root(root)
    if is_remote(base):  # an object store: the manifests under the prefix (no brain stores there)
        from mindsearch.indexes.remote import RemoteIndex, list_names

        return base, [(n, "images", RemoteIndex(base, n).read_manifest()[0]) for n in list_names(base)]
    out = []
    for folder, kind in ((base, "images"), (base / BRAIN_DIR, "brain")):
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if not p.name.startswith(".") and (p / mf.MANIFEST).is_file():
                out.append((p.name, kind, mf.read(p)))
    return base, out


def _summary(name, kind, m) -> dict:
    idx = m.get("index") or {}
    space = m.get("space") or {}
    return {"name": name, "kind": m.get("kind", kind), "count": m["count"], "dim": m["dim"],
            "tokens": "x".join(map(str, m["tokens_shape"])) if m.get("tokens_shape") else "-",
            "faiss": idx.get("key") or "-", "space": f"{space.get('model')}/{space.get('layer')}",
            "version": m.get("version", 0), "table_version": m["table"]["version"],
            "updated": m.get("updated", "")}


@index.command("list")
@click.option("--root", type=click.Path(file_okay=False), default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True, help="JSON lines: one object per index.")
def list_(root, as_json):
    """List the indexes and brain stores under the root (reads manifests only)."""
    base, found = _manifests(root)
    rows = [_summary(*f) for f in found]
    if as_json:
        for r in rows:
            emit_json(r)
        return
    if not rows:
        click.echo(f"no indexes under {base}")
        return
    cols = ["name", "kind", "count", "dim", "tokens", "faiss", "space", "version", "updated"]
    click.echo(table([[str(r[c]) for c in cols] for r in rows], cols))


@index.command("info")
@click.argument("name")
@click.option("--brain", is_flag=True, help="NAME is a brain store (see `embed --store`).")
@click.option("--root", type=click.Path(file_okay=False), default=None, help=ROOT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
def info(name, brain, root, as_json):
    """Show an index's manifest: space, counts, FAISS parameters, table version, recall."""
    from mindsearch.engine import BRAIN_DIR, default_root
    from mindsearch.errors import MindsearchError
    from mindsearch.indexes import manifest as mf
    from mindsearch.indexes.remote import RemoteIndex, is_remote

    base = default_root(root)
    if is_remote(base):
        if brain:
            raise MindsearchError("brain stores live under a local index root, not on object storage", base)
        mf.check_name(name, base)
        m = RemoteIndex(base, name).read_manifest()[0]
    else:
        base = base / BRAIN_DIR if brain else base
        mf.check_name(name, base)
        m = mf.read(base / name)
    if as_json:
        emit_json(m)
        return
    idx = m.get("index") or {}
    lines = [("name", name), ("kind", m.get("kind", "images")), ("path", f"{base}/{name}"),
             ("space", ", ".join(f"{k}={v}" for k, v in m["space"].items())),
             ("vectors", f"{m['count']} x {m['dim']}" + (f" (tokens {m['tokens_shape'][0]}x{m['tokens_shape'][1]})"
                                                        if m.get("tokens_shape") else "")),
             ("table", f"{m['table']['uri']} ({m['table']['name']}, version {m['table']['version']})"),
             ("faiss", f"{idx.get('key')} {idx.get('file')} ntotal {idx.get('ntotal')} params {idx.get('params')}"
              if idx else "not built"),
             ("shards", str(len(m["shards"]["finished"]))), ("version", str(m.get("version", 0))),
             ("updated", m.get("updated", ""))]
    for label, rec in (m.get("recall") or {}).items():
        lines.append((f"recall {label}", ", ".join(f"{k}={v}" for k, v in rec.items()
                                                    if k.startswith("recall@") or k in ("p50_ms", "qps"))))
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        click.echo(f"{label.ljust(width)}  {value}")


@index.command("rm")
@click.argument("name")
@click.option("--brain", is_flag=True, help="NAME is a brain store.")
@click.option("--root", type=click.Path(file_okay=False), default=None, help=ROOT_HELP)
def rm(name, brain, root):
    """Delete an index (or brain store), waiting for a writer that holds it."""
    from mindsearch.engine import Engine

    path = Engine(root).remove(name, brain=brain)
    say(f"removed {path}")


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
