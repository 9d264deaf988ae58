"""`invoke shadow start|stop|status --host H` and `invoke promote --host H` (docs/ab.md).

The shadow is a candidate release's server beside the live one; the front proxy copies a
sample of live requests to it after answering, so its answers are captured for `invoke ab`
without ever delaying or changing a live answer.
"""

from __future__ import annotations

from invoke.exceptions import Exit

from moola_ops.cli._common import PLAN, task, user_errors
from moola_ops.terminal import print_json

_COMMON = {
    "host": "the inventory host (one)",
    "inventory": "inventory file (default inventory/hosts.yaml or env MOOLA_INVENTORY)",
    "json": "print one JSON document",
}


def _host(name: str, inventory: str):
    from moola_ops.serving.captures import resolve_host

    return resolve_host(name, inventory_path=inventory or None)


def _show(status, json: bool) -> None:
    if json:
        print_json(status.to_dict())
    else:
        print(status.summary())


def _show_stop_plan(plan: dict, json: bool) -> None:
    if json:
        print_json(plan)
        return
    shadow = plan["shadow"]
    if not shadow.get("release"):
        print(f"PLAN shadow stop on {plan['host']}: no shadow; nothing to do")
        return
    print(
        f"PLAN shadow stop on {plan['host']}: stop copying live traffic to {shadow['release']}"
        + (f" and drain its server (pid {shadow['pid']})" if shadow.get("running") else "")
        + "; nothing changed"
    )
    for i, c in enumerate(plan["commands"], 1):
        print(f"  {i:>2}. [{c['step']}] {c['command'][:400]}")


@task(
    positional=["action"],
    help={
        "action": "start (run --candidate as the shadow), stop (drain it), status",
        **_COMMON,
        "candidate": "start: bundle version (or archive path) to run as the shadow",
        "sample": "start: fraction of live requests copied to the shadow, in (0, 1] (default 1.0)",
        "bundles_dir": "where bundle archives live (default bundles)",
        "device": "start: the shadow server's device, auto, cpu or cuda (default auto)",
        "plan": "start, stop: say what it would do on the host (nothing changed); "
        "`invoke --dry shadow start|stop` does the same",
    },
    # --dry: status reads, start and stop plan (their --plan)
    dry=lambda kw: (
        None
        if kw.get("action") in ("status", "start", "stop")
        else f"shadow {kw.get('action')} is not an action; use start, stop or status"
    ),
)
@user_errors
def shadow(
    c,
    action,
    host,
    candidate="",
    sample=1.0,
    bundles_dir="bundles",
    device="auto",
    inventory="",
    plan=False,
    json=False,
):
    """A candidate beside the live release, fed a copy of live traffic: start, stop, status."""
    from moola_core.errors import MoolaError
    from moola_ops.shadow import control as ops

    target = _host(host, inventory)
    if action == "start":
        if not candidate:
            raise MoolaError("shadow start needs --candidate VERSION (a bundle version)")
        from moola_ops import deploy as engine

        opts = engine.Options(plan=bool(plan or c.config.run.dry))
        started = ops.start(
            target,
            candidate,
            fraction=float(sample),
            bundles_dir=bundles_dir,
            device=device,
            opts=opts,
        )
        if opts.plan:
            from moola_ops.cli.deploy import _render

            _render(started, json)
            if not started.ok:
                raise Exit(code=started.exit_code)
        else:
            _show(started, json)
    elif action == "stop":
        if plan or c.config.run.dry:
            _show_stop_plan(ops.stop(target, plan=True), json)
        else:
            _show(ops.stop(target), json)
    elif action == "status":
        now = ops.status(target)
        _show(now, json)
        if now.problem():  # routed, but its process is gone: the summary says what to do
            raise Exit(code=1)
    else:
        raise MoolaError(f"unknown shadow action {action!r}: use start, stop or status")


@task(
    help={
        **_COMMON,
        "candidate": "release to promote (default: the host's shadow)",
        "bundles_dir": "where bundle archives live (default bundles)",
        "plan": "say what the promotion would do (the deploy's plan; nothing changed); "
        "`invoke --dry` does the same",
    },
    dry=PLAN,
)
@user_errors
def promote(c, host, candidate="", bundles_dir="bundles", inventory="", json=False, plan=False):
    """Deploy the shadow's release through the normal zero-downtime path, then stop the shadow."""
    from moola_ops.shadow import control as ops

    target = _host(host, inventory)
    result = ops.promote(target, bundles_dir=bundles_dir, candidate=candidate or None, plan=plan)
    if plan:
        from moola_ops.cli.deploy import _render

        _render(result, json)
        if not json and result.ok:
            print(
                f"then: the proxy moves to a fresh server of {result.bundle} and the shadow is "
                "drained (`invoke promote` without --plan does it)"
            )
        return
    if json:
        print_json(
            {
                "ok": result.ok,
                "deployment": result.deployment,
                "outcomes": [o.__dict__ for o in result.outcomes],
            }
        )
    else:
        for o in result.outcomes:
            print(f"{o.host}: {o.status} {o.message}")
    if not result.ok:
        raise Exit(code=result.exit_code)


EXPORTS = [shadow, promote]
