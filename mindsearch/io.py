"""Small file helpers shared by every writer: atomic writes and safetensors checkpoints.

Everything mindsearch writes goes to a temporary sibling first and is renamed into place,
so an interrupted or failed command never leaves a half-written file behind.
Checkpoints are safetensors + a JSON config beside them; nothing is ever unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mindsearch.errors import InputError, MindsearchError
from mindsearch.indexes.io import (  # noqa: F401  (the one writer)
    KILL_AT_ENV, atomic_path, clean_stale, crash_point, json_default, write_json)
from mindsearch.indexes.io import read_json as _read_json


def read_json(path: str | Path) -> Any:
    try:
        return _read_json(path)
    except InputError as exc:
        raise MindsearchError(exc.problem, exc.path) from None


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
