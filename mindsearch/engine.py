"""The query engine: image collections in, brain samples as queries, hits out.

``Engine`` is the Python face of ``mindsearch index`` and ``mindsearch query``: the same verbs
for notebooks. Collections (``indexes.collection.Collection``: a LanceDB table + a FAISS index +
a manifest) live under a root directory: ``--root`` / ``Engine(root)``, else
``$MINDSEARCH_HOME/indexes``, else ``~/.mindsearch/indexes``. A root may also be an object-store
URI for the tables (``table_uri``); manifests and FAISS files stay local.

Every hit is attributable: it carries the index name, the table version it was read at, and
the run that encoded the query.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from mindsearch.errors import MindsearchError
from mindsearch.space import check_same_space, describe, pooled

BRAIN_DIR = "_brain"


def default_root(root: str | Path | None = None) -> Path:
    if root:
        return Path(root)
    home = os.environ.get("MINDSEARCH_HOME")
    return (Path(home) if home else Path.home() / ".mindsearch") / "indexes"


def pool_tokens(emb: np.ndarray, pooling: str | None) -> np.ndarray:
    """The pooled vector of (n, T, D) embeddings, as the space record says it is formed."""
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim == 2:
        return emb
    if pooling == "mean":
        return emb.mean(axis=1)
    return emb[:, 0]  # "first" (CLS / simulator token 0) and "self" (T == 1)


@dataclass
class Hit:
    rank: int
    id: int
    path: str | None
    score: float
    index: str
    index_version: int
    run: str | None

    def as_dict(self) -> dict:
        return {"rank": self.rank, "id": self.id, "path": self.path, "score": self.score,
                "index": self.index, "index_version": self.index_version, "run": self.run}


class Engine:
    def __init__(self, root: str | Path | None = None):
        self.root = default_root(root)

    # ------------------------------------------------------------------ collections
    def open(self, name: str):
        from mindsearch.indexes.collection import MANIFEST, Collection

        if not (self.root / name / MANIFEST).is_file():
            have = ", ".join(self.list()) or "none"
            raise MindsearchError(f"no index named {name!r} (indexes here: {have})", self.root)
        return Collection.open(self.root, name)

    def list(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "manifest.json").is_file())

    def create_or_resume(self, name: str, space: dict, dim: int, tokens_shape, extra_columns=None,
                         table_uri: str | None = None):
        from mindsearch.indexes.collection import MANIFEST, Collection

        if (self.root / name / MANIFEST).is_file():
            coll = Collection.open(self.root, name)
            check_same_space(coll.space, space, f"index {name!r}", "the new images")
            return coll
        return Collection.create(self.root, name, space, dim, tokens_shape,
                                 extra_columns=extra_columns, table_uri=table_uri)

    def build_from_images(self, name: str, source: str | Path, *, model: str = "ViT-L-14",
                          weights: str | None = None, output: str = "final",
                          store_tokens: bool = False, strict: bool = False, batch_size: int = 32,
                          workers: int | None = None, kind: str = "auto", device: str = "cpu",
                          shard_size: int = 1000, progress=None, table_uri: str | None = None) -> dict:
        """Embed a folder / images hdf5 / webdataset shards with open_clip and index them.

        Re-running the same command resumes: shards already finished are skipped, an
        unfinished one is rolled back and redone.
        """
        from mindsearch.image_encoders import ImageEncoder, embed_shards
        from mindsearch.image_sources import open_source

        say = progress or (lambda msg: None)
        src = open_source(source, strict=strict, shard_size=shard_size)
        encoder = ImageEncoder.create(model, output=output, weights=weights, device=device)
        space = encoder.space
        t, d = encoder.tokens, encoder.dim
        tokens_shape = (t, d) if (store_tokens and t > 1) else None
        coll = self.create_or_resume(name, space, d, tokens_shape, table_uri=table_uri)
        done = set(coll.finished_shards)
        todo = [s for s in src.shards() if s.shard_id not in done]
        say(f"index {name}: {len(done)} shard(s) already done, {len(todo)} to embed "
            f"with {describe(space)}")

        def batches():
            for shard, records, emb in embed_shards(todo, encoder, batch_size=batch_size,
                                                    num_workers=workers, progress=True):
                yield shard.shard_id, image_batch(records, emb, space, tokens_shape), len(records)

        ingest(coll, batches())
        for s in src.skipped:
            say(f"skipped {s['path']}: {s['error']}")
        rec = coll.build_index(kind)
        return {"name": name, "count": coll.count, "index": rec, "skipped": list(src.skipped),
                "space": space, "table_version": coll.table_version}

    def build_from_embeddings(self, name: str, directory: str | Path, *, space: dict,
                              kind: str = "auto", progress=None, table_uri: str | None = None) -> dict:
        """Index precomputed embeddings in the clip-retrieval / LAION layout, no recomputation."""
        from mindsearch.indexes import clip_retrieval

        say = progress or (lambda msg: None)
        dim = clip_retrieval.dim(directory)
        space = {**space, "dim": dim, "tokens": 1}
        coll = self.create_or_resume(name, space, dim, None, table_uri=table_uri,
                                      extra_columns={"caption": "string", "url": "string"})
        shards = clip_retrieval.iter_shards(directory, skip=set(coll.finished_shards))
        ingest(coll, ((shard_id, batch, None) for shard_id, batch in shards),
                lambda shard_id: say(f"index {name}: shard {shard_id} added ({coll.count} vectors)"))
        rec = coll.build_index(kind)
        return {"name": name, "count": coll.count, "index": rec, "space": space,
                "table_version": coll.table_version}

    def build_from_dataset(self, name: str, data: str | Path, *, targets: str | None = None,
                           store_tokens: bool = True, kind: str = "auto", shard_size: int = 10_000,
                           progress=None) -> dict:
        """Index a dataset's target embeddings (e.g. the simulator's images), keyed by image id."""
        from mindsearch.data import open_dataset

        say = progress or (lambda msg: None)
        with open_dataset(data, targets=targets) as ds:
            if not ds.has_targets:
                raise MindsearchError("dataset has no target embeddings to index", data)
            space = dict(ds.target_space)
            ids = np.asarray(ds.target_ids, dtype=np.int64)
            t, d = ds.target_shape
            tokens_shape = (t, d) if (store_tokens and t > 1) else None
            coll = self.create_or_resume(name, space, d, tokens_shape)
            done = set(coll.finished_shards)
            root = Path(data).resolve()

            def batches():
                for start in range(0, len(ids), shard_size):
                    shard_id = f"targets-{start:09d}"
                    if shard_id in done:
                        continue
                    chunk = ids[start:start + shard_size]
                    emb = ds.targets(chunk)
                    batch = {"id": chunk, "embedding": pool_tokens(emb, space.get("pooling")),
                             "key": [f"{root}#image/{i}" for i in chunk]}
                    if tokens_shape:
                        batch["tokens"] = emb
                    yield shard_id, batch, len(chunk)

            ingest(coll, batches())
            say(f"index {name}: {coll.count} images from {data}")
        rec = coll.build_index(kind)
        return {"name": name, "count": coll.count, "index": rec, "space": space,
                "table_version": coll.table_version}

    # ------------------------------------------------------------------ queries
    def search(self, index: str, embeddings: np.ndarray, *, k: int = 16, space: dict | None = None,
               rerank: bool | None = None, run_id: str | None = None) -> list[list[Hit]]:
        """Nearest images for (n, T, D) or (n, D) embeddings; one list of hits per query row."""
        coll = self.open(index)
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim == 1:
            emb = emb[None]
        if space is not None:
            # A query in the index's token space may be pooled into it; anything else is refused.
            if not _compatible(space, coll.space):
                check_same_space(space, coll.space, f"the query ({run_id or 'embeddings'})",
                                 f"index {index!r}")
        q = pool_tokens(emb, (space or coll.space).get("pooling"))
        if q.shape[1] != coll.dim:
            raise MindsearchError(f"queries have {q.shape[1]} dimensions, index {index!r} has {coll.dim}")
        use_rerank = (coll.tokens_shape is not None and emb.ndim == 3 and emb.shape[1] > 1
                      and tuple(emb.shape[1:]) == coll.tokens_shape) if rerank is None else rerank
        result = coll.search(q, k, rerank_tokens=emb if use_rerank else None)
        ids, scores, info = result.ids, result.scores, result.info
        paths = _paths(coll, ids)
        version = int(info["table"]["version"])
        return [[Hit(r + 1, int(i), paths.get(int(i)), float(s), index, version, run_id)
                 for r, (i, s) in enumerate(zip(row_ids, row_scores)) if i >= 0]
                for row_ids, row_scores in zip(ids, scores)]

    def query(self, index: str, voxels: np.ndarray, run, *, k: int = 16, subject: int | None = None,
              session: int | None = None, zscore: bool = True, rerank: bool | None = None,
              source: str | Path = "<voxels>") -> list[list[Hit]]:
        """Encode voxels with a run, then search: ``mindsearch query --voxels``."""
        subject = run.check_voxels(voxels, subject, source)
        coll = self.open(index)
        if not _compatible(run.space, coll.space):
            check_same_space(run.space, coll.space, f"run {run.path.name}", f"index {index!r}")
        out = run.encode(voxels, subject=subject, session=session, zscore=zscore, outputs=("disjointed",))
        return self.search(index, out["disjointed"], k=k, space=run.space, rerank=rerank,
                           run_id=str(run.path))

    def measure_recall(self, index: str, queries: np.ndarray, *, space: dict | None = None,
                       k: int = 16, label: str = "brain-heldout", source: str | None = None) -> dict:
        """Recall@k of the index against exact search with held-out brain-predicted queries."""
        from mindsearch.indexes.recall import measure_collection

        coll = self.open(index)
        q = pool_tokens(queries, (space or coll.space).get("pooling"))
        return measure_collection(coll, q, k, label=label, source=source)

    # ------------------------------------------------------------------ brain samples
    def _brain_db(self):
        from mindsearch.indexes import table as tbl

        path = self.root / BRAIN_DIR
        path.mkdir(parents=True, exist_ok=True)
        return tbl.connect(str(path))

    def store_brain(self, name: str, run, outputs: dict, *, subject: int,
                    session: int | None = None, trials: Iterable[int] | None = None,
                    image_ids: Iterable[int] | None = None, source: str | None = None) -> dict:
        """Append encoded brain samples to the brain table ``name`` (created on first use)."""
        from mindsearch.indexes import table as tbl

        dis = np.asarray(outputs["disjointed"], dtype=np.float32)
        n = len(dis)
        shape = tuple(dis.shape[1:])
        db = self._brain_db()
        if name in _table_names(db):
            table = tbl.open_table(db, name)
            meta = table.schema.metadata or {}
            stored = tuple(int(s) for s in meta.get(b"shape", b"").decode().split("x") if s)
            if int(np.prod(stored)) != int(np.prod(shape)):
                raise MindsearchError(f"brain table {name!r} holds {stored} embeddings, these are {shape}",
                                      self.root / BRAIN_DIR)
            _check_brain_space(self.root / BRAIN_DIR / f"{name}.space.json", run.space, name)
        else:
            table = tbl.create_table(db, name, tbl.brain_schema(shape))
            from mindsearch.io import write_json

            write_json(self.root / BRAIN_DIR / f"{name}.space.json", run.space)

        def col(values, default):
            return np.full(n, default, np.int64) if values is None else np.asarray(list(values), np.int64)

        aligned = outputs.get("aligned")
        batch = {"subject": np.full(n, subject, np.int32),
                 "session": np.full(n, -1 if session is None else session, np.int32),
                 "trial": col(trials, -1), "image_id": col(image_ids, -1),
                 "run_id": [str(run.path)] * n,
                 "disjointed": dis.reshape(n, -1)}
        if aligned is not None:
            batch["aligned"] = np.asarray(aligned, np.float32).reshape(n, -1)
        arrow = tbl.to_arrow(batch, table.schema, path=self.root / BRAIN_DIR)
        version = tbl.append(table, arrow, path=self.root / BRAIN_DIR)
        return {"store": name, "added": n, "table_version": int(version), "source": source}

    def query_brain(self, store: str, image_embedding: np.ndarray, *, space: dict | None = None,
                    k: int = 16) -> list[list[dict]]:
        """Brain retrieval: the stored brain samples nearest to an image embedding (exact)."""
        from mindsearch.indexes import table as tbl

        db = self._brain_db()
        if store not in _table_names(db):
            raise MindsearchError(f"no brain table named {store!r}", self.root / BRAIN_DIR)
        space_file = self.root / BRAIN_DIR / f"{store}.space.json"
        if space is not None:
            _check_brain_space(space_file, space, store)
        table = tbl.open_table(db, store)
        data = table.to_arrow()
        vecs = data.column("disjointed").combine_chunks().values.to_numpy(zero_copy_only=False)
        vecs = vecs.reshape(data.num_rows, -1).astype(np.float32)
        q = np.asarray(image_embedding, np.float32)
        q = q.reshape(len(q), -1) if q.ndim > 1 else q[None]
        if q.shape[1] != vecs.shape[1]:
            raise MindsearchError(f"image embedding has {q.shape[1]} values, brain table {store!r} "
                                  f"holds {vecs.shape[1]}")
        from mindsearch.indexes.faiss_index import as_vectors, exact_search

        # Brain tables hold thousands of trials, not millions: exact cosine, no index to keep.
        rows, scores = exact_search(as_vectors(vecs, path=space_file.parent),
                                    None, as_vectors(q, what="image embedding"), min(k, len(vecs)))
        cols = {c: data.column(c).to_numpy(zero_copy_only=False)
                for c in ("subject", "session", "trial", "image_id", "run_id")}
        return [[{"rank": r + 1, "row": int(j), **{c: _py(cols[c][j]) for c in cols},
                  "score": float(sc), "store": store, "store_version": int(table.version)}
                 for r, (j, sc) in enumerate(zip(row, row_scores)) if j >= 0]
                for row, row_scores in zip(rows, scores)]


def image_batch(records, emb: np.ndarray, space: dict, tokens_shape) -> dict:
    """The table rows of one embedded shard (also built by Ray workers: mindsearch.distributed)."""
    batch = {"embedding": pool_tokens(emb, space.get("pooling")),
             "key": [r.key for r in records],
             "width": np.asarray([r.width for r in records], np.int32),
             "height": np.asarray([r.height for r in records], np.int32)}
    if records and all(r.id is not None for r in records):
        batch["id"] = np.asarray([r.id for r in records], np.int64)
    if tokens_shape:
        batch["tokens"] = emb
    return batch


def ingest(coll, batches, after=None) -> None:
    """The one writer loop of every build (local or Ray: mindsearch.distributed). Add each (shard id, batch, row count) and commit it: the unit an interrupted build resumes at.

    A shard with no rows (every image in it unreadable) is still finished, so a resume skips it.
    """
    for shard_id, batch, n in batches:
        if n is None or n:
            coll.add(batch, shard=shard_id)
        coll.finish_shard(shard_id)
        if after:
            after(shard_id)



def _compatible(query_space: dict, index_space: dict) -> bool:
    """Same space, or the index holds the pooled vector of the query's token space."""
    from mindsearch.space import same_space

    if same_space(query_space, index_space):
        return True
    if query_space and query_space.get("tokens", 1) > 1:
        return same_space(pooled(query_space), index_space) or same_space(
            {**query_space, "tokens": index_space.get("tokens")}, index_space)
    return False


def _check_brain_space(path: Path, space: dict, name: str) -> None:
    import json

    if path.is_file():
        stored = json.loads(path.read_text())
        check_same_space(space, stored, "the query", f"brain table {name!r}")


def _table_names(db) -> list[str]:
    names = db.list_tables() if hasattr(db, "list_tables") else db.table_names()
    return list(getattr(names, "tables", names))


def _paths(coll, ids: np.ndarray) -> dict[int, str]:
    flat = np.unique(ids[ids >= 0])
    if not len(flat):
        return {}
    cols = ["key"]
    extra = coll.manifest.get("extra_columns") or {}
    for c in ("image_path", "url"):
        if c in extra:
            cols.append(c)
    rows = coll.fetch(flat, cols)
    out = {}
    data = {c: rows.column(c).to_pylist() for c in rows.column_names}
    for i, rid in enumerate(data["id"]):
        path = None
        for c in ("image_path", "url", "key"):
            if c in data and data[c][i]:
                path = data[c][i]
                break
        out[int(rid)] = path
    return out


def _py(v):
    return v.item() if hasattr(v, "item") else v
