"""The guard: the safety net every flow runs inside.

`run_guarded` connects, runs a flow's stages and, whatever the local side does (a step fails,
the deployment log cannot be written, Ctrl-C, SIGTERM, a bug), before the host is left it
unwinds the undo stack the stages pushed (moola_ops/deploy/undo.py), newest first: it stops a
runtime check still running there, switches `current` back if it moved to a release whose
check had not passed, stops a server started for a release that never got traffic, removes a
release that failed or never finished its check and a partial upload; then it runs the
inventory's `failed` hooks (after a failure, not after Ctrl-C or a refusal) and releases the
lock, each over a fresh connection if the old one broke, each within
`Options.cleanup_timeout_s`. What the local log could not record is still in the host's
revisions.log (the switch writes it there).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from moola_core.errors import MoolaError
from moola_ops.deploy.commands import lock as lock_cmd
from moola_ops.deploy.context import HostContext, HostGone, Stage
from moola_ops.deploy.results import HostOutcome, Options, Refused, StepFailed
from moola_ops.deploy.stages import SWITCH_BACK
from moola_ops.hosts.inventory import Host
from moola_ops.log import steps
from moola_ops.log.journal import Journal
from moola_ops.transport import Aborted, TransportError

# --- the guard ----------------------------------------------------------------------------------


def run_stages(ctx: HostContext, stages: list[Stage]) -> HostOutcome:
    """Run named stages in order; a stage may end the flow early by returning an outcome."""
    for _name, stage in stages:
        if not ctx.switched:
            ctx.checkpoint()
        elif ctx.cancel.is_set():
            return after_switch_interrupted(ctx)
        outcome = stage(ctx)
        if outcome is not None:
            return outcome
    raise StepFailed(f"the flow on {ctx.host.name} ended without an outcome")  # a bug


def after_switch_interrupted(ctx: HostContext) -> HostOutcome:
    """Ctrl-C after a checked switch: the new release stays live; later stages are skipped."""
    ctx.record(steps.ABORTED, "aborted", reason="Ctrl-C after the switch", current=ctx.target)
    return HostOutcome(
        ctx.host.name,
        "aborted",
        f"Ctrl-C after the switch: {ctx.target} is live and checked on {ctx.host.name} "
        "(later stages such as prune skipped)",
        current=ctx.target,
        previous=ctx.previous,
    )


def run_guarded(
    host: Host,
    journal: Journal,
    opts: Options,
    cancel: threading.Event,
    deadline: float | None,
    stages: list[Stage],
    prepare: Callable[[HostContext], None] | None = None,
    contexts: dict[str, HostContext] | None = None,
) -> HostOutcome:
    """Connect, run the stages, and whatever happens settle the host (see module docstring)."""
    started = time.monotonic()
    ctx = HostContext(host, journal, opts, cancel)
    ctx.deadline = deadline
    if contexts is not None:
        contexts[host.name] = ctx
    if prepare is not None:
        prepare(ctx)
    try:
        ctx.connect()
        outcome = run_stages(ctx, stages)
        ctx.cleaning = True
        ctx.unlock()
    except BaseException as exc:  # every way out passes through settle()
        outcome = settle(ctx, exc)
    finally:
        ctx.close()
    if ctx.log_problem and ctx.log_problem not in outcome.message:
        outcome.message = f"{outcome.message}; {ctx.log_problem}"
        if outcome.status in ("ok", "noop"):
            outcome.status = "failed"
    outcome.steps = ctx.steps
    outcome.duration_s = round(time.monotonic() - started, 3)
    return outcome


def settle(ctx: HostContext, exc: BaseException) -> HostOutcome:
    """After a failure: unwind the undo stack (stop the check, switch back, stop a candidate
    server, remove the unchecked release and a partial upload), run the `failed` hooks after a
    failure, unlock."""
    ctx.cleaning = True
    name = ctx.host.name
    notes: list[str] = []
    current = ctx.previous
    cut = ctx.cancel.is_set() and isinstance(exc, TransportError)  # our Ctrl-C cut the line
    if isinstance(exc, Aborted | KeyboardInterrupt) or cut:
        status, first = "aborted", "stopped by Ctrl-C"
        ctx.record(steps.ABORTED, "aborted", reason="Ctrl-C")
    elif isinstance(exc, Refused):
        status, first = "refused", str(exc)
    elif isinstance(exc, MoolaError):
        status, first = "failed", str(exc)
    else:
        status, first = "failed", f"internal error: {type(exc).__name__}: {exc}"
        ctx.record(steps.INTERNAL_ERROR, "failed", error=repr(exc))
    if ctx.locked:
        with contextlib.suppress(Exception):
            notes += cleanup_host(ctx)
        if not ctx.undo.has(SWITCH_BACK) and ctx.switched:
            current = ctx.target
    if status == "failed" and not ctx.gone:
        notes += failed_hooks(ctx, first)
    if ctx.locked:
        try:
            if not ctx.gone:
                ctx.unlock()
                if status == "aborted":
                    notes.append("lock released")
        except HostGone:
            pass
        except Exception as unlock_error:
            notes.append(
                f"the lock could not be released ({unlock_error}): check the host, then "
                f"{lock_cmd.break_hint(name)}"
            )
        if ctx.gone:  # nothing more is tried on it: say what is left and how to clear it
            reason = ctx.gone if name in ctx.gone else f"{name}: {ctx.gone}"
            notes.append(f"{reason}; {ctx.left_sentence()}".rstrip("; "))
    message = "; ".join([first, *notes])
    return HostOutcome(name, status, message, current=current, previous=ctx.previous)


def cleanup_host(ctx: HostContext) -> list[str]:
    """The undo part of settle(); each action logged under step `cleanup`, notes returned.
    A host that stops answering ends the cleanup there: the step is logged failed with what
    is left (`left`), and settle() names it."""
    notes: list[str] = []
    with ctx.step(steps.CLEANUP) as info:
        try:
            notes += ctx.undo.unwind(info)
        except HostGone:
            info.update(status="failed", gone=ctx.gone, left=ctx.left_behind())
    return [n for n in notes if n]


def failed_hooks(ctx: HostContext, failure: str) -> list[str]:
    """The inventory's `failed` hooks, after the undo (each its own step); a hook that fails
    here is a note, never a change of the outcome."""
    notes = []
    for name, hook in ctx.hooks.attached[steps.POINT_FAILED]:
        try:
            hook(ctx, failure)
        except Exception as exc:
            notes.append(f"the failed hook {name} failed too: {exc}")
    return notes
