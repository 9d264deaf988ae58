"""Phases 4 and 7: `invoke deploy`, `rollback`, `drill`, `prune`, `backups`, `restore`.

Thin tasks: parse flags, call one function of `moola_ops.deploy`, render the outcome (a rich
table on a TTY, plain lines otherwise, `--json` for machines), exit non-zero when any host
failed (130 after Ctrl-C). The engine is imported inside the bodies so `invoke --list` is fast.
While the engine works, each host's current step shows (moola_ops.progress). `invoke lock` lives
in moola_ops/cli/lock.py, `invoke log` in moola_ops/cli/log.py.
"""

from __future__ import annotations

from invoke.exceptions import Exit

from moola_core.errors import MoolaError
from moola_ops.cli._common import PLAN, READS, task, user_errors
from moola_ops.hosts.runpod import REFRESH_HELP
from moola_ops.terminal import console, is_tty, print_json

HOST_HELP = (
    "inventory host names, groups and/or globs over host names, comma separated "
    "(e.g. runpod-1, prod or 'local-*')"
)
INVENTORY_HELP = "inventory file (default inventory/hosts.yaml or env MOOLA_INVENTORY)"
FLEET_HELP = {
    "parallel": "hosts deployed at the same time (0, the default: invoke.yaml deploy.parallel, "
    "else 4)",
    "canary": "deploy to this many hosts first; stop the rest if one fails (e.g. 1; 0: none)",
    "batch": "after the canary, roll the other hosts in waves of this many (0: all at once)",
}
COMMON_HELP = {
    "host": HOST_HELP,
    "inventory": INVENTORY_HELP,
    "json": "print one JSON document instead of the table",
    "accept_new_host_key": "pin a host key not yet in known_hosts (logged) instead of refusing",
    "check_runs": "timed runs of the runtime check (0, the default: the runtime's own)",
    "check_timeout": "seconds the runtime check may take on a host before it is stopped there "
    "(default 600)",
    "refresh": REFRESH_HELP,
}
PLAN_HELP = (
    "say what would happen on each host (facts read only; nothing locked or changed); "
    "`invoke --dry` does the same"
)


def _hosts(host: str, inventory: str, refresh: bool = False):
    from moola_ops.hosts.inventory import load_inventory
    from moola_ops.hosts.runpod import refresh_cache

    refresh_cache(refresh)  # runpod_pod_id hosts: the first look-up asks the API
    return load_inventory(inventory or None).resolve(host)


def _setting(c, flag: int, key: str, default: int, *, unset: int = 0) -> int:
    """A flag's value, else invoke.yaml's `key`, else `default` (moola_ops.cli._common)."""
    from moola_ops.cli._common import setting, whole_number

    return int(flag) if flag != unset else whole_number(setting(c, key, default), key)


def _options(**kw):
    from moola_ops.deploy import Options

    return Options(**{k: v for k, v in kw.items() if v is not None})


def _run(c, as_json: bool, call, title: str = "", hosts=()):
    """Run an engine call showing each host's current step (moola_ops.progress; `call` gets
    the view, whose `upload` is the engine's byte-progress factory); after Ctrl-C (or SIGTERM)
    show what each host ended on, exit 130."""
    from moola_ops.deploy import Interrupted
    from moola_ops.progress import show

    try:
        with show(title, hosts=[h.name for h in hosts], plain=not as_json) as view:
            result = call(view)
    except Interrupted as stop:
        print("interrupted (Ctrl-C): each host below ended as shown", flush=True)
        _render(stop.result, as_json)
        raise Exit(code=130) from None
    _render(result, as_json)


def _render(result, as_json: bool) -> None:
    if result.outcomes and all(o.status == "planned" for o in result.outcomes) and not as_json:
        from moola_ops.deploy.plan import render_plan

        print(render_plan(result))
        return
    if as_json:
        print_json(result.as_dict())
    elif is_tty():
        from rich.table import Table

        colour = {"ok": "green", "noop": "green", "skipped": "yellow"}
        table = Table("host", "outcome", "current", "was", "time", "what happened")
        for o in result.outcomes:
            c = colour.get(o.status, "red")
            table.add_row(
                o.host,
                f"[{c}]{o.status}[/]",
                o.current or "-",
                o.previous or "-",
                f"{o.duration_s:.1f}s",
                o.message,
            )
        out = console()
        out.print(table)
        out.print(f"{result.phase} {result.deployment}: {_verdict(result)}")
    else:
        for o in result.outcomes:
            print(f"{o.host}\t{o.status}\t{o.current or '-'}\t{o.duration_s:.1f}s\t{o.message}")
        print(f"{result.phase} {result.deployment}: {_verdict(result)}")
    if not result.ok:
        raise Exit(code=result.exit_code)


def _verdict(result) -> str:
    if result.interrupted:
        return "INTERRUPTED"
    return "OK" if result.ok else "FAILED"


@task(
    help={
        **COMMON_HELP,
        **FLEET_HELP,
        "bundle": "bundle version (bundles/moola-VERSION.tar.gz) or a path to an archive",
        "keep_releases": "releases kept on each host besides current and previous "
        "(default: invoke.yaml deploy.keep_releases, else 5)",
        "keep_backups": "snapshots kept on each host (default: invoke.yaml deploy.keep_backups, "
        "else 5)",
        "full_post_check": "after the switch, also run the runtime check through `current`",
        "repair": "re-upload and re-verify the same bytes of a damaged release (logged)",
        "no_serve": "files only: no server is started and live traffic stays where it is "
        "(`invoke serve --host H --ensure` moves it later; docs/serving.md)",
        "plan": PLAN_HELP,
        "override_gate": "ship a bundle whose run failed or never went through the quality gate "
        "(phase 2) anyway; the reason is logged as an override with your name",
    },
    dry=PLAN,
)
@user_errors
def deploy(
    c,
    host,
    bundle,
    inventory="",
    parallel=0,
    canary=0,
    batch=0,
    keep_releases=-1,
    keep_backups=-1,
    full_post_check=False,
    accept_new_host_key=False,
    check_runs=0,
    check_timeout=600.0,
    plan=False,
    repair=False,
    no_serve=False,
    json=False,
    refresh=False,
    override_gate=None,
):
    """Phase 4: ship a bundle to hosts: lock, upload, verify, check, switch, check, prune."""
    from moola_ops import deploy as engine

    if override_gate is not None and not str(override_gate).strip():
        raise MoolaError(
            '--override-gate needs a reason, e.g. --override-gate "hotfix, approved by Ana"'
        )
    hosts = _hosts(host, inventory, refresh)
    local = engine.resolve_bundle(bundle)
    planning = bool(plan)
    opts = dict(
        parallel=_setting(c, parallel, "deploy.parallel", 4),
        canary=int(canary),
        batch=int(batch),
        keep_releases=_setting(c, keep_releases, "deploy.keep_releases", 5, unset=-1),
        keep_backups=_setting(c, keep_backups, "deploy.keep_backups", 5, unset=-1),
        full_post_check=full_post_check,
        accept_new_host_key=accept_new_host_key,
        check_runs=int(check_runs) or None,
        check_timeout_s=_seconds(check_timeout, "--check-timeout"),
        plan=planning,
        serve=not no_serve,
        gate_override=override_gate,
    )
    run = engine.repair if repair else engine.deploy
    title = f"{'repair' if repair else 'deploy'} {local.version}"
    _run(
        c,
        json,
        lambda view: run(hosts, local, _options(**opts, progress=view.upload)),
        title,
        hosts,
    )


def _seconds(value, flag: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise MoolaError(f"{flag} {value} is not a positive number of seconds: try 600")
    return seconds


@task(
    help={
        **COMMON_HELP,
        **FLEET_HELP,
        "to": "version to roll back to (default: previous)",
        "plan": PLAN_HELP,
    },
    dry=PLAN,
)
@user_errors
def rollback(
    c,
    host,
    to="",
    inventory="",
    parallel=0,
    canary=0,
    batch=0,
    accept_new_host_key=False,
    check_runs=0,
    check_timeout=600.0,
    plan=False,
    json=False,
    refresh=False,
):
    """Phase 7: switch hosts back to their previous release (from revisions.log), checked."""
    from moola_ops import deploy as engine

    hosts = _hosts(host, inventory, refresh)
    opts = _options(
        parallel=_setting(c, parallel, "deploy.parallel", 4),
        canary=int(canary),
        batch=int(batch),
        accept_new_host_key=accept_new_host_key,
        check_runs=int(check_runs) or None,
        check_timeout_s=_seconds(check_timeout, "--check-timeout"),
        plan=bool(plan),
    )
    _run(c, json, lambda view: engine.rollback(hosts, to or None, opts), "rollback", hosts)


@task(
    help={**COMMON_HELP, "parallel": FLEET_HELP["parallel"], "plan": PLAN_HELP},
    dry=PLAN,
)
@user_errors
def drill(
    c,
    host,
    inventory="",
    parallel=1,
    accept_new_host_key=False,
    check_runs=0,
    check_timeout=600.0,
    plan=False,
    json=False,
    refresh=False,
):
    """Rehearse a rollback on live hosts: back to previous, check, forward again, check."""
    from moola_ops import deploy as engine

    hosts = _hosts(host, inventory, refresh)
    opts = _options(
        parallel=int(parallel),
        accept_new_host_key=accept_new_host_key,
        check_runs=int(check_runs) or None,
        check_timeout_s=_seconds(check_timeout, "--check-timeout"),
        plan=bool(plan),
    )
    _run(c, json, lambda view: engine.drill(hosts, opts), "drill", hosts)


@task(
    help={
        "host": HOST_HELP,
        "inventory": INVENTORY_HELP,
        "keep_releases": "releases kept on each host besides current and previous "
        "(default: invoke.yaml deploy.keep_releases, else 5)",
        "keep_backups": "snapshots kept on each host (default: invoke.yaml deploy.keep_backups, "
        "else 5)",
        "plan": PLAN_HELP,
        "json": "print JSON",
        "refresh": REFRESH_HELP,
    },
    dry=PLAN,
)
@user_errors
def prune(
    c, host, inventory="", keep_releases=-1, keep_backups=-1, plan=False, json=False, refresh=False
):
    """Remove old releases and snapshots (never current, the rollback target or their newest
    snapshots); deploys do this after each success."""
    from moola_ops import deploy as engine

    hosts = _hosts(host, inventory, refresh)
    opts = _options(
        keep_releases=_setting(c, keep_releases, "deploy.keep_releases", 5, unset=-1),
        keep_backups=_setting(c, keep_backups, "deploy.keep_backups", 5, unset=-1),
        plan=bool(plan),
    )
    _run(c, json, lambda view: engine.prune(hosts, opts), "prune", hosts)


@task(
    help={
        "host": HOST_HELP,
        "inventory": INVENTORY_HELP,
        "json": "print JSON",
        "refresh": REFRESH_HELP,
    },
    dry=READS,
)
@user_errors
def backups(c, host, inventory="", json=False, refresh=False):
    """List the snapshots on a host (taken before each switch), newest first."""
    from moola_ops import deploy as engine

    rows = []
    for h in _hosts(host, inventory, refresh):
        rows += [dict(row, host=h.name) for row in engine.list_backups(h)]
    if json:
        print_json(rows)
        return
    if not rows:
        print("no snapshots")
    for row in rows:
        print(f"{row['host']}\t{row['name']}\t{row['version']}\t{row['time']}")


@task(
    help={
        "host": HOST_HELP,
        "snapshot": "snapshot file name from `invoke backups`",
        "inventory": INVENTORY_HELP,
        "plan": PLAN_HELP,
        "json": "print JSON",
        "refresh": REFRESH_HELP,
    },
    dry=PLAN,
)
@user_errors
def restore(c, host, snapshot, inventory="", plan=False, json=False, refresh=False):
    """Restore releases/<version> on hosts from a snapshot (verified before it is put back)."""
    from moola_ops import deploy as engine

    hosts = _hosts(host, inventory, refresh)
    opts = _options(plan=bool(plan))
    _run(c, json, lambda view: engine.restore(hosts, snapshot, opts), "restore", hosts)


EXPORTS = [
    deploy,
    rollback,
    drill,
    prune,
    backups,
    restore,
]  # `lock`: cli/lock.py, `log`: cli/log.py
