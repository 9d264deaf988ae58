"""The shadow: a candidate release's server beside the live one, fed a copy of live traffic.

`start(host, candidate, fraction)` runs as one engine flow (`engine.place`, phase `shadow`),
so a shadow's code reaches a host exactly the way a deploy's does:
1. the bundle passes deploy's checks here (the full `bundle.verify`, the quality gate, and on
   a host with `allowed_signers` a signature by one of them), the host's deploy lock is taken,
   and the release is uploaded, extracted and verified file by file (or the copy already there
   is verified) and runtime-checked, without touching `current`; a failure or Ctrl-C leaves
   the host as it was (the engine's guard removes what this run put there, unlocks);
2. still under the lock, its model server starts on a private port with `--role shadow` (its
   captures are marked shadow; the server lowers itself to nice 19 under SCHED_IDLE before its
   first thread starts and computes on one torch thread), /readyz is waited for (model loaded,
   golden parity passed) and every thread of it is put at nice 19 under SCHED_IDLE again (a
   server of an older runtime does not lower itself), so on a busy host it only gets CPU the
   live server leaves;
3. `"shadow": {"release", "port", "pid", "fraction", "since"}` goes into
   WORKSPACE/serve/state.json through the host's one writer of that file (the agent's
   `serve`, under its flock): from the next request on, the front proxy copies that fraction of /v1/predict
   requests, with the same X-Moola-Request-Id, to the shadow *after* the live answer has gone
   out, on a bounded queue, and counts them for this shadow alone (a new shadow starts at
   zero). The live answer never waits for the shadow, so a slow, failing or dead shadow
   cannot delay or change it (tests/integration/test_shadow.py). A shadow it replaces drains.

`stop(host)` removes the key (the proxy stops copying at once) and drains the shadow's server.
`status(host)` says what the shadow is, whether its process runs and what the proxy counted;
`ShadowStatus.problem()` is the sentence (and `invoke shadow status` exits 1) when a shadow is
routed but its process is gone.
`promote(host)` deploys the candidate through the normal zero-downtime path (engine.deploy,
then the proxy moves to a fresh live server of it) and stops the shadow.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from moola_core.errors import MoolaError
from moola_ops.log import steps
from moola_ops.serving import commands as serve_cmd

DEFAULT_FRACTION = 1.0

SHADOW_NICE = 19
# The shadow batches like the live server (same --max-wait-ms): a longer window would save a
# little CPU but add its length to every latency the A/B compares against the SLA.
SHADOW_SERVER_ARGS = ("--role", "shadow")


@dataclass
class ShadowStatus:
    """The shadow on one host."""

    host: str
    release: str | None = None
    port: int | None = None
    pid: int | None = None
    fraction: float | None = None
    running: bool = False  # its server process is alive
    ready: bool = False  # and answered /readyz just now
    live: str | None = None  # the release live traffic goes to
    # this shadow's copies as the proxy counted them (shadow_sent / shadow_errors /
    # shadow_dropped, zero for a shadow just started); total_shadow_* over the proxy's life
    proxy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), problem=self.problem())

    def problem(self) -> str | None:
        """One sentence, with what to do, when a shadow is routed but its server is gone."""
        if self.release and not self.running:
            return (
                f"the shadow {self.release} on {self.host} is NOT RUNNING (its process is gone; "
                "the proxy's copies to it fail): start it again with `invoke shadow start "
                f"--host {self.host} --candidate {self.release}`, or stop copying with "
                f"`invoke shadow stop --host {self.host}`"
            )
        return None

    def summary(self) -> str:
        if not self.release:
            return f"{self.host}: no shadow (live {self.live or 'nothing'})"
        state = "ready" if self.ready else "running" if self.running else "NOT RUNNING"
        counts = ", ".join(f"{k} {v}" for k, v in self.proxy.items() if k.startswith("shadow"))
        line = (
            f"{self.host}: shadow {self.release} on port {self.port} ({state}), "
            f"{100 * (self.fraction or 0):g}% of live {self.live} requests copied"
            + (f"; proxy (this shadow): {counts}" if counts else "")
        )
        problem = self.problem()
        return f"{line}\n{problem}" if problem else line


def _fraction(value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise MoolaError(f"--sample {value!r} is not a number; give a fraction in (0, 1]") from None
    if not 0.0 < value <= 1.0:
        raise MoolaError(f"--sample {value:g} is outside (0, 1]; 0.1 copies one request in ten")
    return value


def route(session, host, shadow: dict | None) -> dict:
    """Copy live traffic to `shadow` ({release, port, pid, fraction, since}) or stop (None):
    serve/state.json's `shadow` key, through the host's one writer of it. -> {old, shadow}."""
    from moola_ops.hosts.layout import Layout
    from moola_ops.serving import commands as serve_cmd

    res = session.run(
        serve_cmd.shadow_route(Layout(host.workspace), host.python, shadow), timeout_s=60
    )
    data = serve_cmd.parse(res.stdout or res.stderr)
    if not data.get("ok"):
        raise MoolaError(
            f"{host.name}: {data.get('error')}; start serving first (`invoke serve --host "
            f"{host.name} start`)"
        )
    return data


def status_on(session, host) -> ShadowStatus:
    """The shadow's state on an open session."""
    from moola_ops.hosts.layout import Layout
    from moola_ops.serving import commands as serve_cmd
    from moola_ops.serving import control as serving

    now = serving.status(session, host)
    if not now.ok:
        raise MoolaError(f"{host.name}: {now.error}")
    out = ShadowStatus(host.name, live=(now.live or {}).get("release"))
    shadow = now.shadow or {}
    if shadow:
        out.release, out.port = shadow.get("release"), shadow.get("port")
        out.pid, out.fraction = shadow.get("pid"), shadow.get("fraction")
        for s in now.servers:
            if s.get("pid") == out.pid and s.get("alive"):
                out.running, out.ready = True, bool(s.get("ready_now"))
    if now.proxy_running:
        res = session.run(serve_cmd.proxy_state(Layout(host.workspace), host.python), timeout_s=30)
        counters = (serve_cmd.parse(res.stdout).get("proxy") or {}).get("stats") or {}
        if isinstance(counters, dict):
            out.proxy = {
                k: v for k, v in counters.items() if str(k).startswith(("shadow", "total_shadow"))
            }
    return out


def _stages(version: str, fraction: float, device: str):
    """(checks, then) for engine.place: refusals before anything is uploaded, and the shadow's
    own stages after the release passed its checks, all under the deploy lock."""
    from moola_ops.deploy import StepFailed
    from moola_ops.serving import control as serving
    from moola_ops.serving import stages as serving_stages

    def refusals(ctx) -> None:
        live = (ctx.facts.server or {}).get("live") or {}
        name = ctx.host.name
        if not live.get("release"):
            raise StepFailed(
                f"nothing is live on {name}; deploy and serve a release first "
                f"(`invoke serve --host {name} start`)"
            )
        if live.get("release") == version:
            raise StepFailed(
                f"{version} is the live release on {name}; a shadow must be another release"
            )
        ctx.notes.append(f"live {live['release']}")

    def start_server(ctx) -> None:
        serving_stages.push_stop_candidate(ctx, version)  # until routed, a failure stops it
        with ctx.step(steps.SHADOW_START, version=version) as info:
            started = serving.start_candidate(
                ctx.ssh, ctx.host, version, device=device, server_args=SHADOW_SERVER_ARGS
            )
            info.update(pid=started.pid, port=started.port, start_s=started.start_s)
            if not started.ok:
                raise StepFailed(
                    f"the shadow server of {version} on {ctx.host.name} did not get ready "
                    f"({started.reason}); live traffic is untouched. Log: {started.log}"
                )
        ctx.shadow_started = started

    def deprioritise(ctx) -> None:
        pid = int(ctx.shadow_started.pid)
        with ctx.step(steps.SHADOW_DEPRIORITISE, nice=SHADOW_NICE) as info:
            res = ctx.run(serve_cmd.deprioritise(ctx.layout, ctx.host.python, pid, SHADOW_NICE))
            info["threads"] = res.stdout.strip()[-80:]

    def route_traffic(ctx) -> None:
        started = ctx.shadow_started
        with ctx.step(steps.SHADOW_ROUTE, fraction=fraction) as info:
            shadow = {
                "release": version,
                "port": started.port,
                "pid": started.pid,
                "fraction": fraction,
                "since": time.time(),
            }
            old = route(ctx.ssh, ctx.host, shadow).get("old")
            info["replaced"] = old
        ctx.undo.drop(serving_stages.STOP_CANDIDATE)  # routed: the shadow now, not a stray
        if old and old.get("pid") and old.get("pid") != started.pid:
            with ctx.step(steps.SHADOW_DRAIN_PREVIOUS, pid=old.get("pid")) as info:
                info["drained"] = serving.drain(ctx.ssh, ctx.host, int(old["pid"]))

    return [("shadow-checks", refusals)], [
        (steps.SHADOW_START, start_server),
        (steps.SHADOW_DEPRIORITISE, deprioritise),
        (steps.SHADOW_ROUTE, route_traffic),
    ]


def start(
    host,
    candidate: str,
    *,
    fraction: float = DEFAULT_FRACTION,
    bundles_dir: str = "bundles",
    device: str = "auto",
    journal_path: str | None = None,
    opts=None,
):
    """Start `candidate` as the host's shadow (replacing a previous shadow, which drains):
    through `engine.place`, the way a deploy puts a release on a host (see the module's
    docstring). `opts`: the engine's Options (deadlines, runtime-check runs); with
    `opts.plan` the place flow's plan (a FleetResult) is returned and nothing changes."""
    from moola_ops import deploy as engine

    fraction = _fraction(fraction)
    bundle = engine.resolve_bundle(candidate, bundles_dir=bundles_dir)
    opts = opts or engine.Options()
    if journal_path is not None:
        from dataclasses import replace

        opts = replace(opts, journal_path=journal_path)
    checks, then = _stages(bundle.version, fraction, device)
    try:
        result = engine.place(
            [host], bundle, opts, phase=steps.SHADOW, what="shadow", checks=checks, then=then
        )
    except engine.Interrupted as stop:
        (outcome,) = stop.result.outcomes
        raise MoolaError(f"interrupted: {outcome.message}", exit_code=130) from None
    if opts.plan:
        return result
    (outcome,) = result.outcomes
    if not outcome.ok:
        raise MoolaError(outcome.message)
    return status(host)


def _stop_on(runner, host, before: ShadowStatus) -> dict:
    """What `shadow stop` changes: the route cleared, then the shadow's server drained."""
    from moola_ops.serving import control as serving

    route(runner, host, None)
    if before.pid and before.running:
        return {"drained": serving.drain(runner, host, int(before.pid))}
    return {}


def stop(host, *, session=None, journal_path: str | None = None, plan: bool = False):
    """Stop copying traffic (at once) and drain the shadow's server. Idempotent.

    `plan`: read the shadow for real, run the same steps against a recorder instead of the
    host, and return {host, shadow, commands} (nothing changed, nothing logged)."""
    from moola_ops.log.journal import Journal
    from moola_ops.transport import HostSession

    own = session is None
    session = session or HostSession(host).open()
    try:
        before = status_on(session, host)
        if plan:
            from moola_ops.deploy.plan import Recorder

            recorder = Recorder(steps.SHADOW_STOP)
            if before.release:
                _stop_on(recorder, host, before)
            return {"host": host.name, "shadow": before.to_dict(), "commands": recorder.commands}
        if not before.release:
            return before
        journal = Journal(steps.SHADOW, bundle=before.release, path=journal_path)
        with journal.step(host.name, steps.SHADOW_STOP, port=before.port) as info:
            info.update(_stop_on(session, host, before))
        return status_on(session, host)
    finally:
        if own:
            session.close()


def status(host) -> ShadowStatus:
    from moola_ops.transport import HostSession

    with HostSession(host) as session:
        return status_on(session, host)


def promote(
    host,
    *,
    bundles_dir: str = "bundles",
    candidate: str | None = None,
    journal_path: str | None = None,
    plan: bool = False,
):
    """Deploy the shadow's release through the normal path, serve it, then stop the shadow.

    engine.deploy moves `current` (lock, verify, runtime check, switch, post-check); then a
    fresh live server of the candidate gets ready and the proxy moves to it (zero downtime);
    the shadow process, which captured as `shadow`, is drained. Returns the engine's result
    (`plan`: the deploy's plan, read from the host; nothing changes, the shadow keeps running).
    """
    from moola_ops import deploy as engine
    from moola_ops.serving import control as serving
    from moola_ops.transport import HostSession

    if candidate is None:
        now = status(host)
        if not now.release:
            raise MoolaError(
                f"{host.name} has no shadow to promote; give --candidate VERSION or start one "
                "with `invoke shadow start`"
            )
        candidate = now.release
    bundle = engine.resolve_bundle(candidate, bundles_dir=bundles_dir)
    result = engine.deploy([host], bundle, engine.Options(journal_path=journal_path, plan=plan))
    if plan or not result.ok:
        return result
    with HostSession(host) as session:
        served = serving.status(session, host)
        if served.served_release != bundle.version:  # the engine did not move traffic itself
            serving.restart(session, host)
        stop(host, session=session, journal_path=journal_path)
    return result
