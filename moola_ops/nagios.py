"""Nagios plugin conventions, pure: threshold ranges, states, and which threshold applies.

Range syntax (Nagios plugin development guidelines): a range alerts when the value is
OUTSIDE it, unless it starts with `@`.

    10        alert if < 0 or > 10          10:     alert if < 10
    ~:10      alert if > 10                 10:20   alert if < 10 or > 20
    @10:20    alert if 10 <= value <= 20

Moola's health check judges three figures per host; `-w/--warning` and `-c/--critical` take
`METRIC=RANGE` pairs, comma separated (a bare RANGE is for p99_ms, the primary figure):

    p99_ms    the model's p99 latency in ms (deep check); default warning 80% of the SLA, critical
              over the SLA (`latency_sla_ms` of the host, else the bundle's)
    free_gib  free space on the workspace filesystem in GiB; default warning `5:`, critical `1:`
    lock_min  age of a deploy lock in minutes; default warning: the longest a deploy may take
              (HealthPolicy.stale_lock_s); a lock whose holder is gone warns at any age

Precedence: the flag, then the host's `warning:`/`critical:` fields in the inventory, then
the defaults above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moola_core.errors import MoolaError

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
METRICS = {
    "p99_ms": "p99 latency of the model in ms (deep check)",
    "free_gib": "free space on the workspace filesystem in GiB",
    "lock_min": "age of a deploy lock in minutes",
}
PRIMARY = "p99_ms"


@dataclass(frozen=True)
class Range:
    """A Nagios range: `alerts(value)` is True when the value should raise the state."""

    start: float
    end: float
    inside: bool  # `@`: alert inside [start, end] instead of outside
    text: str

    def alerts(self, value: float) -> bool:
        within = self.start <= value <= self.end
        return within if self.inside else not within

    def __str__(self) -> str:
        return self.text


def _bound(text: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MoolaError(
            f"threshold range {whole!r}: {text!r} is not a number (Nagios ranges look like "
            "10, 10:, ~:10, 10:20 or @10:20)"
        ) from None
    if math.isnan(value):
        raise MoolaError(f"threshold range {whole!r} has NaN in it")
    return value


def parse_range(text: str) -> Range:
    """Parse one Nagios range; a malformed one is a MoolaError naming it."""
    whole = str(text).strip()
    body = whole
    inside = body.startswith("@")
    if inside:
        body = body[1:]
    if not body:
        raise MoolaError(f"threshold range {whole!r} is empty: e.g. 10, 10:, ~:10 or 10:20")
    if ":" in body:
        low, _, high = body.partition(":")
        start = -math.inf if low == "~" else (_bound(low, whole) if low else 0.0)
        end = math.inf if high == "" else _bound(high, whole)
    else:
        start, end = 0.0, _bound(body, whole)
    if start > end:
        raise MoolaError(f"threshold range {whole!r} starts above its end")
    return Range(start, end, inside, whole)


def parse_thresholds(text: str | None, flag: str = "--warning") -> dict[str, Range]:
    """`p99_ms=20,free_gib=10:` (or a bare range for p99_ms) -> {metric: Range}."""
    ranges: dict[str, Range] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        metric, sep, value = part.partition("=")
        if not sep:
            metric, value = PRIMARY, part
        metric = metric.strip()
        if metric not in METRICS:
            raise MoolaError(
                f"{flag}: unknown figure {metric!r}; use {', '.join(METRICS)} "
                "(e.g. p99_ms=20,free_gib=5:)"
            )
        try:
            ranges[metric] = parse_range(value)
        except MoolaError as exc:
            raise MoolaError(f"{flag}: {exc}") from None
    return ranges


def defaults(
    sla_ms: float | None,
    *,
    warn_fraction: float = 0.8,
    disk_warn_gib: float = 5.0,
    disk_crit_gib: float = 1.0,
    stale_lock_min: float = 30.0,
):
    """The built-in (warning, critical) ranges; p99 ranges only when an SLA is known."""
    warning = {
        "free_gib": parse_range(f"{disk_warn_gib:g}:"),
        "lock_min": parse_range(f"{stale_lock_min:g}"),
    }
    critical = {"free_gib": parse_range(f"{disk_crit_gib:g}:")}
    if sla_ms:
        warning["p99_ms"] = parse_range(f"{warn_fraction * sla_ms:g}")
        critical["p99_ms"] = parse_range(f"{sla_ms:g}")
    return warning, critical


def layered(*layers: dict[str, Range]) -> dict[str, Range]:
    """Merge threshold maps; a later layer wins for the figures it names."""
    merged: dict[str, Range] = {}
    for layer in layers:
        merged.update(layer or {})
    return merged


def judge(value: float, warning: Range | None, critical: Range | None) -> int:
    """CRITICAL when the critical range alerts, else WARNING when the warning one does, else OK."""
    if critical is not None and critical.alerts(value):
        return CRITICAL
    if warning is not None and warning.alerts(value):
        return WARNING
    return OK
