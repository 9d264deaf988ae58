"""The engine's serving stages: deploy, rollback, drill and the switch-back call these with
their per-host context `ctx` (moola_ops.deploy.context.HostContext: .ssh an open HostSession,
.host, .opts, .facts, .step(name, **detail) a deployment-log step, .undo its undo stack).
`attach(add)` puts them at the engine's named points (moola_ops/deploy/hooks.py; called by
moola_ops/deploy/flows.py); the operations they use live in moola_ops/serving/control.py.

Rollback's fast path (docs/serving.md): the lock's round trip already read serve/state.json
(the `server` fact), so a warm standby of the target costs no round trip before the switch;
right after `current` moves, ONE command probes the standby (alive, /readyz, a real request
answered as the target) and only then moves traffic to it. Both are logged (serve-standby,
serve-switch). A standby that fails its probe moves nothing: a server is started and checked
like a deploy's, then traffic moves.
"""

from __future__ import annotations

from typing import Any

from moola_ops.log import steps
from moola_ops.serving import commands as serve_cmd
from moola_ops.serving.control import (
    KEEP_STANDBY,
    ServeError,
    Started,
    _layout,
    _run,
    drain,
    ensure_proxy,
    move_traffic,
    probe,
    start_candidate,
    status,
)

PROBE_REQUESTS = 100  # timed requests of the pre-switch latency check (after PROBE_WARMUP)
PROBE_WARMUP = 10
STOP_CANDIDATE = "stop-candidate"  # the undo entry of a server started but not yet given traffic


def push_stop_candidate(ctx, version: str) -> None:
    """From here until traffic reaches it, a failure or Ctrl-C stops the server started for
    `version` (the guard unwinds it: stop_candidate)."""

    def undo(info: dict) -> None:
        info["stopped_candidate"] = stop_candidate(ctx, info, version)

    ctx.undo.push(
        STOP_CANDIDATE,
        undo,
        left=f"a server started for {version}",
        fix=f"invoke serve --host {ctx.host.name} --ensure",
        key=version,
    )


def deploy_start(ctx, version: str) -> Started:
    """Before the switch: start `version`'s server on a private port, wait for /readyz, then
    measure p99 over real HTTP against the SLA. On failure the candidate is stopped and nothing
    switched; the server that was live keeps serving (steps serve-start, serve-check)."""
    host = ctx.host
    push_stop_candidate(ctx, version)
    with ctx.step(steps.SERVE_START, version=version) as info:
        proxy = ensure_proxy(ctx.ssh, host)
        info["proxy_port"] = proxy.get("port")
        started = start_candidate(ctx.ssh, host, version)
        info.update(
            pid=started.pid, port=started.port, start_s=started.start_s, device=started.device
        )
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
        result = probe(
            ctx.ssh, host, port=started.port, requests=requests, warmup=warmup, release=version
        )
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
    """The warm standby of `target` (alive, ready, and answering a real request as `target`),
    or None when there is none (step serve-standby). Used when the lock's facts did not say."""
    with ctx.step(steps.SERVE_STANDBY, version=target) as info:
        command = serve_cmd.standby(
            _layout(ctx.host), ctx.host.python, target, sla_ms=ctx.host.latency_sla_ms
        )
        data = _run(ctx.ssh, command)
        info["standby"] = data.get("standby")
        info["probe"] = {k: (data.get("probe") or {}).get(k) for k in ("p50_ms", "releases")}
        if not data.get("ok"):
            info.update(status="skipped", reason=data.get("error"))
            return None
        return data["standby"]


def target_server(ctx, target: str) -> tuple[int, bool]:
    """(port, warm) of a ready server for `target`: its warm standby when there is one, else a
    server started and checked like a deploy's."""
    standby = warm_standby(ctx, target)
    if standby is not None:
        return int(standby["port"]), True
    return int(deploy_start(ctx, target).port), False


def known_standby(ctx, target: str) -> bool | None:
    """From the lock's facts (serve/state.json, no round trip): True when a standby of
    `target` is recorded, False when none is, None when the facts did not say."""
    facts = getattr(ctx, "facts", None)
    if facts is None or "server" not in getattr(facts, "asked", ()):
        return None
    return serve_cmd.standby_of(facts.server, target) is not None


LIVE = "live"  # serve_target's third field: the target's server already takes the traffic


def already_live(ctx, target: str) -> bool:
    """From the lock's facts (serve/state.json, no round trip): the live server is `target`'s
    (a rollback from a `current` Moola did not deploy, back to the release still serving)."""
    facts = getattr(ctx, "facts", None)
    if facts is None or "server" not in getattr(facts, "asked", ()):
        return False
    return serve_cmd.live_of(facts.server, target) is not None


def keep_live(ctx, target: str) -> bool:
    """Right after `current` moved to the release whose server is live: that server keeps the
    traffic when it is alive, ready and answering as `target` (step serve-switch, moved
    false); False when it is not (a server is then started and given traffic)."""
    with ctx.step(steps.SERVE_SWITCH, version=target, moved=False) as info:
        now = status(ctx.ssh, ctx.host)
        live = now.live or {}
        kept = (
            live.get("release") == target
            and now.live_alive
            and now.live_ready
            and now.served_release == target
        )
        info.update(live=live, kept=kept)
        if not kept:
            info.update(status="skipped", reason=now.problem() or "the live server changed")
    return kept


def standby_switch(ctx, target: str) -> dict[str, Any] | None:
    """ONE round trip: probe the warm standby of `target` and, only when it passed, move live
    traffic to it (steps serve-standby, then serve-switch). None when the probe failed or there
    is no standby: nothing moved."""
    keep = getattr(ctx.opts, "keep_standby", KEEP_STANDBY)
    command = serve_cmd.standby_switch(
        _layout(ctx.host),
        ctx.host.python,
        target,
        keep_standby=keep,
        sla_ms=ctx.host.latency_sla_ms,
    )
    with ctx.step(steps.SERVE_STANDBY, version=target, moves_traffic=True) as info:
        data = _run(ctx.ssh, command)
        info["standby"] = data.get("standby")
        info["probe"] = {k: (data.get("probe") or {}).get(k) for k in ("p50_ms", "releases")}
        info["on_host_ms"] = {"check": data.get("check_ms"), "move": data.get("switch_ms")}
        if not data.get("passed"):
            info.update(status="skipped", reason=data.get("error"))
            return None
    moved = data.get("moved")
    with ctx.step(steps.SERVE_SWITCH, version=target, port=data["standby"].get("port")) as info:
        if moved is None:
            raise ServeError(
                f"moving traffic to the standby of {target} on {ctx.host.name} failed: "
                f"{data.get('error')}"
            )
        info.update(live=moved["live"], standby=moved["standby"], drained=moved["drained"])
    return moved


def move_to(ctx, target: str, port: int) -> dict[str, Any]:
    """Traffic to `target`'s server on `port` (step serve-switch); the server that was live
    becomes the standby, so going forward again is as quick."""
    keep = getattr(ctx.opts, "keep_standby", KEEP_STANDBY)
    with ctx.step(steps.SERVE_SWITCH, version=target, port=port) as info:
        moved = move_traffic(ctx.ssh, ctx.host, target, port=port, keep_standby=keep)
        info.update(live=moved["live"], standby=moved["standby"], drained=moved["drained"])
    ctx.undo.drop(STOP_CANDIDATE, key=target)  # live now: the switch-back handles it
    return moved


def stop_candidate(ctx, info: dict, version: str) -> list[dict] | None:
    """The engine's cleanup (failure or Ctrl-C before traffic moved): the server this run
    started for `version` drains, whether or not its start command answered (an interrupted
    start leaves a server with no pid known here). Runs over a fresh connection if needed."""
    out = ctx.run_reconnecting(
        serve_cmd.stop_candidates(_layout(ctx.host), ctx.host.python, version), info
    )
    return serve_cmd.parse(out.stdout).get("drained")


# --- what serving attaches at the engine's named points --------------------------------------


def attach(add) -> None:
    """Serving's stages at the engine's points: `add(point, name, fn)` (moola_ops/deploy/
    flows.py passes one that makes a ServeError a failed step, so the switch goes back on it).
    Before the switch a ready server for the target; right after `current` moves live traffic
    follows it; after the checks through `current` real requests through the public port; and
    after a switch back traffic goes back with `current`."""
    add(steps.POINT_BEFORE_SWITCH, steps.SERVE_START, prepare_target)
    add(steps.POINT_SWITCHED, steps.SERVE_SWITCH, traffic_follows)
    add(steps.POINT_SWITCH_CHECKED, steps.SERVE_POST_CHECK, check_traffic)
    add(steps.POINT_SWITCHED_BACK, steps.SERVE_SWITCH_BACK, traffic_back)


def prepare_target(ctx) -> None:
    """Before the switch (deploy and rollback): a ready server for `ctx.target`. A warm standby
    known from the lock's facts is left for `traffic_follows` (probed and given traffic in one
    round trip); otherwise its warm standby when probing finds one, else a server started and
    checked over HTTP. Live traffic is untouched until the switch; if no server gets ready,
    nothing switches."""
    if not ctx.opts.serve:
        return
    prepared = getattr(ctx, "serve_target", None)
    if prepared and prepared[0] == ctx.target:
        return  # the deploy's check prepared it already (deploy/flows.py _precheck)
    if already_live(ctx, ctx.target):  # traffic is on the target's server: nothing to start
        ctx.serve_target = (ctx.target, None, LIVE)
        return
    known = known_standby(ctx, ctx.target)
    if known:
        ctx.serve_target = (ctx.target, None, True)
        return
    if known is False:  # the facts say there is no standby: start one, no probe round trip
        ctx.serve_target = (ctx.target, int(deploy_start(ctx, ctx.target).port), False)
        return
    port, warm = target_server(ctx, ctx.target)
    ctx.serve_target = (ctx.target, port, warm)


def started_for(ctx, target: str) -> bool:
    """Whether `prepare_target` started (and checked) a new server for `target`, rather than
    finding its warm standby or live server."""
    prepared = getattr(ctx, "serve_target", None)
    return bool(prepared and prepared[0] == target and prepared[2] is False)


def traffic_follows(ctx, target: str) -> None:
    """Right after `current` moved: live traffic moves to `target`'s server, the one started
    before the switch, or its warm standby (probe + move in one round trip; rollback, drill).
    A standby that fails its probe is replaced by a server started and checked now."""
    if not ctx.opts.serve:
        return
    prepared = getattr(ctx, "serve_target", None)
    if prepared and prepared[0] == target and prepared[2] == LIVE:
        if keep_live(ctx, target):
            return
        move_to(ctx, target, int(deploy_start(ctx, target).port))
        return
    if prepared and prepared[0] == target and prepared[1] is not None:
        move_to(ctx, target, prepared[1])
        return
    if standby_switch(ctx, target) is not None:
        return
    move_to(ctx, target, int(deploy_start(ctx, target).port))


def check_traffic(ctx, target: str) -> None:
    """After the post-check: real requests through the public port are answered by `target`."""
    if ctx.opts.serve:
        serve_post_check(ctx, target)


def traffic_back(ctx, previous: str, failed: str) -> None:
    """`current` went back after a failed check: traffic goes back with it."""
    if ctx.opts.serve:
        switch_back(ctx, previous, failed)
