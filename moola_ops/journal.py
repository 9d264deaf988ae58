"""The deployment log: one JSON line per step of every run, success or failure.

`logs/deployments.jsonl` (env `MOOLA_LOG` overrides). The event schema is defined here once;
the deploy engine, the checklist and the health checks all write through `Journal`/`append`.

Each line is appended with one `write` under an exclusive `fcntl.flock` and flushed + fsynced
before the lock is released, so concurrent runs (two terminals, cron) neither interleave nor
lose lines. The file reads with `pandas.read_json(path, lines=True)`.

A line that cannot be written whole (full disk, file-size limit, the log is a folder or not
writable) is taken back out and raises JournalWriteError, one sentence; a line torn by a crash
in an older writer never hides the next event, which then starts on a fresh line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moola_core.errors import MoolaError, os_error_sentence

DEFAULT_LOG = Path("logs/deployments.jsonl")

# Step outcomes. "started" opens a step or a run, "aborted" marks Ctrl-C, "refused" a request
# the engine declined before touching anything (bad name, lock held by someone else).
STATUSES = ("started", "ok", "failed", "skipped", "aborted", "refused")


@dataclass
class Event:
    """One line of the deployment log (the schema every writer shares)."""

    deployment: str  # run id, shared by every line of one run (all hosts of a fleet)
    actor: str  # who ran it: user@machine (env MOOLA_ACTOR overrides)
    host: str  # inventory host name, or "" for run-level lines
    bundle: str  # bundle version, or "" when not about a bundle
    phase: str  # checklist phase: deploy, rollback, drill, restore, lock, verify, ...
    step: str  # named step within the phase: lock, facts, upload, switch, ...
    status: str  # one of STATUSES
    duration_s: float = 0.0  # wall time of the step
    detail: dict[str, Any] = field(default_factory=dict)  # free-form facts about the step
    time: str = ""  # ISO-8601 UTC with milliseconds; filled in when appended

    def to_json(self) -> str:
        """The event as one compact JSON line (no trailing newline)."""
        return json.dumps(asdict(self), sort_keys=True, default=str, separators=(",", ":"))


EVENT_FIELDS = frozenset(f.name for f in fields(Event))  # every line a writer appends has all


class JournalWriteError(MoolaError):
    """The deployment log could not be written; nothing partial was left in it.

    `.path` is the log, `.strerror` the operating system's reason ("No space left on device"),
    as on the OSError it replaces.
    """

    def __init__(self, message: str, path: Path, strerror: str = ""):
        super().__init__(message)
        self.path = path
        self.strerror = strerror


def log_path(path: str | os.PathLike | None = None) -> Path:
    """Where the deployment log lives: `path`, else env MOOLA_LOG, else logs/deployments.jsonl."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get("MOOLA_LOG") or DEFAULT_LOG)


def current_actor() -> str:
    """Who is acting: env MOOLA_ACTOR, else user@machine."""
    env = os.environ.get("MOOLA_ACTOR")
    if env:
        return env
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers): still log something useful
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def new_deployment_id() -> str:
    """A sortable, unique run id: UTC timestamp plus 6 random hex digits."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def append(event: Event, path: str | os.PathLike | None = None) -> Event:
    """Append one event as a JSON line under an exclusive flock; flushed and fsynced.

    Raises JournalWriteError (one sentence) when the line cannot be written whole; a partly
    written line is truncated away again, so the log only ever holds whole lines.
    """
    if event.status not in STATUSES:
        raise ValueError(f"unknown journal status {event.status!r}; use one of {STATUSES}")
    if not event.time:
        event.time = _now_iso()
    target = log_path(path)
    line = (event.to_json() + "\n").encode()
    # O_APPEND + one write per line; the flock also serialises writers on filesystems where
    # O_APPEND alone is not atomic for larger lines (NFS), and makes readers see whole lines.
    fd = _open_log(target, fcntl.LOCK_EX)
    try:
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a torn last line must not swallow this event
            _write_whole(fd, line, size, target)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return event


def check_writable(path: str | os.PathLike | None = None) -> Path:
    """Make sure the deployment log can be appended to (creating it); JournalWriteError if not.

    Tasks call it before they touch a host, so a log that cannot be written stops the run at
    its start with one sentence instead of after a host changed.
    """
    target = log_path(path)
    os.close(_open_log(target))  # closing the descriptor also drops its lock
    return target


def _open_log(target: Path, lock: int = fcntl.LOCK_SH) -> int:
    """The log opened for appending (created with its folder) and flocked with `lock`;
    JournalWriteError when that is impossible."""
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # exist_ok covers folders only: a file holds the folder's name
            reason = f"{os.strerror(errno.ENOTDIR)}: {target.parent} is a file"
            raise NotADirectoryError(errno.ENOTDIR, reason, str(target)) from None
        # read as well: the last byte says whether the file ends on a whole line
        fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _write_error(target, exc) from None
    fcntl.flock(fd, lock)
    return fd


def _write_whole(fd: int, data: bytes, size_before: int, target: Path) -> None:
    """Write all of `data` (looping over short writes) and fsync, or take it back out."""
    written = 0
    try:
        while written < len(data):
            count = os.write(fd, data[written:])
            if count <= 0:  # no progress and no error: treat as a full disk
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
            written += count
        os.fsync(fd)
    except OSError as exc:
        note = ""
        if written:
            try:
                os.ftruncate(fd, size_before)
                note = f"; only {written} of {len(data)} bytes fit and were taken back out"
            except OSError:  # left torn: the next event starts on a fresh line (append)
                note = f"; only {written} of {len(data)} bytes fit"
        raise _write_error(target, exc, note) from None


def _write_error(target: Path, exc: OSError, note: str = "") -> JournalWriteError:
    if exc.filename is None:
        exc.filename = str(target)
    sentence = os_error_sentence(exc, "write the deployment log")
    return JournalWriteError(
        f"{sentence}, or set MOOLA_LOG to a writable file{note}", target, exc.strerror or str(exc)
    )


def read_events(
    path: str | os.PathLike | None = None,
    *,
    deployment: str | None = None,
    host: str | None = None,
    phase: str | None = None,
) -> list[dict[str, Any]]:
    """All events of the log (oldest first), optionally filtered; [] when there is no log yet.

    A torn last line (a crash mid-write on a filesystem without flock) is skipped, not fatal;
    so is a line that is not an event (hand-edited, another tool's), which the readers of the
    log (`invoke log`, `checklist`, `accept`) could not use.
    """
    target = log_path(path)
    if not target.exists():
        return []
    events = []
    with open(target, encoding="utf-8") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        try:
            lines = fh.readlines()
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    for raw in lines:
        raw = raw.strip()
        if not raw:
            continue
        try:
            event = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if not isinstance(event, dict) or not event.keys() >= EVENT_FIELDS:
            continue
        if deployment and event.get("deployment") != deployment:
            continue
        if host and event.get("host") != host:
            continue
        if phase and event.get("phase") != phase:
            continue
        events.append(event)
    return events


class Journal:
    """The log of one run: fixes deployment id, actor, phase and bundle for every line.

    Use `record(...)` for a single line or `with journal.step(host, "upload") as detail:` to time
    a step and record ok / failed / aborted automatically (the `detail` dict lands in the line).
    """

    def __init__(
        self,
        phase: str,
        *,
        bundle: str = "",
        deployment: str | None = None,
        actor: str | None = None,
        path: str | os.PathLike | None = None,
    ):
        self.phase = phase
        self.bundle = bundle
        self.deployment = deployment or new_deployment_id()
        self.actor = actor or current_actor()
        self.path = log_path(path)

    def record(
        self,
        host: str,
        step: str,
        status: str,
        *,
        duration_s: float = 0.0,
        bundle: str | None = None,
        phase: str | None = None,
        **detail: Any,
    ) -> Event:
        """Append one line for `host` (use "" for the run itself) and return it."""
        event = Event(
            deployment=self.deployment,
            actor=self.actor,
            host=host,
            bundle=self.bundle if bundle is None else bundle,
            phase=phase or self.phase,
            step=step,
            status=status,
            duration_s=round(duration_s, 4),
            detail=detail,
        )
        return append(event, self.path)

    @contextlib.contextmanager
    def step(self, host: str, step: str, **detail: Any) -> Iterator[dict[str, Any]]:
        """Time a step; record "ok" on exit, "failed" on an exception, "aborted" on Ctrl-C.

        The yielded dict is the line's detail: add facts to it inside the block. A step may
        set detail["status"] (e.g. "skipped") to record another outcome than "ok".
        """
        info: dict[str, Any] = dict(detail)
        started = time.monotonic()
        try:
            yield info
        except KeyboardInterrupt:
            info.pop("status", None)
            self.record(host, step, "aborted", duration_s=time.monotonic() - started, **info)
            raise
        except BaseException as exc:
            info.setdefault("error", str(exc) or type(exc).__name__)
            status = info.pop("status", "failed")  # a step may say "refused" before raising
            self.record(host, step, status, duration_s=time.monotonic() - started, **info)
            raise
        status = info.pop("status", "ok")
        self.record(host, step, status, duration_s=time.monotonic() - started, **info)
