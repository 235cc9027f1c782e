"""Simulator presets (plain dicts) and the one function that resolves a configuration.

``n_voxels`` is subject 1's count; other subjects get NSD's nsdgeneral ratios, so every
preset has subjects of different sizes and ``nsd`` has exactly the real counts.
The knobs that set difficulty (calibrated; see the simulate README section in the report):
``phi_gain`` (how nonlinear the voxel features are), ``target_gain`` (how nonlinear the
target map is), ``exemplar_scale`` (how near the near-duplicates are).
"""

from __future__ import annotations

import copy

from mindsearch.errors import MindsearchError

NSD_VOXELS = {1: 15724, 2: 14278, 3: 15226, 4: 13153, 5: 13039, 6: 17907, 7: 12682, 8: 14386}

_COMMON = dict(
    reps=3,
    trials_per_session=750,
    latent_dim=32,
    n_categories=20,  # categories -> scenes -> near-duplicate exemplars
    exemplars_per_scene=12,  # mean ("a dozen zebras"); scene sizes vary (Poisson-like)
    scene_scale=0.7,
    exemplar_scale=0.02,  # near-duplicates: what keeps the ceiling below 100 %
    n_features=256,  # width of the voxel feature map phi
    phi_gain=1.5,  # the main lever on ridge (linear) accuracy
    target_hidden=256,
    target_gain=1.0,
    noise_rank=8,  # low-rank shared noise across voxels
    shared_noise=(0.1, 0.4),  # range of the shared fraction of each voxel's noise variance
    session_scale_sd=0.1,  # log-sd of per-session per-voxel gain
    session_offset_sd=0.3,  # sd of per-session per-voxel offset (noise sd = 1)
    baseline_sd=1.0,  # sd of the per-voxel baseline shared by all sessions
    n_shapes=4,
    max_sessions=None,  # None: as many as the trials need; dict: per subject (nsd)
    design="synthetic",  # "synthetic" | "auto" (real nsd_expdesign.mat when present)
    mc_target_ci=0.005,  # Monte-Carlo: stop when 1.96*SE <= this (half a point)
    mc_min_draws=20,
    mc_max_draws=400,
    targets_dtype="float32",
)

PRESETS = {
    # The demo's world: one subject, simulate in seconds, ridge + eval in about a minute.
    "small": dict(
        _COMMON, subjects=[1], n_voxels=1500, n_shared=300, n_unique=1200,
        image_size=64, tokens=9, dim=64,
    ),
    # Benchmark: four subjects, 16 sessions each, a CPU MLP trains in minutes.
    "standard": dict(
        _COMMON, subjects=[1, 2, 5, 7], n_voxels=3000, n_shared=1000, n_unique=3000,
        image_size=64, tokens=17, dim=128,
    ),
    # NSD's real sizes (GPU machines): 40 x 750 trials, 10,000 images each, ViT-L/14 targets.
    "nsd": dict(
        _COMMON, subjects=[1, 2, 5, 7], n_voxels=15724, n_shared=1000, n_unique=9000,
        image_size=224, tokens=257, dim=768, latent_dim=64, n_features=512, target_hidden=512,
        max_sessions="nsd", design="auto", targets_dtype="float16",
    ),
}


def resolve(preset: str = "small", subjects=None, **overrides) -> dict:
    """The full configuration for ``preset`` with ``subjects`` and overrides applied."""
    if preset not in PRESETS:
        raise MindsearchError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    cfg = copy.deepcopy(PRESETS[preset])
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise MindsearchError(f"unknown simulate setting(s): {', '.join(unknown)}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if subjects is not None:
        cfg["subjects"] = subjects
    subs = parse_subjects(cfg["subjects"])
    cfg["subjects"] = subs
    cfg["preset"] = preset
    cfg["voxels"] = {s: max(1, round(cfg["n_voxels"] * NSD_VOXELS[s] / NSD_VOXELS[1])) for s in subs}
    for key in ("n_shared", "n_unique", "n_voxels", "image_size", "tokens", "dim", "reps"):
        if int(cfg[key]) < (0 if key == "n_unique" else 1):
            raise MindsearchError(f"simulate setting {key} must be positive, got {cfg[key]}")
    if cfg["tokens"] < 1 or cfg["n_shared"] < 2:
        raise MindsearchError("need at least 1 token and 2 shared test images")
    return cfg


def parse_subjects(value) -> list[int]:
    """``"1,2,5,7"`` or an iterable of ints -> sorted unique NSD subject numbers (1..8)."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise MindsearchError(f"subjects must be comma-separated numbers, got {value!r}") from None
    elif isinstance(value, int):
        value = [value]
    subs = sorted({int(s) for s in value})
    if not subs or any(not 1 <= s <= 8 for s in subs):
        raise MindsearchError(f"subjects must be NSD subjects 1..8, got {value!r}")
    return subs
