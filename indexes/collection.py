"""A named image index: one LanceDB table + one FAISS index + ``manifest.json``.

Layout of ``ROOT/NAME/``::

    manifest.json              format, space record, dim, tokens shape, count, next id,
                               table {uri, name, version}, finished shards, index {key, file, params,
                               table_version, ...}, recall measurements
    lance/images.lance/        the LanceDB table (unless ``table_uri`` points elsewhere, e.g. s3://)
    faiss/index-NNNNNN.faiss   the current FAISS index (the manifest names it)

Consistency rules (one writer at a time; any number of readers):

* The manifest is the commit point. It is replaced atomically (temp file + ``os.replace``) by
  ``create``, ``finish_shard``, ``build_index`` and recall measurements, and pins the table version
  the index was built from. Readers use the table *at that version*.
* ``add`` appends rows of one shard (one LanceDB version per call). Until ``finish_shard`` the
  rows are pending; if the process dies, the next write on a reopened collection restores the
  table to the manifest's version (``Table.restore``), so the unfinished shard's rows vanish and
  the build resumes after the last finished shard (``finished_shards``).
* ``build_index`` writes a new index file (temp + rename) and only then the manifest; any failure
  leaves the previous index file, manifest and table version in place.

Vectors are L2-normalised on the way in (cosine = inner product). Every search result carries
``info`` (collection, table uri + version, index key + file + params) so it can be attributed.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mindsearch.indexes import faiss_index, table as tbl
from mindsearch.indexes.errors import InputError

FORMAT = "mindsearch-index/1"
MANIFEST = "manifest.json"
RERANK_SHORTLIST = 16  # MindEye1's LAION second-order selection: 16 candidates, best token cosine wins


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_manifest(path: Path) -> dict:
    if not path.is_file():
        raise InputError("index manifest not found (is this a mindsearch index?)", path)
    try:
        man = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"manifest is not valid JSON ({exc})", path) from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise InputError(f"not a {FORMAT} manifest (format={man.get('format') if isinstance(man, dict) else None!r})",
                         path)
    return man


class SearchResult(tuple):
    """``(ids (q, k) int64, scores (q, k) float32)`` that also carries ``info`` (attribution)."""

    info: dict

    def __new__(cls, ids: np.ndarray, scores: np.ndarray, info: dict):
        self = super().__new__(cls, (ids, scores))
        self.info = info
        return self

    @property
    def ids(self) -> np.ndarray:
        return self[0]

    @property
    def scores(self) -> np.ndarray:
        return self[1]


class Collection:
    """One named index. Create with :meth:`create`, reopen with :meth:`open`."""

    def __init__(self, root: Path, name: str, manifest: dict, *, storage_options: dict | None = None):
        self.root = Path(root)
        self.name = name
        self.path = self.root / name
        self.manifest_path = self.path / MANIFEST
        self._m = manifest
        self._storage_options = storage_options
        self._db = tbl.connect(manifest["table"]["uri"], storage_options=storage_options)
        self._table = None          # handle used for reads and writes
        self._recovered = False     # True once the table is writable at/after the manifest version
        self._pending: str | None = None
        self._pending_rows = 0
        self._pending_next = 0
        self._index = None
        self._index_dirty = False
        self._exact_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._version: int | None = None  # version of self._table, tracked here (asking lance costs ~0.4 ms)
        self._info: dict | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def create(cls, root: str | Path, name: str, space: Mapping[str, Any], dim: int,
               tokens_shape: tuple[int, int] | None = None, *, table_uri: str | None = None,
               extra_columns: Mapping[str, Any] | None = None, storage_options: dict | None = None,
               exist_ok: bool = False) -> "Collection":
        """Create an empty collection ``ROOT/NAME`` for ``dim``-d pooled vectors in ``space``.

        ``tokens_shape`` = (T, D) stores full token embeddings for re-ranking; ``extra_columns``
        declares free metadata columns (name -> "string" | "int64" | "float32" | pyarrow type).
        """
        root = Path(root)
        if not name or "/" in name or name.startswith("."):
            raise InputError(f"invalid collection name {name!r}", root)
        path = root / name
        if (path / MANIFEST).exists():
            if exist_ok:
                return cls.open(root, name, storage_options=storage_options)
            raise InputError("collection already exists", path / MANIFEST)
        dim = int(dim)
        if dim <= 0:
            raise InputError(f"dim must be positive, got {dim}", path)
        if not isinstance(space, Mapping):
            raise InputError("space must be an embedding-space record (a dict)", path)
        if space.get("dim") is not None and tokens_shape is None and int(space["dim"]) != dim:
            raise InputError(f"dimension mismatch: space record has dim {space['dim']}, index dim {dim}", path)
        if tokens_shape is not None:
            tokens_shape = (int(tokens_shape[0]), int(tokens_shape[1]))
            if tokens_shape[1] != dim:
                raise InputError(f"dimension mismatch: tokens are {tokens_shape}, pooled dim is {dim}", path)
        uri = table_uri or str((path / "lance").resolve())
        schema = tbl.image_schema(dim, tokens_shape, extra_columns)
        db = tbl.connect(uri, storage_options=storage_options)
        table = tbl.create_table(db, tbl.IMAGE_TABLE, schema)
        manifest = {
            "format": FORMAT, "name": name, "space": dict(space), "dim": dim,
            "tokens_shape": list(tokens_shape) if tokens_shape else None,
            "extra_columns": {k: str(v) for k, v in (extra_columns or {}).items()},
            "metric": "cosine", "normalised": True,
            "count": 0, "next_id": 0,
            "table": {"uri": uri, "name": tbl.IMAGE_TABLE, "version": int(table.version)},
            "shards": {"finished": []},
            "index": None, "recall": {},
            "created": _now(), "updated": _now(),
        }
        _write_json(path / MANIFEST, manifest)
        coll = cls(root, name, manifest, storage_options=storage_options)
        coll._table, coll._version = table, int(table.version)
        coll._recovered = True
        return coll

    @classmethod
    def open(cls, root: str | Path, name: str, *, storage_options: dict | None = None) -> "Collection":
        """Open ``ROOT/NAME`` (reads are pinned to the manifest's table version)."""
        path = Path(root) / name / MANIFEST
        return cls(Path(root), name, _read_manifest(path), storage_options=storage_options)

    # ---------------------------------------------------------------- properties
    @property
    def manifest(self) -> dict:
        return json.loads(json.dumps(self._m))

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
    def table(self):
        """The LanceDB table: at the manifest's version until this process writes."""
        if self._table is None:
            pinned = int(self._m["table"]["version"])
            latest = tbl.open_table(self._db, tbl.IMAGE_TABLE)
            if int(latest.version) == pinned:
                self._table, self._recovered = latest, True
            else:  # an interrupted write after the last commit: read the committed version
                self._table = tbl.open_table(self._db, tbl.IMAGE_TABLE, version=pinned)
            self._version = int(self._table.version)
        return self._table

    def _writable(self):
        """Table handle at the latest version, after undoing writes the manifest never committed."""
        table = self.table
        if not self._recovered:
            pinned = int(self._m["table"]["version"])
            table = tbl.open_table(self._db, tbl.IMAGE_TABLE)
            if int(table.version) != pinned:
                table.restore(pinned)  # a new version with the committed content
            self._table, self._recovered = table, True
            self._version, self._info = int(table.version), None
            self._m["table"]["version"] = int(table.version)
            self._commit()
        return self._table

    def _commit(self) -> None:
        self._m["updated"] = _now()
        _write_json(self.manifest_path, self._m)

    # ---------------------------------------------------------------- writing
    def add(self, batch: Any, shard: str | None = None) -> int:
        """Append the rows of one shard (a dict of columns or a pyarrow Table); returns the table version.

        Columns: ``embedding`` (n, dim) and/or ``tokens`` (n, T, D) (the pooled vector defaults to
        token 0), optional ``id`` (default: next free ids), ``key``, ``width``, ``height``, ``shard``,
        declared metadata columns. Vectors are L2-normalised (tokens as one flattened vector).
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
        ids = self._assign_ids(cols, n, table)
        cols["id"] = ids
        cols["shard"] = shard
        arrow = tbl.to_arrow(cols, table.schema, normalise=("embedding", "tokens"), path=self.path)
        emb = None
        if self._m.get("index") is not None:
            emb = arrow.column("embedding").combine_chunks().values.to_numpy().reshape(n, self.dim)
            self._load_index()
        version = tbl.append(table, arrow, path=self.path)
        self._version, self._info = version, None
        self._pending, self._pending_rows = shard, self._pending_rows + n
        self._pending_next = max(int(ids.max()) + 1, self._pending_next, int(self._m["next_id"]))
        if emb is not None:
            faiss_index.add_vectors(self._index, emb, ids)
            self._index_dirty = True
        self._exact_cache = None
        return version

    def finish_shard(self, shard_id: str) -> None:
        """Commit the shard: save the grown index (if any), then the manifest (the commit point)."""
        shard_id = str(shard_id)
        table = self._writable()
        if shard_id in self._m["shards"]["finished"]:
            raise InputError(f"shard {shard_id!r} is already finished", self.path)
        if self._pending is not None and self._pending != shard_id:
            raise InputError(f"the pending shard is {self._pending!r}, not {shard_id!r}", self.path)
        old_file = None
        if self._index_dirty:
            idx = self._m["index"]
            new_file = self._next_index_file()
            faiss_index.save_index(self._index, self.path / new_file)
            old_file = idx["file"]
            idx.update(file=new_file, ntotal=int(self._index.ntotal), table_version=int(table.version))
            self._m["recall"] = {}  # measured on the previous index
        self._m["count"] = int(self._m["count"]) + self._pending_rows
        self._m["next_id"] = max(int(self._m["next_id"]), self._pending_next)
        self._m["shards"]["finished"].append(shard_id)
        self._m["table"]["version"] = int(table.version)
        self._commit()
        self._pending, self._pending_rows, self._pending_next, self._index_dirty = None, 0, 0, False
        self._info = None
        if old_file and old_file != self._m["index"]["file"]:
            (self.path / old_file).unlink(missing_ok=True)

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

    def _assign_ids(self, cols: dict, n: int, table) -> np.ndarray:
        start = max(int(self._m["next_id"]), self._pending_next)
        if "id" not in cols:
            return np.arange(start, start + n, dtype=np.int64)
        v = cols["id"]
        ids = np.asarray(v.to_pylist() if hasattr(v, "to_pylist") else v)
        if ids.dtype.kind not in "iu" or ids.shape != (n,):
            raise InputError(f"column 'id' must be {n} integers, got {ids.dtype} {ids.shape}", self.path)
        ids = ids.astype(np.int64)
        if (ids < 0).any():
            raise InputError("column 'id' has negative ids", self.path)
        if len(np.unique(ids)) != n:
            raise InputError("column 'id' has duplicate ids within the batch", self.path)
        low = ids[ids < start]
        for s in range(0, len(low), 4096):  # ids below the high-water mark may collide
            part = low[s:s + 4096]
            if table.count_rows(f"id IN ({', '.join(map(str, part.tolist()))})"):
                raise InputError("column 'id' repeats ids already in the collection", self.path)
        return ids

    # ---------------------------------------------------------------- index
    def _next_index_file(self) -> str:
        cur = (self._m.get("index") or {}).get("file") or ""
        try:
            seq = int(cur.split("-")[1].split(".")[0]) + 1
        except (IndexError, ValueError):
            seq = 1
        existing = {p.name for p in (self.path / "faiss").glob("index-*.faiss")} if (self.path / "faiss").is_dir() else set()
        while f"index-{seq:06d}.faiss" in existing:
            seq += 1
        return f"faiss/index-{seq:06d}.faiss"

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
        ids, vecs = tbl.vectors(table, "embedding")
        if len(ids) == 0:
            raise InputError("the collection is empty; add rows before building an index", self.path)
        read_s = time.perf_counter() - t0
        key = faiss_index.choose_index_key(len(ids), self.dim, kind, memory_budget=memory_budget,
                                           exact_max=exact_max)
        p = dict(params or {})
        nlist = faiss_index.ivf_nlist(key)
        if nlist and "nprobe" not in p:
            p["nprobe"] = max(16, nlist // 64)
        if ("HNSW" in key.upper()) and "efSearch" not in p:
            # Brain-predicted queries lie off the image distribution: on 1M vectors HNSW32 needs
            # efSearch 512 for recall@16 0.97 with them (128 gives 0.87; benchmarks/bench_search.py).
            p["efSearch"] = 512
        t1 = time.perf_counter()
        index = faiss_index.build_index(vecs, ids, key, train_size=train_size, seed=seed, use_gpu=use_gpu, params=p)
        build_s = time.perf_counter() - t1
        new_file = self._next_index_file()
        faiss_index.save_index(index, self.path / new_file)
        try:
            self._ensure_id_index(table)
            self._version = int(table.version)
            old = self._m.get("index")
            record = faiss_index.describe(index, key)
            record.update(kind=kind, file=new_file, table_version=int(table.version), build_s=round(build_s, 3),
                          read_s=round(read_s, 3), vectors_per_s=round(len(ids) / max(build_s, 1e-9), 1),
                          train_size=(faiss_index.default_train_size(key, len(ids)) if train_size is None
                                      else int(train_size)) if faiss_index.needs_training(key) else 0,
                          seed=seed, built_at=_now(),
                          est_bytes=faiss_index.estimate_bytes(key, len(ids), self.dim))
            self._m["index"] = record
            self._m["recall"] = {}
            self._m["table"]["version"] = int(table.version)
            self._commit()
        except BaseException:
            (self.path / new_file).unlink(missing_ok=True)
            raise
        if old and old.get("file") and old["file"] != new_file:
            (self.path / old["file"]).unlink(missing_ok=True)
        self._index, self._index_dirty, self._info = index, False, None
        return dict(record)

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
            self._index = faiss_index.load_index(self.path / rec["file"], params=rec.get("params"))
        return self._index

    def set_search_params(self, **params: Any) -> dict:
        """Change nprobe / efSearch for this process (``persist=True`` also records them)."""
        persist = params.pop("persist", False)
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
        return {"collection": self.name, "path": str(self.path),
                "table": {"uri": self._m["table"]["uri"], "name": self._m["table"]["name"],
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

        With ``rerank_tokens`` ((q, T, D) or (q, T*D), the queries' full token embeddings), the pooled
        search returns ``max(shortlist, k)`` candidates which are re-ranked by cosine between the
        flattened, normalised token embeddings (MindEye1's LAION procedure: 16 candidates, the
        highest cosine wins); scores are then token cosines.
        """
        q = self._queries(queries)
        k = int(k)
        if k <= 0:
            raise InputError(f"k must be positive, got {k}", self.manifest_path)
        index = self._load_index()
        if rerank_tokens is None:
            ids, scores = faiss_index.search(index, q, k)
            return SearchResult(ids, scores, self.info() | {"k": k, "rerank": None})
        if self.tokens_shape is None:
            raise InputError("this collection stores no tokens; cannot re-rank", self.manifest_path)
        t, d = self.tokens_shape
        rt = np.asarray(rerank_tokens, dtype=np.float32)
        if rt.ndim < 2 or rt.shape[0] != len(q):
            raise InputError(f"rerank_tokens: expected {len(q)} rows of {t}x{d} tokens, got shape {rt.shape}",
                             self.manifest_path)
        rt = faiss_index.as_vectors(rt.reshape(len(q), -1), t * d, path=self.manifest_path, what="rerank_tokens")
        m = max(int(shortlist), k)
        cand, _ = faiss_index.search(index, q, m)
        rows = tbl.fetch(self.table, np.unique(cand[cand >= 0]), ["tokens"])
        row_ids = rows.column("id").to_numpy()
        tok = rows.column("tokens").combine_chunks().values.to_numpy(zero_copy_only=False).reshape(-1, t * d)
        pos = np.searchsorted(row_ids, cand)  # fetch returns the unique ids sorted
        pos = np.clip(pos, 0, len(row_ids) - 1)
        present = rows.column("tokens").is_valid().to_numpy(zero_copy_only=False)
        valid = (cand >= 0) & (row_ids[pos] == cand) & present[pos]
        sims = np.einsum("qmf,qf->qm", tok[pos], rt)
        sims = np.where(valid, sims, -np.inf).astype(np.float32)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        ids = np.take_along_axis(np.where(valid, cand, -1), order, axis=1)
        scores = np.take_along_axis(sims, order, axis=1)
        return SearchResult(ids, scores, self.info() | {"k": k, "rerank": {"column": "tokens", "shortlist": m}})

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
        self._m.setdefault("recall", {})[str(label)] = dict(result)
        self._commit()

    def versions(self) -> list[dict]:
        return tbl.versions(tbl.open_table(self._db, tbl.IMAGE_TABLE))
