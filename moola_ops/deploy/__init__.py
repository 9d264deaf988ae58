"""The deploy engine: deploy, rollback, drill, restore, repair, plans, backups and the lock.

Rooms: `results` (outcomes, options), `bundle` (the local bundle, verified once, uploaded from a
private copy), `context` (one host during a run), `guard` (always settles it, unwinding the
`undo` stack the stages pushed), `hooks` (named points: serving's stages and the inventory's
user hooks), `stages` (the named stages; `switch_checked` is the one that moves `current`),
`flows` (deploy, rollback, drill, restore, repair, prune, place as stage lists with their
points), `runner` (a flow over a fleet, through `moola_ops.fleet`), `plan` (the same stages as
a dry run: what a run would send, nothing changed), `admin` (facts, backups, lock,
verify_current). Commands come from `moola_ops.deploy.commands`; `moola_ops.transport` runs them.

Public API for other rooms:
    resolve_bundle(spec) -> LocalBundle
    deploy(hosts, bundle, opts) / rollback(hosts, to, opts) / drill(hosts, opts)
    restore(hosts, snapshot, opts) / repair(hosts, bundle, opts) -> FleetResult
    prune(hosts, opts); with Options(plan=True) each (and place) returns its plan instead
        (status planned): the same stages run against a PlanContext
    place(hosts, bundle, opts, phase=, what=, checks=, then=): a release beside `current`
        through deploy's verified, locked, guarded stages (the shadow's candidate)
    list_backups(host) / lock_status(host) / release_lock / break_lock / host_facts(host)
    verify_current(host, deep=False) -> CurrentCheck
"""

from __future__ import annotations

from moola_ops.deploy.admin import (
    CurrentCheck,
    break_lock,
    host_facts,
    list_backups,
    lock_status,
    release_lock,
    verify_current,
)
from moola_ops.deploy.bundle import DEFAULT_BUNDLES, LocalBundle, resolve_bundle
from moola_ops.deploy.results import (
    FleetResult,
    HostOutcome,
    Interrupted,
    LogFailed,
    Options,
    Refused,
    StepFailed,
)
from moola_ops.deploy.workflows import deploy, drill, place, prune, repair, restore, rollback

__all__ = [
    "DEFAULT_BUNDLES",
    "CurrentCheck",
    "FleetResult",
    "HostOutcome",
    "Interrupted",
    "LocalBundle",
    "LogFailed",
    "Options",
    "Refused",
    "StepFailed",
    "break_lock",
    "deploy",
    "drill",
    "host_facts",
    "list_backups",
    "place",
    "prune",
    "lock_status",
    "release_lock",
    "repair",
    "resolve_bundle",
    "restore",
    "rollback",
    "verify_current",
]
