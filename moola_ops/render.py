"""Pure views of the deployment log for `invoke log`: filters, health runs collapsed, rows.

No I/O and nothing heavy: events in (dicts as `journal.read_events` returns them), rows out.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from moola_core.errors import MoolaError
from moola_ops.log import steps

BAD = ("failed", "aborted", "refused")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str, now: datetime | None = None) -> str:
    """`--since` as the log's ISO time: 30m, 2h, 3d, 1w ago, or a date / date-time (UTC)."""
    now = now or datetime.now(UTC)
    text = value.strip()
    match = _RELATIVE.match(text)
    if match:
        moment = now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    else:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T"))
        except ValueError:
            raise MoolaError(
                f"--since {value!r} is not a time: use 30m, 2h, 3d, 1w or a UTC date such as "
                "2026-11-27 or 2026-11-27T14:30"
            ) from None
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class LogFilter:
    """What `invoke log` keeps: every given condition must hold."""

    phases: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()  # names or globs (local-*)
    deployment: str = ""  # an id or its first characters
    since: str = ""  # ISO time, see parse_since
    failed: bool = False
    overridden: bool = False  # only lines a person shipped past (status "overridden")

    def keep(self, event: dict[str, Any]) -> bool:
        if self.phases and event.get("phase") not in self.phases:
            return False
        if self.hosts and not any(
            fnmatch.fnmatchcase(event.get("host") or "", h) for h in self.hosts
        ):
            return False
        if self.deployment and not str(event.get("deployment", "")).startswith(self.deployment):
            return False
        if self.since and str(event.get("time", "")) < self.since:
            return False
        if self.overridden and event.get("status") != "overridden":
            return False
        return not (self.failed and event.get("status") not in BAD)


def split_list(value: str) -> tuple[str, ...]:
    """ "a, b,c" -> ("a", "b", "c")."""
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


@dataclass
class Row:
    """One line of `invoke log`'s table (a log line, or several health runs collapsed)."""

    time: str
    deployment: str
    phase: str
    host: str
    step: str
    status: str
    seconds: str
    bundle: str
    reason: str


def reason_of(event: dict[str, Any]) -> str:
    """The one sentence that says why: detail.summary, else error, else reason."""
    detail = event.get("detail") or {}
    text = detail.get("summary") or detail.get("error") or detail.get("reason") or ""
    return " ".join(str(text).split())


def _row(e: dict[str, Any]) -> Row:
    return Row(
        time=str(e.get("time", "")).replace("T", " ")[:19],
        deployment=str(e.get("deployment", "")),
        phase=str(e.get("phase", "")),
        host=str(e.get("host") or "-"),
        step=str(e.get("step", "")),
        status=str(e.get("status", "")),
        seconds=f"{float(e.get('duration_s') or 0):.2f}",
        bundle=str(e.get("bundle") or ""),
        reason=_reason_cell(e),
    )


def _reason_cell(e: dict[str, Any]) -> str:
    """A failure's reason in full; an ok line's summary shortened (health: none)."""
    text = reason_of(e)
    if e.get("status") in BAD or e.get("status") == "overridden":
        return text
    if e.get("phase") == steps.HEALTHCHECK:
        return ""
    return text if len(text) <= 100 else text[:97] + "..."


def log_rows(events: list[dict[str, Any]], *, collapse_health: bool = True) -> list[Row]:
    """Rows for the table, oldest first. With `collapse_health`, each health-check run (one
    line per host, same run id) becomes one row, and consecutive runs of the same kind that
    all passed become one row "N runs"; a run with a problem keeps its own row and reason."""
    if not collapse_health:
        return [_row(e) for e in events]
    rows: list[Row] = []
    runs: dict[str, list[dict]] = {}
    order: list[tuple[str, Any]] = []  # ("event", e) or ("run", run id), in log order
    for e in events:
        if e.get("phase") == steps.HEALTHCHECK:
            rid = str(e.get("deployment", ""))
            if rid not in runs:
                runs[rid] = []
                order.append(("run", rid))
            runs[rid].append(e)
        else:
            order.append(("event", e))
    streak: list[Row] = []  # consecutive passing runs of one kind

    def flush() -> None:
        if not streak:
            return
        if len(streak) == 1:
            rows.append(streak[0])
        else:
            first, last = streak[0], streak[-1]
            rows.append(
                Row(
                    last.time,
                    f"{len(streak)} runs since {first.time[5:16]}",
                    last.phase,
                    last.host,
                    last.step,
                    "ok",
                    "",
                    last.bundle,
                    "",
                )
            )
        streak.clear()

    for kind, item in order:
        if kind == "event":
            flush()
            rows.append(_row(item))
            continue
        lines = runs[item]
        hosts = sorted({e.get("host") or "-" for e in lines})
        bad = [e for e in lines if e.get("status") in BAD]
        bundles = sorted({e.get("bundle") for e in lines if e.get("bundle")})
        row = Row(
            time=str(lines[-1].get("time", "")).replace("T", " ")[:19],
            deployment=item,
            phase=steps.HEALTHCHECK,
            host=",".join(hosts) if len(hosts) <= 3 else f"{len(hosts)} hosts",
            step=str(lines[-1].get("step", "")),
            status="failed" if bad else "ok",
            seconds=f"{max(float(e.get('duration_s') or 0) for e in lines):.2f}",
            bundle=",".join(bundles),
            reason="; ".join(f"{e.get('host')}: {reason_of(e)}" for e in bad),
        )
        if bad or (streak and (streak[-1].step, streak[-1].host) != (row.step, row.host)):
            flush()
        if bad:
            rows.append(row)
        else:
            streak.append(row)
    flush()
    return rows


COLUMNS = ("time", "deployment", "phase", "host", "step", "status", "seconds", "bundle", "reason")


def format_table(rows: list[Row]) -> list[str]:
    """A header and one line per row; every column as wide as its widest cell."""
    cells = [COLUMNS] + [tuple(getattr(r, c) for c in COLUMNS) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS) - 1)]
    lines = []
    for row in cells:
        parts = [
            row[i].rjust(widths[i]) if COLUMNS[i] == "seconds" else row[i].ljust(widths[i])
            for i in range(len(widths))
        ]
        lines.append(("  ".join(parts) + "  " + row[-1]).rstrip())
    return lines
