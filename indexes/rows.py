"""Per-row data a search needs after FAISS (paths, tokens for re-ranking), without LanceDB.

Beside each FAISS file ``build_index`` writes ``faiss/rows-NNNNNN.arrow``: an Arrow IPC file holding, for
the same table version, every row's ``id``, ``key``, ``shard``, the path-like metadata columns
(``image_path``, ``url``), brain-store columns, and the ``tokens`` used for re-ranking. Readers
memory-map it (zero copy), so the query hot path is FAISS + a few array lookups: no LanceDB import,
no table scan. Indexes written before it existed, and versions made by adding shards to a built
index, fall back to :class:`LanceRows` (row fetches from the table at the pinned version).

This doubles the disk taken by stored tokens; it is the price of re-ranking without a database
round trip per query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from mindsearch.indexes.errors import InputError

#: Columns copied into the rows file when the table has them (``tokens`` handled separately).
COLUMNS = ("id", "key", "shard", "image_path", "url", "caption",
           "subject", "session", "trial", "image_id", "run_id")


def rows_file_for(index_file: str) -> str:
    """``faiss/index-000007.faiss`` -> ``faiss/rows-000007.arrow``."""
    head, _, name = index_file.rpartition("/")
    stem = name.rsplit(".", 1)[0].replace("index-", "rows-", 1)
    return f"{head}/{stem}.arrow" if head else f"{stem}.arrow"


def write_rows(table, path: Path, *, tokens: bool) -> int:
    """Stream the table's row columns into an Arrow IPC file at ``path`` (atomically); row count."""
    import pyarrow as pa

    from mindsearch.indexes import table as tbl
    from mindsearch.indexes.io import atomic_path

    names = table.schema.names
    cols = [c for c in COLUMNS if c in names] + (["tokens"] if tokens and "tokens" in names else [])
    schema = pa.schema([table.schema.field(c) for c in cols])
    # batches of about 256 MiB: MindEye1's 257 x 768 tokens are 790 KB a row
    row_bytes = 64 + sum(4 * f.type.list_size for f in schema if pa.types.is_fixed_size_list(f.type))
    batch_rows = int(max(64, min(65_536, 2**28 // row_bytes)))
    n = 0
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for rb in tbl.scan(table, cols, batch_rows=batch_rows):
                writer.write_batch(pa.RecordBatch.from_arrays([rb.column(c) for c in cols], schema=schema))
                n += rb.num_rows
    return n


class _Rows:
    """Interface: ``tokens(ids)`` and ``columns(ids, names)`` for ids found by a search."""

    def tokens(self, ids: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def columns(self, ids: np.ndarray, names: Iterable[str]) -> dict[str, list]:
        raise NotImplementedError


class FileRows(_Rows):
    """A memory-mapped rows file; ``id -> position`` through one sorted array. Thread-safe (read-only)."""

    def __init__(self, path: Path, expect_rows: int | None = None):
        import pyarrow as pa

        self.path = Path(path)
        try:
            self._table = pa.ipc.open_file(pa.memory_map(str(self.path), "r")).read_all()
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"not a readable rows file ({exc})", self.path) from None
        if expect_rows is not None and self._table.num_rows != expect_rows:
            raise InputError(f"rows file holds {self._table.num_rows} rows, the manifest's index "
                             f"{expect_rows}", self.path)
        ids = self._table.column("id").to_numpy()
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]
        self.names = set(self._table.column_names)
        self._tok = None
        if "tokens" in self.names:  # per-chunk zero-copy views of the flat token values
            col = self._table.column("tokens")
            size = col.type.list_size
            views, valid = [], []
            for ch in col.chunks:
                values = ch.values.to_numpy(zero_copy_only=False)
                views.append(values[ch.offset * size:(ch.offset + len(ch)) * size].reshape(len(ch), size)
                             if len(ch) else np.empty((0, size), np.float32))
                valid.append(ch.is_valid().to_numpy(zero_copy_only=False))
            starts = np.cumsum([0] + [len(v) for v in views])
            self._tok = (views, starts, np.concatenate(valid) if valid else np.zeros(0, bool))

    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row positions of ``ids`` and whether each was found."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self._sorted):
            return np.zeros(ids.shape, np.int64), np.zeros(ids.shape, bool)
        at = np.clip(np.searchsorted(self._sorted, ids), 0, len(self._sorted) - 1)
        found = (self._sorted[at] == ids) & (ids >= 0)
        return self._order[at], found

    def find(self, column: str, value: str) -> int | None:
        """The id of the first row whose ``column`` equals ``value`` (a plain comparison, no SQL)."""
        import pyarrow.compute as pc

        if column not in self.names:
            return None
        at = pc.index(self._table.column(column), value).as_py()
        return None if at < 0 else int(self._table.column("id")[at].as_py())

    def tokens(self, ids, size):
        pos, found = self.positions(ids)
        out = np.zeros(pos.shape + (size,), np.float32)
        if self._tok is None:
            return out, np.zeros(pos.shape, bool)
        views, starts, valid = self._tok
        flat = pos.reshape(-1)
        chunk = np.searchsorted(starts, flat, side="right") - 1
        o = out.reshape(-1, size)
        for c in np.unique(chunk):
            sel = chunk == c
            o[sel] = views[c][flat[sel] - starts[c]]
        return out, found & valid[pos]

    def columns(self, ids, names):
        import pyarrow as pa

        pos, found = self.positions(ids)
        take = pa.array(pos.reshape(-1), mask=~found.reshape(-1))
        return {c: self._table.column(c).take(take).to_pylist() for c in names if c in self.names}


class LanceRows(_Rows):
    """Row fetches from the LanceDB table (indexes without a rows file, and writers)."""

    def __init__(self, table, where: str | Path | None = None):
        self.table = table
        self.where = where
        self.names = set(table.schema.names)

    def tokens(self, ids, size):
        from mindsearch.indexes import table as tbl

        flat = np.asarray(ids, np.int64).reshape(-1)
        rows = tbl.fetch(self.table, flat, ["tokens"])
        col = rows.column("tokens").combine_chunks()
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        values = np.zeros((len(flat), size), np.float32)
        if valid.any():
            values[valid] = np.asarray(col.filter(pa_mask(valid)).values.to_numpy(zero_copy_only=False)).reshape(-1, size)
        shape = np.shape(ids)
        return values.reshape(shape + (size,)), valid.reshape(shape)

    def columns(self, ids, names):
        from mindsearch.indexes import table as tbl

        names = [c for c in names if c in self.names and c != "id"]
        rows = tbl.fetch(self.table, np.asarray(ids, np.int64).reshape(-1), names)
        return {c: rows.column(c).to_pylist() for c in names}


def pa_mask(mask: np.ndarray):
    import pyarrow as pa

    return pa.array(mask, pa.bool_())
