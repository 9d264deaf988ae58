"""The live service seen from outside the engine: the health check's service checks (one SSH
round trip, moola_ops/health_run.py) and the demo's steady request stream through the public
port (invoke demo counts what failed during its deploy and rollback)."""

from __future__ import annotations

import time
from typing import Any

from moola_ops import steps
from moola_ops.commands import serve as serve_cmd
from moola_ops.inventory import Host
from moola_ops.serving import ServeError, _layout, bearer, client_token, status

HEALTH_BURST = 50  # --deep: requests of the burst, 4 clients at once


def assess_service(health, session, host: Host, *, deep: bool, policy=None, timeout_s=None):
    """Add the live-service checks to a HostHealth: server running and ready, serving the
    release `current` points at, one real request (its latency); --deep: a burst's p99 vs the
    SLA. Server down or the wrong release is CRITICAL. One SSH round trip."""
    from moola_ops.health import CRITICAL, OK, WARNING, CheckResult

    command = serve_cmd.health(_layout(host), host.python, burst=HEALTH_BURST if deep else 0)
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
    problem = now.problem()
    one = data.get("probe") or {}
    if problem is None and not one.get("ok"):
        problem = f"a real request failed: {'; '.join(one.get('errors') or []) or 'no answer'}"
    if problem is None and set(one.get("releases") or {}) != {now.current}:
        problem = f"a real request was answered by {one.get('releases')}, not {now.current}"
    health.service_up = problem is None
    if problem:
        hint = f"; run invoke serve --host {host.name} --ensure"
        add(CheckResult(steps.CHECK_SERVICE, CRITICAL, problem + hint))
        return
    health.service_ms = one.get("p50_ms")
    add(
        CheckResult(
            steps.CHECK_SERVICE,
            OK,
            f"serving {now.served_release} on port {now.proxy_port}, one request "
            f"{health.service_ms} ms",
        )
    )
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


# --- real requests during a demo's deploy and rollback -----------------------------------------


class TrafficStream:
    """One client per host sending real requests one after another through the host's public
    port (stand-in hosts: their ports are on this machine), with the host's token when it has
    one, counting what failed."""

    def __init__(self, ports: dict[str, int], tokens: dict[str, str] | None = None):
        import threading

        self.ports = ports
        self.headers = {name: bearer((tokens or {}).get(name)) for name in ports}
        self.stopping = threading.Event()
        self.answered: dict[str, dict[str, int]] = {name: {} for name in ports}
        self.failed: dict[str, list[str]] = {name: [] for name in ports}
        self.gaps: dict[str, float] = {name: 0.0 for name in ports}
        self.threads = [
            threading.Thread(target=self._run, args=(name, port), daemon=True)
            for name, port in ports.items()
        ]

    def _run(self, name: str, port: int) -> None:
        import http.client
        import json

        from moola_core.runtime.serve_ctl import synthetic_window

        body = json.dumps({"windows": [synthetic_window(7)]}).encode()
        conn, last = http.client.HTTPConnection("127.0.0.1", port, timeout=30), time.monotonic()
        while not self.stopping.is_set():
            try:
                conn.request("POST", "/v1/predict", body=body, headers=self.headers[name])
                response = conn.getresponse()
                answer = json.loads(response.read())
                if response.status == 200:
                    counts = self.answered[name]
                    counts[answer["release"]] = counts.get(answer["release"], 0) + 1
                else:
                    self.failed[name].append(f"{response.status}: {answer.get('error')}")
            except (OSError, ValueError, http.client.HTTPException) as exc:
                self.failed[name].append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            now = time.monotonic()
            self.gaps[name], last = max(self.gaps[name], now - last), now
        conn.close()

    def start(self) -> TrafficStream:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop the clients; {requests, failed, failures (a few), longest_gap_ms, answered}."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)
        answered = sum(sum(c.values()) for c in self.answered.values())
        failed = sum(len(f) for f in self.failed.values())
        return {
            "requests": answered + failed,
            "failed": failed,
            "failures": [f for fs in self.failed.values() for f in fs][:3],
            "longest_gap_ms": round(max(self.gaps.values(), default=0.0) * 1e3, 1),
            "answered": self.answered,
        }


def demo_traffic(hosts: list[Host]) -> TrafficStream:
    """Start real requests to every (stand-in) host's public port; `.stop()` says how many
    failed. `invoke demo` runs it through its deploy and rollback (zero is the bar)."""
    from moola_ops.transport import HostSession

    ports, tokens = {}, {}
    for host in hosts:
        with HostSession(host) as session:
            now = status(session, host)
            if now.proxy_port:
                tokens[host.name] = client_token(session, host)["token"]
        if not now.proxy_port:
            raise ServeError(f"{host.name} does not serve: {now.problem()}")
        ports[host.name] = int(now.proxy_port)
    return TrafficStream(ports, tokens).start()
