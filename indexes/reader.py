"""Readers: an index opened once, searched by many threads, reopened only when its manifest changes.

A :class:`Reader` holds an immutable :class:`Snapshot` (manifest, loaded FAISS index, rows) of the
last committed version. Every call checks the manifest file's identity (one ``stat``); when a writer
has committed a new version the next call loads it and swaps the snapshot in one assignment, while
searches already running finish on the old one. FAISS CPU indexes allow concurrent searches; the
snapshot is never mutated after it is built, so a reader is safe to share between threads.

A writer keeps replaced FAISS/rows files for a grace period (see :mod:`indexes.collection`), and a
reader that still loses the race (a file gone between reading the manifest and opening it) reloads
the manifest and tries again.

A root on object storage (``s3://...``, :mod:`indexes.remote`) is opened the same way: the stamp is
the manifest's ETag, asked for at most every ``ttl`` seconds (a query does not wait on the store
each time), and the FAISS/rows files are downloaded once into the local cache, keyed by the index
URI and the file's versioned name.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mindsearch.indexes import manifest as mf
from mindsearch.indexes.errors import InputError
from mindsearch.indexes.remote import RemoteIndex, is_remote
from mindsearch.indexes.search import RERANK_SHORTLIST, SearchResult, search


@dataclass(frozen=True)
class Snapshot:
    """One committed version of an index, loaded."""

    manifest: dict
    stamp: tuple
    index: Any          # faiss index (None before the first build)
    rows: Any           # indexes.rows.FileRows or LanceRows (None before the first build)
    info: dict

    @property
    def version(self) -> int:
        return int(self.manifest.get("version", 0))

    @property
    def table_version(self) -> int:
        return int(self.manifest["table"]["version"])


#: How long a reader of a remote index trusts the manifest it loaded before asking the store again.
REMOTE_TTL_S = 1.0


class Reader:
    """Read-only, thread-safe access to ``ROOT/NAME`` (never locks, never writes)."""

    def __init__(self, root: str | Path, name: str, *, storage_options: dict | None = None,
                 ttl: float = REMOTE_TTL_S):
        self.remote = RemoteIndex(str(root), name, storage_options) if is_remote(root) else None
        self.root = self.remote.root if self.remote else Path(root)
        self.name = mf.check_name(name, self.root)
        self.path = self.remote.local if self.remote else self.root / name
        self.manifest_path = self.remote.manifest_uri if self.remote else self.path / mf.MANIFEST
        self._storage_options = storage_options
        self._ttl = float(ttl)
        self._known: tuple[float, tuple] | None = None  # (when, stamp) last asked of the store
        self._snap: Snapshot | None = None
        self._load_lock = threading.Lock()
        self.snapshot()

    def _stamp(self) -> tuple:
        """What identifies the committed version: the manifest file's identity, or its ETag (asked
        for at most every ``ttl`` seconds; until then the loaded version counts as current)."""
        if self.remote is None:
            return mf.stamp(self.manifest_path)
        known, now = self._known, time.monotonic()
        if known is not None and now - known[0] < self._ttl:
            return known[1]
        etag = self.remote.etag()
        if etag is None:
            raise InputError("the index is gone (no manifest)", self.manifest_path)
        self._known = (now, (etag,))
        return (etag,)

    # ------------------------------------------------------------------ versions
    def snapshot(self) -> Snapshot:
        """The current committed version (reloaded when the manifest file changed)."""
        snap = self._snap
        if snap is not None and snap.stamp == self._stamp():
            return snap
        with self._load_lock:  # one thread loads; the others wait and take its result
            snap = self._snap
            if snap is not None and snap.stamp == self._stamp():
                return snap
            for attempt in range(3):
                try:
                    snap = self._load()
                    break
                except _Raced:
                    if attempt == 2:
                        raise InputError("the index changed three times while opening it; try again",
                                         self.manifest_path) from None
            self._snap = snap
            if self.remote is not None:
                self._known = (time.monotonic(), snap.stamp)
            return snap

    def _file(self, rel: str, stamp: tuple) -> Path:
        """The local path of a FAISS/rows file the manifest names (downloaded first if remote)."""
        if self.remote is not None:
            try:
                return self.remote.fetch(rel)
            except FileNotFoundError:  # retired and deleted since the manifest was read
                raise _Raced() from None
        file = mf.faiss_file(self.path, rel, self.manifest_path)
        if not file.is_file() and mf.stamp(self.manifest_path) != stamp:
            raise _Raced()
        return file

    def _load(self) -> Snapshot:
        from mindsearch.indexes import faiss_index
        from mindsearch.indexes.rows import FileRows

        if self.remote is not None:
            man, etag = self.remote.read_manifest()
            stamp = (etag,)
        else:
            stamp = mf.stamp(self.manifest_path)
            man = mf.read(self.path)
        rec = man["index"]
        index = rows = None
        if rec is not None:
            file = self._file(rec["file"], stamp)
            index = faiss_index.load_index(file, params=rec.get("params"))
            check_index(index, man, file)
            rows_rel = rec.get("rows")
            if rows_rel:
                rows = FileRows(self._file(rows_rel, stamp), expect_rows=int(index.ntotal))
            else:
                rows = _LazyLanceRows(self, man)
        path = self.remote.uri if self.remote else str(self.path)
        info = {"collection": self.name, "path": path, "version": int(man.get("version", 0)),
                "table": {"uri": man["table"]["uri"], "name": man["table"]["name"],
                          "version": int(man["table"]["version"])},
                "index": {"key": (rec or {}).get("key"), "file": (rec or {}).get("file"),
                          "exact": (rec or {}).get("exact"), "params": (rec or {}).get("params"),
                          "table_version": (rec or {}).get("table_version")},
                "space": man["space"], "count": int(man["count"])}
        return Snapshot(man, stamp, index, rows, info)

    # ------------------------------------------------------------------ properties
    @property
    def manifest(self) -> dict:
        import copy

        return copy.deepcopy(self.snapshot().manifest)

    @property
    def dim(self) -> int:
        return int(self.snapshot().manifest["dim"])

    @property
    def space(self) -> dict:
        return dict(self.snapshot().manifest["space"])

    @property
    def kind(self) -> str:
        return self.snapshot().manifest.get("kind", "images")

    @property
    def tokens_shape(self) -> tuple[int, int] | None:
        ts = self.snapshot().manifest.get("tokens_shape")
        return (int(ts[0]), int(ts[1])) if ts else None

    # ------------------------------------------------------------------ reading
    def search(self, queries: Any, k: int = 16, rerank_tokens: Any = None, *,
               shortlist: int = RERANK_SHORTLIST, snapshot: Snapshot | None = None) -> SearchResult:
        """Top-``k`` ``(ids, scores)`` by cosine; ``.info`` names the version searched."""
        from mindsearch.indexes import faiss_index

        snap = snapshot or self.snapshot()
        if snap.index is None:
            raise InputError("no index built yet (run `mindsearch index build`)", self.manifest_path)
        q = faiss_index.as_vectors(queries, int(snap.manifest["dim"]), path=self.manifest_path, what="queries")
        ts = snap.manifest.get("tokens_shape")
        return search(snap.index, q, k, rows=snap.rows, tokens_shape=tuple(ts) if ts else None,
                      rerank_tokens=rerank_tokens, shortlist=shortlist, info=snap.info,
                      path=self.manifest_path)

    def columns(self, ids: np.ndarray, names, snapshot: Snapshot | None = None) -> dict[str, list]:
        """Stored columns (key, url, ...) of ``ids``, from the same version a search used."""
        snap = snapshot or self.snapshot()
        if snap.rows is None:
            return {}
        return snap.rows.columns(np.asarray(ids, np.int64).reshape(-1), names)

    def table_location(self, man: dict) -> str:
        """Where a manifest's LanceDB database lives (local folder or object-store URI)."""
        if self.remote is not None:
            return self.remote.table_location(man["table"]["uri"])
        return mf.table_location(self.path, man["table"]["uri"], self.manifest_path)

    def table(self, snapshot: Snapshot | None = None):
        """The LanceDB table at the snapshot's version (imports LanceDB; not on the query path)."""
        from mindsearch.indexes import table as tbl

        snap = snapshot or self.snapshot()
        db = tbl.connect(self.table_location(snap.manifest), storage_options=self._storage_options)
        return tbl.open_table(db, snap.manifest["table"]["name"], version=snap.table_version)


class _Raced(Exception):
    """The manifest was replaced while its files were being opened."""


class _LazyLanceRows:
    """Rows of an index written before rows files: LanceDB opened on first use."""

    def __init__(self, reader: Reader, man: dict):
        self._reader, self._man, self._rows = reader, man, None
        self._lock = threading.Lock()

    def _get(self):
        if self._rows is None:
            with self._lock:
                if self._rows is None:
                    from mindsearch.indexes import table as tbl
                    from mindsearch.indexes.rows import LanceRows

                    loc = self._reader.table_location(self._man)
                    db = tbl.connect(loc, storage_options=self._reader._storage_options)
                    table = tbl.open_table(db, self._man["table"]["name"], version=int(self._man["table"]["version"]))
                    with tbl.reading(table):
                        rows = int(table.count_rows())
                    if rows != int(self._man["count"]):
                        raise InputError(f"the table holds {rows} rows at version {self._man['table']['version']}, "
                                         f"the manifest says {self._man['count']}", loc)
                    self._rows = LanceRows(table, loc)
        return self._rows

    def tokens(self, ids, size):
        return self._get().tokens(ids, size)

    def columns(self, ids, names):
        return self._get().columns(ids, names)


def check_index(index, man: dict, file: Path) -> None:
    """A FAISS file must match its manifest: dimension and vector count."""
    if int(index.d) != int(man["dim"]):
        raise InputError(f"faiss index has dimension {index.d}, the manifest says {man['dim']}", file)
    want = man["index"].get("ntotal")
    if want is not None and int(index.ntotal) != int(want):
        raise InputError(f"faiss index holds {index.ntotal} vectors, the manifest says {want}", file)
