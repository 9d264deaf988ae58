"""What a deploy, rollback, prune or restore would do, host by host, changing nothing.

`--plan` (and Invoke's `--dry`) read each host's facts in one read-only round trip (no lock is
taken, nothing is written on the host, no deployment-log line), then say per host: current ->
target, whether an upload is needed and its bytes, what would be snapshotted and pruned, the
lock's state, and the exact commands the real run would send, in order, built by the same
builders (moola_ops.deploy.commands) with this plan's deployment id. Ansible's check mode, pyinfra's
dry run and Kamal's printed commands are the models. Run-time values differ in a real run: its
own deployment id, the holder's time and pid, the snapshot's timestamp; a test proves the rest
identical.
"""

from __future__ import annotations

from moola_ops.deploy.bundle import LocalBundle
from moola_ops.deploy.commands import decisions
from moola_ops.deploy.commands import release as release_cmd
from moola_ops.deploy.planner import RUN_TIME_PORT, UPLOAD, Planner, after_switch  # noqa: F401
from moola_ops.deploy.results import FleetResult, HostOutcome, Options
from moola_ops.deploy.stages import prune_note
from moola_ops.fleet import run_fleet
from moola_ops.hosts.inventory import Host
from moola_ops.log import steps
from moola_ops.log.journal import new_deployment_id

# --- per flow (UPLOAD and RUN_TIME_PORT are importable from here) ---------------------------


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
    after = after_switch(facts, version, steps.ACTION_DEPLOY, bundle.sha256)
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
            lines.append(f"  {i:>2}. [{c['step']}] {_readable(c['command'])[:400]}")
    return "\n".join(lines)


def _readable(command: str) -> str:
    """A command as a person reads it: the host-side programs that travel inline (`python3 -c
    PROGRAM`) named instead of spelled out (`--json` shows every byte)."""
    import shlex

    from moola_ops.serving import commands as serve_cmd

    for source, name in (
        (release_cmd.HOSTSIDE_SOURCE, "<hostside.py>"),
        (serve_cmd.CTL_SOURCE, "<serve_ctl.py>"),
    ):
        command = command.replace(shlex.quote(source), name)
    return command
