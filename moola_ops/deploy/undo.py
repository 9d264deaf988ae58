"""The undo stack of one host's run: each stage that does something a failure must undo pushes
how to undo it (`ctx.undo.push(name, fn, left=..., fix=...)`) and drops it once it is settled;
the guard (moola_ops/deploy/guard.py) unwinds what is left, newest first. An entry the guard
could not run (the host stopped answering) stays, and its `left` sentence and `fix` command
say what is on the host and how to clear it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

UndoFn = Callable[[dict[str, Any]], "str | None"]  # (the cleanup step's detail) -> a note


@dataclass
class Undo:
    name: str
    fn: UndoFn
    left: str  # what stays on the host while this is not undone
    fix: str | None = None  # the command that clears it later
    key: str | None = None  # what it is about (a version), for drop(name, key)


class UndoStack:
    """Newest last; `unwind` runs them newest first."""

    def __init__(self) -> None:
        self.entries: list[Undo] = []

    def push(
        self, name: str, fn: UndoFn, *, left: str, fix: str | None = None, key: str | None = None
    ) -> None:
        self.entries.append(Undo(name, fn, left, fix, key))

    def drop(self, name: str, key: str | None = None) -> bool:
        """Forget the newest entry `name` (about `key` when given): it is settled."""
        for i in range(len(self.entries) - 1, -1, -1):
            entry = self.entries[i]
            if entry.name == name and (key is None or entry.key == key):
                del self.entries[i]
                return True
        return False

    def has(self, name: str) -> bool:
        return any(e.name == name for e in self.entries)

    def unwind(self, info: dict[str, Any]) -> list[str]:
        """Run every entry, newest first; their notes, in that order. An exception stops the
        unwind with the failed entry kept (so `left` still names it) and propagates."""
        notes: list[str] = []
        while self.entries:
            entry = self.entries.pop()
            try:
                note = entry.fn(info)
            except BaseException:
                if not self.has(entry.name):
                    self.entries.append(entry)
                raise
            if note:
                notes.append(note)
        return notes

    def left(self) -> list[str]:
        return [e.left for e in reversed(self.entries)]

    def fixes(self) -> list[str]:
        seen: list[str] = []
        for e in reversed(self.entries):
            if e.fix and e.fix not in seen:
                seen.append(e.fix)
        return seen
