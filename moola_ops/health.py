"""Health checks for cron (phase 8): assess each host's facts, in parallel, within a deadline.

Light and importable in milliseconds: no torch, numpy or pandas, ever (cron runs this every few
minutes). The flow: `run_healthcheck` asks every host for its facts in parallel threads
(commands/health.py builds the commands, the transport runs them), `assess_*` turns facts into
Nagios states, and the renderers make the one status line + perfdata, the JSON document and
the Prometheus textfile.

Nagios plugin convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. When several results combine,
CRITICAL beats WARNING beats UNKNOWN beats OK (monitoring-plugins' `max_state_alt`): a known
problem is more urgent than an unknown one.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moola_ops.commands import health as facts_cmd

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
_RANK = {OK: 0, UNKNOWN: 1, WARNING: 2, CRITICAL: 3}


@dataclass(frozen=True)
class HealthPolicy:
    """Thresholds of the checks; defaults suit a RunPod volume holding a few bundles."""

    disk_warn_bytes: int = 5 * 1024**3
    disk_crit_bytes: int = 1 * 1024**3
    stale_lock_s: float = 30 * 60  # a deploy takes minutes; a lock older than this is stale
    latency_warn_fraction: float = 0.8  # p99 above 80% of the SLA warns before it breaks


def worst(states: list[int]) -> int:
    """Combine Nagios states: CRITICAL > WARNING > UNKNOWN > OK."""
    return max(states, key=lambda s: _RANK[s], default=OK)


@dataclass
class CheckResult:
    """One named check on one host."""

    name: str
    state: int
    message: str


@dataclass
class HostHealth:
    """The health of one host: every check, the combined state and the measured figures."""

    host: str
    checks: list[CheckResult] = field(default_factory=list)
    release: str | None = None
    free_bytes: int | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    sla_p99_ms: float | None = None
    gpus: list[dict] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def state(self) -> int:
        return worst([c.state for c in self.checks]) if self.checks else UNKNOWN

    def summary(self) -> str:
        """The most important problem of this host, or a short all-good line."""
        bad = [c for c in self.checks if c.state != OK]
        if not bad:
            extra = f", p99 {self.p99_ms:.1f} ms" if self.p99_ms is not None else ""
            return f"{self.release or 'no release'}{extra}"
        top = max(bad, key=lambda c: _RANK[c.state])
        return f"{top.name}: {top.message}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = STATE_NAMES[self.state]
        for c in data["checks"]:
            c["state"] = STATE_NAMES[c["state"]]
        return data


@dataclass
class HealthRun:
    """The result of one `healthcheck` run over several hosts."""

    hosts: list[HostHealth]
    deep: bool
    started: float
    duration_s: float

    @property
    def state(self) -> int:
        return worst([h.state for h in self.hosts]) if self.hosts else UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": STATE_NAMES[self.state],
            "exit_code": self.state,
            "deep": self.deep,
            "started": self.started,
            "duration_s": round(self.duration_s, 3),
            "status_line": status_line(self),
            "hosts": [h.to_dict() for h in self.hosts],
        }


# --- assessing facts ---------------------------------------------------------------------------


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


def assess_light(
    host: HostHealth,
    facts: facts_cmd.LightFacts,
    *,
    expect_gpu: str | bool | None,
    policy: HealthPolicy = HealthPolicy(),
) -> None:
    """Add the light checks (current, checksums, GPU, disk, lock) to `host` from its facts.

    `expect_gpu`: falsy when the host has no GPU, True for any GPU, or a name fragment
    (for example "H100") the GPU's name must contain.
    """
    add = host.checks.append
    if not facts.workspace_exists:
        add(CheckResult("current", CRITICAL, "workspace missing: deploy a bundle first"))
        return
    if not facts.complete:
        add(CheckResult("facts", UNKNOWN, "the fact script did not run to its end"))
    cur = facts.current
    host.release = cur.release
    if cur.link is None:
        add(CheckResult("current", CRITICAL, "no current release: deploy a bundle"))
    elif not cur.resolves:
        add(CheckResult("current", CRITICAL, f"current -> {cur.link} does not resolve: roll back"))
    else:
        add(CheckResult("current", OK, f"current -> {cur.release}"))

    sums = facts.checksums
    if cur.resolves:
        if sums is None:
            add(CheckResult("checksums", CRITICAL, "current release has no manifest.json"))
        elif sums.problems:
            listed = "; ".join(sums.problems[:3])
            add(CheckResult("checksums", CRITICAL,
                            f"{listed}: roll back or redeploy the release"))  # fmt: skip
        else:
            add(CheckResult("checksums", OK, f"{sums.version or 'release'} matches its manifest"))

    gpu = facts.gpu
    host.gpus = [asdict(g) for g in gpu.gpus]
    if expect_gpu:
        if not gpu.present:
            add(CheckResult("gpu", CRITICAL, "GPU expected but nvidia-smi is missing"))
        elif gpu.error:
            add(CheckResult("gpu", CRITICAL, f"nvidia-smi failed: {gpu.error}"))
        elif isinstance(expect_gpu, str) and not any(
            expect_gpu.lower() in g.name.lower() for g in gpu.gpus
        ):
            names = ", ".join(g.name for g in gpu.gpus)
            add(CheckResult("gpu", WARNING, f"expected a {expect_gpu} GPU, found {names}"))
        else:
            add(CheckResult("gpu", OK, ", ".join(g.name for g in gpu.gpus)))
    else:
        add(CheckResult("gpu", OK, "no GPU expected"))

    disk = facts.disk
    if disk is None:
        add(CheckResult("disk", UNKNOWN, "could not read free disk space"))
    else:
        host.free_bytes = disk.free_bytes
        if disk.free_bytes < policy.disk_crit_bytes:
            state = CRITICAL
        elif disk.free_bytes < policy.disk_warn_bytes:
            state = WARNING
        else:
            state = OK
        hint = "" if state == OK else ": prune old releases and backups"
        add(CheckResult("disk", state, f"{_gib(disk.free_bytes)} free{hint}"))

    lock = facts.lock
    if lock is None:
        add(CheckResult("lock", OK, "not locked"))
    elif lock.age_s > policy.stale_lock_s:
        add(CheckResult("lock", WARNING,
                        f"stale deploy lock ({lock.age_s / 60:.0f} min, {lock.holder}): "
                        f"break it with `invoke lock --host {host.host} --break`"))  # fmt: skip
    else:
        add(CheckResult("lock", OK, f"deploy in progress ({lock.holder})"))


def assess_runtime(
    host: HostHealth, report: dict | None, exit_code: int, error: str = "", *,
    sla_p99_ms: float | None = None, policy: HealthPolicy = HealthPolicy(),
) -> None:  # fmt: skip
    """Add the deep checks (model, golden parity, latency vs SLA) from a runtime report."""
    add = host.checks.append
    if report is None:
        add(CheckResult("model", CRITICAL, f"runtime check could not run: {error or exit_code}"))
        return
    latency = report.get("latency") or {}
    host.p50_ms = _float(latency.get("p50_ms"))
    host.p99_ms = _float(latency.get("p99_ms"))
    sla = sla_p99_ms or _float(latency.get("sla_p99_ms")) or _float(report.get("sla_p99_ms"))
    host.sla_p99_ms = sla
    failed = [c for c in report.get("checks", []) if not c.get("ok", c.get("passed", True))]
    if exit_code == 0 and not failed:
        add(CheckResult("model", OK, "model loads, golden outputs match"))
    else:
        names = ", ".join(str(c.get("name")) for c in failed) or f"exit {exit_code}"
        add(CheckResult("model", CRITICAL, f"runtime check failed ({names}): roll back"))
    if host.p99_ms is None:
        add(CheckResult("latency", UNKNOWN, "the runtime report has no p99 latency"))
    elif sla is None:
        add(CheckResult("latency", OK, f"p99 {host.p99_ms:.2f} ms (no SLA set)"))
    elif host.p99_ms > sla:
        add(CheckResult("latency", CRITICAL, f"p99 {host.p99_ms:.2f} ms over the {sla} ms SLA"))
    elif host.p99_ms > policy.latency_warn_fraction * sla:
        add(CheckResult("latency", WARNING, f"p99 {host.p99_ms:.2f} ms near the {sla} ms SLA"))
    else:
        add(CheckResult("latency", OK, f"p99 {host.p99_ms:.2f} ms within {sla} ms"))


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# --- running the checks ------------------------------------------------------------------------

# A probe gets (host, deadline in time.monotonic() seconds) and fills in a HostHealth.
Probe = Callable[[Any, float], HostHealth]


def run_parallel(
    hosts: list[Any], probe: Probe, timeout_s: float, name_of=str, parallel: int = 16
) -> list[HostHealth]:
    """Probe every host in its own thread, at most `parallel` at once; a host not done within
    `timeout_s` (waiting for its turn included) is CRITICAL.

    Daemon threads: a host that hangs (a TCP peer that accepts and never answers) cannot hold
    the process past the deadline, and the interpreter does not wait for it at exit.
    """
    deadline = time.monotonic() + timeout_s
    results: dict[int, HostHealth] = {}
    slots = threading.BoundedSemaphore(max(1, parallel))

    def work(i: int, host: Any) -> None:
        if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return  # never got a turn: reported as not done within the timeout
        started = time.monotonic()
        try:
            health = probe(host, deadline)
        except Exception as exc:  # one host's failure is that host's CRITICAL, not the run's
            health = HostHealth(host=name_of(host))
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            # a RunPod look-up names its own check and state (a stopped pod: CRITICAL)
            check, state = getattr(exc, "check", "ssh"), getattr(exc, "nagios_state", CRITICAL)
            health.checks.append(CheckResult(check, state, message[:300]))
        finally:
            slots.release()
        health.duration_s = round(time.monotonic() - started, 3)
        results[i] = health

    threads = [
        threading.Thread(target=work, args=(i, h), daemon=True, name=f"health-{name_of(h)}")
        for i, h in enumerate(hosts)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    out = []
    for i, host in enumerate(hosts):
        if i in results:
            out.append(results[i])
        else:
            late = HostHealth(host=name_of(host), duration_s=round(timeout_s, 3))
            late.checks.append(
                CheckResult("ssh", CRITICAL, f"no answer within the {timeout_s:g} s timeout")
            )
            out.append(late)
    return out


def probe_host(host, deadline: float, *, deep: bool = False,
               policy: HealthPolicy = HealthPolicy()) -> HostHealth:  # fmt: skip
    """Check one inventory host over one SSH connection: light facts, then the model if deep."""
    from moola_ops.transport import HostSession

    health = HostHealth(host=host.name)

    def left() -> float:  # seconds until the run's deadline, never below a sliver
        return max(0.5, deadline - time.monotonic())

    started = time.monotonic()
    with HostSession(host, command_timeout_s=left()) as ssh:
        health.checks.append(
            CheckResult("ssh", OK, f"reachable in {time.monotonic() - started:.2f} s")
        )
        result = ssh.run(facts_cmd.light_facts_command(host.workspace, host.python),
                         timeout_s=left())  # fmt: skip
        facts = facts_cmd.parse_light_facts(result.stdout)
        assess_light(health, facts, expect_gpu=host.gpu, policy=policy)
        if deep:
            if not facts.current.resolves:
                health.checks.append(CheckResult("model", CRITICAL, "no release to check"))
                return health
            result = ssh.run(facts_cmd.runtime_check_command(host.workspace, host.python),
                             timeout_s=left())  # fmt: skip
            report, error = parse_runtime_output(result.stdout, result.stderr)
            assess_runtime(health, report, result.exit_code, error,
                           sla_p99_ms=host.latency_sla_ms, policy=policy)  # fmt: skip
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

    names: list[str] = []
    items = [s.strip() for s in (selection or "").split(",") if s.strip()] or list(inventory.hosts)
    for item in items:
        if item in inventory.hosts:
            names.append(item)
        elif item in inventory.groups:
            names.extend(inventory.groups[item])
        else:
            inventory.resolve([item])  # raises the inventory's message naming the known hosts
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
    policy: HealthPolicy = HealthPolicy(),
    record: bool = True,
    parallel: int = 16,
) -> HealthRun:
    """Check the selected hosts (default: all) in parallel within `timeout_s`; log each result."""
    from moola_core.errors import MoolaError
    from moola_ops.inventory import load_inventory

    if not timeout_s > 0:  # a negative or zero bound used to become a silent 1 s
        raise MoolaError(f"--timeout {timeout_s:g} is not a positive number of seconds: try 30.")
    inventory = inventory or load_inventory(inventory_path)
    hosts, down = select_hosts(inventory, selection)
    started_wall, started = time.time(), time.monotonic()
    # the deadline leaves a little room to write the log and render before the caller's bound
    budget = max(1.0, timeout_s - 0.5)
    checked = run_parallel(
        hosts,
        lambda host, deadline: probe_host(host, deadline, deep=deep, policy=policy),
        budget,
        name_of=lambda h: h.name,
        parallel=parallel,
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
    from moola_ops.journal import Journal

    journal = Journal("healthcheck")
    step = "deep" if run.deep else "fast"
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


# --- rendering ---------------------------------------------------------------------------------


def _num(value: float) -> str:
    """A number as plain text: integers whole (byte counts), floats without exponent noise."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(round(float(value), 6))


def _perf(label: str, value: float, uom: str = "", warn="", crit="", lo="", hi="") -> str:
    fields = [f"{_num(value)}{uom}", str(warn), str(crit), str(lo), str(hi)]
    while fields and fields[-1] == "":
        fields.pop()
    return f"'{label}'=" + ";".join(fields)


def perfdata(run: HealthRun) -> str:
    """Nagios perfdata: worst p99 ('p99_ms'=..ms;warn;crit), host counts, per-host figures."""
    parts = []
    p99s = [h for h in run.hosts if h.p99_ms is not None]
    if p99s:
        slowest = max(p99s, key=lambda h: h.p99_ms)
        sla = slowest.sla_p99_ms
        warn = f"{HealthPolicy().latency_warn_fraction * sla:g}" if sla else ""
        crit = f"{sla:g}" if sla else ""
        parts.append(_perf("p99_ms", round(slowest.p99_ms, 3), "ms", warn, crit, 0))
    counts = {name: 0 for name in STATE_NAMES.values()}
    for h in run.hosts:
        counts[STATE_NAMES[h.state]] += 1
    parts.append(_perf("hosts_ok", counts["OK"], "", "", "", 0, len(run.hosts)))
    parts.append(_perf("hosts_warning", counts["WARNING"], "", "", "", 0, len(run.hosts)))
    parts.append(_perf("hosts_critical", counts["CRITICAL"], "", "", "", 0, len(run.hosts)))
    parts.append(_perf("duration_s", round(run.duration_s, 3), "s", "", "", 0))
    for h in run.hosts:
        if h.p99_ms is not None:
            parts.append(_perf(f"{h.host}_p99_ms", round(h.p99_ms, 3), "ms", "", "", 0))
        if h.free_bytes is not None:
            parts.append(_perf(f"{h.host}_free_disk", h.free_bytes, "B", "", "", 0))
    return " ".join(parts)


def status_line(run: HealthRun) -> str:
    """The one Nagios status line: state, a summary naming the problem hosts, then perfdata."""
    kind = "deep" if run.deep else "fast"
    n = len(run.hosts)
    bad = [h for h in run.hosts if h.state != OK]
    if not run.hosts:
        text = "no hosts to check"
    elif not bad:
        releases = sorted({h.release or "none" for h in run.hosts})
        text = f"{n}/{n} hosts OK ({kind}), serving {', '.join(releases)}"
    else:
        problems = "; ".join(f"{h.host} {STATE_NAMES[h.state]} {h.summary()}" for h in bad)
        text = f"{n - len(bad)}/{n} hosts OK ({kind}); {problems}"
    text = " ".join(text.replace("|", "/").split())  # '|' would start perfdata early
    return f"MOOLA {STATE_NAMES[run.state]} - {text} | {perfdata(run)}"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def prometheus_text(run: HealthRun, now: float | None = None) -> str:
    """The run as a Prometheus textfile-collector document (one gauge family per figure)."""
    now = time.time() if now is None else now
    families: list[tuple[str, str, list[tuple[dict, float]]]] = [
        ("moola_health_state", "Nagios state per host (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).",
         [({"host": h.host}, h.state) for h in run.hosts]),
        ("moola_health_check_state", "Nagios state of each check per host.",
         [({"host": h.host, "check": c.name}, c.state) for h in run.hosts for c in h.checks]),
        ("moola_health_release_info", "The release `current` points at (value 1).",
         [({"host": h.host, "release": h.release}, 1) for h in run.hosts if h.release]),
        ("moola_health_free_disk_bytes", "Free bytes on the workspace filesystem.",
         [({"host": h.host}, h.free_bytes) for h in run.hosts if h.free_bytes is not None]),
        ("moola_health_latency_p99_seconds", "p99 single-window latency (deep check).",
         [({"host": h.host}, h.p99_ms / 1000) for h in run.hosts if h.p99_ms is not None]),
        ("moola_health_check_duration_seconds", "Wall time of the host's check.",
         [({"host": h.host}, h.duration_s) for h in run.hosts]),
        ("moola_health_last_run_timestamp_seconds", "When the check last ran (unix time).",
         [({"kind": "deep" if run.deep else "fast"}, round(now, 3))]),
    ]  # fmt: skip
    lines = []
    for name, help_text, samples in families:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for labels, value in samples:
            inner = ",".join(f'{k}="{_label(str(v))}"' for k, v in labels.items())
            lines.append(f"{name}{{{inner}}} {_num(value)}")
    return "\n".join(lines) + "\n"


def write_textfile(path: str | os.PathLike, text: str) -> Path:
    """Write `text` atomically: a temp file in the same directory, fsync, then rename over.

    The node exporter never reads a half-written file; its `*.prom` glob skips the temp name.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the exporter usually runs as another user
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
