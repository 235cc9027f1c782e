"""LanceDB tables for image collections and brain predictions (LanceDB 0.40 API).

Schemas
-------
image table: ``id`` int64, ``key`` string (source path or key), ``width``/``height`` int32,
``embedding`` fixed_size_list<float32>[d] (L2-normalised pooled vector), optional ``tokens``
fixed_size_list<float32>[T*D] (full token embeddings, for re-ranking), ``shard`` string, plus any
declared metadata columns.

brain table (a brain store, ``kind: brain``): the image schema with ``embedding`` = the flattened
disjointed embedding, plus ``subject``, ``session``, ``trial``, ``image_id``, ``run_id`` and ``aligned``
(see ``mindsearch.engine``).

Filters never splice text into SQL: ids are formatted from int64 arrays, strings go through
:func:`sql_string`.

Every ``append`` is one LanceDB ``add`` (= one version + one fragment): callers batch rows (a shard at
a time) to keep fragments few. Reads always name the table version they saw.
``lancedb``/``pyarrow`` are imported inside functions.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from mindsearch.indexes.errors import InputError
from mindsearch.indexes.manifest import is_uri

IMAGE_TABLE = "images"
BRAIN_TABLE = "brain"  # the table of a brain store


def sql_string(value: str) -> str:
    """A SQL string literal for a LanceDB filter: quotes doubled, so a value cannot close it."""
    return "'" + str(value).replace("'", "''") + "'"


def id_list(ids) -> str:
    """``id IN (...)`` list from integers only (an int64 array cannot carry SQL)."""
    return ", ".join(str(int(i)) for i in np.asarray(ids, dtype=np.int64).reshape(-1))


def connect(uri: str | Path, *, storage_options: dict | None = None):
    """Connect to a local folder (created if missing) or an object-store URI (s3://, gs://, az://)."""
    import lancedb

    if not is_uri(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)
        uri = str(Path(uri).resolve())
    try:
        return lancedb.connect(str(uri), storage_options=storage_options)
    except Exception as exc:  # lancedb raises ValueError/OSError/RuntimeError variants
        raise InputError(f"cannot open LanceDB location ({exc})", uri) from None


def _arrow_type(t: Any):
    import pyarrow as pa

    if isinstance(t, pa.DataType):
        return t
    names = {"string": pa.string(), "str": pa.string(), "int64": pa.int64(), "int32": pa.int32(),
             "float32": pa.float32(), "float64": pa.float64(), "float": pa.float64(), "bool": pa.bool_(),
             "int": pa.int64()}
    if str(t) not in names:
        raise InputError(f"unknown column type {t!r} (use one of {sorted(names)} or a pyarrow type)")
    return names[str(t)]


def vector_type(n: int):
    import pyarrow as pa

    return pa.list_(pa.float32(), int(n))


def image_schema(dim: int, tokens_shape: tuple[int, int] | None = None,
                 extra: Mapping[str, Any] | None = None):
    """Arrow schema of an image table; ``extra`` declares free metadata columns (name -> type)."""
    import pyarrow as pa

    fields = [pa.field("id", pa.int64(), nullable=False), pa.field("key", pa.string()),
              pa.field("width", pa.int32()), pa.field("height", pa.int32()),
              pa.field("embedding", vector_type(dim), nullable=False)]
    if tokens_shape is not None:
        t, d = (int(v) for v in tokens_shape)
        fields.append(pa.field("tokens", vector_type(t * d)))
    fields.append(pa.field("shard", pa.string(), nullable=False))
    for name, typ in (extra or {}).items():
        if name in {f.name for f in fields}:
            raise InputError(f"metadata column {name!r} clashes with a built-in column")
        fields.append(pa.field(name, _arrow_type(typ)))
    meta = {"mindsearch.table": "images", "dim": str(dim),
            "tokens_shape": "" if tokens_shape is None else f"{tokens_shape[0]}x{tokens_shape[1]}"}
    return pa.schema(fields, metadata=meta)


def table_names(db) -> list[str]:
    names = db.list_tables() if hasattr(db, "list_tables") else db.table_names()
    return list(getattr(names, "tables", names))


def create_table(db, name: str, schema, *, exist_ok: bool = False, overwrite: bool = False):
    try:
        if overwrite:
            return db.create_table(name, schema=schema, mode="overwrite")
        return db.create_table(name, schema=schema, exist_ok=exist_ok)
    except ValueError as exc:
        raise InputError(f"cannot create table {name!r} ({exc})", getattr(db, "uri", None)) from None


def open_table(db, name: str, version: int | None = None):
    """Open ``name`` (latest, or read-only at ``version``); InputError naming the location if absent."""
    try:
        return db.open_table(name) if version is None else db.open_table(name, version=int(version))
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        raise InputError(f"cannot open table {name!r}" + (f" at version {version}" if version else "")
                         + f" ({str(exc).splitlines()[0][:200]})", getattr(db, "uri", None)) from None


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------
def _vector_array(values: Any, size: int, column: str, normalise: bool, path) -> Any:
    import pyarrow as pa

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if pa.types.is_fixed_size_list(values.type) and values.type.list_size == size \
                and values.type.value_type == pa.float32() and not normalise and values.null_count == 0:
            arr = np.asarray(values.values.to_numpy(zero_copy_only=False)).reshape(-1, size)
            if not np.isfinite(arr).all():
                raise InputError(f"column {column!r}: NaN or infinite values", path)
            return values
        values = np.asarray(values.to_pylist(), dtype=np.float32)
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, size)
    arr = arr.reshape(arr.shape[0], -1) if arr.ndim >= 2 else arr
    if arr.ndim != 2 or arr.shape[1] != size:
        got = arr.shape[1] if arr.ndim == 2 else arr.shape
        raise InputError(f"column {column!r}: dimension mismatch: got {got}, expected {size}", path)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr).all(axis=1)).sum())
        raise InputError(f"column {column!r}: {bad} row(s) contain NaN or infinite values", path)
    if normalise:
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InputError(f"column {column!r}: {int((norms == 0).sum())} all-zero row(s)", path)
        arr = arr / norms
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), size)


def to_arrow(batch: Any, schema, *, normalise: Iterable[str] = (), defaults: Mapping[str, Any] | None = None,
             path: str | Path | None = None):
    """Convert a dict of numpy arrays / lists (or a pyarrow Table) to a Table with ``schema``.

    Vector columns accept (n, size) or (n, T, D) arrays; columns named in ``normalise`` are
    L2-normalised per row. Missing nullable columns become nulls; ``defaults`` fills the rest
    (scalars are broadcast). Unknown columns raise InputError.
    """
    import pyarrow as pa

    if isinstance(batch, pa.RecordBatch):
        batch = pa.Table.from_batches([batch])
    if isinstance(batch, pa.Table):
        cols = {name: batch.column(name) for name in batch.column_names}
    elif isinstance(batch, Mapping):
        cols = dict(batch)
    else:
        raise InputError(f"a batch must be a dict of columns or a pyarrow Table, got {type(batch).__name__}", path)
    unknown = sorted(set(cols) - set(schema.names))
    if unknown:
        raise InputError(f"unknown column(s) {unknown}; the table has {schema.names}", path)
    n = None
    for name, v in cols.items():
        ln = len(v) if not np.isscalar(v) else None
        if ln is not None:
            if n is not None and ln != n:
                raise InputError(f"column {name!r} has {ln} rows, others have {n}", path)
            n = ln
    n = n or 0
    normalise = set(normalise)
    arrays = []
    for field in schema:
        v = cols.get(field.name, (defaults or {}).get(field.name))
        if v is None:
            if not field.nullable:
                raise InputError(f"missing required column {field.name!r}", path)
            arrays.append(pa.nulls(n, field.type))
            continue
        if np.isscalar(v) or isinstance(v, str):
            v = [v] * n
        if pa.types.is_fixed_size_list(field.type):
            arrays.append(_vector_array(v, field.type.list_size, field.name, field.name in normalise, path))
            continue
        try:
            arr = v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(
                v.tolist() if isinstance(v, np.ndarray) and field.type == pa.string() else v)
            arrays.append(arr.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise InputError(f"column {field.name!r}: cannot convert to {field.type} ({exc})", path) from None
    return pa.Table.from_arrays(arrays, schema=schema)


def append(table, batch, *, path: str | Path | None = None) -> int:
    """One LanceDB ``add`` (one version, one fragment); returns the new table version."""
    if batch.num_rows == 0:
        return int(table.version)
    try:
        result = table.add(batch)
    except (ValueError, OSError, RuntimeError) as exc:
        raise InputError(f"cannot append to table ({str(exc).splitlines()[0][:300]})", path) from None
    return int(getattr(result, "version", table.version))


@contextlib.contextmanager
def reading(table) -> Iterator[None]:
    """Turn a storage failure while reading ``table`` (a deleted or damaged fragment) into an
    ``InputError`` naming the table."""
    try:
        yield
    except InputError:
        raise
    except (RuntimeError, OSError, ValueError) as exc:
        raise InputError(f"cannot read the table ({str(exc).splitlines()[0][:300]})",
                         getattr(table, "uri", None)) from None


def scan(table, columns: list[str], *, where: str | None = None, batch_rows: int = 65_536) -> Iterator:
    """Stream ``columns`` (optionally filtered) as pyarrow RecordBatches."""
    with reading(table):
        q = table.search().select(list(columns)).limit(None)
        if where:
            q = q.where(where)
        yield from q.to_batches(batch_rows)


def vectors(table, column: str = "embedding", *, where: str | None = None,
            id_column: str = "id") -> tuple[np.ndarray, np.ndarray]:
    """All ``(ids int64 (n,), vectors float32 (n, d))`` of ``column``, read batch by batch."""
    size = table.schema.field(column).type.list_size
    with reading(table):
        n = table.count_rows(where) if where else table.count_rows()
    out = np.empty((n, size), dtype=np.float32)
    ids = np.empty(n, dtype=np.int64)
    pos = 0
    for rb in scan(table, [id_column, column], where=where):
        m = rb.num_rows
        if pos + m > n:  # table grew while reading: stop at what was counted
            m = n - pos
        col = rb.column(column)
        out[pos:pos + m] = col.values.to_numpy(zero_copy_only=False).reshape(-1, size)[:m]
        ids[pos:pos + m] = rb.column(id_column).to_numpy()[:m]
        pos += m
    return ids[:pos], out[:pos]


def fetch(table, ids: np.ndarray, columns: list[str] | None = None, *, id_column: str = "id"):
    """Rows whose ``id_column`` is in ``ids``, in the order of ``ids`` (an id not found -> all-null row).

    Returns a pyarrow Table with ``id_column`` first.
    """
    import pyarrow as pa

    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    columns = list(columns) if columns is not None else [n for n in table.schema.names]
    cols = [id_column] + [c for c in columns if c != id_column]
    missing = [c for c in cols if c not in table.schema.names]
    if missing:
        raise InputError(f"unknown column(s) {missing}; the table has {table.schema.names}")
    uniq = np.unique(ids[ids >= 0])
    if len(uniq) == 0:
        return pa.Table.from_arrays([pa.array(ids, pa.int64())] + [pa.nulls(len(ids), table.schema.field(c).type)
                                                                   for c in cols[1:]], names=cols)
    parts = []
    for start in range(0, len(uniq), 4096):
        chunk = uniq[start:start + 4096]
        where = f"{id_column} IN ({id_list(chunk)})"
        with reading(table):
            parts.append(table.search().where(where).select(cols).limit(len(chunk)).to_arrow())
    got = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    got_ids = got.column(id_column).to_numpy()
    order = np.argsort(got_ids, kind="stable")
    pos = np.searchsorted(got_ids[order], ids)
    pos = np.clip(pos, 0, max(len(got_ids) - 1, 0))
    found = (len(got_ids) > 0) & (got_ids[order][pos] == ids) if len(got_ids) else np.zeros(len(ids), bool)
    take = pa.array(np.where(found, order[pos], 0), mask=~found)
    out = got.take(take)
    return out.set_column(0, id_column, pa.array(ids, pa.int64()))


def existing_ids(table, ids: np.ndarray, *, id_column: str = "id") -> np.ndarray:
    """Those of ``ids`` already stored (sorted, unique)."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    found = []
    for start in range(0, len(ids), 4096):
        part = ids[start:start + 4096]
        with reading(table):
            got = table.search().where(f"{id_column} IN ({id_list(part)})").select([id_column]) \
                .limit(len(part)).to_arrow()
        found.append(got.column(id_column).to_numpy())
    return np.unique(np.concatenate(found)) if found else ids[:0]


def delete_ids(table, ids: np.ndarray, *, id_column: str = "id", path: str | Path | None = None) -> None:
    """Delete the rows with these ids (one LanceDB version per 4096 ids)."""
    ids = np.asarray(ids, dtype=np.int64)
    for start in range(0, len(ids), 4096):
        try:
            table.delete(f"{id_column} IN ({id_list(ids[start:start + 4096])})")
        except (ValueError, OSError, RuntimeError) as exc:
            raise InputError(f"cannot delete rows ({str(exc).splitlines()[0][:300]})", path) from None
