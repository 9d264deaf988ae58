"""Errors a person can cause and fix. Standard library only.

Raise `MoolaError` (or a subclass) with one sentence that says what is wrong and how to fix it;
the Invoke front door turns it into that sentence and a non-zero exit, never a traceback.
"""

from __future__ import annotations  # ships to hosts whose Python may predate `int | None`


class MoolaError(Exception):
    """A user-facing failure: the message is shown as-is; `exit_code` becomes the exit status."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ValidationError(MoolaError):
    """Input data, a config or a file failed validation; `problems` lists every finding."""

    def __init__(self, message: str, problems: list | None = None):
        super().__init__(message)
        self.problems = list(problems or [])
