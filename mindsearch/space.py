"""Embedding spaces: which model, layer and weights an embedding lives in.

Runs and indexes both carry a space record; comparing embeddings from different spaces gives
meaningless neighbours, so ``check_same_space`` refuses them with a clear message.
"""

from __future__ import annotations

from mindsearch.errors import MindsearchError

# The fields that identify a space; ``name`` and ``pooling`` are descriptive.
IDENTITY = ("model", "layer", "weights", "tokens", "dim")


def describe(space: dict | None) -> str:
    if not space:
        return "<unknown space>"
    return (
        f"{space.get('model')}/{space.get('layer')} ({space.get('tokens')}×{space.get('dim')}, "
        f"weights {space.get('weights')})"
    )


def same_space(a: dict | None, b: dict | None, fields=IDENTITY) -> bool:
    if not a or not b:
        return False
    return all(a.get(f) == b.get(f) for f in fields)


def check_same_space(a: dict, b: dict, what_a: str, what_b: str, fields=IDENTITY) -> None:
    """Raise unless ``a`` and ``b`` identify the same embedding space."""
    if not same_space(a, b, fields):
        diffs = [f"{f}: {a.get(f) if a else None!r} vs {b.get(f) if b else None!r}"
                 for f in fields if (a or {}).get(f) != (b or {}).get(f)]
        raise MindsearchError(
            f"{what_a} lives in {describe(a)} but {what_b} lives in {describe(b)} "
            f"({'; '.join(diffs)}); their embeddings cannot be compared"
        )


def pooled(space: dict) -> dict:
    """The space of the pooled vector (token 0) of a token space."""
    out = dict(space)
    if space.get("tokens", 1) != 1:
        out.update(layer=f"{space.get('layer')}:token0", tokens=1)
    return out
