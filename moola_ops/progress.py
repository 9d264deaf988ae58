"""Live progress of long tasks, rendered from the deployment log's events as they happen.

Every engine and phase step goes through `journal.Journal.step`, which tells the journal's
listeners when a step starts (a transient "started" event) and when it ends (the line it
writes). `show()` subscribes a renderer for the length of a task:

- on a terminal (stderr is a TTY): a rich live table, one row per host with its current step,
  how long it has been running, the upload's bytes and the steps done so far; it disappears
  when the task ends and the task's own table is printed;
- off a terminal (cron mail, CI logs, a pipe): one plain line per finished step on stderr,
  `HH:MM:SS phase host step status seconds [reason]`, no colour or cursor codes, flushed at
  once, so stdout stays the task's result.

Light on purpose: `rich` loads only when the live view starts (cron's healthcheck never does).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from moola_ops.log import journal

_FINAL = {"ok", "failed", "skipped", "aborted", "refused", "overridden"}
_COLOUR = {
    "ok": "green",
    "failed": "red",
    "aborted": "red",
    "refused": "red",
    "skipped": "yellow",
    "overridden": "magenta",
}


def live_terminal(stream: TextIO | None = None) -> bool:
    """True when `stream` (default stderr) is an interactive terminal that can redraw."""
    stream = stream or sys.stderr
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def plain_line(event: journal.Event) -> str:
    """The one plain line for a finished step (no colour, no cursor codes)."""
    clock = (event.time or "")[11:19] or time.strftime("%H:%M:%S", time.gmtime())
    detail = event.detail or {}
    reason = ""
    if event.status != "ok":
        reason = str(detail.get("error") or detail.get("summary") or detail.get("reason") or "")
    reason = " ".join(reason.split())[:200]
    parts = [
        clock,
        event.phase,
        event.host or "-",
        event.step,
        event.status,
        f"{event.duration_s:.1f}s",
    ]
    return " ".join(parts) + (f"  {reason}" if reason else "")


@dataclass
class HostRow:
    """What the live view knows about one host."""

    name: str
    step: str = "waiting"
    status: str = ""
    since: float = field(default_factory=time.monotonic)
    done: int = 0
    failed: str = ""
    sent: int = 0
    total: int = 0
    phase: str = ""


class ProgressView:
    """Receives journal events (any thread) and renders them live or as plain lines."""

    def __init__(
        self,
        title: str = "",
        *,
        hosts: tuple[str, ...] = (),
        live: bool | None = None,
        stream: TextIO | None = None,
        plain: bool = True,
    ):
        self.title = title
        self.stream = stream or sys.stderr
        self.live = live_terminal(self.stream) if live is None else live
        self.plain = plain
        self.rows: dict[str, HostRow] = {h: HostRow(h) for h in hosts}
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self._live = None

    # --- events ---------------------------------------------------------------------------

    def __call__(self, event: journal.Event) -> None:
        if self.live:
            self._update(event)
        elif self.plain and event.status in _FINAL:
            with self.lock:
                print(plain_line(event), file=self.stream, flush=True)

    def _update(self, event: journal.Event) -> None:
        name = event.host or event.phase
        if not event.host and event.step in ("open", "close"):
            return  # run-level bookkeeping: the rows already say it
        with self.lock:
            row = self.rows.setdefault(name, HostRow(name))
            row.phase = event.phase
            if event.status == "started":
                row.step, row.status, row.since = event.step, "running", time.monotonic()
                row.sent = row.total = 0
            else:
                row.step, row.status, row.since = event.step, event.status, time.monotonic()
                row.done += 1
                if event.status in ("failed", "aborted", "refused") and not row.failed:
                    detail = event.detail or {}
                    why = detail.get("error") or detail.get("summary") or event.status
                    row.failed = f"{event.step}: {' '.join(str(why).split())[:80]}"

    def upload(self, host: str, total: int) -> Callable[[int, int], None]:
        """A byte-count callback for one host's upload (the engine's `progress` option)."""
        with self.lock:
            row = self.rows.setdefault(host, HostRow(host))
            row.total, row.sent = total, 0

        def update(sent: int, _total: int) -> None:
            row.sent = sent

        return update

    # --- rendering --------------------------------------------------------------------------

    def renderable(self):
        from rich.spinner import Spinner
        from rich.table import Table

        now = time.monotonic()
        table = Table(
            box=None,
            pad_edge=False,
            show_header=True,
            header_style="dim",
            title=f"{self.title}  {now - self.started:.0f}s" if self.title else None,
            title_justify="left",
        )
        for column in ("", "host", "step", "time", "done", "problem"):
            table.add_column(column, no_wrap=True, overflow="ellipsis")
        with self.lock:
            rows = list(self.rows.values())
        for row in rows:
            running = row.status == "running"
            mark = Spinner("dots", style="cyan") if running else ""
            step = row.step
            if running and row.total and row.step == "upload":
                step += f" {row.sent / 1e6:.1f}/{row.total / 1e6:.1f} MB"
            elif row.status and not running:
                colour = _COLOUR.get(row.status, "white")
                step += f" [{colour}]{row.status}[/]"
            table.add_row(
                mark,
                row.name,
                step,
                f"{now - row.since:.0f}s" if running else "",
                str(row.done),
                f"[red]{row.failed}[/]" if row.failed else "",
            )
        return table

    def start(self) -> None:
        if not self.live:
            return
        from rich.live import Live

        from moola_ops.terminal import safe_console

        console = safe_console(self.stream, force_terminal=True, highlight=False)
        self._live = Live(
            get_renderable=self.renderable,
            console=console,
            transient=True,
            refresh_per_second=8,
            redirect_stderr=False,
        )
        self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            with contextlib.suppress(Exception):
                self._live.stop()
            self._live = None


@contextlib.contextmanager
def show(
    title: str = "",
    *,
    hosts: tuple[str, ...] | list[str] = (),
    live: bool | None = None,
    plain: bool = True,
    stream: TextIO | None = None,
) -> Iterator[ProgressView]:
    """Render every journal event of this process while the block runs (see module doc).

    `plain=False` keeps a non-terminal silent (a Nagios plugin prints only its status line);
    `live=False` forces plain lines. The view is yielded: `view.upload` is a progress factory.
    """
    view = ProgressView(title, hosts=tuple(hosts), live=live, stream=stream, plain=plain)
    unsubscribe = journal.subscribe(view)
    view.start()
    try:
        yield view
    finally:
        unsubscribe()
        view.stop()
