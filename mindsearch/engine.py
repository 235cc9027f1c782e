"""The query engine: image collections in, brain samples as queries, hits out.

``Engine`` is the Python face of ``mindsearch index`` and ``mindsearch query``: the same verbs
for notebooks. Collections (``indexes.collection.Collection``: a LanceDB table + a FAISS index +
a manifest) live under a root directory: ``--root`` / ``Engine(root)``, else
``$MINDSEARCH_HOME/indexes``, else ``~/.mindsearch/indexes``. A root may also be an object-store
URI (``s3://bucket/prefix``): manifests, FAISS files and tables all live there, FAISS files are
cached locally (``indexes.remote``); ``table_uri`` alone puts just a table elsewhere.

Builds go through writers (``Collection``, one per index at a time, under a file lock); queries go
through readers (``indexes.reader.Reader``) that the engine opens once per index and keeps: keep one
``Engine`` alive (a notebook, a service) and queries cost a FAISS search plus array look-ups, and a
build committed elsewhere is picked up by the next query. Brain stores are collections of kind
"brain" under ``ROOT/_brain``.

Every hit is attributable: it carries the index name, the table version it was read at, the score
kind, the query row and the run that encoded the query.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from mindsearch.errors import MindsearchError
from mindsearch.indexes.remote import is_remote
from mindsearch.indexes.search import RERANK_SHORTLIST
from mindsearch.space import check_same_space, describe, pooled

BRAIN_DIR = "_brain"


def default_root(root: str | Path | None = None) -> Path | str:
    """The index root: a folder (``Path``), or an object-store URI kept as a string."""
    if root:
        return str(root).rstrip("/") if is_remote(root) else Path(root)
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
    """One result. ``score_kind`` says which cosine ``score`` is (see ``indexes.search.SCORE_KINDS``);
    ``path`` is something a person can open (a file path or URL) when the index knows one, else
    ``source`` names the image inside its container (hdf5 row, tar member, dataset image) and
    :meth:`Engine.image_bytes` reads it. ``query`` is the row of the input this hit answers."""

    rank: int
    id: int
    path: str | None
    score: float
    score_kind: str
    index: str
    index_version: int
    run: str | None
    query: int = 0
    source: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class Engine:
    """Long-lived: builds go through writers (locked, one at a time), queries through cached readers.

    Safe to share between threads for queries; each index is opened once and reopened only when
    its manifest changes (a finished build elsewhere is picked up by the next query).
    """

    def __init__(self, root: str | Path | None = None):
        self.root = default_root(root)
        self._readers: dict[str, object] = {}
        self._readers_lock = threading.Lock()
        self._sources: dict[tuple, dict] = {}

    # ------------------------------------------------------------------ collections
    def _check(self, name: str, root: Path | None = None) -> Path:
        from mindsearch.indexes.manifest import MANIFEST, check_name

        base = root or self.root
        check_name(name, base)
        if is_remote(base):
            from mindsearch.indexes.remote import RemoteIndex

            if RemoteIndex(base, name).etag() is None:
                raise MindsearchError(f"no index named {name!r} (here: {', '.join(self.list()) or 'none'})", base)
            return f"{base}/{name}"
        if not (base / name / MANIFEST).is_file():
            have = ", ".join(self.list() if root is None else self.stores()) or "none"
            what = "index" if root is None else "brain store"
            raise MindsearchError(f"no {what} named {name!r} (here: {have})", base)
        return base / name

    def open(self, name: str):
        """The writer-side ``Collection`` of an index (for builds, recall, inspection)."""
        from mindsearch.indexes.collection import Collection

        self._check(name)
        return Collection.open(self.root, name)

    def reader(self, name: str, *, brain: bool = False):
        """The cached, thread-safe reader of an index (or brain store)."""
        from mindsearch.indexes.reader import Reader

        root = self._brain_root() if brain else self.root
        key = f"{'brain:' if brain else ''}{name}"
        r = self._readers.get(key)
        if r is None:
            self._check(name, root if brain else None)
            with self._readers_lock:
                r = self._readers.get(key)
                if r is None:
                    r = Reader(root, name)
                    self._readers[key] = r
        elif r.remote is None and not r.manifest_path.is_file():  # removed since: say so, like a fresh open
            with self._readers_lock:
                self._readers.pop(key, None)
            self._check(name, root if brain else None)
        return r

    def list(self) -> list[str]:
        return _names(self.root)

    def stores(self) -> list[str]:
        """Brain stores under ``ROOT/_brain`` (a local root only)."""
        return [] if is_remote(self.root) else _names(self.root / BRAIN_DIR)

    def remove(self, name: str, *, brain: bool = False) -> Path:
        """Delete an index (or brain store) folder, holding its writer lock while doing so."""
        import shutil

        from mindsearch.indexes.lock import WriterLock

        if is_remote(self.root) and not brain:
            from mindsearch.indexes.remote import RemoteIndex

            self._check(name)
            RemoteIndex(self.root, name).remove()
            self._readers.pop(name, None)
            return f"{self.root}/{name}"
        root = self._brain_root() if brain else self.root
        path = self._check(name, root if brain else None)
        with WriterLock(path):
            tmp = path.with_name(f".{name}.removing.tmp")
            os.replace(path, tmp)  # the name disappears at once; readers see "no index"
        shutil.rmtree(tmp, ignore_errors=True)
        self._readers.pop(f"{'brain:' if brain else ''}{name}", None)
        return path

    def create_or_resume(self, name: str, space: dict, dim: int, tokens_shape, extra_columns=None,
                          table_uri: str | None = None, *, kind: str = "images", root: Path | None = None,
                          check_space: bool = True):
        """The locked writer of ``name``: created, or reopened with the latest commit."""
        from mindsearch.indexes.collection import Collection

        coll = Collection.create(root or self.root, name, space, dim, tokens_shape, extra_columns=extra_columns,
                                 table_uri=table_uri, exist_ok=True, kind=kind)
        if check_space:
            try:
                check_same_space(coll.space, space, f"index {name!r}", "the new images")
            except BaseException:
                coll.close()
                raise
        return coll

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
        with self.create_or_resume(name, space, d, tokens_shape, table_uri=table_uri) as coll:
            done = set(coll.finished_shards)
            todo = [s for s in src.shards() if s.shard_id not in done]
            say(f"index {name}: {len(done)} shard(s) already done, {len(todo)} to embed "
                f"with {describe(space)}")

            def batches():
                for shard, records, emb in embed_shards(todo, encoder, batch_size=batch_size,
                                                        num_workers=workers, progress=True):
                    yield shard.shard_id, image_batch(records, emb, space, tokens_shape), len(records)

            ingest(coll, batches(), source=src.describe())
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
        with self.create_or_resume(name, space, dim, None, table_uri=table_uri,
                                    extra_columns={"caption": "string", "url": "string"}) as coll:
            shards = clip_retrieval.iter_shards(directory, skip=set(coll.finished_shards))
            ingest(coll, ((shard_id, batch, None) for shard_id, batch in shards),
                    lambda shard_id: say(f"index {name}: shard {shard_id} added ({coll.count} vectors)"),
                    source={"kind": "clip-retrieval", "path": str(Path(directory).resolve())})
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
            root = Path(data).resolve()
            with self.create_or_resume(name, space, d, tokens_shape) as coll:
                done = set(coll.finished_shards)

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

                ingest(coll, batches(), source={"kind": "dataset", "path": str(root)})
                say(f"index {name}: {coll.count} images from {data}")
                rec = coll.build_index(kind)
                return {"name": name, "count": coll.count, "index": rec, "space": space,
                        "table_version": coll.table_version}

    # ------------------------------------------------------------------ queries
    def search(self, index: str, embeddings: np.ndarray, *, k: int = 16, space: dict | None = None,
               rerank: bool | None = None, run_id: str | None = None,
               shortlist: int = RERANK_SHORTLIST) -> list[list[Hit]]:
        """Nearest images for (n, T, D) or (n, D) embeddings; one list of hits per query row.

        With tokens stored and token queries, the top ``shortlist`` pooled candidates are re-ranked
        by token cosine (independent of ``k``: the top hits never change with ``k``).
        """
        reader = self.reader(index)
        snap = reader.snapshot()  # one version for the search and the row look-ups
        ispace = snap.manifest["space"]
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim == 1:
            emb = emb[None]
        if space is not None:
            # A query in the index's token space may be pooled into it; anything else is refused.
            if not _compatible(space, ispace):
                check_same_space(space, ispace, f"the query ({run_id or 'embeddings'})", f"index {index!r}")
        q = pool_tokens(emb, (space or ispace).get("pooling"))
        dim = int(snap.manifest["dim"])
        if q.shape[1] != dim:
            raise MindsearchError(f"queries have {q.shape[1]} dimensions, index {index!r} has {dim}",
                                  reader.manifest_path)
        ts = snap.manifest.get("tokens_shape")
        use_rerank = (ts is not None and emb.ndim == 3 and emb.shape[1] > 1
                      and list(emb.shape[1:]) == list(ts)) if rerank is None else rerank
        result = reader.search(q, k, rerank_tokens=emb if use_rerank else None, shortlist=shortlist,
                               snapshot=snap)
        ids, scores = result.ids, result.scores
        where = self._locate(reader, snap, ids)
        version = int(result.info["table"]["version"])
        out = []
        for qi, (row_ids, row_scores) in enumerate(zip(ids, scores)):
            block = []
            for r, (i, s) in enumerate(zip(row_ids.tolist(), row_scores.tolist())):
                if i >= 0:
                    path, ref = where.get(i, (None, None))
                    block.append(Hit(r + 1, i, path, float(s), result.score_kind(r), index, version, run_id,
                                     qi, ref))
            out.append(block)
        return out

    def _locate(self, reader, snap, ids: np.ndarray) -> dict[int, tuple[str | None, str | None]]:
        """``id -> (openable path or URL, source reference)`` for the hits' rows."""
        from mindsearch.image_sources import locate

        flat = np.unique(ids[ids >= 0])
        if not len(flat):
            return {}
        cols = reader.columns(flat, ("key", "shard", "image_path", "url"), snapshot=snap)
        sources = snap.manifest.get("sources") or []
        out = {}
        for j, rid in enumerate(flat.tolist()):
            row = {c: v[j] for c, v in cols.items()}
            out[int(rid)] = locate(row, _source_of(sources, row.get("shard")))
        return out

    def image_bytes(self, index: str, id: int) -> tuple[bytes, str]:
        """The original image of hit ``id`` of ``index``: ``(bytes, content type)``."""
        from mindsearch.image_sources import read_image

        reader = self.reader(index)
        snap = reader.snapshot()
        cols = reader.columns(np.asarray([int(id)]), ("key", "shard", "image_path", "url"), snapshot=snap)
        row = {c: v[0] for c, v in cols.items()}
        if not row.get("key"):
            raise MindsearchError(f"no image with id {id} in index {index!r}", reader.manifest_path)
        return read_image(row, _source_of(snap.manifest.get("sources") or [], row.get("shard")))

    def find_key(self, index: str, key: str) -> int | None:
        """The id of the row whose ``key`` is ``key`` (no SQL: looked up in the rows file)."""
        reader = self.reader(index)
        snap = reader.snapshot()
        if snap.rows is not None and hasattr(snap.rows, "find"):
            return snap.rows.find("key", key)
        from mindsearch.indexes import table as tbl

        rows = reader.table(snap).search().where(f"key = {tbl.sql_string(key)}").select(["id"]).limit(1).to_arrow()
        return int(rows.column("id")[0].as_py()) if rows.num_rows else None

    def query(self, index: str, voxels: np.ndarray, run, *, k: int = 16, subject: int | None = None,
              session: int | None = None, zscore: bool = True, rerank: bool | None = None,
              source: str | Path = "<voxels>", shortlist: int = RERANK_SHORTLIST) -> list[list[Hit]]:
        """Encode voxels with a run, then search: ``mindsearch query --voxels``."""
        subject = run.check_voxels(voxels, subject, source)
        ispace = self.reader(index).space
        if not _compatible(run.space, ispace):
            check_same_space(run.space, ispace, f"run {run.path.name}", f"index {index!r}")
        out = run.encode(voxels, subject=subject, session=session, zscore=zscore, outputs=("disjointed",))
        return self.search(index, out["disjointed"], k=k, space=run.space, rerank=rerank,
                           run_id=str(run.path), shortlist=shortlist)

    def measure_recall(self, index: str, queries: np.ndarray, *, space: dict | None = None,
                       k: int = 16, label: str = "brain-heldout", source: str | None = None) -> dict:
        """Recall@k of the index against exact search with held-out brain-predicted queries."""
        from mindsearch.indexes.recall import measure_collection

        with self.open(index) as coll:
            q = pool_tokens(queries, (space or coll.space).get("pooling"))
            return measure_collection(coll, q, k, label=label, source=source)

    # ------------------------------------------------------------------ brain samples
    def store_brain(self, name: str, run, outputs: dict, *, subject: int,
                    session: int | Iterable[int] | None = None, trials: Iterable[int] | None = None,
                    image_ids: Iterable[int] | None = None, source: str | None = None) -> dict:
        """Store encoded brain samples in the brain store ``name`` (a collection of kind "brain").

        With ``trials`` each row's id is derived from (subject, trial), so storing the same trials
        again replaces them instead of adding duplicates. ``session`` is one value or one per row.
        """
        dis = np.asarray(outputs["disjointed"], dtype=np.float32)
        n = len(dis)
        shape = [int(s) for s in dis.shape[1:]]
        size = int(np.prod(shape))
        bdir = self._brain_root()
        self._migrate_store(name)
        extra = {"subject": "int32", "session": "int32", "trial": "int64", "image_id": "int64",
                 "run_id": "string", "aligned": _vector_type(size)}

        def col(values, default, what):
            if values is None:
                return np.full(n, default, np.int64)
            try:
                return np.broadcast_to(np.asarray(values if np.isscalar(values) else list(values), np.int64), (n,))
            except (TypeError, ValueError):
                raise MindsearchError(f"{what}: expected one integer or {n} of them") from None

        trial_col = col(trials, -1, "trials")
        batch = {"subject": np.full(n, subject, np.int32),
                 "session": col(session, -1, "session").astype(np.int32),
                 "trial": trial_col, "image_id": col(image_ids, -1, "image_ids"),
                 "run_id": [str(run.path)] * n, "embedding": dis.reshape(n, -1),
                 "key": [f"subject-{subject}/trial-{t}" if t >= 0 else None for t in trial_col.tolist()]}
        if trials is not None:
            if (trial_col < 0).any():
                raise MindsearchError("trials must be >= 0")
            batch["id"] = int(subject) * TRIAL_ID_BASE + trial_col
        aligned = outputs.get("aligned")
        if aligned is not None:
            batch["aligned"] = np.asarray(aligned, np.float32).reshape(n, -1)
        with self.create_or_resume(name, run.space, size, None, extra_columns=extra, kind="brain",
                                    root=bdir, check_space=False) as coll:
            if coll.dim != size or coll.manifest.get("brain_shape", shape) != shape:
                raise MindsearchError(f"brain store {name!r} holds {coll.manifest.get('brain_shape')} "
                                      f"embeddings, these are {shape}", coll.manifest_path)
            check_same_space(run.space, coll.space, "the samples", f"brain store {name!r}")
            coll._m["brain_shape"] = shape  # noqa: SLF001  (committed with the shard)
            before = coll.count
            shard = f"store-{len(coll.finished_shards):06d}"
            coll.add(batch, shard=shard, replace=True)
            coll.finish_shard(shard)
            if coll.manifest["index"] is None:
                coll.build_index("flat")
            return {"store": name, "added": n, "replaced": before + n - coll.count,
                    "count": coll.count, "table_version": coll.table_version, "source": source}

    def _brain_root(self) -> Path:
        if is_remote(self.root):
            raise MindsearchError("brain stores live under a local index root, not on object storage", self.root)
        return self.root / BRAIN_DIR

    def _migrate_store(self, name: str) -> None:
        """Turn a brain store of the old layout (a bare ``_brain/NAME.lance`` table and
        ``NAME.space.json``) into a collection, once; the old files are left in place."""
        from mindsearch.indexes import table as tbl
        from mindsearch.indexes.io import read_json
        from mindsearch.indexes.manifest import check_name

        bdir = self._brain_root()
        check_name(name, bdir)
        if not (bdir / f"{name}.lance").is_dir() or (bdir / name / "manifest.json").is_file():
            return
        old = tbl.open_table(tbl.connect(bdir), name)
        with tbl.reading(old):
            data = old.to_arrow()
        space = read_json(bdir / f"{name}.space.json", "space record of the old brain store")
        n = data.num_rows
        dis = np.asarray(data.column("disjointed").combine_chunks().values.to_numpy(zero_copy_only=False),
                         np.float32).reshape(n, -1)
        shape = [int(x) for x in (old.schema.metadata or {}).get(b"shape", b"").decode().split("x") if x]
        extra = {"subject": "int32", "session": "int32", "trial": "int64", "image_id": "int64",
                 "run_id": "string", "aligned": _vector_type(dis.shape[1])}
        batch = {c: data.column(c) for c in ("subject", "session", "trial", "image_id", "run_id")}
        if data.column("aligned").null_count == 0:  # written only when the run had a prior
            batch["aligned"] = data.column("aligned")
        batch.update(id=np.arange(n, dtype=np.int64), embedding=dis)  # ids = the old row numbers
        with self.create_or_resume(name, space, dis.shape[1], None, extra_columns=extra, kind="brain",
                                    root=bdir, check_space=False) as coll:
            coll._m["brain_shape"] = shape or [dis.shape[1]]  # noqa: SLF001  (committed with the shard)
            if n:
                coll.add(batch, shard="migrated")
            coll.finish_shard("migrated")
            if n:
                coll.build_index("flat")

    def query_brain(self, store: str, image_embedding: np.ndarray, *, space: dict | None = None,
                    k: int = 16) -> list[list[dict]]:
        """Brain retrieval: the stored brain samples nearest to an image embedding (exact cosine
        over the flattened embeddings)."""
        self._migrate_store(store)
        reader = self.reader(store, brain=True)
        snap = reader.snapshot()
        if space is not None:
            check_same_space(space, snap.manifest["space"], "the query", f"brain store {store!r}")
        q = np.asarray(image_embedding, np.float32)
        q = q.reshape(len(q), -1) if q.ndim > 1 else q[None]
        dim = int(snap.manifest["dim"])
        if q.shape[1] != dim:
            raise MindsearchError(f"image embedding has {q.shape[1]} values, brain store {store!r} "
                                  f"holds {dim}", reader.manifest_path)
        result = reader.search(q, min(int(k), int(snap.manifest["count"])), snapshot=snap)
        flat = np.unique(result.ids[result.ids >= 0])
        names = ("subject", "session", "trial", "image_id", "run_id")
        cols = reader.columns(flat, names, snapshot=snap)
        at = {int(i): j for j, i in enumerate(flat.tolist())}
        return [[{"rank": r + 1, "id": int(i), "row": int(i), **{c: cols[c][at[int(i)]] for c in names},
                  "score": float(sc), "score_kind": "token_cosine", "store": store,
                  "store_version": int(result.info["table"]["version"]), "query": qi}
                 for r, (i, sc) in enumerate(zip(row, row_scores)) if i >= 0]
                for qi, (row, row_scores) in enumerate(zip(result.ids, result.scores))]


#: Brain-store row id of (subject, trial): re-storing a trial replaces its row.
TRIAL_ID_BASE = 1_000_000_000


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


def ingest(coll, batches, after=None, source: dict | None = None) -> None:
    """The one writer loop of every build (local, or Ray: mindsearch.distributed). Add each (shard id, batch, row count) and commit it: the unit an interrupted build resumes at.

    A shard with no rows (every image in it unreadable) is still finished, so a resume skips it.
    """
    for shard_id, batch, n in batches:
        if n is None or n:
            coll.add(batch, shard=shard_id)
        if source is not None:
            coll.note_source(source, shard_id)
        coll.finish_shard(shard_id)
        if after:
            after(shard_id)


def _source_of(sources: list, shard: str | None) -> dict | None:
    """The source record a shard was read from (the only one, if there is just one)."""
    if len(sources) == 1:
        return sources[0]
    for rec in sources:
        if shard in rec.get("shards", ()):
            return rec
    return None


def _compatible(query_space: dict, index_space: dict) -> bool:
    """Same space, or the index holds the pooled vector of the query's token space."""
    from mindsearch.space import same_space

    if same_space(query_space, index_space):
        return True
    if query_space and query_space.get("tokens", 1) > 1:
        return same_space(pooled(query_space), index_space) or same_space(
            {**query_space, "tokens": index_space.get("tokens")}, index_space)
    return False


def _names(root: Path | str) -> list[str]:
    from mindsearch.indexes.manifest import MANIFEST

    if is_remote(root):
        from mindsearch.indexes.remote import list_names

        return list_names(str(root))
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file())


def _vector_type(size: int):
    from mindsearch.indexes.table import vector_type

    return vector_type(size)
