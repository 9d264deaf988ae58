"""The named stages deploy, rollback, drill, restore and repair are made of (Capistrano's).

Each stage takes the host's context, runs its commands (built in `moola_ops.deploy.commands`) inside
one logged step, and either returns None (go on) or an outcome (the flow ends there). The one
stage that moves `current`, `switch_checked`, is shared by every flow: switch, check, and on a
failed check switch straight back and re-check the release it returned to.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from moola_core.errors import MoolaError
from moola_ops.deploy.commands import decisions
from moola_ops.deploy.commands import release as release_cmd
from moola_ops.deploy.context import HostContext, HostGone
from moola_ops.deploy.results import StepFailed
from moola_ops.log import steps
from moola_ops.transport import Aborted, TransportError

# the undo entries the stages push (moola_ops/deploy/undo.py), unwound by the guard
REMOVE_STAGING = "remove-staging"  # a partial upload in incoming/<deployment>/
REMOVE_RELEASE = "remove-release"  # a release this run put in releases/, not yet checked
STOP_CHECK = "stop-check"  # a runtime check running on the host
SWITCH_BACK = "switch-back"  # `current` moved to a release whose check had not passed


def prune_hint(name: str) -> str:
    return f"invoke prune --host {name}"


def push_remove_release(ctx: HostContext, version: str) -> None:
    """Until its check passes, a failure removes releases/<version> (never the one that was
    current when the run came)."""
    if version == ctx.previous or ctx.undo.has(REMOVE_RELEASE):
        return

    def undo(info: dict) -> None:
        out = ctx.run_reconnecting(release_cmd.remove_release(ctx.layout, version), info)
        info["removed_release"] = version if "KEPT" not in out.stdout else None

    ctx.undo.push(
        REMOVE_RELEASE,
        undo,
        left=f"releases/{version} (it never passed its runtime check)",
        fix=prune_hint(ctx.host.name),
        key=version,
    )


def preflight(ctx: HostContext, need_bytes: int) -> None:
    """Python + torch present, enough free disk, the inventory's GPU visible."""
    facts = ctx.facts
    with ctx.step(steps.PREFLIGHT) as info:
        info.update(
            python=facts.python, torch=facts.torch, free=facts.disk_free_bytes, gpus=facts.gpus
        )
        name = ctx.host.name
        if facts.python is None:
            raise StepFailed(
                f"{ctx.host.python} not found on {name}: install Python 3 there or set "
                f"`python:` for {name} in the inventory"
            )
        if facts.torch is None:
            raise StepFailed(
                f"torch is not installed for {ctx.host.python} on {name}: install it there or "
                f"point `python:` at an interpreter that has it"
            )
        if facts.disk_free_bytes is not None and facts.disk_free_bytes < need_bytes:
            raise StepFailed(
                f"{name} has {facts.disk_free_bytes / 1e6:.1f} MB free in {ctx.host.workspace}, "
                f"needs {need_bytes / 1e6:.1f} MB (the archive, the release it unpacks to and a "
                "snapshot): free space "
                "or lower keep_releases / keep_backups"
            )
        if ctx.host.gpu:
            names = [g["name"] for g in facts.gpus]
            if not any(ctx.host.gpu.lower() in n.lower() for n in names):
                raise StepFailed(
                    f"{name} should have a {ctx.host.gpu} GPU but nvidia-smi shows "
                    f"{', '.join(names) or 'none'}: check the pod, or fix `gpu:` in the inventory"
                )


def upload(ctx: HostContext) -> None:
    """SFTP the private copy of the bundle into incoming/<deployment>/ (Ctrl-C stops it)."""
    bundle, name = ctx.bundle, ctx.host.name
    remote = release_cmd.staged_archive(ctx.layout, ctx.journal.deployment)
    with ctx.step(steps.UPLOAD, bytes=bundle.size) as info:
        deployment = ctx.journal.deployment

        def remove_staging(info: dict) -> None:
            ctx.run_reconnecting(release_cmd.remove_staging(ctx.layout, deployment), info)

        ctx.undo.push(
            REMOVE_STAGING,
            remove_staging,
            left=f"incoming/{deployment}/ (a partial upload)",
            fix=prune_hint(name),
        )
        ctx.run(release_cmd.stage(ctx.layout, ctx.journal.deployment))
        callback = ctx.opts.progress(name, bundle.size) if ctx.opts.progress else None

        def progress(sent: int, total: int) -> None:
            if ctx.cancel.is_set():
                raise Aborted()
            if ctx.deadline is not None and time.monotonic() > ctx.deadline:
                raise TransportError(f"the upload to {name} passed its deadline")
            if callback:
                callback(sent, total)

        sent_at = time.monotonic()
        ctx.ssh.upload(bundle.path, remote, progress=progress)
        info["mb_per_s"] = round(bundle.size / 1e6 / max(time.monotonic() - sent_at, 1e-6), 1)


def promote(ctx: HostContext, step: str = steps.PROMOTE) -> None:
    """On the host: sha256 of the upload = ours, safe extract, verify, rename into releases/."""
    bundle, version = ctx.bundle, ctx.bundle.version
    with ctx.step(step, sha256=bundle.sha256) as info:
        if ctx.on_host == "absent":
            push_remove_release(ctx, version)
        command = release_cmd.promote(
            ctx.layout, ctx.host.python, ctx.journal.deployment, version, bundle.sha256
        )
        out = ctx.run(command, planned=release_cmd.PLANNED_OK)
        report = release_cmd.parse_report(out.stdout)
        info["report"] = report
        if not out.ok or not report.get("ok"):
            raise StepFailed(
                f"bundle {version} failed verification on {ctx.host.name}, nothing switched: "
                f"{'; '.join(report.get('problems', [])[:3]) or out.tail(200)}"
            )
        ctx.undo.drop(REMOVE_STAGING)


def verify_release(
    ctx: HostContext, version: str, *, step: str, read_only: bool = False
) -> list[str]:
    """Problems of releases/<version> on the host ([] when every checksum matches);
    `read_only`: a plan runs it for real (repair's plan must know the damage)."""
    with ctx.step(step, version=version) as info:
        out = ctx.run(
            release_cmd.verify(ctx.layout, ctx.host.python, version),
            planned=release_cmd.PLANNED_OK,
            read_only=read_only,
        )
        report = release_cmd.parse_report(out.stdout)
        problems = list(report.get("problems") or ([] if out.ok else [out.tail(200)]))
        info["problems"] = problems[:5]
        if problems:
            info["status"] = "failed"
        return problems


def check_command(layout, host, opts, version: str, *, through_current: bool) -> str:
    """The runtime-check command for `version` with the run's options: one builder for the
    run and its plan, so the plan lists what the run sends."""
    return release_cmd.runtime_check(
        layout,
        host.python,
        version,
        through_current=through_current,
        runs=opts.check_runs,
        warmup=opts.check_warmup,
        backend=opts.check_backend,
        sla_p99_ms=host.latency_sla_ms,
    )


def bounded_check(
    layout, host, opts, version: str, deployment: str, limit: float, *, through_current: bool
) -> str:
    """The runtime check as it is sent: under the host's own bound, and, for releases/<v>
    itself, followed by its `.checked` marker when it passed. One builder for the run and its
    plan."""
    check = check_command(layout, host, opts, version, through_current=through_current)
    command = release_cmd.bounded(check, layout, deployment, limit)
    if through_current:
        return command
    return release_cmd.checked(command, layout, version, deployment)


def runtime_check(ctx: HostContext, version: str, *, step: str, through_current=False) -> None:
    """The bundle's runtime check (model, golden outputs, latency) under the host's own
    deadline; its report's `summary` is the sentence shown. StepFailed on failure."""
    from moola_core.runtime.report import parse_report

    o = ctx.opts
    with ctx.step(step, version=version, through_current=through_current) as info:
        limit = ctx.timeout(o.check_timeout_s)
        command = bounded_check(
            ctx.layout,
            ctx.host,
            o,
            version,
            ctx.journal.deployment,
            limit,
            through_current=through_current,
        )
        deployment = ctx.journal.deployment

        def stop_check(info: dict) -> None:
            ctx.run_reconnecting(release_cmd.kill_bounded(ctx.layout, deployment), info)
            info["killed_check"] = True

        ctx.undo.push(
            STOP_CHECK,
            stop_check,
            left=f"a runtime check that its host-side bound stops within {o.check_timeout_s:.0f}s",
        )
        # the host's own bound ends it first
        out = ctx.run(command, timeout_s=limit + 15, planned=release_cmd.planned_report(version))
        ctx.undo.drop(STOP_CHECK)
        info["exit_code"] = out.exit_code
        try:
            report = parse_report(out.stdout)
        except ValueError as exc:
            report = None
            info["report_error"] = str(exc)
        if report is not None:
            info["report"] = {
                "status": report.status,
                "summary": report.summary,
                "latency": report.latency and report.latency.__dict__,
            }
        if out.exit_code == 124 or (out.exit_code in (137, 143) and report is None):
            raise StepFailed(
                f"runtime check of {version} on {ctx.host.name} did not finish within "
                f"{limit:.0f}s (stopped on the host): raise --check-timeout or check the host"
            )
        if not out.ok or report is None or not report.ok:
            reason = report.summary if report is not None else out.tail(300)
            raise StepFailed(
                f"runtime check of {version} on {ctx.host.name} failed: "
                f"{reason or f'exit code {out.exit_code}'}"
            )


def light_check(ctx: HostContext, version: str, *, step: str) -> None:
    """Through `current`: it resolves to releases/<version>, every checksum matches, and the
    inventory's `smoke:` command passes."""
    with ctx.step(step, version=version) as info:
        verify = release_cmd.verify(ctx.layout, ctx.host.python, version, through_current=True)
        out = ctx.run(
            release_cmd.checked_with_smoke(verify, ctx.layout, ctx.host.smoke),
            planned=release_cmd.planned_resolved(ctx.layout, version),
        )
        report = release_cmd.parse_report(out.stdout)
        info["resolved"] = report.get("resolved")
        problems = list(report.get("problems") or [])
        if report.get("resolved") and not str(report["resolved"]).endswith(f"/releases/{version}"):
            problems.append(f"current resolves to {report['resolved']}, not releases/{version}")
        if report.get("ok") and not out.ok:
            said = out.stderr.strip()[-200:] or "no output on stderr"
            problems.append(f"smoke command failed (exit {out.exit_code}): {said}")
        if problems or not out.ok:
            info["problems"] = problems
            raise StepFailed(
                f"check through current of {version} on {ctx.host.name} failed: "
                f"{'; '.join(problems[:3]) or out.tail(200)}"
            )


def switch(
    ctx: HostContext, version: str, previous: str | None, action: str, *, snapshot: bool
) -> None:
    """Snapshot the release being left (when asked), switch `current` while we still hold the
    lock, and record the revision (with the release's sha256) in the host's revisions.log."""
    stamp = ctx.stamp()
    snap = release_cmd.snapshot_name(stamp, previous) if (snapshot and previous) else None
    sha = (ctx.facts.releases.get(version) if ctx.facts else None) or (
        ctx.bundle.sha256 if ctx.bundle is not None and ctx.bundle.version == version else None
    )
    revision: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "action": action,
        "version": version,
        "previous": previous,
        "deployment": ctx.journal.deployment,
        "actor": ctx.journal.actor,
    }
    if sha:
        revision["sha256"] = sha
    with ctx.step(
        steps.SWITCH, version=version, previous=previous, snapshot=snap, action=action
    ) as info:
        command = release_cmd.snapshot_and_switch(
            ctx.layout,
            version,
            ctx.journal.deployment,
            revision,
            snapshot_of=previous if snap else None,
            snapshot_as=snap,
        )
        moved = f"releases/{version}\n"
        if ctx.cleaning:
            out = ctx.run_reconnecting(command, info, planned=moved)
        else:
            out = ctx.run(command, planned=moved)
        lines = out.stdout.strip().splitlines()
        if not out.ok and release_cmd.LOCK_NOT_OURS not in lines and not lines:
            lines = ctx.run_reconnecting(release_cmd.current_target(ctx.layout)).stdout.split()
        info["current"] = lines[-1] if lines else None
        if out.stderr.strip():
            info["stderr"] = out.stderr.strip()[-200:]
        moved = release_cmd.LOCK_NOT_OURS not in lines and info["current"] == f"releases/{version}"
        if not moved:
            ctx.undo.drop(SWITCH_BACK, key=version)  # `current` did not move: nothing to undo
        if release_cmd.LOCK_NOT_OURS in lines:
            info["status"] = "refused"
            raise StepFailed(
                f"{ctx.host.name}: the deploy lock is no longer ours (broken by someone), so "
                f"`current` was not switched to {version}: see invoke lock --host {ctx.host.name}"
            )
        if info["current"] != f"releases/{version}":
            raise StepFailed(
                f"switch to {version} on {ctx.host.name} failed and `current` still points to "
                f"{info['current'] or 'nothing'}: {out.tail(200)}"
            )


def push_switch_back(ctx: HostContext, target: str, previous: str | None) -> None:
    """From here until its checks pass, a failure switches `current` back to `previous`."""

    def undo(_info: dict) -> str:
        return switch_back(ctx, previous, target)

    ctx.undo.push(
        SWITCH_BACK,
        undo,
        left=f"`current` may point at {target}, whose check had not passed",
        fix=f"invoke rollback --host {ctx.host.name} --to {previous or 'VERSION'}",
        key=target,
    )


def switch_checked(
    ctx: HostContext,
    target: str,
    previous: str | None,
    *,
    action: str,
    snapshot: bool,
    runtime: bool,
    prefix: str = "",
) -> None:
    """THE switch stage: switch, check through `current` (light, + runtime when asked); on a
    failed check switch straight back to `previous` and re-check it. Ctrl-C waits for its end.
    What is attached at the points `switched` and `switch-checked` (serving: traffic follows
    `current`, then is checked) runs inside it: a failure there makes the switch go back too;
    `switched-back` runs right after a switch back.
    """
    ctx.in_switch = True
    try:
        push_switch_back(ctx, target, previous)
        switch(ctx, target, previous, action, snapshot=snapshot)
        try:
            ctx.hooks.run(steps.POINT_SWITCHED, ctx, target)
            light_check(ctx, target, step=f"{prefix}{steps.POST_CHECK}")
            if runtime:
                runtime_check(
                    ctx, target, step=f"{prefix}{steps.POST_CHECK_RUNTIME}", through_current=True
                )
            ctx.hooks.run(steps.POINT_SWITCH_CHECKED, ctx, target)
        except (StepFailed, TransportError) as failure:
            back = switch_back(ctx, previous, target)
            raise StepFailed(f"{failure}; {back}") from None
        ctx.undo.drop(SWITCH_BACK, key=target)
        ctx.undo.drop(REMOVE_RELEASE, key=target)
        ctx.switched = True
        ctx.target = target
    finally:
        ctx.in_switch = False


def switch_back(ctx: HostContext, previous: str | None, failed: str) -> str:
    """Back to `previous` at once after a failed or interrupted check; re-check it; say so."""
    ctx.undo.drop(SWITCH_BACK, key=failed)
    if previous is None:
        with ctx.step(steps.AUTO_ROLLBACK, version=None) as info:
            ctx.run_reconnecting(release_cmd.remove_current(ctx.layout), info)
            info["removed_current"] = True
        return (
            f"no previous release to return to, so `current` was removed "
            f"({failed} stays in releases/)"
        )
    saved = ctx.cleaning
    ctx.cleaning = True  # the way back runs even after Ctrl-C, over a fresh connection if needed
    try:
        switch(ctx, previous, failed, steps.ACTION_AUTO_ROLLBACK, snapshot=False)
        ctx.hooks.run(steps.POINT_SWITCHED_BACK, ctx, previous, failed)
        light_check(ctx, previous, step=steps.AUTO_ROLLBACK_CHECK)
    except HostGone:
        push_switch_back(ctx, failed, previous)  # the guard names it: current may be `failed`
        raise
    except (StepFailed, TransportError) as again:
        return f"switched back to {previous} at once, but its own check failed too: {again}"
    finally:
        ctx.cleaning = saved
    return f"switched back to {previous} at once (verified)"


def restore_release(ctx: HostContext, version: str, snapshot: str | None = None) -> str:
    """Restore releases/<version> from `snapshot` (default: its newest); the name is returned."""
    snapshot = snapshot or decisions.newest_snapshot(ctx.facts, version)
    if snapshot is None:
        raise StepFailed(
            f"release {version} on {ctx.host.name} is missing or damaged and no snapshot of it "
            f"exists in backups/: deploy it again with invoke deploy --bundle {version}"
        )
    with ctx.step(steps.RESTORE, version=version, snapshot=snapshot) as info:
        command = release_cmd.restore(
            ctx.layout, ctx.host.python, ctx.journal.deployment, snapshot, version
        )
        out = ctx.run(command, planned=release_cmd.PLANNED_OK)
        report = release_cmd.parse_report(out.stdout)
        info["report"] = report
        if not out.ok or not report.get("ok"):
            raise StepFailed(
                f"restoring {version} on {ctx.host.name} from {snapshot} failed: "
                f"{'; '.join(report.get('problems', [])[:3]) or out.tail(200)}"
            )
    return snapshot


def prune(ctx: HostContext, protect: tuple[str, ...]) -> tuple[bool, str | None]:
    """Housekeeping after success: a problem here is a warning in the log, never a failure.

    Returns (done, note): whether the prune ran, and a sentence for the host's outcome (what
    was left alone, or why the prune was skipped), so what is printed agrees with the log.
    An odd entry under releases/ (`-rf`) is left alone and named; the rest is pruned.
    """
    with ctx.step(steps.PRUNE) as info:
        try:
            facts = ctx.read_facts()
            releases, backups = decisions.plan_prune(
                facts,
                keep_releases=ctx.opts.keep_releases,
                keep_backups=ctx.opts.keep_backups,
                protect=protect,
            )
            info.update(releases=releases, backups=backups)
            odd = decisions.odd_releases(facts)
            if odd:
                info["left_alone"] = odd
            unchecked = decisions.unchecked_releases(facts, protect)
            if unchecked:
                info["unchecked"] = unchecked
            out = ctx.run(release_cmd.prune(ctx.layout, releases, backups))
            if not out.ok:
                info["warning"] = out.tail(200)
        except (MoolaError, ValueError) as exc:  # a slow host, an unreadable answer: warn, go on
            info["warning"] = str(exc)
        if "warning" in info:
            info["status"] = "skipped"
            return False, f"prune skipped on {ctx.host.name}: {info['warning']}"
    notes = [prune_note(info.get("left_alone") or [], info.get("unchecked") or [])]
    return True, "; ".join(n for n in notes if n) or None


def prune_note(odd: list[str], unchecked: list[str] = ()) -> str:
    """The sentence about what a prune left alone under releases/ and which releases it removed
    because they never passed their check ('' when neither)."""
    parts = []
    if unchecked:
        parts.append(
            f"removed {', '.join(unchecked)}: never passed its runtime check (left by an "
            "interrupted run)"
        )
    if odd:
        names = ", ".join(repr(v) for v in odd)
        parts.append(
            f"prune left alone {names} under releases/ (not a name Moola gives a release): "
            "remove it by hand if it is not yours"
        )
    return "; ".join(parts)


def quality_gate(ctx: HostContext) -> None:
    """Phase 2's verdict, as the verified manifest carries it (moola_core.bundle.gate): a bundle
    whose run passed ships; one whose failing run a person overrode at selection ships as
    "overridden"; one whose run failed is refused before anything reaches the host, and so is
    one whose run was never judged when it is to serve (deploy, repair), unless the deploy
    itself carries a person's override (`--override-gate`), which the log records as
    "overridden" with who and why, never as a pass. A never-judged candidate may still be
    placed beside `current` as a shadow (it answers no live request); the log says so."""
    from moola_core.bundle.gate import gate_state

    manifest = ctx.bundle.manifest
    with ctx.step(steps.GATE) as info:
        state, why = gate_state(manifest if manifest is not None else {})
        info["gate"] = state
        info["summary"] = why
        if state == "passed":
            return
        if state == "overridden":
            info["status"] = "overridden"
            return
        serving = ctx.journal.phase in (steps.DEPLOY, steps.REPAIR_PHASE)
        if state == "unjudged" and not serving:
            info["summary"] = f"{why}; placed for {ctx.journal.phase}, where it serves no answer"
            return
        reason = " ".join((ctx.opts.gate_override or "").split())
        if reason:
            info["status"] = "overridden"
            info["override"] = reason
            info["summary"] = f"OVERRIDDEN at deploy: {reason}; {why}"
            return
        raise StepFailed(f"{ctx.bundle.version} refused for {ctx.host.name}: {why}")
