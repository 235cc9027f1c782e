"""Reading a user's voxel file for ``embed`` and ``query``: checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mindsearch.errors import MindsearchError


def load_voxels(path: str | Path) -> np.ndarray:
    """A (trials, voxels) float array from .npy (never unpickled); one row for a 1-D file."""
    path = Path(path)
    if not path.is_file():
        raise MindsearchError("file not found", path)
    if path.suffix != ".npy":
        raise MindsearchError("voxels must be a .npy file of shape (trials, voxels) or (voxels,)", path)
    try:
        x = np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as exc:  # numpy raises ValueError/OSError variants for bad files
        raise MindsearchError(f"not a readable .npy array ({exc})", path) from None
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise MindsearchError(f"expected (trials, voxels) or (voxels,), got shape {x.shape}", path)
    if not np.issubdtype(x.dtype, np.floating):
        raise MindsearchError(f"voxels must be floating point, got {x.dtype}", path)
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise MindsearchError(f"{bad} trial(s) contain NaN or Inf voxels", path)
    return x
