"""The public entry points: each validates its inputs, then runs its flow over the fleet
(or, with `Options.plan`, runs the same stages as a plan that changes nothing:
moola_ops/deploy/plan.py)."""

from __future__ import annotations

from moola_core.errors import MoolaError
from moola_ops.deploy import flows
from moola_ops.deploy.bundle import LocalBundle
from moola_ops.deploy.commands import release as release_cmd
from moola_ops.deploy.plan import run_plan
from moola_ops.deploy.results import FleetResult, Options
from moola_ops.deploy.runner import run_phase
from moola_ops.hosts.inventory import Host
from moola_ops.hosts.layout import check_name
from moola_ops.log import steps


def _run(phase: str, hosts: list[Host], opts: Options, stages_for, **kw) -> FleetResult:
    """The flow for real (run_phase), or its plan with `opts.plan` (the same stages)."""
    if opts.plan:
        return run_plan(
            phase, hosts, opts, stages_for, bundle=kw.get("bundle", ""), prepare=kw.get("prepare")
        )
    return run_phase(phase, hosts, opts, stages_for, **kw)


def deploy(hosts: list[Host], bundle: LocalBundle, opts: Options | None = None) -> FleetResult:
    """Deploy `bundle` to every host (see moola_ops.deploy.flows for the stages)."""
    opts = opts or Options()
    return _run(
        steps.DEPLOY,
        hosts,
        opts,
        flows.deploy_stages,
        bundle=bundle.version,
        prepare=flows.prepare(bundle),
        sha256=bundle.sha256,
        size=bundle.size,
    )


def rollback(hosts: list[Host], to: str | None = None, opts: Options | None = None) -> FleetResult:
    """Switch each host back to its previous release (from revisions.log) or to `to`."""
    opts = opts or Options()
    if to is not None:
        check_name(to, "version")
    return _run(
        steps.ROLLBACK,
        hosts,
        opts,
        lambda: flows.rollback_stages(to),
        bundle=to or "",
        prepare=flows.prepare(),
    )


def drill(hosts: list[Host], opts: Options | None = None) -> FleetResult:
    """Rehearse a rollback on live hosts: back to the previous release, check, forward, check."""
    opts = opts or Options()
    return _run(steps.DRILL, hosts, opts, flows.drill_stages, prepare=flows.prepare())


def restore(hosts: list[Host], snapshot: str, opts: Options | None = None) -> FleetResult:
    """Restore releases/<v> from backups/<snapshot> (verified); re-check it if it is current."""
    opts = opts or Options()
    check_name(snapshot, "snapshot name")
    parsed = release_cmd.parse_snapshot_name(snapshot)
    if parsed is None:
        raise MoolaError(
            f"{snapshot!r} is not a snapshot name: list them with invoke backups --host H"
        )
    return _run(
        steps.RESTORE_PHASE,
        hosts,
        opts,
        lambda: flows.restore_stages(snapshot, parsed[1]),
        bundle=parsed[1],
        prepare=flows.prepare(),
    )


def prune(hosts: list[Host], opts: Options | None = None) -> FleetResult:
    """Remove old releases and snapshots (keep_releases / keep_backups; never current or the
    rollback target, nor their newest snapshots)."""
    opts = opts or Options()
    return _run(steps.PRUNE_PHASE, hosts, opts, flows.prune_stages, prepare=flows.prepare())


def place(
    hosts: list[Host],
    bundle: LocalBundle,
    opts: Options | None = None,
    *,
    phase: str,
    what: str,
    checks=(),
    then=(),
) -> FleetResult:
    """Put `bundle` on each host beside `current` (never switched) through deploy's verified,
    locked, guarded stages, then run `then` under the same lock (flows.place_stages). Whatever
    puts a release on a host comes through here or `deploy`."""
    opts = opts or Options()
    return _run(
        phase,
        hosts,
        opts,
        lambda: flows.place_stages(what, list(checks), list(then)),
        bundle=bundle.version,
        prepare=flows.prepare(bundle),
        sha256=bundle.sha256,
        size=bundle.size,
    )


def repair(hosts: list[Host], bundle: LocalBundle, opts: Options | None = None) -> FleetResult:
    """Re-upload and re-verify the same bytes of a damaged release (checked, logged)."""
    opts = opts or Options()
    return _run(
        steps.REPAIR_PHASE,
        hosts,
        opts,
        flows.repair_stages,
        bundle=bundle.version,
        prepare=flows.prepare(bundle),
        sha256=bundle.sha256,
    )
