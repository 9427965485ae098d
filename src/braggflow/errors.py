"""Errors that name the file, key or value at fault."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input (file, config value): the message names what is wrong and where."""

    def __init__(self, where: str | Path, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{where}: {problem}")
