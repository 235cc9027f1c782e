"""The one error type users see.

Anything wrong with a user's input (a file, a flag, a mismatch between a run and an index)
is raised as ``MindsearchError``; the CLI turns it into one line on stderr and exit code 2,
with no traceback. Internal bugs stay ordinary exceptions so they keep their traceback.
"""

from __future__ import annotations

from pathlib import Path


class MindsearchError(Exception):
    """A problem with the user's input, reported as ``<file>: <problem>``."""

    exit_code = 2

    def __init__(self, problem: str, path: str | Path | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
