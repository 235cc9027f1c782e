"""Per-voxel noise-ceiling SNR (signal sd / noise sd) drawn like NSD's nsdgeneral voxels.

Source: the real per-voxel ncsnr of NSD subjects 1, 2, 5, 7 (DeepNSD csv fixtures, early
visual + occipitotemporal) when present beside the checkout, else a gamma distribution fitted
to those 44,806 values (maximum likelihood, location 0): shape 4.716, scale 0.0943
(median 0.41, 5%/95% quantiles 0.18/0.83 vs the real 0.19/0.83).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

GAMMA_SHAPE = 4.716309646480365
GAMMA_SCALE = 0.09430689636187609

_FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "nsd"
_FILES = ("ncsnr_evc_subj1257.csv", "ncsnr_otc_subj1257.csv")


@functools.lru_cache(maxsize=1)
def _real() -> dict | None:
    """subject -> real ncsnr values, or None when the fixture files are absent."""
    paths = [_FIXTURES / f for f in _FILES]
    if not all(p.is_file() for p in paths):
        return None
    import csv

    out: dict = {}
    for p in paths:
        with open(p, newline="") as f:
            for row in csv.DictReader(f):
                out.setdefault(int(row["subj_id"]), []).append(float(row["ncsnr"]))
    return {s: np.asarray(v, dtype=np.float64) for s, v in out.items()}


def draw(rng: np.random.Generator, n: int, subject: int, source: str = "auto") -> tuple[np.ndarray, str]:
    """``n`` ncsnr values for ``subject`` and the name of the source used.

    With the fixture, a subject in it draws from its own voxels (others from all four),
    with replacement, since the nsdgeneral counts exceed the fixture's per-subject counts.
    """
    real = _real() if source in ("auto", "fixture") else None
    if real is not None:
        pool = real.get(int(subject))
        if pool is None:
            pool = np.concatenate(list(real.values()))
        values = rng.choice(pool, size=n, replace=True)
        return np.maximum(values, 0.0).astype(np.float32), "fixture:ncsnr_{evc,otc}_subj1257.csv"
    values = rng.gamma(GAMMA_SHAPE, GAMMA_SCALE, size=n)
    return values.astype(np.float32), f"gamma(shape={GAMMA_SHAPE:.4f}, scale={GAMMA_SCALE:.4f})"
