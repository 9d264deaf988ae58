"""Deploy, rollback, drill, restore and repair: each a list of named stages (Capistrano).

    deploy:   bundle-verify -> signature -> lock (+facts) -> noop? -> preflight -> upload
              -> promote | verify -> check -> [serve: start candidate, ready]
              -> switch (switch, post-check, switch back on failure) -> [serve: move traffic,
              drain, standby] -> prune                                  (unlock: the guard)
    rollback: lock (+facts) -> verify | restore -> switch (+ runtime post-check) -> [serve]
    drill:    lock -> back (verify, switch) -> forward (verify, switch) -> drill
    restore:  lock -> restore -> post-check when it is current
    repair:   bundle-verify -> lock -> verify (damaged?) -> upload -> promote -> check
              -> post-check when it is current
    place:    bundle-verify -> signature -> lock (+facts) -> [the caller's checks] -> target
              -> preflight -> upload -> promote | verify -> check -> [the caller's stages]
              (a release beside `current`, never switched: the shadow's candidate)

Named hook points (moola_ops/deploy/hooks.py): deploy passes before/after upload, check and
switch; rollback before/after switch; place and repair before/after upload and check (a repair
only when there is damage to repair); the switch stage
itself `switched`, `switch-checked` and `switched-back` (in every flow that switches, drill
included); the guard runs `failed`. What runs there comes from `hooks_for(host)`: serving's
stages (moola_ops/serving/stages.py `attach`), then the host's inventory `hooks:`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from moola_core.errors import MoolaError
from moola_ops.deploy import stages
from moola_ops.deploy.bundle import LocalBundle
from moola_ops.deploy.commands import decisions
from moola_ops.deploy.commands import release as release_cmd
from moola_ops.deploy.context import HostContext, Stage
from moola_ops.deploy.hooks import Hooks, attach_user_hooks, point_stage
from moola_ops.deploy.results import HostOutcome, StepFailed, disk_need
from moola_ops.hosts.inventory import Host
from moola_ops.log import steps
from moola_ops.serving import stages as serving
from moola_ops.serving.control import ServeError


# A serving failure is a step failure here: the switch goes back on it.
def _as_step(fn: Callable) -> Callable:
    def stage(*args):
        try:
            return fn(*args)
        except ServeError as exc:
            raise StepFailed(str(exc)) from None

    stage.__doc__ = fn.__doc__
    return stage


def hooks_for(host: Host) -> Hooks:
    """What runs at one host's named points: serving's stages (docs/serving.md), then the
    host's inventory hooks (docs/runbook.md "Hooks"), each point in that order."""
    hooks = Hooks()
    serving.attach(lambda point, name, fn: hooks.add(point, name, _as_step(fn)))
    attach_user_hooks(hooks, host.hooks)
    return hooks


def prepare(bundle: LocalBundle | None = None):
    """The `prepare` of every flow: each host's context gets its hooks (and the bundle)."""

    def prepare_ctx(ctx: HostContext) -> None:
        ctx.hooks = hooks_for(ctx.host)
        ctx.bundle = bundle

    return prepare_ctx


def _lock(what: Callable[[HostContext], str]) -> Callable[[HostContext], None]:
    def stage(ctx: HostContext) -> None:
        facts = ctx.lock_and_facts(what(ctx))
        if facts.current_problem:  # never taken for a release, never recorded as one
            ctx.notes.append(f"{facts.current_problem}: treated as no current release")

    return stage


def _done(ctx: HostContext, message: str) -> HostOutcome:
    text = "; ".join([message, *ctx.notes])
    return HostOutcome(ctx.host.name, "ok", text, current=ctx.target, previous=ctx.previous)


# --- deploy -------------------------------------------------------------------------------------


def _bundle_checks(ctx: HostContext) -> None:
    """The same full verification `invoke bundle.verify` runs, then the host's signature rule,
    both on the private copy that will be uploaded."""
    bundle = ctx.bundle
    with ctx.step(steps.BUNDLE_VERIFY, sha256=bundle.sha256):
        try:
            bundle.verify()
        except MoolaError as exc:
            raise StepFailed(
                f"bundle {bundle.version} failed verification here, nothing uploaded to "
                f"{ctx.host.name}: {exc}"
            ) from None
    stages.quality_gate(ctx)
    if ctx.host.allowed_signers:
        with ctx.step(steps.SIGNATURE, allowed_signers=ctx.host.allowed_signers) as info:
            try:
                info["signer"] = bundle.signer(ctx.host.allowed_signers)
            except MoolaError as exc:
                raise StepFailed(
                    f"{bundle.version} refused for {ctx.host.name}, nothing changed: {exc}"
                ) from None


def _on_host(ctx: HostContext) -> None:
    """What the host holds of the bundle's version (`ctx.on_host`: "absent", its sha256 or
    "unknown"); a release of that version built from other bytes is refused."""
    bundle, name = ctx.bundle, ctx.host.name
    ctx.target = bundle.version
    ctx.on_host = ctx.facts.releases.get(bundle.version) or "absent"
    if bundle.version in ctx.facts.releases and ctx.on_host == "absent":
        ctx.on_host = "unknown"
    if ctx.on_host not in ("absent", bundle.sha256):
        raise StepFailed(
            f"{name} already has a release {bundle.version} built from different bytes "
            f"(sha256 {str(ctx.on_host)[:12]}...): bump the bundle version instead of reusing it"
        )


def _noop_or_reuse(ctx: HostContext) -> HostOutcome | None:
    bundle, name = ctx.bundle, ctx.host.name
    if ctx.previous == bundle.version and ctx.facts.releases.get(bundle.version) == bundle.sha256:
        ctx.target, ctx.on_host = bundle.version, bundle.sha256
        with ctx.step(steps.NOOP, version=bundle.version):
            pass
        return HostOutcome(
            name,
            "noop",
            f"{bundle.version} is already current on {name}; nothing to do",
            current=bundle.version,
            previous=ctx.previous,
        )
    _on_host(ctx)
    return None


def _preflight(ctx: HostContext) -> None:
    need = disk_need(ctx.bundle.size, ctx.bundle.unpacked) if ctx.on_host == "absent" else 0
    stages.preflight(ctx, need)


def _upload(ctx: HostContext) -> None:
    if ctx.on_host == "absent":
        stages.upload(ctx)
    else:
        with ctx.step(steps.UPLOAD, skipped=True) as info:
            info["status"] = "skipped"
            info["reason"] = "releases/ already holds this sha256"


def _promote(ctx: HostContext) -> None:
    if ctx.on_host == "absent":
        stages.promote(ctx)
        return
    problems = stages.verify_release(ctx, ctx.bundle.version, step=steps.VERIFY)
    if problems:
        raise StepFailed(
            f"release {ctx.bundle.version} already on {ctx.host.name} fails its checksums "
            f"({problems[0]}); nothing switched: repair it with invoke deploy --repair"
        )


def _precheck(ctx: HostContext) -> None:
    """The release's check before the switch. A host that serves: its candidate server IS the
    check, one model load (checksums, golden parity single and batched, latency over HTTP
    against the SLA, the device it runs on: steps serve-start, serve-check, then `check` with
    `by: server` writes the release's .checked marker), not a separate runtime-check process;
    a warm standby of it is probed at the switch instead and loads nothing. Without serving
    (`--no-serve`): the runtime check (step check)."""
    version = ctx.bundle.version
    try:
        if ctx.opts.serve:
            _as_step(serving.prepare_target)(ctx)
            if serving.started_for(ctx, version):  # it passed: the verdict and its marker
                with ctx.step(steps.CHECK, version=version, by="server"):
                    ctx.run(release_cmd.mark_checked(ctx.layout, version, ctx.journal.deployment))
        else:
            stages.runtime_check(ctx, version, step=steps.CHECK)
    except StepFailed:
        stages.push_remove_release(ctx, version)  # a release that failed its check must go
        raise


def _switch(ctx: HostContext) -> None:
    stages.switch_checked(
        ctx,
        ctx.bundle.version,
        ctx.previous,
        action=steps.ACTION_DEPLOY,
        snapshot=True,
        runtime=ctx.opts.full_post_check,
    )


def _prune(ctx: HostContext) -> None:
    protect = (ctx.bundle.version,) + ((ctx.previous,) if ctx.previous else ())
    _done_pruning, note = stages.prune(ctx, protect)
    if note:  # housekeeping: the deploy stands, its outcome says what the prune did not do
        ctx.notes.append(note)


def _deployed(ctx: HostContext) -> HostOutcome:
    return _done(ctx, f"{ctx.target} is live on {ctx.host.name} (was {ctx.previous or 'nothing'})")


def deploy_stages() -> list[Stage]:
    """The deploy flow, in order (a fresh list: callers may insert stages)."""
    return [
        (steps.BUNDLE_VERIFY, _bundle_checks),
        (steps.LOCK, _lock(lambda ctx: f"deploy {ctx.bundle.version}")),
        (steps.NOOP, _noop_or_reuse),
        (steps.PREFLIGHT, _preflight),
        point_stage(steps.POINT_BEFORE_UPLOAD),
        (steps.UPLOAD, _upload),
        (steps.PROMOTE, _promote),
        point_stage(steps.POINT_AFTER_UPLOAD),
        point_stage(steps.POINT_BEFORE_CHECK),
        (steps.CHECK, _precheck),
        point_stage(steps.POINT_AFTER_CHECK),
        point_stage(steps.POINT_BEFORE_SWITCH),
        (steps.SWITCH, _switch),
        point_stage(steps.POINT_AFTER_SWITCH),
        (steps.PRUNE, _prune),
        ("done", _deployed),
    ]


# --- place: a release beside `current`, never switched (the shadow's candidate) ----------------


def _placed_check(ctx: HostContext) -> None:
    """The runtime check deploy runs before its switch; a release this run uploaded and that
    fails it is removed by the guard (promote marked it unchecked), one that passes stays."""
    stages.runtime_check(ctx, ctx.bundle.version, step=steps.CHECK)
    ctx.undo.drop(stages.REMOVE_RELEASE)


def place_stages(what: str, checks: list[Stage], then: list[Stage]) -> list[Stage]:
    """Put a bundle's release on the host beside `current` through deploy's own stages: the
    full bundle verification, quality gate and signer rule, the deploy lock (with the host's
    facts), `checks` (the caller's refusals, before anything is uploaded), upload or verify of
    what is there, the runtime check; then `then` (the caller's stages), still under the lock.
    The guard settles the host whatever happens (docs/runbook.md)."""
    return [
        (steps.BUNDLE_VERIFY, _bundle_checks),
        (steps.LOCK, _lock(lambda ctx: f"{what} {ctx.bundle.version}")),
        *checks,
        ("target", _on_host),
        (steps.PREFLIGHT, _preflight),
        point_stage(steps.POINT_BEFORE_UPLOAD),
        (steps.UPLOAD, _upload),
        (steps.PROMOTE, _promote),
        point_stage(steps.POINT_AFTER_UPLOAD),
        point_stage(steps.POINT_BEFORE_CHECK),
        (steps.CHECK, _placed_check),
        point_stage(steps.POINT_AFTER_CHECK),
        *then,
        (
            "done",
            lambda ctx: _done(
                ctx,
                f"{ctx.bundle.version} is on {ctx.host.name} beside {ctx.previous or 'nothing'}",
            ),
        ),
    ]


# --- rollback -----------------------------------------------------------------------------------


def _rollback_target(to: str | None) -> Callable[[HostContext], HostOutcome | None]:
    def stage(ctx: HostContext) -> HostOutcome | None:
        name = ctx.host.name
        target = to or decisions.rollback_target(ctx.facts)
        if target is None:
            raise StepFailed(
                f"{name} has no previous release in its revisions.log: pass --to VERSION "
                f"(releases there: {', '.join(sorted(ctx.facts.releases)) or 'none'})"
            )
        ctx.target = target
        if target == ctx.previous:
            return HostOutcome(
                name, "noop", f"{target} is already current on {name}", target, ctx.previous
            )
        return None

    return stage


def verified_or_restored(ctx: HostContext, target: str, step: str) -> None:
    """releases/<target> verified file by file, restored from its snapshot when damaged."""
    if target in ctx.facts.releases:
        problems = stages.verify_release(ctx, target, step=step)
    else:
        problems = ["missing"]
    if problems:
        stages.restore_release(ctx, target)


def _rollback_verify(ctx: HostContext) -> None:
    verified_or_restored(ctx, ctx.target, steps.VERIFY)


def _rollback_switch(ctx: HostContext) -> None:
    stages.switch_checked(
        ctx,
        ctx.target,
        ctx.previous,
        action=steps.ACTION_ROLLBACK,
        snapshot=False,
        runtime=_runtime_after_switch(ctx),
    )


def _runtime_after_switch(ctx: HostContext) -> bool:
    """Rollback and drill check the release they return to with the runtime check through
    `current`, unless the host serves: then its server was checked over HTTP instead (a warm
    standby probed, or a server started and checked like a deploy's; serve-post-check through
    the public port after the switch) and no torch process starts. `invoke verify` remains the
    deep check on demand."""
    return not ctx.opts.serve


def rollback_stages(to: str | None) -> list[Stage]:
    """The rollback flow, in order (a fresh list)."""
    return [
        (steps.LOCK, _lock(lambda ctx: f"rollback to {to or 'previous'}")),
        ("target", _rollback_target(to)),
        (steps.VERIFY, _rollback_verify),
        point_stage(steps.POINT_BEFORE_SWITCH),
        (steps.SWITCH, _rollback_switch),
        point_stage(steps.POINT_AFTER_SWITCH),
        (
            "done",
            lambda ctx: _done(
                ctx, f"rolled back {ctx.host.name} from {ctx.previous or 'nothing'} to {ctx.target}"
            ),
        ),
    ]


# --- drill --------------------------------------------------------------------------------------


def _drill(ctx: HostContext) -> HostOutcome:
    name, current = ctx.host.name, ctx.previous
    target = decisions.rollback_target(ctx.facts)
    if current is None or target is None:
        raise StepFailed(
            f"{name} needs a current and a previous release for a drill (current: "
            f"{current or 'none'}); deploy two versions first"
        )
    started = time.monotonic()
    verified_or_restored(ctx, target, f"{steps.DRILL_BACK}{steps.VERIFY}")
    stages.switch_checked(
        ctx,
        target,
        current,
        action=steps.ACTION_DRILL_BACK,
        snapshot=False,
        runtime=_runtime_after_switch(ctx),
        prefix=steps.DRILL_BACK,
    )
    back_s = time.monotonic() - started
    ctx.facts = ctx.read_facts()
    verified_or_restored(ctx, current, f"{steps.DRILL_FORWARD}{steps.VERIFY}")
    stages.switch_checked(
        ctx,
        current,
        target,
        action=steps.ACTION_DRILL_FORWARD,
        snapshot=False,
        runtime=_runtime_after_switch(ctx),
        prefix=steps.DRILL_FORWARD,
    )
    with ctx.step(steps.DRILL_STEP, back_to=target, forward_to=current) as info:
        info["rollback_s"] = round(back_s, 3)
    return HostOutcome(
        name,
        "ok",
        f"drill passed on {name}: rolled back to {target} in {back_s:.1f}s (checked), "
        f"then forward to {current} (checked)",
        current=current,
        previous=target,
    )


def drill_stages() -> list[Stage]:
    return [(steps.LOCK, _lock(lambda ctx: "rollback drill")), (steps.DRILL_STEP, _drill)]


# --- restore ------------------------------------------------------------------------------------


def restore_stages(snapshot: str, version: str) -> list[Stage]:
    def restore(ctx: HostContext) -> HostOutcome:
        name = ctx.host.name
        if snapshot not in ctx.facts.backups:
            raise StepFailed(
                f"{name} has no snapshot {snapshot}: list them with invoke backups --host {name}"
            )
        stages.restore_release(ctx, version, snapshot)
        if ctx.previous == version:
            stages.light_check(ctx, version, step=steps.POST_CHECK)
        return HostOutcome(
            name,
            "ok",
            f"restored {version} from {snapshot}",
            current=ctx.previous,
            previous=ctx.previous,
        )

    return [(steps.LOCK, _lock(lambda ctx: f"restore {snapshot}")), (steps.RESTORE, restore)]


# --- prune (on its own) -------------------------------------------------------------------------


def prune_stages() -> list[Stage]:
    """Lock, prune (never current or its rollback target), unlock."""

    def prune(ctx: HostContext) -> HostOutcome:
        done, note = stages.prune(ctx, (ctx.previous,) if ctx.previous else ())
        if not done:  # the log says skipped: so does the outcome
            return HostOutcome(ctx.host.name, "failed", note, ctx.previous, ctx.previous)
        message = f"pruned {ctx.host.name}" + (f"; {note}" if note else "")
        return HostOutcome(ctx.host.name, "ok", message, ctx.previous, ctx.previous)

    return [(steps.LOCK, _lock(lambda ctx: "prune")), (steps.PRUNE, prune)]


# --- repair (re-upload the same bytes of a damaged release) -------------------------------------


def _repair(ctx: HostContext) -> HostOutcome:
    bundle, name = ctx.bundle, ctx.host.name
    ctx.target = bundle.version
    on_host = ctx.facts.releases.get(bundle.version)
    if bundle.version not in ctx.facts.releases:
        raise StepFailed(f"{name} has no release {bundle.version} to repair: deploy it instead")
    if on_host not in (None, bundle.sha256):
        raise StepFailed(
            f"{name}'s release {bundle.version} came from other bytes (sha256 {on_host[:12]}...): "
            "repair takes the very bundle that was deployed"
        )
    # read-only: the plan of a repair runs it too, so it knows whether there is damage
    problems = stages.verify_release(ctx, bundle.version, step=steps.VERIFY, read_only=True)
    if not problems:
        return HostOutcome(
            name,
            "noop",
            f"{bundle.version} on {name} verifies; nothing to repair",
            ctx.previous,
            ctx.previous,
        )
    with ctx.step(steps.REPAIR, version=bundle.version, problems=problems[:5]):
        ctx.run(release_cmd.set_aside(ctx.layout, bundle.version, ctx.journal.deployment))
    ctx.on_host = "absent"
    ctx.hooks.run(steps.POINT_BEFORE_UPLOAD, ctx)
    stages.upload(ctx)
    stages.promote(ctx)
    ctx.undo.drop(stages.REMOVE_RELEASE)  # the same bytes as before: never removed
    ctx.hooks.run(steps.POINT_AFTER_UPLOAD, ctx)
    ctx.hooks.run(steps.POINT_BEFORE_CHECK, ctx)
    stages.runtime_check(ctx, bundle.version, step=steps.CHECK)
    ctx.hooks.run(steps.POINT_AFTER_CHECK, ctx)
    if ctx.previous == bundle.version:
        stages.light_check(ctx, bundle.version, step=steps.POST_CHECK)
    return HostOutcome(
        name,
        "ok",
        f"repaired {bundle.version} on {name} ({problems[0]})",
        ctx.previous,
        ctx.previous,
    )


def repair_stages() -> list[Stage]:
    return [
        (steps.BUNDLE_VERIFY, _bundle_checks),
        (steps.LOCK, _lock(lambda ctx: f"repair {ctx.bundle.version}")),
        (steps.REPAIR, _repair),
    ]
