"""Operations outside a flow: read facts, list backups, show / release / break the lock, and
check the release behind `current`. Each is one or two round trips; none changes a release."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from moola_core.errors import MoolaError
from moola_ops.deploy.commands import facts as facts_cmd
from moola_ops.deploy.commands import lock as lock_cmd
from moola_ops.deploy.commands import release as release_cmd
from moola_ops.hosts.inventory import Host
from moola_ops.hosts.layout import Layout
from moola_ops.log import steps
from moola_ops.log.journal import Journal
from moola_ops.transport import HostSession

FACTS_TIMEOUT_S = 60.0
LOCK_TIMEOUT_S = 30.0


def host_facts(
    host: Host, *, accept_new_host_key: bool = False, names=facts_cmd.DEPLOY_FACTS
) -> facts_cmd.HostFacts:
    """Read one host's facts (current, releases, snapshots, lock, disk, python, GPUs)."""
    layout = Layout(host.workspace)
    with HostSession(host, accept_new_host_key=accept_new_host_key) as ssh:
        out = ssh.run(facts_cmd.gather(layout, host.python, names), timeout_s=FACTS_TIMEOUT_S)
    return facts_cmd.parse(out.stdout)


def list_backups(host: Host) -> list[dict[str, str]]:
    """Snapshots on the host, newest first: [{name, time, version}]."""
    rows = []
    for name in sorted(host_facts(host, names=("backups",)).backups, reverse=True):
        parsed = release_cmd.parse_snapshot_name(name)
        if parsed:
            rows.append({"name": name, "time": parsed[0], "version": parsed[1]})
    return rows


def lock_status(host: Host) -> dict[str, Any] | None:
    """The holder of the host's deploy lock, or None when it is free. A stale lock's holder
    carries `stale` (why) and `break` (the command)."""
    facts = host_facts(host, names=("lock",))
    if facts.lock is None:
        return None
    holder = dict(facts.lock.holder)
    why = lock_cmd.stale_reason(holder, facts.lock.age_s, max_age_s=lock_cmd.MAX_AGE_S)
    if why:
        holder["stale"] = why
        holder["break"] = lock_cmd.break_hint(host.name)
    return holder


def release_lock(
    host: Host, deployment: str | None = None, *, journal_path: str | None = None
) -> bool:
    """Release the lock held by `deployment` (its unique holder id); MoolaError naming the
    holder otherwise. Breaking someone else's lock is `break_lock`, never this."""
    journal = Journal(steps.LOCK_PHASE, path=journal_path)
    holder = lock_status(host)
    if holder is None:
        journal.record(host.name, steps.LOCK_RELEASE, "skipped", reason="not locked")
        return False
    if deployment is None or holder.get("deployment") != deployment:
        journal.record(host.name, steps.LOCK_RELEASE, "refused", holder=holder)
        stale = f" It is STALE ({holder['stale']})." if holder.get("stale") else ""
        raise MoolaError(
            f"the lock on {host.name} belongs to {lock_cmd.describe_holder(holder)}, not to "
            f"deployment {deployment or '(none given)'}: only its holder releases it.{stale} "
            f"If that run is dead: {lock_cmd.break_hint(host.name)}"
        )
    with HostSession(host) as ssh:
        out = ssh.run(
            lock_cmd.release(Layout(host.workspace), deployment), timeout_s=LOCK_TIMEOUT_S
        )
    released = lock_cmd.parse_release(out.stdout)
    journal.record(host.name, steps.LOCK_RELEASE, "ok" if released else "failed", holder=holder)
    return released


def break_lock(host: Host, *, journal_path: str | None = None) -> dict[str, Any] | None:
    """Break the lock whoever holds it (a stale lock); logged with the holder it had."""
    journal = Journal(steps.LOCK_PHASE, path=journal_path)
    with HostSession(host) as ssh:
        command = lock_cmd.break_lock(Layout(host.workspace), journal.deployment)
        out = ssh.run(command, timeout_s=LOCK_TIMEOUT_S)
    broken, holder = lock_cmd.parse_break(out.stdout)
    journal.record(
        host.name, steps.LOCK_BREAK, "ok" if broken else "skipped", holder=holder, broken=broken
    )
    return holder if broken else None


@dataclass
class CurrentCheck:
    """What `verify_current` found on one host."""

    host: str
    ok: bool
    version: str | None
    problems: list[str]
    runtime: dict[str, Any] | None = None  # the runtime check's report when deep
    duration_s: float = 0.0


def verify_current(
    host: Host, *, deep: bool = False, session: HostSession | None = None
) -> CurrentCheck:
    """Check the release behind `current`: it is a valid release (see facts.resolve_current),
    its checksums match (light, no torch), and with `deep` the runtime check passes.

    Never raises for a failing check, only for an unreachable host (TransportError).
    """
    from moola_core.runtime.report import parse_report

    started = time.monotonic()
    layout = Layout(host.workspace)
    own = session is None
    ssh = session or HostSession(host).open()

    def done(ok: bool, version, problems, runtime=None) -> CurrentCheck:
        return CurrentCheck(
            host.name, ok, version, problems, runtime, duration_s=time.monotonic() - started
        )

    try:
        names = ("current", "releases", "revisions", "checksums")
        out = ssh.run(facts_cmd.gather(layout, host.python, names), timeout_s=FACTS_TIMEOUT_S)
        facts = facts_cmd.parse(out.stdout)
        if facts.current is None:
            return done(False, None, [facts.current_problem or "no `current` release on the host"])
        version = facts.current
        problems = list(facts.checksums.problems) if facts.checksums else ["no manifest.json"]
        runtime = None
        if deep and not problems:
            res = ssh.run(
                release_cmd.runtime_check(layout, host.python, version, through_current=True)
            )
            try:
                report = parse_report(res.stdout)
                runtime = report.to_dict()
                if not report.ok:
                    problems.append(f"runtime check failed: {report.summary}")
            except ValueError as exc:
                problems.append(f"runtime check failed: {exc}; {res.tail(200)}")
        return done(not problems, version, problems, runtime)
    finally:
        if own:
            ssh.close()
