"""Builders for what serving does on a host, and parsers of what the host answers.

Every command runs the host agent's `serve` action (moola_core/agent/control.py, from the
agent's folder that moola_ops/transport/agent.py uploads once per host): the engine never
depends on what an older release left on the disk. Each prints one JSON line.
Read top to bottom, this file is exactly what serving does to a host.

    WORKSPACE/serve/state.json     live / standby / shadow server (the proxy routes by it)
    WORKSPACE/serve/proxy.json     the proxy's pid and public port
    WORKSPACE/serve/servers/*.json one per model server process (pid, private port, ready)
    WORKSPACE/serve/logs/*.log     the processes' logs
    WORKSPACE/serve/token          the clients' token (0600), required beyond loopback
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from moola_core.errors import MoolaError
from moola_ops.hosts.layout import Layout, check_name
from moola_ops.transport import agent

DEFAULT_PORT = 8080  # the public port when the inventory names none (`serve_port:`)
DEVICES = ("auto", "cpu", "cuda")
AUTH_MODES = ("auto", "always")  # inventory `serve_auth`: when clients need the host's token


def public_port(host) -> int:
    """The host's public serving port: inventory `serve_port`, else DEFAULT_PORT (0: the port
    the host's proxy picked once and keeps)."""
    return DEFAULT_PORT if host.serve_port is None else int(host.serve_port)


def _bind(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        raise MoolaError(
            f"invalid serve_bind {address!r}: give an IP address such as 127.0.0.1 or 0.0.0.0"
        ) from None


def _auth(mode: str) -> str:
    if mode not in AUTH_MODES:
        raise MoolaError(f"invalid serve_auth {mode!r}: choose auto or always")
    return mode


def _port(port: int, what: str = "port") -> str:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise MoolaError(f"invalid {what} {port!r}: give a whole number from 0 to 65535")
    return str(port)


class CtlCommand(str):
    """An agent `serve` command line that knows its `action` (a plan answers it: `planned`)."""

    action: str = ""


PLANNED_PORT = 65535  # the port a plan's started server gets (the host picks one at run time)
PLANNED_PID = 1 << 22  # its pid: above Linux's largest pid_max, so never a real process


def planned(action: str, version: str | None, state: dict[str, Any] | None) -> dict[str, Any]:
    """What the agent's `serve` prints when `action` succeeds for `version` (moola_ops/deploy/plan.py:
    the plan runs the serving stages on these answers). `state` is serve/state.json as the
    facts read it (a recorded standby's port)."""
    standby = standby_of(state, version or "") or {"release": version, "port": PLANNED_PORT}
    live = {"release": version, "port": standby.get("port"), "pid": 0}
    moved = {"ok": True, "live": live, "standby": None, "drained": []}
    answers: dict[str, dict[str, Any]] = {
        "proxy": {"ok": True, "port": None},
        "start": {
            "ok": True,
            "ready": True,
            "pid": PLANNED_PID,
            "port": PLANNED_PORT,
            "start_s": 0.0,
        },
        "probe": {"ok": True, "requests": 1, "failures": 0, "releases": {version: 1}},
        "switch": moved,
        "standby-switch": {"ok": True, "passed": True, "standby": standby, "moved": moved},
        "standby": {"ok": True, "standby": standby},
        "status": {
            "ok": True,
            "current": version,
            "proxy": {"running": True},
            "live": live,
            "live_alive": True,
            "live_ready": True,
            "served_release": version,
        },
        "stop-candidates": {"ok": True, "drained": []},
        "drain": {"ok": True, "drained": True},
    }
    return answers.get(action, {"ok": True})


def _ctl(layout: Layout, python: str, action: str, *args: str) -> CtlCommand:
    command = CtlCommand(
        agent.command(layout, python, "serve", action, "--workspace", layout.root, *args)
    )
    command.action = action
    return command


def start(
    layout: Layout,
    python: str,
    version: str,
    *,
    device: str = "auto",
    timeout_s: float = 180.0,
    server_args: tuple[str, ...] = (),
) -> str:
    """Start a server for releases/<version> on a free private port; wait until it is ready
    (or failed, or `timeout_s`). Prints {ok, release, pid, port, ready, reason, log_tail}."""
    if device not in DEVICES:
        raise MoolaError(f"invalid device {device!r}: choose one of {', '.join(DEVICES)}")
    extra = []
    for arg in server_args:  # "=" form: a value that starts with "--" stays a value
        extra.append(shlex.quote(f"--server-arg={arg}"))
    return _ctl(
        layout,
        python,
        "start",
        "--release",
        shlex.quote(check_name(version, "version")),
        "--device",
        device,
        "--timeout",
        repr(float(timeout_s)),
        *extra,
    )


def proxy(
    layout: Layout,
    python: str,
    port: int,
    bind: str = "127.0.0.1",
    *,
    read_timeout_s: float | None = None,
    keep_running: bool = False,
    auth: str = "auto",
) -> str:
    """Start the front proxy on the public port unless it runs (the clients' token is made
    first when the host has none). Prints {ok, pid, port, started, auth_required}.
    `keep_running`: a proxy already running on another port is kept (no port configured).
    `auth`: the inventory's `serve_auth` (a token beyond loopback, or always)."""
    extra = [] if read_timeout_s is None else ["--read-timeout", repr(float(read_timeout_s))]
    if keep_running:
        extra.append("--keep-running")
    return _ctl(
        layout,
        python,
        "proxy",
        "--port",
        _port(port),
        "--bind",
        _bind(bind),
        "--auth",
        _auth(auth),
        *extra,
    )


def switch(
    layout: Layout, python: str, version: str, *, port: int | None = None, keep_standby: bool = True
) -> str:
    """Move live traffic to the ready server of `version` (atomic rename of serve/state.json;
    the proxy confirms it). The server that was live becomes the standby, or drains."""
    args = ["--release", shlex.quote(check_name(version, "version"))]
    if port is not None:
        args += ["--port", _port(port)]
    if not keep_standby:
        args.append("--no-standby")
    return _ctl(layout, python, "switch", *args)


def drain(layout: Layout, python: str, pid: int) -> str:
    """SIGTERM one server of this workspace: it stops accepting, finishes, exits."""
    if not isinstance(pid, int) or pid <= 1:
        raise MoolaError(f"invalid pid {pid!r}")
    return _ctl(layout, python, "drain", "--pid", str(pid))


def deprioritise(layout: Layout, python: str, pid: int, nice: int) -> str:
    """Every thread of server `pid` to `nice` and SCHED_IDLE (a shadow: it gets only the CPU
    the live server does not want). Prints {ok, threads, sched_idle}."""
    if not isinstance(pid, int) or pid <= 1:
        raise MoolaError(f"invalid pid {pid!r}")
    return _ctl(layout, python, "deprioritise", "--pid", str(pid), "--nice", str(int(nice)))


def stop_candidates(layout: Layout, python: str, version: str) -> str:
    """Drain every server of `version` that is not live, standby or shadow: the candidate of a
    deploy that failed or was interrupted before traffic moved to it. Prints {ok, drained}."""
    return _ctl(
        layout, python, "stop-candidates", "--release", shlex.quote(check_name(version, "version"))
    )


def shadow_route(layout: Layout, python: str, shadow: dict[str, Any] | None) -> str:
    """Route a sampled copy of live traffic to `shadow` ({release, port, pid, fraction,
    since}), or stop copying (None): serve/state.json's `shadow` key, changed under the host's
    state lock like every other change of it. Prints {ok, old, shadow}."""
    if shadow is None:
        return _ctl(layout, python, "shadow", "--clear")
    check_name(str(shadow.get("release")), "version")
    return _ctl(layout, python, "shadow", "--set", shlex.quote(json.dumps(shadow)))


def proxy_state(layout: Layout, python: str) -> str:
    """The proxy's own view (its route, counters per shadow and total_*, connections), asked
    on the host with the host's token. Prints {ok, proxy}."""
    return _ctl(layout, python, "proxy-state")


def token(layout: Layout, python: str, *, rotate: bool = False) -> str:
    """The clients' token (made when missing; a new one with `rotate`). Prints {ok, token,
    fingerprint, rotated, required}: the output carries the token, so its caller never logs it."""
    return _ctl(layout, python, "token", *(["--rotate"] if rotate else []))


def status(layout: Layout, python: str) -> str:
    """Proxy, live/standby servers, every server process and what the public port serves."""
    return _ctl(layout, python, "status")


def _sla(sla_ms: float | None) -> list[str]:
    """`--sla-ms X`: the p99 SLA the host's probe timeout derives from (none: the manifest's)."""
    if sla_ms is None:
        return []
    if isinstance(sla_ms, bool) or not isinstance(sla_ms, int | float) or not sla_ms > 0:
        raise MoolaError(f"invalid latency SLA {sla_ms!r}: give milliseconds > 0")
    return ["--sla-ms", repr(float(sla_ms))]


def standby(
    layout: Layout, python: str, version: str, *, requests: int = 3, sla_ms: float | None = None
) -> str:
    """Is the warm standby of `version` alive and ready, and does it answer real requests as
    `version`? One round trip (rollback's fast path). Prints {ok, standby, probe, error}.
    Each request's timeout derives from `sla_ms` (the inventory's), else the manifest's SLA."""
    return _ctl(
        layout,
        python,
        "standby",
        "--release",
        shlex.quote(check_name(version, "version")),
        "--requests",
        str(int(requests)),
        *_sla(sla_ms),
    )


def standby_switch(
    layout: Layout,
    python: str,
    version: str,
    *,
    requests: int = 1,
    keep_standby: bool = True,
    sla_ms: float | None = None,
) -> str:
    """Rollback's fast path, ONE round trip: probe the warm standby of `version` (alive,
    /readyz, `requests` real requests answered as `version`) and, only when it passed, move
    traffic to it. Prints {ok, standby, probe, moved, error}; nothing moves on a failed probe."""
    if not isinstance(requests, int) or isinstance(requests, bool) or requests < 1:
        raise MoolaError(f"invalid requests {requests!r}: give a whole number >= 1")
    args = ["--release", shlex.quote(check_name(version, "version")), "--requests", str(requests)]
    if not keep_standby:
        args.append("--no-standby")
    return _ctl(layout, python, "standby-switch", *args, *_sla(sla_ms))


def health(
    layout: Layout, python: str, *, burst: int = 0, concurrency: int = 4, requests: bool = True
) -> str:
    """The live service for a monitor, one round trip: status, one real request through the
    public port, and a burst of `burst` requests (`concurrency` clients) when asked
    (`requests=False`: the status alone; nothing is sent, so nothing is captured)."""
    if (
        not isinstance(burst, int)
        or burst < 0
        or not isinstance(concurrency, int)
        or concurrency < 1
    ):
        raise MoolaError(f"invalid burst {burst!r} / concurrency {concurrency!r}")
    quiet = () if requests else ("--no-requests",)
    return _ctl(
        layout, python, "health", "--burst", str(burst), "--concurrency", str(concurrency), *quiet
    )


def stop(layout: Layout, python: str, wait_s: float = 30.0) -> str:
    """Stop the proxy and every server (each drains first, killed after `wait_s`)."""
    return _ctl(layout, python, "stop", "--wait", repr(float(wait_s)))


def probe(
    layout: Layout,
    python: str,
    *,
    port: int = 0,
    requests: int = 20,
    concurrency: int = 1,
    windows: int = 1,
    warmup: int = 0,
    sla_ms: float | None = None,
    release: str | None = None,
) -> str:
    """Real prediction requests from the host itself (pod ports are not public): through the
    proxy (port 0) or straight to a server's private port, one kept-alive connection per
    client. Prints latency p50/p99 (after `warmup` untimed requests per client), failures and
    which release answered. Each request's timeout derives from `sla_ms`, else the manifest
    SLA of `release`, else of the live release (agent/control.py probe_timeout)."""
    for value, what in ((requests, "requests"), (concurrency, "concurrency"), (windows, "windows")):
        if not isinstance(value, int) or value < 1:
            raise MoolaError(f"invalid {what} {value!r}: give a whole number >= 1")
    if not isinstance(warmup, int) or warmup < 0:
        raise MoolaError(f"invalid warmup {warmup!r}: give a whole number >= 0")
    return _ctl(
        layout,
        python,
        "probe",
        "--port",
        _port(port),
        "--requests",
        str(requests),
        "--concurrency",
        str(concurrency),
        "--windows",
        str(windows),
        "--warmup",
        str(warmup),
        *(["--release", shlex.quote(check_name(release, "version"))] if release else []),
        *_sla(sla_ms),
    )


def ensure(
    layout: Layout,
    python: str,
    port: int,
    *,
    bind: str = "127.0.0.1",
    device: str = "auto",
    keep_standby: bool = True,
    timeout_s: float = 180.0,
    keep_running: bool = False,
    auth: str = "auto",
) -> str:
    """Idempotent: the proxy runs and `current`'s server is live and ready; starts what is
    missing and does nothing otherwise (cron-safe)."""
    if device not in DEVICES:
        raise MoolaError(f"invalid device {device!r}: choose one of {', '.join(DEVICES)}")
    args = [
        "--port",
        _port(port),
        "--bind",
        _bind(bind),
        "--device",
        device,
        "--timeout",
        repr(float(timeout_s)),
        "--auth",
        _auth(auth),
    ]
    if not keep_standby:
        args.append("--no-standby")
    if keep_running:
        args.append("--keep-running")
    return _ctl(layout, python, "ensure", *args)


def start_command_line(
    workspace: str,
    python: str = "python3",
    port: int = DEFAULT_PORT,
    bind: str = "127.0.0.1",
    auth: str = "auto",
) -> str:
    """The line for a pod's start command: serve `current` after a pod restart, with the agent
    the current release ships (the uploaded agent folder may have been pruned since). `--auth`
    is named only when it is not the default."""
    layout = Layout(workspace)
    launcher = layout.path("current", "code", "moola_core", "agent", "__main__.py")
    line = (
        f"{shlex.quote(python)} -S {launcher} serve ensure --workspace {layout.root} "
        f"--port {_port(port)} --bind {_bind(bind)}"
    )
    return line if _auth(auth) == "auto" else f"{line} --auth {auth}"


# --- the serving fact (facts.py `server`, read in the lock's round trip) -----------------------


def standby_of(state: dict[str, Any] | None, version: str) -> dict[str, Any] | None:
    """The standby entry of `version` in a serving state, or None."""
    standby = (state or {}).get("standby")
    if isinstance(standby, dict) and standby.get("release") == version and standby.get("port"):
        return standby
    return None


def live_of(state: dict[str, Any] | None, version: str) -> dict[str, Any] | None:
    """The live entry of `version` in a serving state, or None (a rollback from a `current`
    Moola did not deploy can land on the release whose server already takes traffic)."""
    live = (state or {}).get("live")
    if isinstance(live, dict) and live.get("release") == version and live.get("port"):
        return live
    return None


# --- parsers ---------------------------------------------------------------------------------


def parse(stdout: str) -> dict[str, Any]:
    """The JSON document the agent printed (its last JSON line), or a failure report."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                break
            if isinstance(value, dict):
                return value
    return {"ok": False, "error": f"no answer from the host: {stdout.strip()[-300:]!r}"}


@dataclass
class ServeStatus:
    """What serves on one host (from `status`)."""

    ok: bool
    current: str | None = None
    proxy_running: bool = False
    proxy_port: int | None = None
    live: dict[str, Any] | None = None
    standby: dict[str, Any] | None = None
    shadow: dict[str, Any] | None = None
    live_alive: bool = False
    live_ready: bool = False
    served_release: str | None = None
    servers: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def serving(self) -> bool:
        """The proxy runs and forwards to a live server that is ready."""
        return self.proxy_running and self.live_alive and self.live_ready

    @property
    def standby_ready(self) -> bool:
        """A standby exists and its process answered /readyz just now."""
        pid = (self.standby or {}).get("pid")
        return any(s.get("pid") == pid and s.get("ready_now") for s in self.servers)

    @property
    def live_spare(self) -> int | None:
        """The pid of the live server's spare while it waits (docs/serving.md), else None."""
        pid = (self.live or {}).get("pid")
        for s in self.servers:
            if s.get("pid") == pid and s.get("spare_alive"):
                return s.get("spare_pid")
        return None

    def problem(self) -> str | None:
        """One sentence when the host does not serve `current`, else None."""
        if self.error:
            return self.error
        if not self.proxy_running:
            return "the serving proxy is not running"
        if not self.live:
            return "no release is live"
        if not self.live_alive:
            return f"the live server of {self.live.get('release')} is not running"
        if not self.live_ready:
            return f"the live server of {self.live.get('release')} is not ready"
        if self.current and self.served_release != self.current:
            return f"serving {self.served_release}, but current is {self.current}"
        return None


def parse_status(stdout: str) -> ServeStatus:
    """ServeStatus from the output of `status` (tested from recorded output)."""
    data = parse(stdout)
    if not data.get("ok"):
        return ServeStatus(ok=False, error=data.get("error") or "no status from the host")
    proxy_info = data.get("proxy") or {}
    return ServeStatus(
        ok=True,
        current=data.get("current"),
        proxy_running=bool(proxy_info.get("running")),
        proxy_port=proxy_info.get("port"),
        live=data.get("live"),
        standby=data.get("standby"),
        shadow=data.get("shadow"),
        live_alive=bool(data.get("live_alive")),
        live_ready=bool(data.get("live_ready")),
        served_release=data.get("served_release"),
        servers=list(data.get("servers") or []),
    )
