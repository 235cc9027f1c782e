"""Small file helpers shared by every writer: atomic writes and safetensors checkpoints.

Everything mindsearch writes goes to a temporary sibling first and is renamed into place,
so an interrupted or failed command never leaves a half-written file behind.
Checkpoints are safetensors + a JSON config beside them; nothing is ever unpickled.
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

from mindsearch.errors import MindsearchError

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


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MindsearchError("file not found", path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MindsearchError(f"not valid JSON ({exc})", path) from None
    except (OSError, RecursionError) as exc:  # unreadable, or nested deeper than Python recurses
        raise MindsearchError(f"cannot read ({type(exc).__name__}: {exc})", path) from None


def _json_default(obj: Any) -> Any:
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


def save_tensors(path: str | Path, tensors: dict, metadata: dict | None = None) -> None:
    """Save numpy arrays or torch tensors as safetensors, atomically."""
    import numpy as np

    arrays = {}
    for k, v in tensors.items():
        if hasattr(v, "detach"):  # torch tensor: avoid importing torch here
            v = v.detach().cpu().contiguous().numpy()
        arrays[k] = np.ascontiguousarray(v)
    from safetensors.numpy import save_file

    meta = {k: str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata=meta)


def load_tensors(path: str | Path) -> dict:
    """Load a safetensors file as numpy arrays; a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise MindsearchError("file not found", path)
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise MindsearchError(f"not a readable safetensors file ({exc})", path) from None


def file_fingerprint(path: str | Path, chunk: int = 1 << 20) -> str:
    """Cheap content fingerprint: sha256 of size + first and last MiB."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(size - chunk, chunk))
            h.update(f.read(chunk))
    return h.hexdigest()[:16]
