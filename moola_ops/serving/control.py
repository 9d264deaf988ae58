"""Serving operations on a host, over an open `transport.HostSession` (the engine's stages and
`invoke serve` call these). Commands come from `moola_ops.serving.commands`; each operation is
one SSH round trip running the host-side control program (docs/serving.md).

    start_candidate(session, host, version) -> Started     a server on a private port, ready?
    probe(session, host, port=0)            -> Probe       real requests on the host, p50/p99
    move_traffic(session, host, version)    -> dict        the proxy routes to it; old -> standby
    drain(session, host, pid) / stop(session, host) / status(session, host) / ensure(...)

`run(hosts, action)` is the front door's entry: it opens a session per host, runs one action
(start, stop, status, restart, ensure) and records each step in the deployment log.

Two neighbours, reachable from here under their old names too: moola_ops/serving/stages.py
(the engine's stages and hooks: deploy_start, prepare_target, traffic_follows, ...) and
moola_ops/serving/traffic.py (assess_service for the health check, demo_traffic/TrafficStream).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from moola_core.errors import MoolaError
from moola_ops.hosts.inventory import Host
from moola_ops.hosts.layout import Layout, check_name
from moola_ops.log import steps
from moola_ops.serving import commands as serve_cmd
from moola_ops.serving.commands import ServeStatus

ACTIONS = ("start", "stop", "status", "restart", "ensure")
TOKEN_ACTIONS = ("token", "rotate-token")  # `tokens()`: their output is the token itself
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
    device: dict[str, Any] | None = None  # device, device_name, torch, gpus (the server's)


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
        auth=host.serve_auth,
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
        device=data.get("device") if isinstance(data.get("device"), dict) else None,
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
    release: str | None = None,
) -> Probe:
    """Send real prediction requests from the host: through the proxy (port 0, the path users
    hit) or to one server's private port (`release`'s: its manifest's SLA sets the timeout
    unless the inventory gives `latency_sla_ms`)."""
    command = serve_cmd.probe(
        _layout(host),
        host.python,
        port=port,
        requests=requests,
        concurrency=concurrency,
        windows=windows,
        warmup=warmup,
        sla_ms=host.latency_sla_ms,
        release=release,
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
        auth=host.serve_auth,
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


def client_token(session, host: Host, *, rotate: bool = False) -> dict[str, Any]:
    """The host's client token (made when it has none; a new one with `rotate`, which the proxy
    applies to its next request): {token, fingerprint, required}. The token stays in memory:
    callers show it to the person who asked or send it as `Authorization: Bearer`, never log it.
    """
    data = _run(session, serve_cmd.token(_layout(host), host.python, rotate=rotate), 60)
    if not data.get("ok") or not data.get("token"):
        raise ServeError(f"{host.name} gave no client token: {data.get('error') or 'no answer'}")
    return data


def bearer(token: str | None) -> dict[str, str]:
    """The header Moola's own clients send the public port."""
    return {"Authorization": f"Bearer {token}"} if token else {}


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
    record: bool = True,
) -> list[ServeOutcome]:
    """Run one serving action on each host (in turn); every action is a deployment-log line
    (`record=False`: none, for a `status` under Invoke's --dry)."""
    import contextlib

    from moola_ops.log.journal import Journal
    from moola_ops.transport import HostSession

    if action not in ACTIONS:
        raise MoolaError(
            f"unknown serve action {action!r}: choose one of {', '.join(ACTIONS + TOKEN_ACTIONS)}"
        )
    if not record and action != "status":
        raise MoolaError(f"serve {action} changes the host and is always recorded")
    journal = Journal(steps.SERVE, path=journal_path)
    outcomes = []
    for host in hosts:
        started = time.monotonic()
        step = journal.step(host.name, action) if record else contextlib.nullcontext({})
        try:
            with step as info, HostSession(host) as session:
                message, state = _act(session, host, action, device, keep_standby)
                info["result"] = message
            outcomes.append(ServeOutcome(host.name, True, message, state))
        except MoolaError as exc:
            outcomes.append(ServeOutcome(host.name, False, str(exc)))
        outcomes[-1].duration_s = round(time.monotonic() - started, 3)
    return outcomes


@dataclass
class TokenOutcome:
    """One host's client token for `invoke serve token|rotate-token` (shown, never logged)."""

    host: str
    ok: bool
    token: str | None = None
    fingerprint: str | None = None
    required: bool | None = None  # the running proxy requires it (None: no proxy runs)
    message: str = ""


def tokens(
    hosts: list[Host], *, rotate: bool = False, journal_path: str | None = None
) -> list[TokenOutcome]:
    """Each host's client token, or a new one (`rotate`: the old one stops working at the
    proxy's next request). The deployment log records a rotation with the new token's
    fingerprint only; showing a token records nothing."""
    from moola_ops.log.journal import Journal
    from moola_ops.transport import HostSession

    journal = Journal(steps.SERVE, path=journal_path) if rotate else None
    outcomes = []
    for host in hosts:
        try:
            if journal is None:
                with HostSession(host) as session:
                    data = client_token(session, host)
            else:
                with (
                    journal.step(host.name, steps.ROTATE_TOKEN) as info,
                    HostSession(host) as session,
                ):
                    data = client_token(session, host, rotate=True)
                    info["fingerprint"] = data.get("fingerprint")
            required = data.get("required")
            outcomes.append(
                TokenOutcome(
                    host.name,
                    True,
                    data["token"],
                    data.get("fingerprint"),
                    required,
                    f"token {data.get('fingerprint')}... "
                    + (
                        "(required by the proxy)"
                        if required
                        else "(not required: the proxy listens on loopback, serve_auth auto)"
                        if required is False
                        else "(no proxy runs yet)"
                    ),
                )
            )
        except MoolaError as exc:
            outcomes.append(TokenOutcome(host.name, False, message=str(exc)))
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
        spare = now.live_spare
        message += f"; spare pid {spare}" if spare else "; no spare (a death means a cold start)"
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


def release_manifest(session, host: Host, release: str) -> dict | None:
    """releases/<release>/manifest.json on the host as a dict (None when missing or unreadable):
    the SLA and training run a release was built with (monitor's reference, the A/B's SLA)."""
    check_name(release, "release")
    res = session.run(
        f"cat {_layout(host).path('releases', release, 'manifest.json')}", timeout_s=30
    )
    if res.exit_code != 0:
        return None
    try:
        return json.loads(res.stdout)
    except ValueError:
        return None
