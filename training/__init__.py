"""Training MindEye-style encoders: losses, schedules and the trainer loop.

Heavy imports (torch, accelerate) happen inside these modules, which the CLI imports only in its
command bodies. ``training`` and ``eval`` are siblings: neither imports the other.
"""

from __future__ import annotations

__all__ = ["TrainConfig", "train_arrays", "train_mindeye"]


def __getattr__(name):
    if name in __all__:
        from mindsearch.training import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
