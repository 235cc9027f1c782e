"""mindsearch: decode what a person saw from fMRI by searching CLIP-space embeddings.

Importing this package is cheap: torch, lancedb, faiss and diffusers load only when a
function that needs them runs, so the CLI answers ``--help`` instantly.
"""

__version__ = "0.1.0"

from mindsearch.errors import MindsearchError  # noqa: E402  (light, no heavy deps)

__all__ = ["MindsearchError", "__version__"]
