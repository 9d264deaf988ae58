"""Run a flow over a fleet: one deployment id, open/close lines, the guard on every host."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from moola_ops.deploy.context import HostContext, Stage
from moola_ops.deploy.guard import run_guarded
from moola_ops.deploy.results import FleetResult, HostOutcome, Interrupted, Options
from moola_ops.fleet import FleetInterrupted, run_fleet
from moola_ops.hosts.inventory import Host
from moola_ops.log import steps
from moola_ops.log.journal import Journal
from moola_ops.log.logfile import JournalWriteError


def run_phase(
    phase: str,
    hosts: list[Host],
    opts: Options,
    stages_for: Any,
    *,
    bundle: str = "",
    prepare=None,
    **detail: Any,
) -> FleetResult:
    """Run `stages_for()` (a fresh stage list per host) on every host, canary and batches first.

    Raises `Interrupted` (a KeyboardInterrupt) carrying the per-host result after Ctrl-C.
    """
    journal = Journal(phase, bundle=bundle, path=opts.journal_path)
    journal.record("", steps.OPEN, "started", hosts=[h.name for h in hosts], **detail)
    started = time.monotonic()
    contexts: dict[str, HostContext] = {}

    def work(host: Host, cancel, deadline) -> HostOutcome:
        stages: list[Stage] = stages_for()
        return run_guarded(host, journal, opts, cancel, deadline, stages, prepare, contexts)

    def skipped(host: Host, reason: str) -> HostOutcome:
        with contextlib.suppress(Exception):  # a broken log must not stop the rollout's report
            journal.record(host.name, steps.SKIPPED, "skipped", reason=reason.split(" (")[0])
        return HostOutcome(host.name, "skipped", f"not attempted: {reason}")

    def late(host: Host, waited: float) -> HostOutcome:
        with contextlib.suppress(Exception):
            journal.record(host.name, steps.ABORTED, "failed", reason="deadline", waited_s=waited)
        return HostOutcome(
            host.name,
            "failed",
            f"{host.name} did not finish within its deadline ({opts.host_deadline_s:.0f}s): "
            f"it may still hold its lock; see invoke lock --host {host.name}",
        )

    def interrupt() -> None:
        for ctx in list(contexts.values()):
            ctx.interrupt()

    def grace(i: int) -> float:
        """After Ctrl-C: a host inside its switch finishes it (and its check, or switches
        back); any other host gets `abort_grace_s` to clean up, then the run ends naming what
        that host left."""
        ctx = contexts.get(hosts[i].name)
        return (
            opts.cleanup_timeout_s * 6 if ctx is not None and ctx.in_switch else opts.abort_grace_s
        )

    interrupted = False
    try:
        outcomes = run_fleet(
            hosts,
            work,
            parallel=opts.parallel,
            canary=opts.canary,
            batch=opts.batch,
            host_deadline_s=opts.host_deadline_s,
            ok=lambda o: o.ok,
            on_skip=skipped,
            on_late=late,
            on_interrupt=interrupt,
            grace_s=grace,
        )
    except FleetInterrupted as stop:
        interrupted = True
        outcomes = []
        for i, host in enumerate(hosts):
            if i in stop.results:
                outcomes.append(stop.results[i])
            else:
                ctx = contexts.get(host.name)
                left = ctx.left_sentence() if ctx is not None else ""
                outcomes.append(
                    HostOutcome(
                        host.name,
                        "aborted",
                        "still cleaning up when the run was stopped"
                        + (f"; {left}" if left else "")
                        + f": check it with invoke lock --host {host.name} and invoke log "
                        f"--host {host.name}",
                        current=ctx.previous if ctx else None,
                    )
                )
    result = FleetResult(journal.deployment, phase, bundle, outcomes, interrupted=interrupted)
    status = "aborted" if interrupted else ("ok" if result.ok else "failed")
    # each host's outcome already names a log failure (JournalWriteError: harden's journal)
    with contextlib.suppress(OSError, JournalWriteError):
        journal.record(
            "",
            steps.CLOSE,
            status,
            duration_s=time.monotonic() - started,
            hosts={o.host: o.status for o in outcomes},
        )
    if interrupted:
        raise Interrupted(result)
    return result
