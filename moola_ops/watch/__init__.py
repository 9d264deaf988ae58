"""Watching what is deployed: health checks (phase 8), drift and live-traffic monitoring.

    run_healthcheck(selection, deep=, timeout_s=) -> HealthRun   Nagios state, per-host checks
    status_line / prometheus_text / document                     its renderings
    run_monitor(host, ...) -> MonitorResult                      traffic, errors, latency, PSI

Modules: `health` (result types and the assessment of facts), `health_run` (running it over the
fleet within its deadline), `health_output` (status line + perfdata, Prometheus textfile, JSON),
`service` (the live server's check), `monitor` (captured traffic against the training data)
and `drift` (PSI per feature). Thresholds are Nagios ranges (moola_ops/nagios.py).
docs/healthcheck.md and docs/monitoring.md are the user's pages.
"""

from moola_ops.watch.health import HealthPolicy, HealthRun
from moola_ops.watch.health_output import document, prometheus_text, status_line
from moola_ops.watch.health_run import run_healthcheck
from moola_ops.watch.monitor import MonitorResult, run_monitor

__all__ = [
    "HealthPolicy",
    "HealthRun",
    "MonitorResult",
    "document",
    "prometheus_text",
    "run_healthcheck",
    "run_monitor",
    "status_line",
]
