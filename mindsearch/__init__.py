"""mindsearch: decode what a person saw from fMRI by searching CLIP-space embeddings.

Importing this package is cheap: torch, lancedb, faiss and diffusers load only when a
function that needs them runs, so the CLI answers ``--help`` instantly.

    from mindsearch import Engine, open_dataset, open_run
"""

__version__ = "0.1.0"

from mindsearch.errors import MindsearchError  # noqa: E402  (light, no heavy deps)

_LAZY = {
    "Engine": "mindsearch.engine",
    "open_dataset": "mindsearch.data",
    "open_run": "mindsearch.runs",
    "simulate": "mindsearch.simulate",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mindsearch' has no attribute {name!r}")


__all__ = ["MindsearchError", "__version__", *_LAZY]
