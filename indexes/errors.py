"""Base error for bad user input, defined at the lowest layer so every layer can raise it."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A problem with the user's input, reported as ``<file>: <problem>`` (exit code 2)."""

    exit_code = 2

    def __init__(self, problem: str, path: str | Path | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
