"""The plan: a flow's own stages run against a PlanContext, changing nothing (pyinfra's model).

`--plan` (and Invoke's `--dry`) on deploy, deploy --repair, rollback, drill, restore, prune and
the shadow's start/stop/promote run the very stage code of the real run (moola_ops/deploy/
flows.py), hooks included, with a context that records every command instead of sending it and
answers it as success: each builder says what its success prints (`planned=` at the call,
`serving.commands.planned` for the server's control). The host's facts are read for real in
one read-only round trip (no lock is taken, nothing is written there, no deployment-log line);
a repair's verify also runs for real (it is read-only), so its plan knows the damage.

The commands are built by the same builders with this plan's deployment id. What only the run
knows is shown as a placeholder: the lock holder's time, pid and machine, the snapshot's time
stamp (TIME), the port a new server gets (RUN_TIME_PORT). tests/integration/test_deploy_plan.py
runs a flow with --plan and then for real and asserts the two command lists are equal once the
deployment id, holder, revision line, snapshot stamp and server port are normalised.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from moola_core.errors import MoolaError
from moola_ops.deploy.commands import compose
from moola_ops.deploy.commands import facts as facts_cmd
from moola_ops.deploy.commands import lock as lock_cmd
from moola_ops.deploy.commands.hostfacts import HostFacts
from moola_ops.deploy.context import HostContext, Stage
from moola_ops.deploy.guard import run_stages
from moola_ops.deploy.results import FleetResult, HostOutcome, Options
from moola_ops.deploy.stages import prune_note
from moola_ops.fleet import run_fleet
from moola_ops.hosts.inventory import Host
from moola_ops.log import steps
from moola_ops.log.journal import Journal
from moola_ops.serving import commands as serve_cmd
from moola_ops.transport import HostSession, Result

UPLOAD = "sftp put {local} -> {host}:{remote}"  # the one step that is not a shell command
RUN_TIME_PORT = "<port>"  # a server's private port: the host picks a free one at run time
RUN_TIME_PID = "<pid>"  # a started server's process id
LOCAL = "local: {command}"  # a hook that runs on this machine


def _at_run_time(command: str) -> str:
    """`command` with the planned server's port and pid shown as RUN_TIME_PORT / RUN_TIME_PID."""
    command = command.replace(f"--pid {serve_cmd.PLANNED_PID}", f"--pid {RUN_TIME_PID}")
    head, sep, tail = command.rpartition(f"--port {serve_cmd.PLANNED_PORT}")
    return f"{head}--port {RUN_TIME_PORT}{tail}" if sep else command


class Recorder:
    """The session of a plan for a flow that is one step rather than stages (`shadow stop`):
    the flow reads through the real session first, then sends its changes here, where each is
    recorded under `step` and answered as success, as PlanContext answers them."""

    def __init__(self, step: str):
        self.step = step
        self.commands: list[dict[str, str]] = []

    def run(self, command: str, **_: Any) -> Result:
        self.commands.append({"step": self.step, "command": _at_run_time(command)})
        action = getattr(command, "action", "")
        answer = json.dumps(serve_cmd.planned(action, None, None)) if action else ""
        return Result(0, answer, "", 0.0)


class PlanSession:
    """Stands in for the host's HostSession inside a plan: records, answers success."""

    accepted_key = None
    dead = None

    def __init__(self, ctx: PlanContext):
        self.ctx = ctx

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def resume(self) -> bool:
        return True

    def run(self, command: str, *, timeout_s: float | None = None, **_: Any) -> Result:
        return self.ctx.answer(command, "", read_only=False)

    def upload(self, local, remote: str, progress=None) -> None:
        bundle = self.ctx.bundle
        self.ctx.uploaded = {"bytes": bundle.size if bundle else None, "to": remote}
        self.ctx.add(UPLOAD.format(local=local, host=self.ctx.host.name, remote=remote))


class PlanContext(HostContext):
    """A HostContext whose commands are recorded and answered as success (see the module)."""

    def __init__(self, host: Host, journal: Journal, opts: Options, cancel: threading.Event):
        # no upload progress bar: nothing is sent
        super().__init__(host, journal, replace(opts, progress=None), cancel)
        self.ssh = PlanSession(self)
        self.reader: HostSession | None = None  # the one real, read-only connection
        self.gathered: HostFacts | None = None
        self.commands: list[dict[str, str]] = []
        self.details: dict[str, dict[str, Any]] = {}  # each step's first detail
        self.detail: dict[str, Any] = {}  # the step now running
        self.step_name = ""
        self.uploaded: dict[str, Any] | None = None
        self.lock_state = "not taken"

    # -- recording ---------------------------------------------------------------------------

    def add(self, command: str) -> None:
        self.commands.append({"step": self.step_name or "-", "command": _at_run_time(command)})

    def answer(self, command: str, planned: str, *, read_only: bool) -> Result:
        self.add(command)
        if read_only and self.reader is not None:
            return self.reader.run(command, timeout_s=self.opts.command_timeout_s)
        action = getattr(command, "action", "")
        if action:
            server = self.gathered.server if self.gathered is not None else None
            planned = json.dumps(serve_cmd.planned(action, self.detail.get("version"), server))
        return Result(0, planned, "", 0.0)

    @contextlib.contextmanager
    def step(self, name: str, **detail: Any) -> Iterator[dict[str, Any]]:
        saved = (self.step_name, self.detail)
        self.step_name, self.detail = name, dict(detail)
        self.details.setdefault(name, self.detail)
        try:
            yield self.detail
        finally:
            self.step_name, self.detail = saved

    def record(self, name: str, status: str, **detail: Any) -> None:
        pass

    def run(self, command: str, *, timeout_s=None, planned: str = "", **plan: Any) -> Result:
        return self.answer(command, planned, read_only=bool(plan.get("read_only")))

    def run_reconnecting(self, command: str, info=None, **plan: Any) -> Result:
        return self.answer(command, plan.get("planned", ""), read_only=False)

    def run_here(self, command: str, env: dict[str, str], timeout_s: float) -> tuple[int, str]:
        self.add(LOCAL.format(command=command))
        return 0, ""

    def stamp(self) -> str:
        return "TIME"

    def holder(self, what: str) -> dict[str, Any]:
        return {
            **super().holder(what),
            "since": "<time of the run>",
            "pid": 0,
            "client": "<this machine>",
        }

    # -- facts: read for real, once ------------------------------------------------------------

    def connect(self) -> None:
        pass

    def lock_and_facts(self, what: str) -> HostFacts:
        """The lock command the run sends, recorded; the facts it reads, read for real (no
        lock taken). A lock held by another run is said in the plan (the run would stop)."""
        with self.step(steps.LOCK, what=what):
            gather = facts_cmd.gather(self.layout, self.host.python)
            self.add(compose.combine(lock_cmd.acquire(self.layout, self.holder(what)), gather))
            self.reader = HostSession(self.host, accept_new_host_key=False)
            self.reader.open()
            out = self.reader.run(gather, timeout_s=self.opts.command_timeout_s)
            facts = facts_cmd.parse(out.stdout)
        self.gathered = self.facts = facts
        self.previous = facts.current
        self.locked = True
        self.lock_state = lock_state(self.host, facts)
        return facts

    def read_facts(self, names=facts_cmd.DEPLOY_FACTS) -> HostFacts:
        """The gather the run sends again (after a switch): recorded, answered with the facts
        read at the lock as the switch would leave them."""
        self.add(facts_cmd.gather(self.layout, self.host.python, names))
        facts = self.gathered
        if not self.switched or facts is None or self.target is None:
            return facts
        sha = self.bundle.sha256 if self.bundle is not None else None
        after = HostFacts(**{**facts.__dict__})
        after.releases = {**facts.releases, self.target: sha or facts.releases.get(self.target)}
        after.revisions = [*facts.revisions, {"action": "switch", "version": self.target}]
        after.unchecked = [v for v in facts.unchecked if v != self.target]
        after.current = self.target
        return after

    def close(self) -> None:
        if self.reader is not None:
            with contextlib.suppress(Exception):
                self.reader.close()

    # -- the host's plan -----------------------------------------------------------------------

    def planned(self, outcome: HostOutcome) -> HostOutcome:
        facts = self.gathered
        if outcome.status == "ok":
            summary = f"would end: {outcome.message}"
        elif outcome.status == "noop":
            summary = outcome.message
        else:
            summary = f"would stop: {outcome.message}"
        pruned = self.details.get(steps.PRUNE)
        plan = {
            "current": facts.current if facts else None,
            "target": self.target or outcome.current,
            "lock": self.lock_state,
            "upload": self.uploaded,
            "snapshot": (self.details.get(steps.SWITCH) or {}).get("snapshot"),
            "prune": None
            if pruned is None
            else {
                k: pruned.get(k) or [] for k in ("releases", "backups", "left_alone", "unchecked")
            },
            "serving": serving_note(self),
            "commands": self.commands,
            "current_problem": facts.current_problem if facts else None,
            "summary": summary,
        }
        current = facts.current if facts else None
        return HostOutcome(
            self.host.name, "planned", summary, current=current, previous=current, plan=plan
        )


def lock_state(host: Host, facts: HostFacts) -> str:
    lock = facts.lock
    if lock is None:
        return "free"
    stale = lock_cmd.stale_reason(lock.holder, lock.age_s, max_age_s=lock_cmd.MAX_AGE_S)
    who = lock_cmd.describe_holder(lock.holder)
    if stale:
        return f"STALE lock of {who} ({stale}): {lock_cmd.break_hint(host.name)}"
    return f"held by {who}: the run would be refused"


def serving_note(ctx: PlanContext) -> str | None:
    """Which server would take the traffic, from the serving steps the plan went through."""
    d = ctx.details
    if steps.SERVE_START in d:
        return f"a new server for {d[steps.SERVE_START].get('version')} starts on a private port"
    standby = d.get(steps.SERVE_STANDBY)
    if standby and standby.get("moves_traffic"):
        version = standby.get("version")
        server = ctx.gathered.server if ctx.gathered else None
        port = (serve_cmd.standby_of(server, version) or {}).get("port")
        return (
            f"the warm standby of {version} (port {port}) is probed and given traffic in one "
            "command after the switch (a new server starts if it fails)"
        )
    switch = d.get(steps.SERVE_SWITCH)
    if switch and switch.get("moved") is False:
        return (
            f"the live server already serves {switch.get('version')}: it keeps the traffic "
            "(checked after the switch; a new server starts only if it is not ready)"
        )
    return None


def run_plan(
    phase: str,
    hosts: list[Host],
    opts: Options,
    stages_for,
    *,
    bundle: str = "",
    prepare=None,
) -> FleetResult:
    """The plan of `runner.run_phase(phase, hosts, opts, stages_for, ...)`: the same stages,
    each host in a PlanContext; nothing is locked, changed or logged."""
    journal = Journal(phase, bundle=bundle, path=opts.journal_path)  # for its ids: never written

    def work(host: Host, cancel, deadline) -> HostOutcome:
        ctx = PlanContext(host, journal, opts, cancel)
        if prepare is not None:
            prepare(ctx)
        try:
            stages: list[Stage] = stages_for()
            outcome = run_stages(ctx, stages)
            ctx.unlock()
        except MoolaError as exc:
            if ctx.gathered is None:
                return HostOutcome(host.name, "failed", f"could not read the host's facts: {exc}")
            outcome = HostOutcome(host.name, "failed", str(exc))
        finally:
            ctx.close()
        return ctx.planned(outcome)

    def failed(host: Host, exc: BaseException) -> HostOutcome:
        return HostOutcome(host.name, "failed", f"could not plan {host.name}: {exc}")

    outcomes = run_fleet(
        hosts,
        work,
        parallel=opts.parallel,
        on_error=failed,
        run_deadline_s=opts.command_timeout_s + 30,
    )
    return FleetResult(journal.deployment, phase, bundle, outcomes)


def render_plan(result: FleetResult) -> str:
    """The plan as text: per host, what would change, then the commands in order."""
    lines = [f"PLAN {result.phase} {result.bundle} (nothing was changed, locked or logged)"]
    for o in result.outcomes:
        plan = o.plan or {}
        lines.append(f"\n{o.host}: {o.message}")
        if plan.get("current_problem"):
            lines.append(f"  note: {plan['current_problem']} (treated as no current release)")
        lines.append(f"  current: {plan.get('current') or 'none'} -> {plan.get('target') or '-'}")
        lines.append(f"  lock: {plan.get('lock', '?')}")
        if plan.get("upload"):
            lines.append(f"  upload: {plan['upload']['bytes']} bytes to {plan['upload']['to']}")
        if plan.get("serving"):
            lines.append(f"  serving: {plan['serving']}")
        if plan.get("snapshot"):
            lines.append(f"  snapshot: {plan.get('current')} -> backups/{plan['snapshot']}")
        if plan.get("prune"):
            pr = plan["prune"]
            lines.append(
                f"  prune: releases {pr['releases'] or 'none'}, snapshots {pr['backups'] or 'none'}"
            )
            if pr.get("left_alone") or pr.get("unchecked"):
                note = prune_note(pr.get("left_alone") or [], pr.get("unchecked") or [])
                lines.append(f"  {note.replace('removed', 'would remove', 1)}")
        for i, c in enumerate(plan.get("commands", []), 1):
            lines.append(f"  {i:>2}. [{c['step']}] {c['command'][:400]}")
    return "\n".join(lines)
