"""Reading a user's arrays (voxels for ``embed``/``query``, embeddings for ``eval``/``query``):
checked before anything runs, never unpickled."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mindsearch.errors import MindsearchError


def load_npy(path: str | Path, *, what: str = "array", min_ndim: int = 1, mmap: bool = False) -> np.ndarray:
    """A finite floating-point array from a .npy file, or one clear error naming the file."""
    from mindsearch.data.arrays import read_npy

    path = Path(path)
    x = read_npy(path, mmap=mmap)  # header checked against the file size before any allocation
    if x.ndim < min_ndim:
        raise MindsearchError(f"expected a {what} with at least {min_ndim} dimensions, got shape {x.shape}", path)
    if not np.issubdtype(x.dtype, np.floating):
        raise MindsearchError(f"{what} must be floating point, got {x.dtype}", path)
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum()) if x.ndim > 1 else 1
        raise MindsearchError(f"{bad} row(s) contain NaN or Inf values", path)
    return x


def check_directions(x: np.ndarray, path: str | Path) -> np.ndarray:
    """Embeddings are compared by cosine: a row of zeros has no direction and is refused."""
    if len(x) == 0:
        raise MindsearchError(f"no rows (shape {tuple(np.shape(x))})", path)
    zero = ~np.asarray(x).reshape(len(x), -1).any(axis=1)
    if zero.any():
        raise MindsearchError(f"{int(zero.sum())} row(s) are all zeros (first: row {int(np.flatnonzero(zero)[0])}); "
                              "an embedding without a direction cannot be ranked", path)
    return x


def load_voxels(path: str | Path) -> np.ndarray:
    """A (trials, voxels) float array from .npy; one row for a 1-D file."""
    path = Path(path)
    if path.suffix != ".npy":
        raise MindsearchError("voxels must be a .npy file of shape (trials, voxels) or (voxels,)", path)
    x = load_npy(path, what="voxels", mmap=True)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise MindsearchError(f"expected (trials, voxels) or (voxels,), got shape {x.shape}", path)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise MindsearchError(f"no voxels to encode (shape {x.shape})", path)
    return x
