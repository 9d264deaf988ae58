"""Named hook points (Capistrano's before/after and deploy:failed, Kamal's hooks).

A flow declares points (moola_ops.log.steps.USER_POINTS: before/after upload, check and switch,
and `failed`; the switch stage's inner points `switched`, `switch-checked`, `switched-back`)
and calls `ctx.hooks.run(point, ctx, ...)` there. Two kinds of callers attach to them:
the serving stages (`moola_ops.serving.stages.attach`, called in deploy/flows.py) and the
inventory's `hooks:` (a shell command on the host or here, docs/runbook.md "Hooks"), each run
as the logged step `hook:<point>:<name>`. A hook that fails at a point before the switch fails
the run there, and the guard unwinds what the run did: the host keeps its release.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moola_ops.deploy.commands import hook as hook_cmd
from moola_ops.deploy.results import StepFailed
from moola_ops.hosts.inventory import Hook
from moola_ops.log import steps

POINTS = (*steps.USER_POINTS, *steps.INNER_POINTS)
HOST_SLACK_S = 15  # the connection waits this much past a host hook's own bound


class Hooks:
    """What runs at each named point of one host's flow, in the order attached."""

    def __init__(self) -> None:
        self.attached: dict[str, list[tuple[str, Callable[..., Any]]]] = {p: [] for p in POINTS}

    def add(self, point: str, name: str, fn: Callable[..., Any]) -> None:
        """Attach `fn(ctx, *args)` at `point` (args as the flow passes them there)."""
        if point not in self.attached:
            raise ValueError(f"unknown hook point {point!r}: one of {', '.join(POINTS)}")
        self.attached[point].append((name, fn))

    def run(self, point: str, ctx, *args: Any) -> None:
        for _name, fn in self.attached[point]:
            fn(ctx, *args)


def hook_env(ctx, point: str, failure: str | None = None) -> dict[str, str]:
    """The variables a user hook sees (documented in docs/runbook.md "Hooks")."""
    env = {
        "MOOLA_HOST": ctx.host.name,
        "MOOLA_POINT": point,
        "MOOLA_PHASE": ctx.journal.phase,
        "MOOLA_DEPLOYMENT": ctx.journal.deployment,
        "MOOLA_WORKSPACE": ctx.host.workspace,
        "MOOLA_VERSION": ctx.target or "",
        "MOOLA_PREVIOUS": ctx.previous or "",
    }
    if failure is not None:
        env["MOOLA_FAILURE"] = failure
    return env


def run_user_hook(ctx, hook: Hook, failure: str | None = None) -> None:
    """Run one inventory hook as the step hook:<point>:<name>; StepFailed when it exits non-zero
    or runs past its timeout (the sentence names the hook, its exit and its last words)."""
    env = hook_env(ctx, hook.point, failure)
    step = steps.hook_step(hook.point, hook.name)
    with ctx.step(step, where=hook.where, timeout_s=hook.timeout) as info:
        if hook.where == "local":
            code, said = ctx.run_here(hook.run, env, hook.timeout)
        else:
            out = ctx.run(
                hook_cmd.on_host(ctx.layout, hook.run, hook.timeout, env),
                timeout_s=hook.timeout + HOST_SLACK_S,
            )
            code, said = out.exit_code, (out.stderr.strip() or out.stdout.strip())
        info["exit_code"] = code
        if said:
            info["output"] = said[-400:]
        if code == 0:
            return
        where = ctx.host.name if hook.where == "host" else "this machine"
        why = (
            f"ran past its timeout of {hook.timeout:g}s"
            if code == 124
            else f"exited {code}" + (f": {said[-200:]}" if said else "")
        )
        raise StepFailed(
            f"hook {hook.point}:{hook.name} on {where} {why}{_consequence(ctx, hook.point)}"
        )


def _consequence(ctx, point: str) -> str:
    if point in (steps.POINT_AFTER_SWITCH, steps.POINT_FAILED):
        return ""
    return f"; nothing switched, {ctx.host.name} keeps {ctx.previous or 'no release'}"


def attach_user_hooks(hooks: Hooks, host_hooks: tuple[Hook, ...]) -> None:
    """The inventory's hooks of one host at their points (the `failed` ones too: the guard
    runs them after it has undone what the run did)."""
    for hook in host_hooks:
        hooks.add(hook.point, steps.hook_step(hook.point, hook.name), _user(hook))


def _user(hook: Hook) -> Callable[..., None]:
    def run(ctx, *args: Any) -> None:
        failure = args[0] if hook.point == steps.POINT_FAILED and args else None
        run_user_hook(ctx, hook, failure)

    return run


def point_stage(point: str):
    """A stage that runs what is attached at `point` (a flow lists it where the point is)."""

    def stage(ctx) -> None:
        ctx.hooks.run(point, ctx)

    return (f"{steps.HOOK}:{point}", stage)
