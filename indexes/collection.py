"""A named index: one LanceDB table + one FAISS index + ``manifest.json``. This module is the WRITER.

Layout of ``ROOT/NAME/``::

    manifest.json              format, kind, version, space record, dim, tokens shape, count, next id,
                               table {uri (relative to this folder unless an object-store URI), name,
                               version}, finished shards, index {key, file, rows, params,
                               table_version, ...}, retired files, recall measurements
    .lock                      the writer lock (indexes.lock)
    lance/images.lance/        the LanceDB table (unless ``table_uri`` points elsewhere, e.g. s3://)
    faiss/index-NNNNNN.faiss   the current FAISS index (the manifest names it)
    faiss/rows-NNNNNN.arrow    ids, keys and tokens of the same version, for readers (indexes.rows)

Consistency rules (one writer at a time, enforced by a file lock; any number of readers, which use
:class:`indexes.reader.Reader` and never lock):

* The manifest is the commit point. It is replaced atomically (temp file + ``os.replace``) by
  ``create``, ``finish_shard``, ``build_index`` and recall measurements; each commit bumps its
  ``version``, and it pins the table version the index was built from.
* A writer takes the lock on its first write (or :meth:`Collection.lock`) and then re-reads the
  manifest, so a second writer that waited continues from the first one's commits.
* ``add`` appends rows of one shard (one LanceDB version per call). Until ``finish_shard`` the
  rows are pending; if the process dies, the next writer restores the table to the manifest's
  version (``Table.restore``), so the unfinished shard's rows vanish and the build resumes after the
  last finished shard (``finished_shards``).
* ``build_index`` writes a new index file (temp + rename) and only then the manifest. A replaced
  file is *retired*, not deleted: it stays for :data:`RETIRE_GRACE_S` seconds so a reader that read
  the previous manifest can still open it, and a later writer deletes it (only ever inside ``faiss/``).

A root on object storage (``s3://bucket/prefix``) keeps this layout under ``ROOT/NAME/``: the writer
works in a local mirror folder and each commit uploads the new FAISS/rows files under fresh keys,
then puts the manifest conditionally (:mod:`indexes.remote`); the file lock then spans one cache only.

Vectors are L2-normalised on the way in (cosine = inner product). Every search result carries
``info`` (collection, table uri + version, index key + file + params) so it can be attributed.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mindsearch.indexes import faiss_index, manifest as mf, table as tbl
from mindsearch.indexes.errors import InputError
from mindsearch.indexes.io import remove_stale_temporaries, write_json
from mindsearch.indexes.lock import WriterLock
from mindsearch.indexes.reader import check_index
from mindsearch.indexes.remote import RemoteIndex, is_remote
from mindsearch.indexes.search import RERANK_SHORTLIST, SearchResult, search  # noqa: F401  (re-exported)

FORMAT = mf.FORMAT
MANIFEST = mf.MANIFEST
#: A replaced FAISS/rows file is kept this long for readers still opening the previous version.
RETIRE_GRACE_S = 60.0
#: Test hook: ``MINDSEARCH_TEST_CRASH=<point>`` kills the process (SIGKILL) at that point of a write.
CRASH_ENV = "MINDSEARCH_TEST_CRASH"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _read(remote: RemoteIndex | None, path: Path | None) -> tuple[dict, str | None]:
    """The committed manifest and its ETag (``None`` for a local index)."""
    return remote.read_manifest() if remote else (mf.read(path), None)


def _crash_point(point: str) -> None:
    if os.environ.get(CRASH_ENV) == point:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


class Collection:
    """One named index, for writing (and for simple reads in the same process).

    Create with :meth:`create`, reopen with :meth:`open`. Searching services use
    :class:`indexes.reader.Reader` instead: a ``Collection`` carries build state and is not shared
    between threads.
    """

    def __init__(self, root: Path, name: str, manifest: dict, *, storage_options: dict | None = None,
                 lock: WriterLock | None = None, remote: RemoteIndex | None = None, etag: str | None = None):
        self.root = remote.root if remote else Path(root)
        self.name = mf.check_name(name, self.root)
        # A remote index is written in its local mirror folder, then published (indexes.remote).
        self._remote = remote
        self.path = remote.local if remote else self.root / name
        self.manifest_path = self.path / MANIFEST
        self._storage_options = storage_options
        self._lock = lock or WriterLock(self.path)
        self._set_manifest(manifest, etag)

    def _set_manifest(self, manifest: dict, etag: str | None = None) -> None:
        self._m = manifest
        self._etag = etag  # the remote manifest this writer continues from (its conditional put)
        idx = manifest.get("index") or {}
        self._published = {f for f in (idx.get("file"), idx.get("rows")) if f}  # on the store already
        self._location = (self._remote.table_location(manifest["table"]["uri"]) if self._remote
                          else mf.table_location(self.path, manifest["table"]["uri"], self.manifest_path))
        self._db = None
        self._table = None          # handle used for reads and writes
        self._recovered = False     # True once the table is writable at/after the manifest version
        self._pending: str | None = None
        self._pending_rows = 0
        self._pending_next = 0
        self._index = None
        self._index_dirty = False
        self._needs_rebuild = False
        self._checked = False       # table row count compared with the manifest (once per writer)
        self._exact_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._version: int | None = None  # version of self._table, tracked here (asking lance costs ~0.4 ms)
        self._info: dict | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def create(cls, root: str | Path, name: str, space: Mapping[str, Any], dim: int,
               tokens_shape: tuple[int, int] | None = None, *, table_uri: str | None = None,
               extra_columns: Mapping[str, Any] | None = None, storage_options: dict | None = None,
               exist_ok: bool = False, kind: str = "images", lock_timeout: float | None = None) -> "Collection":
        """Create an empty collection ``ROOT/NAME`` for ``dim``-d pooled vectors in ``space``.

        ``tokens_shape`` = (T, D) stores full token embeddings for re-ranking; ``extra_columns``
        declares free metadata columns (name -> "string" | "int64" | "float32" | pyarrow type).
        ``kind`` "brain" makes a brain store (``dim`` is the flattened embedding size). The
        collection is returned holding the writer lock.
        """
        remote = RemoteIndex(root, name, storage_options) if is_remote(root) else None
        root = remote.root if remote else Path(root)
        mf.check_name(name, root)
        path = remote.local if remote else root / name
        where = remote.uri if remote else path
        dim = int(dim)
        if dim <= 0:
            raise InputError(f"dim must be positive, got {dim}", where)
        if kind not in mf.KINDS:
            raise InputError(f"kind must be one of {mf.KINDS}, got {kind!r}", where)
        if not isinstance(space, Mapping):
            raise InputError("space must be an embedding-space record (a dict)", where)
        if kind == "images" and space.get("dim") is not None and tokens_shape is None and int(space["dim"]) != dim:
            raise InputError(f"dimension mismatch: space record has dim {space['dim']}, index dim {dim}", where)
        if tokens_shape is not None:
            tokens_shape = (int(tokens_shape[0]), int(tokens_shape[1]))
            if tokens_shape[1] != dim:
                raise InputError(f"dimension mismatch: tokens are {tokens_shape}, pooled dim is {dim}", where)
        exists = (lambda: remote.etag() is not None) if remote else (path / MANIFEST).exists
        if not exist_ok and exists():  # before waiting for a writer that may hold it
            raise InputError("collection already exists", where)
        lock = WriterLock(path).acquire(lock_timeout)
        try:
            if exists():
                if exist_ok:
                    man, etag = _read(remote, path)
                    coll = cls(root, name, man, storage_options=storage_options, lock=lock, remote=remote,
                               etag=etag)
                    coll._after_lock()
                    return coll
                raise InputError("collection already exists", where)
            for folder in (path, path / "faiss"):  # leftovers of a create killed before its commit
                remove_stale_temporaries(folder)
            uri = table_uri or (remote.table_location("lance") if remote else str(path / "lance"))
            table_name = tbl.BRAIN_TABLE if kind == "brain" else tbl.IMAGE_TABLE
            schema = tbl.image_schema(dim, tokens_shape, extra_columns)
            db = tbl.connect(uri, storage_options=storage_options)
            # No manifest yet: a table already there is the leftover of a create killed before its
            # first commit; in our own folder it is replaced, elsewhere the user must decide.
            leftover = table_name in tbl.table_names(db)
            if leftover and table_uri:
                raise InputError(f"table {table_name!r} already exists at {table_uri} but no index names it; "
                                 f"remove it or choose another --table-uri", path)
            table = tbl.create_table(db, table_name, schema, overwrite=leftover)
            _crash_point("create-after-table")
            manifest = {
                "format": FORMAT, "kind": kind, "version": 1, "name": name, "space": dict(space), "dim": dim,
                "tokens_shape": list(tokens_shape) if tokens_shape else None,
                "extra_columns": {k: str(v) for k, v in (extra_columns or {}).items()},
                "metric": "cosine", "normalised": True,
                "count": 0, "next_id": 0,
                "table": {"uri": "lance" if remote and not table_uri else mf.stored_location(path, uri),
                          "name": table_name,
                          "version": int(table.version)},
                "shards": {"finished": []},
                "index": None, "recall": {}, "retired": [],
                "created": _now(), "updated": _now(),
            }
            etag = remote.publish(manifest, None) if remote else write_json(path / MANIFEST, manifest,
                                                                                allow_nan=False)
        except BaseException:
            lock.release()
            raise
        coll = cls(root, name, manifest, storage_options=storage_options, lock=lock, remote=remote, etag=etag)
        coll._db = db
        coll._table, coll._version = table, int(table.version)
        coll._recovered = coll._checked = True
        return coll

    @classmethod
    def open(cls, root: str | Path, name: str, *, storage_options: dict | None = None) -> "Collection":
        """Open ``ROOT/NAME`` (reads are pinned to the manifest's table version; no lock until a write)."""
        remote = RemoteIndex(root, name, storage_options) if is_remote(root) else None
        root = remote.root if remote else Path(root)
        mf.check_name(name, root)
        man, etag = _read(remote, None if remote else root / name)
        return cls(root, name, man, storage_options=storage_options, remote=remote, etag=etag)

    # ---------------------------------------------------------------- the writer lock
    def lock(self, timeout: float | None = None) -> "Collection":
        """Take the writer lock (waiting up to ``timeout``), then continue from the latest commit."""
        if not self._lock.held:
            if self._pending is not None:
                raise InputError("internal: pending rows without the writer lock", self.path)
            self._lock.acquire(timeout)
            try:
                self._set_manifest(*_read(self._remote, self.path))  # what the previous writer committed last
                self._after_lock()
            except BaseException:
                self._lock.release()
                raise
        return self

    def close(self) -> None:
        """Release the writer lock (pending, unfinished rows are rolled back by the next writer)."""
        self._lock.release()

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _after_lock(self) -> None:
        """Housekeeping only a lock holder may do: leftovers of killed writers, retired files."""
        remove_stale_temporaries(self.path)
        remove_stale_temporaries(self.path / "faiss")
        self._cleanup(commit=False)

    def _cleanup(self, *, commit: bool = True) -> None:
        """Delete retired files past their grace period and files no manifest ever named (in faiss/)."""
        now = time.time()
        keep, gone = [], []
        for rec in self._m.get("retired", []):
            if now - float(rec.get("at", 0)) >= RETIRE_GRACE_S:
                gone.append(rec["file"])
            else:
                keep.append(rec)
        named = {r["file"] for r in keep}
        idx = self._m.get("index") or {}
        named |= {idx.get("file"), idx.get("rows")}
        folder = self.path / "faiss"
        for rel in gone:
            mf.faiss_file(self.path, rel, self.manifest_path).unlink(missing_ok=True)
        if self._remote is not None:
            # Remote orphans (a writer killed between upload and commit) are left: only wasted space.
            self._remote.delete(gone)
        elif folder.is_dir():  # orphans: written by a writer killed before its commit
            for p in folder.iterdir():
                if f"faiss/{p.name}" not in named and not p.name.startswith("."):
                    p.unlink(missing_ok=True)
        if gone:
            self._m["retired"] = keep
            if commit:
                self._commit()

    def _retire(self, *files: str | None) -> None:
        current = self._m.get("index") or {}
        for f in files:
            if f and f not in (current.get("file"), current.get("rows")):
                self._m.setdefault("retired", []).append({"file": f, "at": time.time()})

    # ---------------------------------------------------------------- properties
    @property
    def manifest(self) -> dict:
        return copy.deepcopy(self._m)

    @property
    def kind(self) -> str:
        return self._m.get("kind", "images")

    @property
    def dim(self) -> int:
        return int(self._m["dim"])

    @property
    def tokens_shape(self) -> tuple[int, int] | None:
        ts = self._m.get("tokens_shape")
        return (int(ts[0]), int(ts[1])) if ts else None

    @property
    def space(self) -> dict:
        return dict(self._m["space"])

    @property
    def count(self) -> int:
        """Rows in finished shards plus rows of the shard being added in this process."""
        return int(self._m["count"]) + self._pending_rows

    @property
    def finished_shards(self) -> list[str]:
        return list(self._m["shards"]["finished"])

    @property
    def table_version(self) -> int:
        self.table
        return int(self._version)

    @property
    def db(self):
        if self._db is None:
            self._db = tbl.connect(self._location, storage_options=self._storage_options)
        return self._db

    @property
    def table_name(self) -> str:
        return self._m["table"]["name"]

    @property
    def table(self):
        """The LanceDB table: at the manifest's version until this process writes."""
        if self._table is None:
            pinned = int(self._m["table"]["version"])
            latest = tbl.open_table(self.db, self.table_name)
            if int(latest.version) == pinned:
                self._table, self._recovered = latest, self._lock.held
            else:  # an interrupted write after the last commit: read the committed version
                self._table = tbl.open_table(self.db, self.table_name, version=pinned)
            self._version = int(self._table.version)
        return self._table

    def _writable(self):
        """Table handle at the latest version, after undoing writes the manifest never committed."""
        self.lock()
        table = self.table
        if not self._recovered:
            pinned = int(self._m["table"]["version"])
            table = tbl.open_table(self.db, self.table_name)
            if int(table.version) != pinned:
                table.restore(pinned)  # a new version with the committed content
            self._table, self._recovered = table, True
            self._version, self._info = int(table.version), None
            if int(table.version) != pinned:
                self._m["table"]["version"] = int(table.version)
                self._commit()
        if not self._checked:  # once per writer: the committed table must hold what the manifest says
            rows = int(self._table.count_rows())
            if rows != int(self._m["count"]) + self._pending_rows:
                raise InputError(f"the table holds {rows} rows, the manifest says {self._m['count']} "
                                 f"(damaged index: rebuild it)", self._location)
            self._checked = True
        return self._table

    def _commit(self) -> None:
        self._m["updated"] = _now()
        self._m["version"] = int(self._m.get("version", 0)) + 1
        if self._remote is None:
            write_json(self.manifest_path, self._m, allow_nan=False)
            return
        # Object storage: the files this version names that are not up yet, then the manifest.
        idx = self._m.get("index") or {}
        published = {r["file"] for r in self._m.get("retired", [])} | set(self._published)
        new = [f for f in (idx.get("file"), idx.get("rows")) if f and f not in published]
        self._etag = self._remote.publish(self._m, self._etag, new)
        self._published = {f for f in (idx.get("file"), idx.get("rows")) if f}

    # ---------------------------------------------------------------- writing
    def add(self, batch: Any, shard: str | None = None, *, replace: bool = False) -> int:
        """Append the rows of one shard (a dict of columns or a pyarrow Table); returns the table version.

        Columns: ``embedding`` (n, dim) and/or ``tokens`` (n, T, D) (the pooled vector defaults to
        token 0), optional ``id`` (default: next free ids), ``key``, ``width``, ``height``, ``shard``,
        declared metadata columns. Vectors are L2-normalised (tokens as one flattened vector).
        ``replace=True``: rows whose ``id`` is already stored are replaced (deleted, then added).
        If an index exists the rows are added to it too (saved at :meth:`finish_shard`).
        """
        import pyarrow as pa

        table = self._writable()
        cols = ({n: batch.column(n) for n in batch.column_names} if isinstance(batch, pa.Table)
                else dict(batch) if isinstance(batch, Mapping) else None)
        if cols is None:
            raise InputError(f"a batch must be a dict of columns or a pyarrow Table, got {type(batch).__name__}",
                             self.path)
        shard = self._shard_of(cols, shard)
        if shard in self._m["shards"]["finished"]:
            raise InputError(f"shard {shard!r} is already finished (resume skips finished shards)", self.path)
        if self._pending is not None and self._pending != shard:
            raise InputError(f"shard {self._pending!r} is not finished; call finish_shard before adding {shard!r}",
                             self.path)
        n = self._n_rows(cols)
        if n == 0:
            return int(table.version)
        if "embedding" not in cols:
            if "tokens" not in cols or self.tokens_shape is None:
                raise InputError("batch has no 'embedding' column (nor 'tokens' to pool from)", self.path)
            tok = np.asarray(cols["tokens"], dtype=np.float32)
            if tok.ndim != 3 or tuple(tok.shape[1:]) != self.tokens_shape:
                raise InputError(f"column 'tokens': dimension mismatch: got {tok.shape[1:]}, "
                                 f"expected {self.tokens_shape}", self.path)
            cols["embedding"] = tok[:, 0, :]
        ids, replaced = self._assign_ids(cols, n, table, replace)
        cols["id"] = ids
        cols["shard"] = shard
        arrow = tbl.to_arrow(cols, table.schema, normalise=("embedding", "tokens"), path=self.path)
        emb = None
        if self._m.get("index") is not None and not len(replaced) and not self._needs_rebuild:
            emb = arrow.column("embedding").combine_chunks().values.to_numpy().reshape(n, self.dim)
            self._load_index()
        if len(replaced):
            tbl.delete_ids(table, replaced, path=self._location)
            self._needs_rebuild = self._m.get("index") is not None
        version = tbl.append(table, arrow, path=self.path)
        self._version, self._info = version, None
        self._pending, self._pending_rows = shard, self._pending_rows + n - len(replaced)
        self._pending_next = max(int(ids.max()) + 1, self._pending_next, int(self._m["next_id"]))
        if emb is not None:
            faiss_index.add_vectors(self._index, emb, ids)
            self._index_dirty = True
        self._exact_cache = None
        _crash_point("add-after-append")
        return version

    def finish_shard(self, shard_id: str) -> None:
        """Commit the shard: save the grown index (if any), then the manifest (the commit point)."""
        shard_id = str(shard_id)
        table = self._writable()
        if shard_id in self._m["shards"]["finished"]:
            raise InputError(f"shard {shard_id!r} is already finished", self.path)
        if self._pending is not None and self._pending != shard_id:
            raise InputError(f"the pending shard is {self._pending!r}, not {shard_id!r}", self.path)
        self._m["count"] = int(self._m["count"]) + self._pending_rows
        self._m["next_id"] = max(int(self._m["next_id"]), self._pending_next)
        self._m["shards"]["finished"].append(shard_id)
        self._m["table"]["version"] = int(table.version)
        if self._needs_rebuild:  # rows were replaced: the index is rebuilt from the table
            index = self._build(self._m["index"]["key"], params=self._m["index"].get("params"))
            self._save_and_commit(index, self._m["index"]["key"], self._m["index"].get("kind", "auto"))
        elif self._index_dirty:
            idx = self._m["index"]
            new_file = self._next_index_file()
            faiss_index.save_index(self._index, self.path / new_file)
            old = (idx["file"], idx.get("rows"))
            # No rows file for a shard added to a built index: rewriting it per shard would cost
            # O(n) with tokens; readers fetch rows from the table until the next build_index.
            idx.update(file=new_file, rows=None, ntotal=int(self._index.ntotal),
                       table_version=int(table.version))
            self._m["recall"] = {}  # measured on the previous index
            _crash_point("finish-before-commit")
            self._retire(*old)
            self._commit()
        else:
            _crash_point("finish-before-commit")
            self._commit()
        self._pending, self._pending_rows, self._pending_next = None, 0, 0
        self._index_dirty = self._needs_rebuild = False
        self._info = None
        self._cleanup()

    def note_source(self, source: Mapping[str, Any], shard_id: str) -> None:
        """Remember where a shard's images came from (committed with the shard), so hits can be
        opened later. ``source`` is a small record: ``{"kind", "path", ...}``."""
        sources = self._m.setdefault("sources", [])
        ident = {k: v for k, v in source.items() if k != "shards"}
        rec = next((r for r in sources if {k: v for k, v in r.items() if k != "shards"} == ident), None)
        if rec is None:
            rec = {**ident, "shards": []}
            sources.append(rec)
        if shard_id not in rec["shards"]:
            rec["shards"].append(str(shard_id))

    def _shard_of(self, cols: dict, shard: str | None) -> str:
        if "shard" in cols:
            values = cols["shard"]
            values = values.to_pylist() if hasattr(values, "to_pylist") else (
                [values] if isinstance(values, str) else list(values))
            uniq = set(map(str, values))
            if len(uniq) > 1:
                raise InputError(f"a batch holds rows of one shard, got {sorted(uniq)[:5]}", self.path)
            if uniq:
                col_shard = uniq.pop()
                if shard is not None and str(shard) != col_shard:
                    raise InputError(f"shard argument {shard!r} disagrees with the shard column {col_shard!r}",
                                     self.path)
                shard = col_shard
        if shard is None:
            raise InputError("no shard id: pass shard=... or a 'shard' column", self.path)
        return str(shard)

    def _n_rows(self, cols: dict) -> int:
        for name in ("embedding", "tokens", "id", "key"):
            if name in cols:
                return len(cols[name])
        raise InputError("batch has no 'embedding' column", self.path)

    def _assign_ids(self, cols: dict, n: int, table, replace: bool) -> tuple[np.ndarray, np.ndarray]:
        """The batch's ids and (with ``replace``) those of them already stored."""
        start = max(int(self._m["next_id"]), self._pending_next)
        none = np.zeros(0, np.int64)
        if "id" not in cols:
            return np.arange(start, start + n, dtype=np.int64), none
        v = cols["id"]
        ids = np.asarray(v.to_pylist() if hasattr(v, "to_pylist") else v)
        if ids.dtype.kind not in "iu" or ids.shape != (n,):
            raise InputError(f"column 'id' must be {n} integers, got {ids.dtype} {ids.shape}", self.path)
        ids = ids.astype(np.int64)
        if (ids < 0).any():
            raise InputError("column 'id' has negative ids", self.path)
        if len(np.unique(ids)) != n:
            raise InputError("column 'id' has duplicate ids within the batch", self.path)
        low = ids[ids < start]  # ids below the high-water mark may collide
        present = tbl.existing_ids(table, low) if len(low) else none
        if len(present) and not replace:
            raise InputError("column 'id' repeats ids already in the collection", self.path)
        return ids, present

    # ---------------------------------------------------------------- index
    def _next_index_file(self) -> str:
        cur = (self._m.get("index") or {}).get("file") or ""
        try:
            seq = int(cur.split("-")[1].split(".")[0]) + 1
        except (IndexError, ValueError):
            seq = 1
        folder = self.path / "faiss"
        existing = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        existing |= {r["file"].rpartition("/")[2] for r in self._m.get("retired", [])}
        while f"index-{seq:06d}.faiss" in existing or f"rows-{seq:06d}.arrow" in existing:
            seq += 1
        if self._remote is not None:  # a key no other writer of the store can choose
            return f"faiss/index-{seq:06d}-{self._remote.new_file_tag()}.faiss"
        return f"faiss/index-{seq:06d}.faiss"

    def _write_rows(self, table, index_file: str) -> str:
        from mindsearch.indexes.rows import rows_file_for, write_rows

        rel = rows_file_for(index_file)
        write_rows(table, self.path / rel, tokens=self.tokens_shape is not None)
        return rel

    def _build(self, key: str, *, params: Mapping[str, Any] | None = None, train_size: int | None = None,
               seed: int = 0, use_gpu: bool | str = "auto"):
        ids, vecs = tbl.vectors(self.table, "embedding")
        if len(ids) == 0:
            raise InputError("the collection is empty; add rows before building an index", self.path)
        return faiss_index.build_index(vecs, ids, key, train_size=train_size, seed=seed, use_gpu=use_gpu,
                                       params=dict(params or {}))

    def _save_and_commit(self, index, key: str, kind: str, **extra: Any) -> dict:
        """Write the index and its rows file, then commit a manifest naming them; retire the old ones."""
        table = self.table
        new_file = self._next_index_file()
        faiss_index.save_index(index, self.path / new_file)
        rows_file = None
        try:
            rows_file = self._write_rows(table, new_file)
            self._ensure_id_index(table)
            self._version = int(table.version)
            old = self._m.get("index") or {}
            record = faiss_index.describe(index, key)
            record.update(kind=kind, file=new_file, rows=rows_file, table_version=int(table.version),
                          built_at=_now(), **extra)
            self._m["index"] = record
            self._m["recall"] = {}
            self._m["table"]["version"] = int(table.version)
            _crash_point("build-before-commit")
            self._retire(old.get("file"), old.get("rows"))
            self._commit()
        except BaseException:
            (self.path / new_file).unlink(missing_ok=True)
            if rows_file:
                (self.path / rows_file).unlink(missing_ok=True)
            raise
        self._index, self._index_dirty, self._info = index, False, None
        return record

    def build_index(self, kind: str = "auto", *, params: Mapping[str, Any] | None = None,
                    train_size: int | None = None, memory_budget: int = faiss_index.DEFAULT_MEMORY_BUDGET,
                    exact_max: int = faiss_index.EXACT_MAX, seed: int = 0, use_gpu: bool | str = "auto") -> dict:
        """(Re)build the FAISS index from the table; returns the manifest's index record.

        ``kind``: "auto" | "flat" | "hnsw" | "ivf" | "ivfpq" | a faiss factory string. ``params``:
        search parameters (``nprobe``, ``efSearch``); ANN defaults are nprobe = max(16, nlist/64)
        and efSearch = 512. On any failure the previous index and manifest stay as they were.
        """
        if self._pending is not None:
            raise InputError(f"shard {self._pending!r} is not finished; finish it before building", self.path)
        table = self._writable()
        t0 = time.perf_counter()
        n = int(self._m["count"])
        if n == 0:
            raise InputError("the collection is empty; add rows before building an index", self.path)
        key = faiss_index.choose_index_key(n, self.dim, kind, memory_budget=memory_budget, exact_max=exact_max)
        p = dict(params or {})
        nlist = faiss_index.ivf_nlist(key)
        if nlist and "nprobe" not in p:
            p["nprobe"] = max(16, nlist // 64)
        if ("HNSW" in key.upper()) and "efSearch" not in p:
            # Brain-predicted queries lie off the image distribution: on 1M vectors HNSW32 needs
            # efSearch 512 for recall@16 0.97 with them (128 gives 0.87; benchmarks/bench_search.py).
            p["efSearch"] = 512
        index = self._build(key, params=p, train_size=train_size, seed=seed, use_gpu=use_gpu)
        build_s = time.perf_counter() - t0
        rec = self._save_and_commit(
            index, key, kind, build_s=round(build_s, 3),
            vectors_per_s=round(int(index.ntotal) / max(build_s, 1e-9), 1),
            train_size=(faiss_index.default_train_size(key, n) if train_size is None
                        else int(train_size)) if faiss_index.needs_training(key) else 0,
            seed=seed, est_bytes=faiss_index.estimate_bytes(key, n, self.dim))
        del table
        self._cleanup()
        return dict(rec)

    def _ensure_id_index(self, table) -> None:
        try:
            if any(getattr(ix, "columns", None) == ["id"] for ix in table.list_indices()):
                return
            from lancedb.index import BTree

            table.create_index("id", config=BTree())
        except Exception:  # a scalar index only speeds up fetch; never fail a build on it
            pass

    def _load_index(self):
        if self._index is None:
            rec = self._m.get("index")
            if rec is None:
                raise InputError("no index built yet (run build_index)", self.manifest_path)
            file = (self._remote.fetch(rec["file"]) if self._remote
                    else mf.faiss_file(self.path, rec["file"], self.manifest_path))
            self._index = faiss_index.load_index(file, params=rec.get("params"))
            check_index(self._index, self._m, file)
        return self._index

    def set_search_params(self, **params: Any) -> dict:
        """Change nprobe / efSearch for this process (``persist=True`` also records them)."""
        persist = params.pop("persist", False)
        if persist:
            self.lock()  # before loading: taking the lock reloads the latest commit
        done = faiss_index.set_search_params(self._load_index(), **params)
        self._info = None
        if persist and self._m.get("index"):
            self._m["index"]["params"] = faiss_index.search_params(self._index)
            self._commit()
        return done

    @property
    def index(self):
        """The loaded faiss index (``IndexIDMap2``; ids are the table's ``id`` column)."""
        return self._load_index()

    # ---------------------------------------------------------------- reading
    def info(self) -> dict:
        """Attribution of results: collection, table uri + version, index key/file/params, space."""
        if self._info is None:
            self._info = self._make_info()
        return dict(self._info)

    def _make_info(self) -> dict:
        rec = self._m.get("index") or {}
        return {"collection": self.name, "path": self._remote.uri if self._remote else str(self.path),
                "version": int(self._m.get("version", 0)),
                "table": {"uri": self._m["table"]["uri"], "name": self.table_name,
                          "version": self.table_version},
                "index": {"key": rec.get("key"), "file": rec.get("file"), "exact": rec.get("exact"),
                          "params": faiss_index.search_params(self._index) if self._index is not None
                          else rec.get("params"), "table_version": rec.get("table_version")},
                "space": self._m["space"], "count": self.count}

    def _queries(self, queries: Any) -> np.ndarray:
        return faiss_index.as_vectors(queries, self.dim, path=self.manifest_path, what="queries")

    def search(self, queries: Any, k: int = 16, rerank_tokens: Any = None, *,
               shortlist: int = RERANK_SHORTLIST) -> SearchResult:
        """Top-``k`` ``(ids, scores)`` by cosine for (q, dim) ``queries``; ``.info`` names the sources.

        With ``rerank_tokens`` ((q, T, D) or (q, T*D)) the pooled shortlist is re-ranked by token
        cosine (see :mod:`indexes.search`).
        """
        from mindsearch.indexes.rows import LanceRows

        q = self._queries(queries)
        index = self._load_index()
        rows = LanceRows(self.table, self._location) if rerank_tokens is not None else None
        return search(index, q, k, rows=rows, tokens_shape=self.tokens_shape, rerank_tokens=rerank_tokens,
                      shortlist=shortlist, info=self.info(), path=self.manifest_path)

    def fetch(self, ids: Any, columns: list[str] | None = None):
        """Rows for ``ids`` (any shape; flattened), in that order, as a pyarrow Table (id first)."""
        return tbl.fetch(self.table, np.asarray(ids, dtype=np.int64).reshape(-1), columns)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, unit vectors)`` of every row at the table version read (cached)."""
        v = self.table_version
        if self._exact_cache is None or self._exact_cache[0] != v:
            ids, vecs = tbl.vectors(self.table, "embedding")
            self._exact_cache = (v, ids, vecs)
        return self._exact_cache[1], self._exact_cache[2]

    def exact_search(self, queries: Any, k: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force ground truth over the table's vectors (used by recall measurement)."""
        q = self._queries(queries)
        ids, vecs = self.vectors()
        return faiss_index.exact_search(vecs, ids, q, int(k))

    def record_recall(self, label: str, result: Mapping[str, Any]) -> None:
        """Store a recall/latency measurement under ``manifest["recall"][label]``."""
        self.lock()
        self._m.setdefault("recall", {})[str(label)] = dict(result)
        self._commit()
