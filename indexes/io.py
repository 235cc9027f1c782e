"""The one atomic writer and checked JSON reader (the lowest layer; ``mindsearch.io`` re-exports them).

Everything is written to a temporary sibling (``.NAME.*.tmp``) and renamed into place, so a killed or
failed writer never leaves a half-written file. Temporary names carry the writer's host and pid,
so the next writer of a path removes what a killed one left (:func:`clean_stale`); a writer
holding an index's lock removes every temporary in it (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from mindsearch.indexes.errors import InputError

TEMP_SUFFIX = ".tmp"


KILL_AT_ENV = "MINDSEARCH_TEST_KILL_AT"


def crash_point(label: str) -> None:
    """Fault-test hook: ``MINDSEARCH_TEST_KILL_AT=<label>`` SIGKILLs the process here.

    Lets the fault suite reproduce a ``kill -9`` at an exact point of a write; one
    environment lookup otherwise.
    """
    if os.environ.get(KILL_AT_ENV) == label:
        os.kill(os.getpid(), signal.SIGKILL)


def _owner() -> str:
    """``host-pid`` of this process, as carried in temporary names (dots would split the name)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    try:  # a killed child not yet reaped still answers kill(0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def clean_stale(path: str | Path) -> list[Path]:
    """Remove what killed writers of ``path`` left beside it; return what was removed.

    A temporary sibling is ``.NAME.HOST-PID.XXXXXXXX.tmp``: it is stale when HOST is this
    machine and PID is gone (on another host, or with a live pid, it is left alone). A
    directory swap cut between its two renames leaves ``.NAME.old`` and no NAME: the old
    version is put back.
    """
    path = Path(path)
    removed: list[Path] = []
    live = False  # another writer of path is still at work: leave its swap alone
    prefix, host = f".{path.name}.", _owner().rsplit("-", 1)[0]
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        owner = name[len(prefix):-len(".tmp")].rpartition(".")[0]
        who, _, pid = owner.rpartition("-")
        if who != host or not pid.isdigit() or _alive(int(pid)):
            live = True
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    old = path.with_name(f".{path.name}.old")
    if not live and old.is_dir() and not old.is_symlink() and not path.exists():
        os.replace(old, path)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Works for files and directories (whatever the caller creates at the yielded path).
    The temporary name carries this process's host and pid, so the next writer of ``path``
    removes what a killed one left (``clean_stale``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"atomic_path: nothing was written to {target}")
        if target.is_file():  # complete on disk before the rename, even after a power cut
            with open(target, "rb") as fh:
                os.fsync(fh.fileno())
        crash_point(f"rename:{path.name}")
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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON ({exc})", path) from None
    except (OSError, RecursionError) as exc:  # unreadable, or nested deeper than Python recurses
        raise InputError(f"cannot read ({type(exc).__name__}: {exc})", path) from None


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
