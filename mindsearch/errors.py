"""The one error type users see.

Anything wrong with a user's input (a file, a flag, a mismatch between a run and an index)
is raised as ``MindsearchError``; the CLI turns it into one line on stderr and exit code 2,
with no traceback. Internal bugs stay ordinary exceptions so they keep their traceback.
``indexes`` (the lowest layer) raises the base class ``indexes.errors.InputError``.
"""

from __future__ import annotations

from mindsearch.indexes.errors import InputError


class MindsearchError(InputError):
    """A problem with the user's input, reported as ``<file>: <problem>``."""


def require(module: str, extra: str, what: str):
    """Import an optional dependency, or fail with one line naming the extra that installs it.

    ``require("ray", "distributed", "distributed builds")`` -> the module, or
    ``MindsearchError: distributed builds: ray is not installed: pip install 'mindsearch[distributed]'``.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MindsearchError(f"{what}: {module} is not installed: pip install 'mindsearch[{extra}]'") from None


__all__ = ["InputError", "MindsearchError", "require"]
