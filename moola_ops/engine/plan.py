"""What a deploy, rollback, prune or restore would do, host by host, changing nothing.

`--plan` (and Invoke's `--dry`) read each host's facts in one read-only round trip (no lock is
taken, nothing is written on the host, no deployment-log line), then say per host: current ->
target, whether an upload is needed and its bytes, what would be snapshotted and pruned, the
lock's state, and the exact commands the real run would send, in order, built by the same
builders (moola_ops.commands) with this plan's deployment id. Ansible's check mode, pyinfra's
dry run and Kamal's printed commands are the models. Run-time values differ in a real run: its
own deployment id, the holder's time and pid, the snapshot's timestamp; a test proves the rest
identical.
"""

from __future__ import annotations

from typing import Any

from moola_ops import steps
from moola_ops.commands import compose, decisions
from moola_ops.commands import facts as facts_cmd
from moola_ops.commands import lock as lock_cmd
from moola_ops.commands import release as release_cmd
from moola_ops.commands.hostfacts import HostFacts
from moola_ops.commands.layout import Layout
from moola_ops.engine.bundle import LocalBundle
from moola_ops.engine.results import FleetResult, HostOutcome, Options
from moola_ops.engine.stages import check_command
from moola_ops.fleet import run_fleet
from moola_ops.inventory import Host
from moola_ops.journal import current_actor, new_deployment_id
from moola_ops.transport import HostSession

UPLOAD = "sftp put {local} -> {host}:{remote}"  # the one step that is not a shell command


class Planner:
    """One host's plan: its facts (read-only) and the commands, in the order a run sends them."""

    def __init__(self, host: Host, opts: Options, deployment: str, what: str):
        self.host = host
        self.opts = opts
        self.deployment = deployment
        self.layout = Layout(host.workspace)
        self.commands: list[dict[str, str]] = []
        self.facts: HostFacts | None = None
        self.what = what

    def add(self, step: str, command: str) -> None:
        self.commands.append({"step": step, "command": command})

    def read(self) -> HostFacts:
        """The deploy facts, read-only (the same fragments the lock step gathers)."""
        gather = facts_cmd.gather(self.layout, self.host.python)
        with HostSession(self.host, accept_new_host_key=False) as ssh:
            out = ssh.run(gather, timeout_s=self.opts.command_timeout_s)
        self.facts = facts_cmd.parse(out.stdout)
        holder = {
            "deployment": self.deployment,
            "actor": current_actor(),
            "what": self.what,
            "since": "<time of the run>",
            "pid": 0,
            "client": "<this machine>",
        }
        self.add(steps.LOCK, compose.combine(lock_cmd.acquire(self.layout, holder), gather))
        return self.facts

    def lock_state(self) -> str:
        lock = self.facts.lock
        if lock is None:
            return "free"
        stale = lock_cmd.stale_reason(lock.holder, lock.age_s, max_age_s=lock_cmd.MAX_AGE_S)
        who = lock_cmd.describe_holder(lock.holder)
        if stale:
            return f"STALE lock of {who} ({stale}): {lock_cmd.break_hint(self.host.name)}"
        return f"held by {who}: the run would be refused"

    def runtime_check(self, version: str, step: str, *, through_current: bool) -> None:
        o = self.opts
        check = check_command(self.layout, self.host, o, version, through_current=through_current)
        self.add(step, release_cmd.bounded(check, self.layout, self.deployment, o.check_timeout_s))

    def serving(self, target: str) -> None:
        """With serving on, the target's server is started, probed and given live traffic with
        the switch; its ports and process ids are chosen on the host at run time, so the plan
        names the step rather than its commands (moola_ops/serving.py builds them)."""
        if self.opts.serve:
            what = "start its server on a free port, probe it, move live traffic with `current`"
            self.add(steps.SERVE_START, f"<serve {target}: {what}; commands chosen at run time>")

    def switch_checked(
        self,
        target: str,
        previous: str | None,
        action: str,
        *,
        snapshot: bool,
        runtime: bool,
        sha256: str | None,
    ) -> str | None:
        snap = None
        if snapshot and previous:
            snap = release_cmd.snapshot_name("TIME", previous)  # the run stamps the UTC time
        revision: dict[str, Any] = {
            "time": "<time of the switch>",
            "action": action,
            "version": target,
            "previous": previous,
            "deployment": self.deployment,
            "actor": current_actor(),
        }
        if sha256:
            revision["sha256"] = sha256
        self.add(
            steps.SWITCH,
            release_cmd.snapshot_and_switch(
                self.layout,
                target,
                self.deployment,
                revision,
                snapshot_of=previous if snap else None,
                snapshot_as=snap,
            ),
        )
        verify = release_cmd.verify(self.layout, self.host.python, target, through_current=True)
        self.add(
            steps.POST_CHECK, release_cmd.checked_with_smoke(verify, self.layout, self.host.smoke)
        )
        if runtime:
            self.runtime_check(target, steps.POST_CHECK_RUNTIME, through_current=True)
        return snap

    def prune(self, after: HostFacts, protect: tuple[str, ...]) -> dict[str, list[str]]:
        releases, backups = decisions.plan_prune(
            after,
            keep_releases=self.opts.keep_releases,
            keep_backups=self.opts.keep_backups,
            protect=protect,
        )
        self.add(steps.PRUNE, facts_cmd.gather(self.layout, self.host.python))
        self.add(steps.PRUNE, release_cmd.prune(self.layout, releases, backups))
        return {"releases": releases, "backups": backups}

    def unlock(self) -> None:
        self.add(steps.UNLOCK, lock_cmd.release(self.layout, self.deployment))

    def outcome(self, current: str | None, target: str | None, summary: str, **plan: Any):
        """A `planned` outcome; `upload`, `snapshot`, `prune` default to none."""
        plan = {"upload": None, "snapshot": None, "prune": None, **plan}
        plan.update(
            current=current,
            target=target,
            lock=self.lock_state(),
            commands=self.commands,
            current_problem=self.facts.current_problem,
            summary=summary,
        )
        return HostOutcome(
            self.host.name, "planned", summary, current=current, previous=current, plan=plan
        )


def _after_switch(facts: HostFacts, target: str, action: str, sha: str | None) -> HostFacts:
    """The facts as they would be after the switch (for the prune decision)."""
    after = HostFacts(**{**facts.__dict__})
    after.releases = {**facts.releases, target: sha or facts.releases.get(target)}
    after.revisions = [*facts.revisions, {"action": action, "version": target}]
    after.current = target
    return after


# --- per flow -----------------------------------------------------------------------------------


def _plan_deploy_one(p: Planner, bundle: LocalBundle) -> HostOutcome:
    facts = p.read()
    previous, version = facts.current, bundle.version
    on_host = facts.releases.get(version) or ("unknown" if version in facts.releases else None)
    if previous == version and on_host == bundle.sha256:
        return p.outcome(previous, version, f"{version} is already current: nothing to do")
    if on_host not in (None, bundle.sha256):
        return p.outcome(
            previous,
            version,
            f"refused: {version} on the host came from other bytes; bump the version",
        )
    upload = None
    if on_host is None:
        remote = release_cmd.staged_archive(p.layout, p.deployment)
        upload = {"bytes": bundle.size, "to": remote}
        p.add(steps.UPLOAD, release_cmd.stage(p.layout, p.deployment))
        p.add(steps.UPLOAD, UPLOAD.format(local=bundle.path, host=p.host.name, remote=remote))
        p.add(
            steps.PROMOTE,
            release_cmd.promote(p.layout, p.host.python, p.deployment, version, bundle.sha256),
        )
    else:
        p.add(steps.VERIFY, release_cmd.verify(p.layout, p.host.python, version))
    p.runtime_check(version, steps.CHECK, through_current=False)
    p.serving(version)
    snap = p.switch_checked(
        version,
        previous,
        steps.ACTION_DEPLOY,
        snapshot=True,
        runtime=p.opts.full_post_check,
        sha256=bundle.sha256,
    )
    after = _after_switch(facts, version, steps.ACTION_DEPLOY, bundle.sha256)
    pruned = p.prune(after, (version,) + ((previous,) if previous else ()))
    p.unlock()
    moving = f"{previous or 'nothing'} -> {version}"
    bytes_note = f", upload {bundle.size} bytes" if upload else ", already on the host"
    return p.outcome(
        previous,
        version,
        f"would deploy {moving}{bytes_note}",
        upload=upload,
        snapshot=snap,
        prune=pruned,
    )


def _plan_rollback_one(p: Planner, to: str | None) -> HostOutcome:
    facts = p.read()
    previous = facts.current
    target = to or decisions.rollback_target(facts)
    if target is None:
        return p.outcome(
            previous, None, "refused: no previous release in revisions.log; pass --to VERSION"
        )
    if target == previous:
        return p.outcome(previous, target, f"{target} is already current: nothing to do")
    restore = None
    if target in facts.releases:
        p.add(steps.VERIFY, release_cmd.verify(p.layout, p.host.python, target))
    else:
        restore = decisions.newest_snapshot(facts, target)
        if restore is None:
            return p.outcome(
                previous, target, f"refused: {target} is not on the host and has no snapshot"
            )
        p.add(
            steps.RESTORE,
            release_cmd.restore(p.layout, p.host.python, p.deployment, restore, target),
        )
    p.serving(target)
    p.switch_checked(
        target,
        previous,
        steps.ACTION_ROLLBACK,
        snapshot=False,
        runtime=True,
        sha256=facts.releases.get(target),
    )
    p.unlock()
    return p.outcome(
        previous,
        target,
        f"would roll back {previous or 'nothing'} -> {target}",
        restore_from=restore,
    )


def _plan_prune_one(p: Planner) -> HostOutcome:
    facts = p.read()
    protect = (facts.current,) if facts.current else ()
    pruned = p.prune(facts, protect)
    p.unlock()
    n = len(pruned["releases"]) + len(pruned["backups"])
    return p.outcome(
        facts.current,
        facts.current,
        f"would remove {n} release(s)/snapshot(s)",
        prune=pruned,
    )


def _plan_restore_one(p: Planner, snapshot: str, version: str) -> HostOutcome:
    facts = p.read()
    if snapshot not in facts.backups:
        return p.outcome(facts.current, version, f"refused: no snapshot {snapshot} on the host")
    p.add(
        steps.RESTORE, release_cmd.restore(p.layout, p.host.python, p.deployment, snapshot, version)
    )
    if facts.current == version:
        verify = release_cmd.verify(p.layout, p.host.python, version, through_current=True)
        p.add(steps.POST_CHECK, release_cmd.checked_with_smoke(verify, p.layout, p.host.smoke))
    p.unlock()
    return p.outcome(facts.current, version, f"would restore {version} from {snapshot}")


def _plan(phase: str, hosts: list[Host], opts: Options, one, *, what: str, bundle: str = ""):
    deployment = new_deployment_id()

    def work(host: Host, cancel, deadline) -> HostOutcome:
        return one(Planner(host, opts, deployment, what))

    def failed(host: Host, exc: BaseException) -> HostOutcome:
        return HostOutcome(host.name, "failed", f"could not read the host's facts: {exc}")

    outcomes = run_fleet(
        hosts,
        work,
        parallel=opts.parallel,
        on_error=failed,
        run_deadline_s=opts.command_timeout_s + 30,
    )
    return FleetResult(deployment, phase, bundle, outcomes)


def plan_deploy(hosts: list[Host], bundle: LocalBundle, opts: Options) -> FleetResult:
    """The plan of `deploy(hosts, bundle, opts)`."""
    return _plan(
        steps.DEPLOY,
        hosts,
        opts,
        lambda p: _plan_deploy_one(p, bundle),
        what=f"deploy {bundle.version}",
        bundle=bundle.version,
    )


def plan_rollback(hosts: list[Host], to: str | None, opts: Options) -> FleetResult:
    """The plan of `rollback(hosts, to, opts)`."""
    return _plan(
        steps.ROLLBACK,
        hosts,
        opts,
        lambda p: _plan_rollback_one(p, to),
        what=f"rollback to {to or 'previous'}",
        bundle=to or "",
    )


def plan_prune_run(hosts: list[Host], opts: Options) -> FleetResult:
    """The plan of `prune(hosts, opts)`."""
    return _plan(steps.PRUNE_PHASE, hosts, opts, _plan_prune_one, what="prune")


def plan_restore(hosts: list[Host], snapshot: str, version: str, opts: Options) -> FleetResult:
    """The plan of `restore(hosts, snapshot, opts)`."""
    return _plan(
        steps.RESTORE_PHASE,
        hosts,
        opts,
        lambda p: _plan_restore_one(p, snapshot, version),
        what=f"restore {snapshot}",
        bundle=version,
    )


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
        if plan.get("snapshot"):
            lines.append(f"  snapshot: {plan.get('current')} -> backups/{plan['snapshot']}")
        if plan.get("prune"):
            pr = plan["prune"]
            lines.append(
                f"  prune: releases {pr['releases'] or 'none'}, snapshots {pr['backups'] or 'none'}"
            )
        for i, c in enumerate(plan.get("commands", []), 1):
            lines.append(f"  {i:>2}. [{c['step']}] {c['command'][:400]}")
    return "\n".join(lines)
