"""HostFacts: what one host told Moola, filled by each fact's own parser (see facts.py).

The shapes of parsed facts live here too, so `HostFacts` can name them; `facts.py` holds the
registry (shell fragment + parser per fact) and the gatherer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from moola_core.runtime.report import GpuFact

# --- parsed shapes ------------------------------------------------------------------------------


@dataclass
class CurrentLink:
    """What `current` is on disk: the link text, where it resolves, the workspace's real path."""

    link: str | None = None  # None: there is no `current` link
    resolved: str | None = None  # `readlink -f current`
    root: str | None = None  # the workspace's physical path (`pwd -P`)
    resolves: bool = False  # the link leads to a directory


@dataclass
class LockFact:
    """A deploy lock that is present: its holder record and its age on the host's clock,
    counted from the start time the holder recorded (`aged_from` "since"), or from the lock
    folder's mtime ("mtime") when the holder recorded none that can be believed."""

    holder: dict[str, Any]
    age_s: float = 0.0
    aged_from: str = "mtime"


@dataclass
class DiskFact:
    """Space on the workspace's filesystem, in bytes."""

    total_bytes: int
    free_bytes: int


@dataclass
class PythonFact:
    """The host interpreter named in the inventory: its version and torch's (None = missing)."""

    python: str | None = None
    torch: str | None = None


@dataclass
class GpuReport:
    """nvidia-smi's answer: present or not, the GPUs it listed, or the error it gave."""

    present: bool = False
    gpus: list[GpuFact] = field(default_factory=list)
    error: str | None = None


@dataclass
class ChecksumFact:
    """The release behind `current` verified against its manifest (size + sha256 per file)."""

    problems: list[str] = field(default_factory=list)
    version: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class HostFacts:
    """What one host told us; a fact not asked for stays at its default (see `asked`)."""

    workspace_exists: bool = True
    link: CurrentLink = field(default_factory=CurrentLink)
    releases: dict[str, str | None] = field(default_factory=dict)  # version -> archive sha256
    backups: list[str] = field(default_factory=list)  # snapshot file names, oldest first
    lock: LockFact | None = None
    disk: DiskFact | None = None
    interpreter: PythonFact = field(default_factory=PythonFact)
    gpu: GpuReport = field(default_factory=GpuReport)
    revisions: list[dict[str, Any]] = field(default_factory=list)  # last lines, oldest first
    checksums: ChecksumFact | None = None
    server: Any = None  # the serving room's fact (registered by it)
    unchecked: list[str] = field(default_factory=list)  # releases that never passed a check
    asked: tuple[str, ...] = ()
    complete: bool = True  # the answer ran to its end marker
    current: str | None = None  # the VALID release behind `current` (see resolve_current)
    current_problem: str | None = None  # why `current` does not count, one sentence

    @property
    def locked(self) -> bool:
        return self.lock is not None

    @property
    def lock_holder(self) -> dict[str, Any] | None:
        return self.lock.holder if self.lock is not None else None

    @property
    def disk_free_bytes(self) -> int | None:
        return self.disk.free_bytes if self.disk is not None else None

    @property
    def python(self) -> str | None:
        return self.interpreter.python

    @property
    def torch(self) -> str | None:
        return self.interpreter.torch

    @property
    def gpus(self) -> list[dict[str, Any]]:
        return [asdict(g) for g in self.gpu.gpus]


ATTRIBUTE = {
    "workspace": "workspace_exists",
    "current": "link",
    "python": "interpreter",
    "gpus": "gpu",
}
