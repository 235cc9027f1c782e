"""MindEye-style brain encoders (torch is imported only when these modules are used).

``create_model(config, n_voxels={subject: V}, tokens=T, dim=D)`` builds a ``MindEyeModel``;
``from_pretrained(dir)`` / ``save_pretrained(model, dir)`` round-trip it; ``load_run_encoder`` is the
``mindsearch.runs`` loader for ``"model": "mindeye"`` runs.
"""

from __future__ import annotations

__all__ = ["create_model", "count_parameters", "from_pretrained", "save_pretrained", "load_preset",
           "resolve_config", "load_run_encoder", "list_presets"]


def __getattr__(name):
    # Lazy so that ``import mindsearch.models`` never pulls torch in.
    if name in ("create_model", "count_parameters", "from_pretrained", "save_pretrained",
                "load_preset", "resolve_config", "list_presets"):
        from mindsearch.models import factory

        return getattr(factory, name)
    if name in ("load_run_encoder", "MindEyeModel", "RunEncoder"):
        from mindsearch.models import encoder

        return getattr(encoder, name)
    raise AttributeError(name)
