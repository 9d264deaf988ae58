"""Running the health checks: every host probed through the fleet executor within one
deadline, one SSH connection each (light facts in one round trip, then the model if deep),
each result logged. Types and assessment: moola_ops.watch.health."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from moola_ops.deploy.commands import facts as facts_cmd
from moola_ops.log import steps
from moola_ops.watch.health import (
    CRITICAL,
    DEFAULT_POLICY,
    OK,
    STATE_NAMES,
    WARNING,
    CheckResult,
    HealthPolicy,
    HealthRun,
    HostHealth,
    assess_light,
    assess_runtime,
)

# A probe gets (host, deadline in time.monotonic() seconds) and fills in a HostHealth.
Probe = Callable[[Any, float], HostHealth]


def run_parallel(
    hosts: list[Any],
    probe: Probe,
    timeout_s: float,
    name_of=str,
    parallel: int = 16,
    asked_s: float | None = None,
) -> list[HostHealth]:
    """Probe every host through the fleet executor, at most `parallel` at once; a host not
    done within `timeout_s` (waiting for its turn included) is CRITICAL, never waited for.
    `asked_s`: the timeout the user gave, when `timeout_s` keeps a margin inside it (the
    message names what the user asked for)."""
    from moola_ops.fleet import run_fleet

    def failed(host: Any, exc: BaseException) -> HostHealth:
        health = HostHealth(host=name_of(host))
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # a RunPod look-up names its own check and state (a stopped pod: CRITICAL)
        check = getattr(exc, "check", steps.CHECK_SSH)
        state = getattr(exc, "nagios_state", CRITICAL)
        health.checks.append(CheckResult(check, state, message[:300]))
        return health

    def late(host: Any, waited: float) -> HostHealth:
        health = HostHealth(host=name_of(host), duration_s=round(timeout_s, 3))
        message = f"no answer within the {asked_s or timeout_s:g} s timeout"
        health.checks.append(CheckResult(steps.CHECK_SSH, CRITICAL, message))
        return health

    def work(host: Any, cancel, deadline: float) -> HostHealth:
        started = time.monotonic()
        try:
            health = probe(host, deadline)
        except Exception as exc:  # one host's failure is that host's CRITICAL, not the run's
            health = failed(host, exc)
        health.duration_s = round(time.monotonic() - started, 3)
        return health

    return run_fleet(
        hosts, work, parallel=parallel, run_deadline_s=timeout_s, on_late=late, on_error=failed
    )


def probe_host(
    host,
    deadline: float,
    *,
    deep: bool = False,
    policy: HealthPolicy = DEFAULT_POLICY,
    requests: bool = True,
) -> HostHealth:
    """Check one inventory host over one SSH connection: light facts, then the model if deep
    (`requests=False`: no request to the live service, which would be captured)."""
    from moola_ops.deploy.commands import release
    from moola_ops.hosts.layout import Layout
    from moola_ops.log.journal import transient_step
    from moola_ops.transport import HostSession

    health = HostHealth(host=host.name)

    def left() -> float:  # seconds until the run's deadline, never below a sliver
        return max(0.5, deadline - time.monotonic())

    started = time.monotonic()
    layout = Layout(host.workspace)
    ssh = HostSession(host, command_timeout_s=left())
    # each probe step shows as it happens (moola_ops.progress); nothing more is logged
    with transient_step(steps.HEALTHCHECK, host.name, "connect"):
        ssh.open()
    with ssh:  # open already: closes it at the end
        reached = f"reachable in {time.monotonic() - started:.2f} s"
        health.checks.append(CheckResult(steps.CHECK_SSH, OK, reached))
        command = facts_cmd.gather(layout, host.python, facts_cmd.HEALTH_FACTS)
        with transient_step(steps.HEALTHCHECK, host.name, "facts"):
            facts = facts_cmd.parse(ssh.run(command, timeout_s=left()).stdout, strict=False)
        assess_light(health, facts, expect_gpu=host.gpu, policy=policy, inventory_host=host)
        if facts.link.link is not None:  # the live service (docs/serving.md), whatever current is
            from moola_ops.watch.service import assess_service

            with transient_step(steps.HEALTHCHECK, host.name, "service"):
                assess_service(
                    health,
                    ssh,
                    host,
                    deep=deep,
                    policy=policy,
                    timeout_s=left(),
                    foreign_current=facts.current is None,
                    requests=requests,
                )
        if deep:
            if facts.current is None:
                health.checks.append(
                    CheckResult(steps.CHECK_MODEL, CRITICAL, "no release to check")
                )
                return health
            # against the host's SLA (inventory latency_sla_ms) when it has one, as deploy does
            check = release.runtime_check(
                layout, host.python, "current", through_current=True, sla_p99_ms=host.latency_sla_ms
            )
            with transient_step(steps.HEALTHCHECK, host.name, "runtime-check"):
                result = ssh.run(check, timeout_s=left())
            report, error = parse_runtime_output(result.stdout, result.stderr)
            assess_runtime(
                health,
                report,
                result.exit_code,
                error,
                sla_p99_ms=host.latency_sla_ms,
                policy=policy,
                inventory_host=host,
            )
    return health


def parse_runtime_output(stdout: str, stderr: str = "") -> tuple[dict | None, str]:
    """(report as a dict, "") from the runtime check's stdout, or (None, why it is unusable)."""
    from moola_core.runtime.report import parse_report

    try:
        return parse_report(stdout).to_dict(), ""
    except ValueError as exc:
        tail = (stderr.strip() or stdout.strip()).splitlines()[-1:] or [""]
        return None, f"{exc}; {tail[0][:200]}"


def select_hosts(inventory, selection: str | None) -> tuple[list, dict[str, str]]:
    """(reachable inventory hosts, {name: why it cannot be checked}) for `selection`.

    An unknown name is the caller's mistake (MoolaError, Nagios UNKNOWN); a stand-in host whose
    sandbox is not running is a down host (CRITICAL), like a pod that is switched off.
    """
    from moola_core.errors import MoolaError

    items = [s.strip() for s in (selection or "").split(",") if s.strip()] or list(inventory.hosts)
    names = inventory.names(items)  # hosts, groups and globs; unknown ones raise MoolaError
    hosts, down = [], {}
    for name in dict.fromkeys(names):
        try:
            hosts.append(inventory.resolve([name])[0])
        except MoolaError as exc:
            down[name] = str(exc)
    return hosts, down


def run_healthcheck(
    selection: str | None = None,
    *,
    deep: bool = False,
    timeout_s: float = 30.0,
    inventory_path: str | None = None,
    inventory=None,
    policy: HealthPolicy = DEFAULT_POLICY,
    record: bool = True,
    parallel: int = 16,
    requests: bool = True,
) -> HealthRun:
    """Check the selected hosts (default: all) in parallel within `timeout_s`; log each result
    (`record`), send the live service one request (`requests`; Invoke's --dry: neither)."""
    from moola_core.errors import MoolaError
    from moola_ops.hosts.inventory import load_inventory

    if not timeout_s > 0:  # a negative or zero bound used to become a silent 1 s
        raise MoolaError(f"--timeout {timeout_s:g} is not a positive number of seconds: try 30.")
    inventory = inventory or load_inventory(inventory_path)
    hosts, down = select_hosts(inventory, selection)
    started_wall, started = time.time(), time.monotonic()
    # the deadline leaves a little room to write the log and render before the caller's bound
    budget = max(1.0, timeout_s - 0.5)
    checked = run_parallel(
        hosts,
        lambda host, deadline: probe_host(
            host, deadline, deep=deep, policy=policy, requests=requests
        ),
        budget,
        name_of=lambda h: h.name,
        parallel=parallel,
        asked_s=timeout_s,  # hosts stop 0.5 s early so the log and the output fit inside it
    )
    for name, why in down.items():
        health = HostHealth(host=name)
        health.checks.append(CheckResult("ssh", CRITICAL, why))
        checked.append(health)
    order = {name: i for i, name in enumerate(inventory.hosts)}
    checked.sort(key=lambda h: order.get(h.host, len(order)))
    run = HealthRun(checked, deep, started_wall, time.monotonic() - started)
    if record:
        record_run(run)
    return run


def record_run(run: HealthRun) -> None:
    """One deployment-log line per host: phase healthcheck, step fast or deep."""
    from moola_ops.log.journal import Journal

    journal = Journal(steps.HEALTHCHECK)
    step = steps.HEALTH_DEEP if run.deep else steps.HEALTH_FAST
    for h in run.hosts:
        journal.record(
            h.host,
            step,
            "ok" if h.state in (OK, WARNING) else "failed",
            duration_s=h.duration_s,
            bundle=h.release or "",
            state=STATE_NAMES[h.state],
            summary=h.summary(),
            p99_ms=h.p99_ms,
        )
