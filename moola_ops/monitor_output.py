"""The monitor's result as Nagios plugin output (status line + perfdata), long text lines and a
Prometheus textfile document, as `healthcheck` writes them (moola_ops/health_output.py).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from moola_ops.health import OK, STATE_NAMES

if TYPE_CHECKING:
    from moola_ops.monitor import MonitorPolicy, MonitorResult


def _num(value: float) -> str:
    from moola_ops.health_output import _num as health_num

    return health_num(value)


def perfdata(result: MonitorResult, policy: MonitorPolicy | None = None) -> str:
    """Nagios perfdata: rate, error rate, p50/p99, max PSI and PSI per feature."""
    if policy is None:
        from moola_ops.monitor import MonitorPolicy

        policy = MonitorPolicy()
    parts = [
        f"'rate_per_min'={_num(round(result.rate_per_min, 3))};;;0",
        f"'error_rate'={_num(round(result.error_rate, 6))};{policy.error_warn:g};"
        f"{policy.error_crit:g};0;1",
    ]
    if result.p50_ms is not None:
        parts.append(f"'p50_ms'={_num(round(result.p50_ms, 3))}ms;;;0")
    if result.p99_ms is not None:
        sla = result.sla_p99_ms
        warn = f"{policy.latency_warn_fraction * sla:g}" if sla else ""
        crit = f"{sla:g}" if sla else ""
        parts.append(f"'p99_ms'={_num(round(result.p99_ms, 3))}ms;{warn};{crit};0")
    finite = {k: v for k, v in result.psi.items() if math.isfinite(v)}
    if finite:
        parts.append(
            f"'psi_max'={_num(round(max(finite.values()), 4))};{policy.psi_warn:g};"
            f"{policy.psi_crit:g};0"
        )
        parts += [f"'psi_{k}'={_num(round(v, 4))};;;0" for k, v in finite.items()]
    parts.append(f"'requests'={result.n_requests};;;0")
    return " ".join(parts)


def status_line(result: MonitorResult) -> str:
    """MOOLA-MONITOR STATE - summary | perfdata (one line, Nagios plugin output)."""
    bad = [c for c in result.checks if c.state != OK]
    if bad:
        text = "; ".join(f"{c.name} {STATE_NAMES[c.state]}: {c.message}" for c in bad)
    else:
        text = "; ".join(c.message for c in result.checks)
    text = f"{result.host}: {text}" if result.host else text
    text = " ".join(text.replace("|", "/").split())
    return f"MOOLA-MONITOR {STATE_NAMES[result.state]} - {text} | {perfdata(result)}"


def prometheus_text(result: MonitorResult, now: float | None = None) -> str:
    """The result as a Prometheus textfile-collector document."""
    from moola_ops.health_output import gauge_text

    now = time.time() if now is None else now
    h = {"host": result.host}
    finite = {k: v for k, v in result.psi.items() if math.isfinite(v)}
    families = [
        (
            "moola_monitor_state",
            "Nagios state of the monitor (0 OK .. 3 UNKNOWN).",
            [(h, result.state)],
        ),
        (
            "moola_monitor_requests_per_minute",
            "Live requests per minute in the window.",
            [(h, result.rate_per_min)],
        ),
        (
            "moola_monitor_error_ratio",
            "Share of live requests that failed.",
            [(h, result.error_rate)],
        ),
        (
            "moola_monitor_latency_seconds",
            "Server-side latency quantiles in the window.",
            [
                ({**h, "quantile": q}, v / 1000)
                for q, v in (("0.5", result.p50_ms), ("0.99", result.p99_ms))
                if v is not None
            ],
        ),
        (
            "moola_monitor_label_ratio",
            "Share of each predicted label.",
            [({**h, "label": k}, v) for k, v in result.labels.items()],
        ),
        (
            "moola_monitor_feature_psi",
            "Population stability index per input feature.",
            [({**h, "feature": k}, v) for k, v in finite.items()],
        ),
        (
            "moola_monitor_last_run_timestamp_seconds",
            "When the monitor last ran (unix time).",
            [(h, round(now, 3))],
        ),
    ]
    # every value rounded to 6 decimals before it is printed
    rounded = [
        (name, text, [(lab, round(float(v), 6)) for lab, v in s]) for name, text, s in families
    ]
    return gauge_text(rounded)


def render_text(result: MonitorResult) -> list[str]:
    """Long output lines after the status line."""
    lines = [
        f"window {_iso(result.since)} .. {_iso(result.until)}; releases "
        f"{', '.join(result.releases) or '-'}",
        f"requests {result.n_requests} ({result.rate_per_min:.1f}/min), errors "
        f"{result.n_errors} ({100 * result.error_rate:.2f}%)",
    ]
    if result.p99_ms is not None:
        lines.append(f"latency p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms")
    if result.labels:
        lines.append("labels " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in result.labels.items()))
    if result.psi:
        lines.append(f"PSI vs {result.reference or 'training'} ({result.psi_windows} windows):")
        lines += [f"  {k:<20} {v:.3f}" for k, v in result.psi.items()]
    for c in result.checks:
        lines.append(f"[{STATE_NAMES[c.state]}] {c.name}: {c.message}")
    return lines


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
