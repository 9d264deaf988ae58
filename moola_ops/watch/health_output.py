"""The health check's renderings: the Nagios status line with perfdata, the Prometheus
textfile, and its atomic write. Pure functions of a `HealthRun` (see moola_ops.watch.health)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from moola_ops.watch.health import OK, STATE_NAMES, HealthPolicy, HealthRun


def _num(value: float) -> str:
    """A number as plain text: integers whole (byte counts), floats without exponent noise."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(round(float(value), 6))


def _perf(label: str, value: float, uom: str = "", warn="", crit="", lo="", hi="") -> str:
    fields = [f"{_num(value)}{uom}", str(warn), str(crit), str(lo), str(hi)]
    while fields and fields[-1] == "":
        fields.pop()
    return f"'{label}'=" + ";".join(fields)


def perfdata(run: HealthRun) -> str:
    """Nagios perfdata: worst p99 ('p99_ms'=..ms;warn;crit), host counts, per-host figures."""
    parts = []
    p99s = [h for h in run.hosts if h.p99_ms is not None]
    if p99s:
        slowest = max(p99s, key=lambda h: h.p99_ms)
        sla = slowest.sla_p99_ms
        # the Nagios ranges that judged it (the plugin guidelines' warn;crit fields)
        default_warn = f"{HealthPolicy().latency_warn_fraction * sla:g}" if sla else ""
        warn = str(slowest.p99_warning or default_warn)
        crit = str(slowest.p99_critical or (f"{sla:g}" if sla else ""))
        parts.append(_perf("p99_ms", round(slowest.p99_ms, 3), "ms", warn, crit, 0))
    counts = {name: 0 for name in STATE_NAMES.values()}
    for h in run.hosts:
        counts[STATE_NAMES[h.state]] += 1
    parts.append(_perf("hosts_ok", counts["OK"], "", "", "", 0, len(run.hosts)))
    parts.append(_perf("hosts_warning", counts["WARNING"], "", "", "", 0, len(run.hosts)))
    parts.append(_perf("hosts_critical", counts["CRITICAL"], "", "", "", 0, len(run.hosts)))
    parts.append(_perf("duration_s", round(run.duration_s, 3), "s", "", "", 0))
    for h in run.hosts:
        if h.p99_ms is not None:
            parts.append(_perf(f"{h.host}_p99_ms", round(h.p99_ms, 3), "ms", "", "", 0))
        if h.free_bytes is not None:
            parts.append(_perf(f"{h.host}_free_disk", h.free_bytes, "B", "", "", 0))
        if h.service_ms is not None:
            parts.append(_perf(f"{h.host}_service_ms", round(h.service_ms, 3), "ms", "", "", 0))
        if h.service_p99_ms is not None:
            parts.append(
                _perf(f"{h.host}_service_p99_ms", round(h.service_p99_ms, 3), "ms", "", "", 0)
            )
    return " ".join(parts)


def status_line(run: HealthRun) -> str:
    """The one Nagios status line: state, a summary naming the problem hosts, then perfdata."""
    kind = "deep" if run.deep else "fast"
    n = len(run.hosts)
    bad = [h for h in run.hosts if h.state != OK]
    if not run.hosts:
        text = "no hosts to check"
    elif not bad:
        releases = sorted({h.release or "none" for h in run.hosts})
        text = f"{n}/{n} hosts OK ({kind}), serving {', '.join(releases)}"
    else:
        problems = "; ".join(f"{h.host} {STATE_NAMES[h.state]} {h.summary()}" for h in bad)
        text = f"{n - len(bad)}/{n} hosts OK ({kind}); {problems}"
    text = " ".join(text.replace("|", "/").split())  # '|' would start perfdata early
    return f"MOOLA {STATE_NAMES[run.state]} - {text} | {perfdata(run)}"


def document(run: HealthRun) -> dict:
    """The `--json` document: the run as data with its one status line."""
    return {**run.to_dict(), "status_line": status_line(run)}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def prometheus_text(run: HealthRun, now: float | None = None) -> str:
    """The run as a Prometheus textfile-collector document (one gauge family per figure)."""
    now = time.time() if now is None else now
    families: list[tuple[str, str, list[tuple[dict, float]]]] = [
        (
            "moola_health_state",
            "Nagios state per host (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).",
            [({"host": h.host}, h.state) for h in run.hosts],
        ),
        (
            "moola_health_check_state",
            "Nagios state of each check per host.",
            [({"host": h.host, "check": c.name}, c.state) for h in run.hosts for c in h.checks],
        ),
        (
            "moola_health_release_info",
            "The release `current` points at (value 1).",
            [({"host": h.host, "release": h.release}, 1) for h in run.hosts if h.release],
        ),
        (
            "moola_health_free_disk_bytes",
            "Free bytes on the workspace filesystem.",
            [({"host": h.host}, h.free_bytes) for h in run.hosts if h.free_bytes is not None],
        ),
        (
            "moola_health_service_up",
            "1 when the live server answers as the release `current` points at.",
            [({"host": h.host}, int(h.service_up)) for h in run.hosts if h.service_up is not None],
        ),
        (
            "moola_health_service_latency_seconds",
            "One real request through the public port, on the host.",
            [
                ({"host": h.host}, h.service_ms / 1000)
                for h in run.hosts
                if h.service_ms is not None
            ],
        ),
        (
            "moola_health_service_p99_seconds",
            "p99 of a short burst through the public port (deep check).",
            [
                ({"host": h.host}, h.service_p99_ms / 1000)
                for h in run.hosts
                if h.service_p99_ms is not None
            ],
        ),
        (
            "moola_health_latency_p99_seconds",
            "p99 single-window latency (deep check).",
            [({"host": h.host}, h.p99_ms / 1000) for h in run.hosts if h.p99_ms is not None],
        ),
        (
            "moola_health_check_duration_seconds",
            "Wall time of the host's check.",
            [({"host": h.host}, h.duration_s) for h in run.hosts],
        ),
        (
            "moola_health_last_run_timestamp_seconds",
            "When the check last ran (unix time).",
            [({"kind": "deep" if run.deep else "fast"}, round(now, 3))],
        ),
    ]
    return gauge_text(families)


def gauge_text(families) -> str:
    """Prometheus text for gauge families: [(name, help, [(labels dict, value), ...]), ...]."""
    lines = []
    for name, help_text, samples in families:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for labels, value in samples:
            inner = ",".join(f'{k}="{_label(str(v))}"' for k, v in labels.items())
            lines.append(f"{name}{{{inner}}} {_num(value)}")
    return "\n".join(lines) + "\n"


def write_textfile(path: str | os.PathLike, text: str) -> Path:
    """Write `text` atomically: a temp file in the same directory, fsync, then rename over.

    The node exporter never reads a half-written file; its `*.prom` glob skips the temp name.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the exporter usually runs as another user
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
