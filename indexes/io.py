"""The one atomic writer and checked JSON reader (the lowest layer; ``mindsearch.io`` re-exports them).

Everything is written to a temporary sibling (``.NAME.*.tmp``) and renamed into place, so a killed or
failed writer never leaves a half-written file; a writer holding an index's lock removes the
temporaries a killed one left behind (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from mindsearch.indexes.errors import InputError

TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Works for files and directories (whatever the caller creates at the yielded path). Files are
    fsynced before the rename, so the renamed file is complete even after a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"atomic_path: nothing was written to {target}")
        if target.is_file():
            with open(target, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(target, 0o644)
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any, *, allow_nan: bool = True) -> None:
    """Write ``obj`` as indented JSON, atomically (``allow_nan=False``: NaN/inf raise ValueError)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=json_default, allow_nan=allow_nan) + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file; ``InputError`` naming it when missing, unreadable or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise InputError(f"not valid JSON ({exc})", path) from None


def json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def remove_stale_temporaries(folder: str | Path) -> list[str]:
    """Remove ``.*.tmp`` files/folders in ``folder`` (call only while holding its writer lock)."""
    folder = Path(folder)
    gone = []
    if not folder.is_dir():
        return gone
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone
