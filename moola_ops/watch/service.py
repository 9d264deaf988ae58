"""The health check's service check: the live server on a host, seen through one SSH round trip
(moola_ops/watch/health_run.py adds it to each host's health)."""

from __future__ import annotations

import time

from moola_ops.hosts.inventory import Host
from moola_ops.log import steps
from moola_ops.serving import commands as serve_cmd
from moola_ops.serving.control import _layout
from moola_ops.watch.health import CRITICAL, OK, WARNING, CheckResult

HEALTH_BURST = 50  # --deep: requests of the burst, 4 clients at once


def assess_service(
    health,
    session,
    host: Host,
    *,
    deep: bool,
    policy=None,
    timeout_s=None,
    foreign_current: bool = False,
    requests: bool = True,
):
    """Add the live-service checks to a HostHealth: server running and ready, serving the
    release `current` points at, one real request (its latency); --deep: a burst's p99 vs the
    SLA. Server down or the wrong release is CRITICAL. One SSH round trip.

    `foreign_current`: `current` is not a release Moola deployed, so there is no release the
    server should follow: what it serves is reported (WARNING when it answers), never hidden.
    `requests=False` (Invoke's --dry): the status alone, no request sent (a request is captured
    on the host)."""
    burst = HEALTH_BURST if deep and requests else 0
    command = serve_cmd.health(_layout(host), host.python, burst=burst, requests=requests)
    out = session.run(command, timeout_s=timeout_s or 60)
    data = serve_cmd.parse(out.stdout or out.stderr)
    add = health.checks.append
    if not data.get("ok"):
        add(CheckResult(steps.CHECK_SERVICE, CRITICAL, f"no serving status: {data.get('error')}"))
        return
    if not data.get("set_up"):
        add(
            CheckResult(
                steps.CHECK_SERVICE,
                OK,
                f"not serving: serving was never started on this host (deployed with "
                f"--no-serve or before serving existed); to serve: invoke serve --host "
                f"{host.name} start",
            )
        )
        return
    now = serve_cmd.parse_status(out.stdout or out.stderr)
    assess_supervision(health, data, now, host)
    if foreign_current:
        now.current = None  # no release to follow: judge the server by itself
    problem = now.problem()
    one = data.get("probe") or {}
    if problem is None and not requests:
        said = f"serving {now.served_release} on port {now.proxy_port} (no request sent: --dry)"
        if foreign_current:
            said += "; current is not a Moola release: roll back or redeploy"
        add(CheckResult(steps.CHECK_SERVICE, WARNING if foreign_current else OK, said))
        return
    if problem is None and not one.get("ok"):
        problem = f"a real request failed: {'; '.join(one.get('errors') or []) or 'no answer'}"
    expected = now.current or now.served_release
    if problem is None and set(one.get("releases") or {}) != {expected}:
        problem = f"a real request was answered by {one.get('releases')}, not {expected}"
    health.service_up = problem is None
    if problem:
        hint = f"; run invoke serve --host {host.name} --ensure"
        if foreign_current:
            hint = "; roll back or redeploy to make a Moola release current"
        add(CheckResult(steps.CHECK_SERVICE, CRITICAL, problem + hint))
        return
    health.service_ms = one.get("p50_ms")
    serving = (
        f"serving {now.served_release} on port {now.proxy_port}, one request {health.service_ms} ms"
    )
    if foreign_current:
        add(
            CheckResult(
                steps.CHECK_SERVICE,
                WARNING,
                f"{serving}; current is not a Moola release, so the server keeps the release "
                "Moola last made live: roll back or redeploy",
            )
        )
    else:
        add(CheckResult(steps.CHECK_SERVICE, OK, serving))
    burst = data.get("burst")
    if not deep or not burst:
        return
    sla = host.latency_sla_ms or data.get("sla_p99_ms")
    p99 = burst.get("p99_ms")
    health.service_p99_ms = p99
    warn = getattr(policy, "latency_warn_fraction", 0.8)
    if not burst.get("ok") or p99 is None:
        add(
            CheckResult(
                steps.CHECK_SERVICE_LATENCY,
                CRITICAL,
                f"burst of {burst.get('requests')}: {burst.get('failures')} failed",
            )
        )
    elif sla and p99 > sla:
        add(
            CheckResult(
                steps.CHECK_SERVICE_LATENCY,
                CRITICAL,
                f"burst p99 {p99:.2f} ms over HTTP > SLA {sla:g} ms",
            )
        )
    elif sla and p99 > warn * sla:
        add(
            CheckResult(
                steps.CHECK_SERVICE_LATENCY,
                WARNING,
                f"burst p99 {p99:.2f} ms over HTTP near the SLA {sla:g} ms",
            )
        )
    else:
        within = f" within SLA {sla:g} ms" if sla else " (no SLA set)"
        add(
            CheckResult(
                steps.CHECK_SERVICE_LATENCY,
                OK,
                f"burst of {burst.get('requests')}: p99 {p99:.2f} ms{within}",
            )
        )


def assess_supervision(health, data: dict, now: serve_cmd.ServeStatus, host: Host) -> None:
    """The supervisor that restarts a dead live server (CRITICAL in a crash loop, with the
    server's last log lines; WARNING when it is not running or still retrying) and config
    drift: the proxy listens on another address or port than the inventory says (WARNING
    until `invoke serve --host H --ensure` or `restart` applies it)."""
    add = health.checks.append
    sup = data.get("supervisor") or {}
    ensure = f"invoke serve --host {host.name} --ensure"
    if sup.get("crash_loop"):
        last = sup.get("last_exit") or {}
        tail = (last.get("log_tail") or "no log")[-400:]
        add(
            CheckResult(
                steps.CHECK_SUPERVISION,
                CRITICAL,
                f"the live server of {last.get('release')} crash-loops: {sup.get('failures')} "
                f"failed restarts in a row, next try {_when(sup.get('next_try_at'))}; "
                f"{sup.get('last_error') or 'it died soon after each start'}; "
                f"last log lines: {tail}",
            )
        )
    elif not sup.get("running"):
        add(
            CheckResult(
                steps.CHECK_SUPERVISION,
                WARNING,
                "the serving supervisor is not running: a crashed server waits for cron "
                f"--ensure; start it with {ensure}",
            )
        )
    elif sup.get("failures"):
        add(
            CheckResult(
                steps.CHECK_SUPERVISION,
                WARNING,
                f"the supervisor is restarting the live server ({sup.get('failures')} failed "
                f"so far): {sup.get('last_error') or 'it died soon after its start'}",
            )
        )
    else:
        spare = now.live_spare
        add(
            CheckResult(
                steps.CHECK_SUPERVISION,
                OK,
                f"supervisor pid {sup.get('pid')}, {sup.get('restarts', 0)} restarts, "
                f"{sup.get('takeovers', 0)} takeovers by a spare; "
                + (f"spare pid {spare} waits" if spare else "no spare: a death means a cold start"),
            )
        )
    proxy = data.get("proxy") or {}
    if not proxy.get("running"):
        return
    want_port = serve_cmd.public_port(host)
    drift = []
    if host.serve_port is not None and want_port and proxy.get("port") != want_port:
        drift.append(f"port {proxy.get('port')} (inventory {want_port})")
    if proxy.get("bind") and proxy["bind"] != host.serve_bind:
        drift.append(f"address {proxy['bind']} (inventory {host.serve_bind})")
    if drift:
        add(
            CheckResult(
                steps.CHECK_SERVE_CONFIG,
                WARNING,
                f"the proxy listens on {' and '.join(drift)}: apply it with {ensure}",
            )
        )


def _when(at) -> str:
    if not at:
        return "not scheduled"
    return f"in {max(0.0, at - time.time()):.0f}s"


# --- real requests during a demo's deploy and rollback -----------------------------------------
