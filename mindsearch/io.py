"""Small file helpers shared by every writer: atomic writes and safetensors checkpoints.

Everything mindsearch writes goes to a temporary sibling first and is renamed into place,
so an interrupted or failed command never leaves a half-written file behind.
Checkpoints are safetensors + a JSON config beside them; nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from mindsearch.errors import MindsearchError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Works for files and directories (whatever the caller creates at the yielded path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"atomic_path: nothing was written to {target}")
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
