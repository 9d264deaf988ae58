"""Phases 4 and 7: `invoke deploy`, `rollback`, `drill`, `backups`, `restore`, `lock`, `log`.

Thin tasks: parse flags, call one function of `moola_ops.engine`, render the outcome (a rich
table on a TTY, plain lines otherwise, `--json` for machines), exit non-zero when any host
failed (130 after Ctrl-C). The engine is imported inside the bodies so `invoke --list` is fast.
"""

from __future__ import annotations

from invoke.exceptions import Exit

from moola_core.errors import MoolaError
from moola_ops.cli._common import console, is_tty, print_json, task, user_errors

HOST_HELP = "inventory host names and/or groups, comma separated (e.g. runpod-1 or prod)"
INVENTORY_HELP = "inventory file (default inventory/hosts.yaml or env MOOLA_INVENTORY)"
FLEET_HELP = {
    "parallel": "hosts deployed at the same time (default 4)",
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
}
PLAN_HELP = (
    "say what would happen on each host (facts read only; nothing locked or changed); "
    "Invoke's --dry does the same"
)


def _hosts(host: str, inventory: str):
    from moola_ops.inventory import load_inventory

    return load_inventory(inventory or None).resolve(host)


def _options(**kw):
    from moola_ops.engine import Options

    return Options(**{k: v for k, v in kw.items() if v is not None})


def _run(c, as_json: bool, call):
    """Run an engine call; after Ctrl-C (or SIGTERM) show what each host ended on, exit 130."""
    from moola_ops.engine import Interrupted

    try:
        result = call()
    except Interrupted as stop:
        print("interrupted (Ctrl-C): each host below ended as shown", flush=True)
        _render(stop.result, as_json)
        raise Exit(code=130) from None
    _render(result, as_json)


def _planning(c, plan: bool) -> bool:
    """--plan, or Invoke's own --dry (c.config.run.dry): say what would happen, change nothing."""
    return bool(plan or c.config.run.dry)


def _render(result, as_json: bool) -> None:
    if result.outcomes and all(o.status == "planned" for o in result.outcomes) and not as_json:
        from moola_ops.engine.plan import render_plan

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


def _progress_factory():
    """A rich progress bar per host upload on a TTY; None (no output) otherwise."""
    if not is_tty():
        return None, None
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    bar = Progress(
        "{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console(),
        transient=True,
    )

    def factory(host: str, total: int):
        task_id = bar.add_task(f"upload {host}", total=total)
        return lambda sent, _total: bar.update(task_id, completed=sent)

    return bar, factory


@task(
    help={
        **COMMON_HELP,
        **FLEET_HELP,
        "bundle": "bundle version (bundles/moola-VERSION.tar.gz) or a path to an archive",
        "keep_releases": "releases kept on each host besides current and previous (default 5)",
        "keep_backups": "snapshots kept on each host (default 5)",
        "full_post_check": "after the switch, also run the runtime check through `current`",
        "repair": "re-upload and re-verify the same bytes of a damaged release (logged)",
        "plan": PLAN_HELP,
    }
)
@user_errors
def deploy(
    c,
    host,
    bundle,
    inventory="",
    parallel=4,
    canary=0,
    batch=0,
    keep_releases=5,
    keep_backups=5,
    full_post_check=False,
    accept_new_host_key=False,
    check_runs=0,
    check_timeout=600.0,
    plan=False,
    repair=False,
    json=False,
):
    """Phase 4: ship a bundle to hosts: lock, upload, verify, check, switch, check, prune."""
    from moola_ops import engine

    hosts = _hosts(host, inventory)
    local = engine.resolve_bundle(bundle)
    planning = _planning(c, plan)
    bar, factory = _progress_factory() if not (json or planning) else (None, None)
    opts = _options(
        parallel=int(parallel),
        canary=int(canary),
        batch=int(batch),
        keep_releases=int(keep_releases),
        keep_backups=int(keep_backups),
        full_post_check=full_post_check,
        accept_new_host_key=accept_new_host_key,
        check_runs=int(check_runs) or None,
        check_timeout_s=_seconds(check_timeout, "--check-timeout"),
        plan=planning,
        progress=factory,
    )
    run = engine.repair if repair else engine.deploy
    if repair and planning:
        raise MoolaError("--repair has no plan yet: run `invoke deploy --plan` to see the host")
    if bar is not None:
        with bar:
            _run(c, json, lambda: run(hosts, local, opts))
    else:
        _run(c, json, lambda: run(hosts, local, opts))


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
    }
)
@user_errors
def rollback(
    c,
    host,
    to="",
    inventory="",
    parallel=4,
    canary=0,
    batch=0,
    accept_new_host_key=False,
    check_runs=0,
    check_timeout=600.0,
    plan=False,
    json=False,
):
    """Phase 7: switch hosts back to their previous release (from revisions.log), checked."""
    from moola_ops import engine

    hosts = _hosts(host, inventory)
    opts = _options(
        parallel=int(parallel),
        canary=int(canary),
        batch=int(batch),
        accept_new_host_key=accept_new_host_key,
        check_runs=int(check_runs) or None,
        check_timeout_s=_seconds(check_timeout, "--check-timeout"),
        plan=_planning(c, plan),
    )
    _run(c, json, lambda: engine.rollback(hosts, to or None, opts))


@task(help={**COMMON_HELP, "parallel": FLEET_HELP["parallel"]})
@user_errors
def drill(
    c,
    host,
    inventory="",
    parallel=1,
    accept_new_host_key=False,
    check_runs=0,
    check_timeout=600.0,
    json=False,
):
    """Rehearse a rollback on live hosts: back to previous, check, forward again, check."""
    from moola_ops import engine

    if c.config.run.dry:
        raise MoolaError("drill has no plan: it is a rehearsal; run it without --dry")
    hosts = _hosts(host, inventory)
    opts = _options(
        parallel=int(parallel),
        accept_new_host_key=accept_new_host_key,
        check_runs=int(check_runs) or None,
        check_timeout_s=_seconds(check_timeout, "--check-timeout"),
    )
    _run(c, json, lambda: engine.drill(hosts, opts))


@task(help={"host": HOST_HELP, "inventory": INVENTORY_HELP, "json": "print JSON"})
@user_errors
def backups(c, host, inventory="", json=False):
    """List the snapshots on a host (taken before each switch), newest first."""
    from moola_ops import engine

    rows = []
    for h in _hosts(host, inventory):
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
    }
)
@user_errors
def restore(c, host, snapshot, inventory="", plan=False, json=False):
    """Restore releases/<version> on hosts from a snapshot (verified before it is put back)."""
    from moola_ops import engine

    hosts = _hosts(host, inventory)
    opts = _options(plan=_planning(c, plan))
    _run(c, json, lambda: engine.restore(hosts, snapshot, opts))


def lock_line(state: dict) -> str:
    """The words for one host's row of `invoke lock`: from its --json entry."""
    from moola_ops.commands.lock import describe_holder

    # An empty holder ({}: a lock directory without holder.json, left by a run that died
    # between mkdir and writing it) is still a lock: test for None, never for truth.
    if "broken" in state:
        broken = state["broken"]
        return (
            f"broke the lock of {describe_holder(state['holder'])}" if broken else "was not locked"
        )
    if "released" in state:
        return "released" if state["released"] else "was not locked"
    if not state["locked"]:
        return "free"
    holder = state["holder"]
    if holder.get("stale"):
        return f"STALE lock of {describe_holder(holder)} ({holder['stale']}): {holder['break']}"
    return f"locked by {describe_holder(holder)}"


@task(
    name="lock",
    help={
        "host": HOST_HELP,
        "release": "release the lock held by --deployment ID (only its holder may)",
        "deployment": "the deployment id holding the lock (with --release)",
        "break_": "break the lock whoever holds it (a stale lock; logged)",
        "inventory": INVENTORY_HELP,
        "json": "print JSON",
    },
)
@user_errors
def lock_(c, host, release=False, deployment="", break_=False, inventory="", json=False):
    """Show who holds each host's deploy lock; --release your own, --break a stale one."""
    from moola_ops import engine

    report = {}
    for h in _hosts(host, inventory):
        if break_:
            holder = engine.break_lock(h)
            report[h.name] = {"broken": holder is not None, "holder": holder}
        elif release:
            released = engine.release_lock(h, deployment or None)
            report[h.name] = {"released": released}
        else:
            holder = engine.lock_status(h)
            report[h.name] = {"locked": holder is not None, "holder": holder}
        if not json:
            print(f"{h.name}: {lock_line(report[h.name])}")
    if json:
        print_json(report)


@task(
    help={
        "host": "only lines of this host",
        "deployment": "only lines of this deployment id",
        "phase": "only lines of this phase (deploy, rollback, drill, ...)",
        "last": "show the last N lines (default 30)",
        "json": "print the lines as JSON",
    }
)
@user_errors
def log(c, host="", deployment="", phase="", last=30, json=False):
    """Show the deployment log (logs/deployments.jsonl or env MOOLA_LOG), newest last."""
    from moola_ops.journal import log_path, read_events

    events = read_events(host=host or None, deployment=deployment or None, phase=phase or None)
    events = events[-int(last) :] if int(last) > 0 else events
    if json:
        print_json(events)
        return
    if not events:
        print(f"no matching lines in {log_path()}")
    for e in events:
        detail = e.get("detail") or {}
        extra = detail.get("error") or ""
        print(
            f"{e['time']} {e['deployment']} {e['phase']:<8} {e['host'] or '-':<10} "
            f"{e['step']:<12} {e['status']:<8} {e['duration_s']:>7.2f}s {e['bundle']} {extra}"
        )


EXPORTS = [deploy, rollback, drill, backups, restore, lock_, log]
