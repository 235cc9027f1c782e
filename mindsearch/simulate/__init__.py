"""A simulated NSD-like world with a known encoding model and a known ceiling.

``simulate(out, preset="small", subjects=None, seed=0, layout="mindeye2", **overrides)``
writes images (procedural pixels), CLIP-shaped targets, betas from a nonlinear encoding model
with NSD-like noise, in NSD's trial structure, plus ``ground_truth.json``: the Bayes-optimal
identification accuracy under the retrieval protocol, the ceiling no decoder can beat.

Modules: ``presets`` (sizes and knobs), ``world`` (latents, feature and target maps),
``render`` (pixels), ``encoding`` (a subject's voxel model and noise), ``ceiling`` (Bayes
decoder and Monte Carlo), ``shards`` (tar writing), ``writer`` (the on-disk layout).
"""

from __future__ import annotations

from mindsearch.simulate.presets import PRESETS, resolve


def simulate(out, preset: str = "small", subjects=None, seed: int = 0, layout: str = "mindeye2",
             **overrides):
    """Write a simulated dataset to ``out`` (refused if it exists and is not empty, unless
    ``force=True``); returns its ``Path``. ``overrides`` replace preset settings
    (e.g. ``n_voxels=200, n_shared=60``); see ``mindsearch.simulate.presets``."""
    from mindsearch.simulate.writer import simulate as _simulate

    return _simulate(out, preset, subjects, seed, layout, **overrides)


__all__ = ["PRESETS", "resolve", "simulate"]
