"""An index's ``manifest.json``: names, the schema check on every read, and confined paths.

The manifest is the commit point of an index (see :mod:`indexes.collection`). Everything read from
it is checked before use: types and required keys, the FAISS file must lie inside ``ROOT/NAME/faiss/``,
a relative table location inside ``ROOT/NAME``. Names are checked on every open, so ``../x`` or an
absolute name never reaches outside the root. Only the standard library is imported here, so
``index list`` / ``info`` read manifests without LanceDB or FAISS.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from mindsearch.indexes.errors import InputError
from mindsearch.indexes.io import read_json

FORMAT = "mindsearch-index/1"
MANIFEST = "manifest.json"
KINDS = ("images", "brain")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: Any, root: str | Path | None = None) -> str:
    """An index name is one path component: letters, digits, ``._-``, not starting with a dot."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise InputError(f"invalid index name {name!r} (use letters, digits, '.', '_', '-'; "
                         f"one folder under the root)", root)
    return name


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def inside(base: Path, rel: Any, what: str, manifest_path: Path) -> Path:
    """``base / rel`` if ``rel`` is a relative path that stays inside ``base`` (symlinks resolved)."""
    if not isinstance(rel, str) or not rel or PurePosixPath(rel).is_absolute() or os.path.isabs(rel):
        raise InputError(f"{what} must be a relative path inside {base}, got {rel!r}", manifest_path)
    full = base / rel
    try:
        full.resolve().relative_to(base.resolve())
    except ValueError:
        raise InputError(f"{what} {rel!r} points outside {base}", manifest_path) from None
    return full


def faiss_file(index_dir: Path, rel: Any, manifest_path: Path) -> Path:
    """A FAISS file named by the manifest: only ever inside ``ROOT/NAME/faiss/``."""
    full = inside(index_dir, rel, "index file", manifest_path)
    try:
        full.resolve().relative_to((index_dir / "faiss").resolve())
    except ValueError:
        raise InputError(f"index file {rel!r} is not inside {index_dir / 'faiss'}", manifest_path) from None
    return full


def table_location(index_dir: Path, uri: str, manifest_path: Path) -> str:
    """Where the LanceDB database lives: an object-store URI as is, a relative path under the index.

    Manifests written before paths were relative hold an absolute path; when it no longer holds
    the table but the index's own ``lance/`` does (a moved or copied index), the local one is used.
    """
    if is_uri(uri):
        return uri
    if not os.path.isabs(uri):
        return str(inside(index_dir, uri, "table location", manifest_path))
    own = index_dir / "lance"
    if Path(uri).resolve() != own.resolve() and own.is_dir() and Path(uri).name == "lance":
        return str(own)
    return uri


def stored_location(index_dir: Path, uri: str) -> str:
    """The table location as a manifest stores it: relative when it lies inside the index."""
    if is_uri(uri):
        return uri
    try:
        return Path(uri).resolve().relative_to(index_dir.resolve()).as_posix()
    except ValueError:
        return str(Path(uri).resolve())  # a table the user put elsewhere on purpose


# ------------------------------------------------------------------------------------------ schema
def _int(v: Any, minimum: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


_CHECKS = {
    "name": lambda v: isinstance(v, str),
    "space": lambda v: isinstance(v, dict),
    "dim": lambda v: _int(v, 1),
    "tokens_shape": lambda v: v is None or (isinstance(v, list) and len(v) == 2 and all(_int(x, 1) for x in v)),
    "count": _int,
    "next_id": _int,
    "table": lambda v: isinstance(v, dict) and isinstance(v.get("uri"), str) and isinstance(v.get("name"), str)
    and _int(v.get("version")),
    "shards": lambda v: isinstance(v, dict) and isinstance(v.get("finished"), list)
    and all(isinstance(s, str) for s in v["finished"]),
    "index": lambda v: v is None or _index_record(v),
}


def _index_record(v: Any) -> bool:
    params = v.get("params") if isinstance(v, dict) else None
    return (isinstance(v, dict) and isinstance(v.get("file"), str) and isinstance(v.get("key"), str)
            and _int(v.get("ntotal", 0)) and (v.get("rows") is None or isinstance(v["rows"], str))
            and (params is None or (isinstance(params, dict) and all(_int(x) for x in params.values())))
            and (v.get("dim") is None or _int(v["dim"], 1)))
_OPTIONAL = {
    "version": _int,
    "kind": lambda v: v in KINDS,
    "recall": lambda v: isinstance(v, dict),
    "extra_columns": lambda v: isinstance(v, dict),
    "retired": lambda v: isinstance(v, list) and all(isinstance(r, dict) and isinstance(r.get("file"), str)
                                                     for r in v),
    "sources": lambda v: isinstance(v, list) and all(
        isinstance(r, dict) and isinstance(r.get("kind"), str) and isinstance(r.get("path"), str)
        and isinstance(r.get("shards", []), list) for r in v),
}
_WHAT = {"dim": "a positive integer", "count": "an integer >= 0", "next_id": "an integer >= 0",
         "tokens_shape": "null or [T, D]", "table": "{uri, name, version}", "shards": "{finished: [...]}",
         "index": "null or {file, key, ntotal, ...}", "version": "an integer >= 0"}


def validate(man: Any, path: Path) -> dict:
    """Check a parsed manifest's types and required keys; ``InputError`` naming the key and file."""
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        got = man.get("format") if isinstance(man, dict) else type(man).__name__
        raise InputError(f"not a {FORMAT} manifest (format={got!r})", path)
    for key, ok in _CHECKS.items():
        if key not in man:
            raise InputError(f"manifest has no {key!r}", path)
        if not ok(man[key]):
            raise InputError(f"manifest {key!r} must be {_WHAT.get(key, 'valid')}, got {man[key]!r:.80}", path)
    for key, ok in _OPTIONAL.items():
        if key in man and not ok(man[key]):
            raise InputError(f"manifest {key!r} is malformed, got {man[key]!r:.80}", path)
    if man["tokens_shape"] is not None and man["tokens_shape"][1] != man["dim"] and man.get("kind") != "brain":
        raise InputError(f"manifest tokens_shape {man['tokens_shape']} disagrees with dim {man['dim']}", path)
    idx = man["index"]
    if idx is not None and "dim" in idx and idx["dim"] != man["dim"]:
        raise InputError(f"manifest index dim {idx['dim']} disagrees with dim {man['dim']}", path)
    return man


def read(index_dir: str | Path) -> dict:
    """Read and validate ``index_dir/manifest.json`` (standard library only)."""
    path = Path(index_dir) / MANIFEST
    return check(read_json(path, "index manifest (is this a mindsearch index?)"), index_dir, path)


def check(man: Any, index_dir: str | Path, label: str | Path) -> dict:
    """Validate a parsed manifest whose files lie under ``index_dir`` (a local folder, or the local
    mirror of an index on object storage); ``label`` names it in errors."""
    man = validate(man, label)
    files = [man["index"].get("file"), man["index"].get("rows")] if man["index"] else []
    for rel in files + [r["file"] for r in man.get("retired", [])]:
        if rel is not None:
            faiss_file(Path(index_dir), rel, label)  # refused now, before anything opens or deletes it
    table_location(Path(index_dir), man["table"]["uri"], label)
    return man


def stamp(path: Path) -> tuple:
    """What changes whenever the manifest is replaced (the atomic rename gives a new inode)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ()
    return (st.st_ino, st.st_mtime_ns, st.st_size)
