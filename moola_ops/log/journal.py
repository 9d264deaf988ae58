"""The deployment log: one JSON line per step of every run, success or failure.

`logs/deployments.jsonl` (env `MOOLA_LOG` overrides). The event schema is defined here once;
the deploy engine, the checklist and the health checks all write through `Journal`/`append`.

Each line is appended with one `write` under an exclusive `fcntl.flock` and flushed + fsynced
before the lock is released, so concurrent runs (two terminals, cron) neither interleave nor
lose lines. The file reads with `pandas.read_json(path, lines=True)`.

A line that cannot be written whole (full disk, file-size limit, the log is a folder or not
writable) is taken back out and raises JournalWriteError, one sentence; a line torn by a crash
in an older writer never hides the next event, which then starts on a fresh line. The file
itself (locking, whole-line writes, rotation, reading) is `moola_ops/log/logfile.py`.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moola_core.errors import MoolaError, os_error_sentence
from moola_ops.log.logfile import append_line, open_log, read_lines, rotated_files

DEFAULT_LOG = Path("logs/deployments.jsonl")

# Step outcomes. "started" opens a step or a run, "aborted" marks Ctrl-C, "refused" a request
# the engine declined before touching anything (bad name, lock held by someone else).
# "overridden": a person shipped past a failed or missing check, with a recorded reason: its own
# state everywhere (checklist, report, `invoke log`), never shown as "ok"
STATUSES = ("started", "ok", "failed", "skipped", "aborted", "refused", "overridden")


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


# --- listeners: live progress of whatever this process records (moola_ops.progress) ------------

Listener = Callable[[Event], None]
_listeners: list[Listener] = []
_listeners_lock = threading.Lock()


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call `listener(event)` for every event this process appends to any log, and for a
    transient status="started" event when a `Journal.step` begins (never written to a file).

    Returns the function that unsubscribes it. Listeners run on the thread that records (the
    engine's worker threads included), must be quick, and cannot break a run: an exception in
    a listener is swallowed.
    """
    with _listeners_lock:
        _listeners.append(listener)

    def unsubscribe() -> None:
        with _listeners_lock, contextlib.suppress(ValueError):
            _listeners.remove(listener)

    return unsubscribe


def notify(event: Event) -> None:
    """Pass `event` to every listener (see `subscribe`)."""
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        with contextlib.suppress(Exception):
            listener(event)


def announce(
    phase: str, host: str, step: str, *, deployment: str = "", bundle: str = "", **detail: Any
) -> None:
    """Tell listeners that `step` started on `host` without writing a line (work whose result
    is logged once at its end, such as a health check's probes)."""
    if not _listeners:
        return
    notify(
        Event(
            deployment=deployment,
            actor="",
            host=host,
            bundle=bundle,
            phase=phase,
            step=step,
            status="started",
            detail=detail,
            time=_now_iso(),
        )
    )


@contextlib.contextmanager
def transient_step(phase: str, host: str, step: str, **detail: Any) -> Iterator[dict[str, Any]]:
    """Like `Journal.step` for listeners only: "started" on entry, ok/failed/aborted with the
    duration on exit, nothing written (a health probe logs one line per host at its end)."""
    info: dict[str, Any] = dict(detail)
    if not _listeners:
        yield info
        return
    announce(phase, host, step, **detail)
    started = time.monotonic()
    status = "ok"
    try:
        yield info
    except KeyboardInterrupt:
        status = "aborted"
        raise
    except BaseException as exc:
        status = "failed"
        info.setdefault("error", str(exc) or type(exc).__name__)
        raise
    finally:
        notify(
            Event(
                deployment="",
                actor="",
                host=host,
                bundle="",
                phase=phase,
                step=step,
                status=info.pop("status", status),
                detail=info,
                time=_now_iso(),
                duration_s=round(time.monotonic() - started, 4),
            )
        )


def append(event: Event, path: str | os.PathLike | None = None) -> Event:
    """Append one event as a JSON line under an exclusive flock; flushed and fsynced.

    Raises JournalWriteError (one sentence) when the line cannot be written whole; a partly
    written line is truncated away again, so the log only ever holds whole lines.
    """
    if event.status not in STATUSES:
        raise ValueError(f"unknown journal status {event.status!r}; use one of {STATUSES}")
    if not event.time:
        event.time = _now_iso()
    append_line(log_path(path), (event.to_json() + "\n").encode())
    notify(event)
    return event


def check_writable(path: str | os.PathLike | None = None) -> Path:
    """Make sure the deployment log can be appended to (creating it); JournalWriteError if not.

    Tasks call it before they touch a host, so a log that cannot be written stops the run at
    its start with one sentence instead of after a host changed.
    """
    target = log_path(path)
    os.close(open_log(target))  # closing the descriptor also drops its lock
    return target


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
    if not target.exists() and not rotated_files(target):
        return []
    try:
        lines = read_lines(target)
    except OSError as exc:  # a folder or an unreadable file at the log's path: one sentence
        exc.filename = str(target)
        raise MoolaError(os_error_sentence(exc, "read the deployment log")) from None
    events = []
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
        if _listeners:
            announce(
                self.phase, host, step, deployment=self.deployment, bundle=self.bundle, **detail
            )
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
