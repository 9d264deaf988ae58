"""Serving operations on a host, over an open `transport.HostSession` (the engine's stages and
`invoke serve` call these). Commands come from `moola_ops.commands.serve`; each operation is
one SSH round trip running the host-side control program (docs/serving.md).

    start_candidate(session, host, version) -> Started     a server on a private port, ready?
    probe(session, host, port=0)            -> Probe       real requests on the host, p50/p99
    move_traffic(session, host, version)    -> dict        the proxy routes to it; old -> standby
    drain(session, host, pid) / stop(session, host) / status(session, host) / ensure(...)

`run(hosts, action)` is the front door's entry: it opens a session per host, runs one action
(start, stop, status, restart, ensure) and records each step in the deployment log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from moola_core.errors import MoolaError
from moola_ops import steps
from moola_ops.commands import serve as serve_cmd
from moola_ops.commands.layout import Layout
from moola_ops.commands.serve import ServeStatus
from moola_ops.inventory import Host

ACTIONS = ("start", "stop", "status", "restart", "ensure")
READY_TIMEOUT_S = 180.0
KEEP_STANDBY = True  # after a switch the previous release's server stays warm (fast rollback)


class ServeError(MoolaError):
    """A serving operation failed on a host; the message says what and what to do. The engine's
    hooks raise it as a StepFailed: inside the switch it sends `current` and traffic back."""


@dataclass
class Started:
    """A server started for a release: ready (golden parity passed) or why not."""

    ok: bool
    version: str
    pid: int | None = None
    port: int | None = None
    reason: str | None = None
    log: str | None = None
    log_tail: str = ""
    start_s: float = 0.0
    sla_p99_ms: float | None = None  # the release's own latency SLA (manifest)


@dataclass
class Probe:
    """Real prediction requests sent on the host: who answered and how fast."""

    ok: bool
    requests: int = 0
    failures: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    releases: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    error: str | None = None

    def answered_by(self, version: str) -> bool:
        """Every request answered, all by `version`."""
        return self.ok and set(self.releases) == {version}


def _run(session, command: str, timeout_s: float = 120.0) -> dict[str, Any]:
    result = session.run(command, timeout_s=timeout_s)
    return serve_cmd.parse(result.stdout or result.stderr)


def _layout(host: Host) -> Layout:
    return Layout(host.workspace)


def status(session, host: Host) -> ServeStatus:
    """What serves on the host now (proxy, live, standby, every server process)."""
    out = session.run(serve_cmd.status(_layout(host), host.python), timeout_s=60)
    return serve_cmd.parse_status(out.stdout or out.stderr)


def ensure_proxy(session, host: Host, *, read_timeout_s: float | None = None) -> dict[str, Any]:
    """The front proxy runs on the host's public port (started when it does not)."""
    command = serve_cmd.proxy(
        _layout(host),
        host.python,
        serve_cmd.public_port(host),
        host.serve_bind,
        read_timeout_s=read_timeout_s,
        keep_running=host.serve_port is None,  # no port configured: keep the one it has
    )
    data = _run(session, command, timeout_s=60)
    if not data.get("ok"):
        raise ServeError(f"the serving proxy on {host.name} did not start: {data.get('error')}")
    return data


def start_candidate(
    session,
    host: Host,
    version: str,
    *,
    device: str = "auto",
    timeout_s: float = READY_TIMEOUT_S,
    server_args: tuple[str, ...] = (),
) -> Started:
    """Start `version`'s server on a private port and wait for /readyz (model loaded, golden
    parity passed). Live traffic is untouched; a server that never gets ready is stopped.
    `server_args` are extra flags of `python -m moola_core.runtime serve`."""
    command = serve_cmd.start(
        _layout(host),
        host.python,
        version,
        device=device,
        timeout_s=timeout_s,
        server_args=server_args,
    )
    data = _run(session, command, timeout_s=timeout_s + 60)
    return Started(
        ok=bool(data.get("ok") and data.get("ready")),
        version=version,
        pid=data.get("pid"),
        port=data.get("port"),
        reason=data.get("reason") or data.get("error"),
        log=data.get("log"),
        log_tail=data.get("log_tail") or "",
        start_s=float(data.get("start_s") or 0.0),
        sla_p99_ms=data.get("sla_p99_ms"),
    )


def probe(
    session,
    host: Host,
    *,
    port: int = 0,
    requests: int = 20,
    concurrency: int = 1,
    windows: int = 1,
    warmup: int = 0,
) -> Probe:
    """Send real prediction requests from the host: through the proxy (port 0, the path users
    hit) or to one server's private port."""
    command = serve_cmd.probe(
        _layout(host),
        host.python,
        port=port,
        requests=requests,
        concurrency=concurrency,
        windows=windows,
        warmup=warmup,
    )
    data = _run(session, command, timeout_s=120)
    if "requests" not in data:
        return Probe(ok=False, error=data.get("error") or "no probe answer")
    return Probe(
        ok=bool(data.get("ok")),
        requests=int(data["requests"]),
        failures=int(data.get("failures", 0)),
        p50_ms=data.get("p50_ms"),
        p99_ms=data.get("p99_ms"),
        max_ms=data.get("max_ms"),
        releases=dict(data.get("releases") or {}),
        errors=list(data.get("errors") or []),
    )


def move_traffic(
    session, host: Host, version: str, *, port: int | None = None, keep_standby: bool = KEEP_STANDBY
) -> dict[str, Any]:
    """Route the public port to `version`'s ready server (the proxy confirms it); the server
    that was live becomes the standby (or drains), a standby pushed out drains."""
    command = serve_cmd.switch(
        _layout(host), host.python, version, port=port, keep_standby=keep_standby
    )
    data = _run(session, command, timeout_s=60)
    if not data.get("ok"):
        raise ServeError(f"moving traffic to {version} on {host.name} failed: {data.get('error')}")
    return data


def drain(session, host: Host, pid: int) -> bool:
    """SIGTERM one server: it stops accepting, finishes what it holds, exits."""
    return bool(_run(session, serve_cmd.drain(_layout(host), host.python, pid)).get("drained"))


def stop(session, host: Host, wait_s: float = 30.0) -> dict[str, Any]:
    """Stop the proxy and every server of the host (each drains first)."""
    return _run(session, serve_cmd.stop(_layout(host), host.python, wait_s), timeout_s=wait_s + 60)


def ensure(
    session,
    host: Host,
    *,
    device: str = "auto",
    keep_standby: bool = KEEP_STANDBY,
    timeout_s: float = READY_TIMEOUT_S,
) -> dict[str, Any]:
    """Idempotent: the proxy runs and `current`'s server is live and ready (cron-safe)."""
    command = serve_cmd.ensure(
        _layout(host),
        host.python,
        serve_cmd.public_port(host),
        bind=host.serve_bind,
        device=device,
        keep_standby=keep_standby,
        timeout_s=timeout_s,
        keep_running=host.serve_port is None,
    )
    data = _run(session, command, timeout_s=timeout_s + 60)
    if not data.get("ok"):
        raise ServeError(f"serving on {host.name} is not running: {data.get('error')}")
    return data


def restart(session, host: Host, *, device: str = "auto") -> dict[str, Any]:
    """Zero-downtime restart of `current`'s server: a new process, ready, then traffic moves to
    it and the old process drains (the standby is kept)."""
    now = status(session, host)
    if not now.current:
        raise ServeError(f"{host.name} has no `current` release: deploy one first")
    ensure_proxy(session, host)
    started = start_candidate(session, host, now.current, device=device)
    if not started.ok:
        raise ServeError(
            f"the new server for {now.current} on {host.name} did not get ready "
            f"({started.reason}); the old one keeps serving. Log: {started.log}"
        )
    return move_traffic(session, host, now.current, port=started.port)


# --- the engine's stages -----------------------------------------------------------------------
# deploy and rollback call these with their per-host context `ctx` (moola_ops.engine._Host:
# .ssh an open HostSession, .host, .opts, .step(name, **detail) a deployment-log step).

PROBE_REQUESTS = 100  # timed requests of the pre-switch latency check (after PROBE_WARMUP)
PROBE_WARMUP = 10


def deploy_start(ctx, version: str) -> Started:
    """Before the switch: start `version`'s server on a private port, wait for /readyz, then
    measure p99 over real HTTP against the SLA. On failure the candidate is stopped and nothing
    switched; the server that was live keeps serving (steps serve-start, serve-check)."""
    host = ctx.host
    with ctx.step(steps.SERVE_START, version=version) as info:
        proxy = ensure_proxy(ctx.ssh, host)
        info["proxy_port"] = proxy.get("port")
        started = start_candidate(ctx.ssh, host, version)
        info.update(pid=started.pid, port=started.port, start_s=started.start_s)
        if not started.ok:
            info["log_tail"] = started.log_tail[-400:]
            raise ServeError(
                f"the server for {version} on {host.name} never got ready ({started.reason}); "
                f"nothing switched, the live release keeps serving. Log: {started.log}"
            )
    with ctx.step(steps.SERVE_CHECK, version=version, port=started.port) as info:
        sla = host.latency_sla_ms or started.sla_p99_ms
        # as many timed requests as the runtime check's timed runs (--check-runs), same warm-up
        requests = ctx.opts.check_runs or PROBE_REQUESTS
        warmup = PROBE_WARMUP if ctx.opts.check_warmup is None else ctx.opts.check_warmup
        result = probe(ctx.ssh, host, port=started.port, requests=requests, warmup=warmup)
        info.update(
            p50_ms=result.p50_ms,
            p99_ms=result.p99_ms,
            sla_p99_ms=sla,
            failures=result.failures,
            releases=result.releases,
        )
        problem = None
        if not result.answered_by(version):
            problem = f"answers {result.releases}, failures {result.errors or result.error}"
        elif sla is not None and result.p99_ms is not None and result.p99_ms > sla:
            problem = f"p99 {result.p99_ms:.2f} ms over HTTP > SLA {sla:g} ms"
        if problem:
            drain(ctx.ssh, host, started.pid)
            raise ServeError(
                f"the server for {version} on {host.name} failed its HTTP check ({problem}); "
                "it was stopped and nothing switched"
            )
    return started


def deploy_move(ctx, version: str, started: Started) -> dict[str, Any]:
    """After `current` switched: the proxy routes to the new server; the old live server
    becomes the warm standby (or drains) (step serve-switch)."""
    return move_to(ctx, version, int(started.port))


def serve_post_check(ctx, version: str) -> None:
    """Through the public port: real requests, every one answered by `version`."""
    with ctx.step(steps.SERVE_POST_CHECK, version=version) as info:
        result = probe(ctx.ssh, ctx.host, port=0, requests=5)
        info.update(releases=result.releases, p50_ms=result.p50_ms, failures=result.failures)
        if not result.answered_by(version):
            raise ServeError(
                f"after the switch {ctx.host.name} answered {result.releases or 'nothing'} "
                f"instead of {version} ({'; '.join(result.errors) or result.error or 'no detail'})"
            )


def switch_back(ctx, previous: str, failed: str | None = None) -> str:
    """After a failed post-switch check: traffic back to `previous` (its warm standby, or a
    server started for it); the failed release's server drains (step serve-switch-back)."""
    host = ctx.host
    with ctx.step(steps.SERVE_SWITCH_BACK, version=previous, failed=failed) as info:
        now = status(ctx.ssh, host)
        live = now.live or {}
        if live.get("release") == previous and now.live_alive:
            info["moved"] = False  # traffic never left it
        else:
            standby = now.standby or {}
            if not (standby.get("release") == previous and now.standby_ready):
                started = start_candidate(ctx.ssh, host, previous)
                if not started.ok:
                    raise ServeError(f"no server for {previous} could start: {started.reason}")
            moved = move_traffic(ctx.ssh, host, previous, keep_standby=False)
            info.update(moved=True, live=moved["live"], drained=moved["drained"])
        return f"traffic is back on {previous}"


def warm_standby(ctx, target: str) -> dict[str, Any] | None:
    """Rollback's fast path: the warm standby of `target` (alive, ready, and answering a real
    request as `target`), or None when there is none (step serve-standby)."""
    with ctx.step(steps.SERVE_STANDBY, version=target) as info:
        data = _run(ctx.ssh, serve_cmd.standby(_layout(ctx.host), ctx.host.python, target))
        info["standby"] = data.get("standby")
        info["probe"] = {k: (data.get("probe") or {}).get(k) for k in ("p50_ms", "releases")}
        if not data.get("ok"):
            info.update(status="skipped", reason=data.get("error"))
            return None
        return data["standby"]


def target_server(ctx, target: str) -> tuple[int, bool]:
    """Before a rollback's switch: (port, warm) of a ready server for `target`, its warm
    standby when there is one, else a server started and checked like a deploy's."""
    standby = warm_standby(ctx, target)
    if standby is not None:
        return int(standby["port"]), True
    return int(deploy_start(ctx, target).port), False


def move_to(ctx, target: str, port: int) -> dict[str, Any]:
    """Traffic to `target`'s server on `port` (step serve-switch); the server that was live
    becomes the standby, so going forward again is as quick."""
    keep = getattr(ctx.opts, "keep_standby", KEEP_STANDBY)
    with ctx.step(steps.SERVE_SWITCH, version=target, port=port) as info:
        moved = move_traffic(ctx.ssh, ctx.host, target, port=port, keep_standby=keep)
        info.update(live=moved["live"], standby=moved["standby"], drained=moved["drained"])
    return moved


# --- hooks the engine calls (registered in moola_ops/engine/flows.py) -------------------------


def _step_failure(fn):
    """The engine's stages expect StepFailed (it switches back on it); imported lazily so that
    this module stays light for the health check's cron path."""

    def hook(*args):
        try:
            return fn(*args)
        except ServeError as exc:
            from moola_ops.engine.results import StepFailed

            raise StepFailed(str(exc)) from None

    hook.__doc__ = fn.__doc__
    return hook


@_step_failure
def prepare_target(ctx) -> None:
    """Before the switch (deploy and rollback): a ready server for `ctx.target`, its warm
    standby when there is one, else one started and checked over HTTP. Live traffic is untouched
    until the switch; if no server gets ready, nothing switches."""
    if not ctx.opts.serve:
        return
    port, warm = target_server(ctx, ctx.target)
    ctx.serve_target = (ctx.target, port, warm)


@_step_failure
def traffic_follows(ctx, target: str) -> None:
    """Right after `current` moved: live traffic moves to `target`'s server (the one prepared
    before the switch; in a drill, the warm standby)."""
    if not ctx.opts.serve:
        return
    prepared = getattr(ctx, "serve_target", None)
    if prepared and prepared[0] == target:
        port = prepared[1]
    else:
        port, _warm = target_server(ctx, target)
    move_to(ctx, target, port)


@_step_failure
def check_traffic(ctx, target: str) -> None:
    """After the post-check: real requests through the public port are answered by `target`."""
    if ctx.opts.serve:
        serve_post_check(ctx, target)


@_step_failure
def traffic_back(ctx, previous: str, failed: str) -> None:
    """`current` went back after a failed check: traffic goes back with it."""
    if ctx.opts.serve:
        switch_back(ctx, previous, failed)


# --- the live service in the health check (moola_ops/health_run.py) ---------------------------

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
                f"serving was never started here: invoke serve --host {host.name} start",
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


# --- the front door ----------------------------------------------------------------------------


@dataclass
class ServeOutcome:
    """One host's result of `invoke serve`."""

    host: str
    ok: bool
    message: str
    status: dict[str, Any] | None = None
    duration_s: float = 0.0


def run(
    hosts: list[Host],
    action: str,
    *,
    device: str = "auto",
    keep_standby: bool = KEEP_STANDBY,
    journal_path: str | None = None,
) -> list[ServeOutcome]:
    """Run one serving action on each host (in turn); every action is a deployment-log line."""
    from moola_ops.journal import Journal
    from moola_ops.transport import HostSession

    if action not in ACTIONS:
        raise MoolaError(f"unknown serve action {action!r}: choose one of {', '.join(ACTIONS)}")
    journal = Journal("serve", path=journal_path)
    outcomes = []
    for host in hosts:
        started = time.monotonic()
        try:
            with journal.step(host.name, action) as info, HostSession(host) as session:
                message, state = _act(session, host, action, device, keep_standby)
                info["result"] = message
            outcomes.append(ServeOutcome(host.name, True, message, state))
        except MoolaError as exc:
            outcomes.append(ServeOutcome(host.name, False, str(exc)))
        outcomes[-1].duration_s = round(time.monotonic() - started, 3)
    return outcomes


def _act(session, host: Host, action: str, device: str, keep_standby: bool):
    if action == "status":
        now = status(session, host)
        problem = now.problem()
        if problem:
            raise ServeError(f"{host.name}: {problem}")
        standby = (now.standby or {}).get("release")
        message = f"serving {now.served_release} on port {now.proxy_port}" + (
            f"; standby {standby}" if standby else ""
        )
        return message, _status_dict(now)
    if action == "stop":
        data = stop(session, host)
        return f"stopped {len(data.get('stopped') or [])} process(es), each drained", data
    if action == "restart":
        data = restart(session, host, device=device)
        live = data["live"]
        return f"restarted {live['release']} (pid {live['pid']}, port {live['port']})", data
    data = ensure(session, host, device=device, keep_standby=keep_standby)
    return "; ".join(data.get("actions") or ["nothing to do"]), data


def _status_dict(now: ServeStatus) -> dict[str, Any]:
    return {
        "current": now.current,
        "served_release": now.served_release,
        "proxy_port": now.proxy_port,
        "proxy_running": now.proxy_running,
        "live": now.live,
        "standby": now.standby,
        "shadow": now.shadow,
        "live_ready": now.live_ready,
        "servers": now.servers,
    }


def stop_local_workspace(workspace: str, wait_s: float = 5.0) -> None:
    """Stop what serves from a workspace on THIS machine (stand-in hosts on teardown): the
    processes run in their own sessions, so stopping sshd does not reach them."""
    import subprocess
    import sys
    from pathlib import Path

    if not (Path(workspace) / "serve").is_dir():
        return
    subprocess.run(
        [
            sys.executable,
            "-c",
            serve_cmd.CTL_SOURCE,
            "stop",
            "--workspace",
            workspace,
            "--wait",
            str(wait_s),
        ],
        capture_output=True,
        timeout=wait_s * 10 + 30,
        check=False,
    )


# --- real requests during a demo's deploy and rollback -----------------------------------------


class TrafficStream:
    """One client per host sending real requests one after another through the host's public
    port (stand-in hosts: their ports are on this machine), counting what failed."""

    def __init__(self, ports: dict[str, int]):
        import threading

        self.ports = ports
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
                conn.request("POST", "/v1/predict", body=body)
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

    ports = {}
    for host in hosts:
        with HostSession(host) as session:
            now = status(session, host)
        if not now.proxy_port:
            raise ServeError(f"{host.name} does not serve: {now.problem()}")
        ports[host.name] = int(now.proxy_port)
    return TrafficStream(ports).start()
