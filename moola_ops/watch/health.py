"""Health checks for cron (phase 8): assess each host's facts, in parallel, within a deadline.

Light and importable in milliseconds: no torch, numpy or pandas, ever (cron runs this every few
minutes). The flow: `run_healthcheck` asks every host for its facts through the fleet executor
(`moola_ops.fleet`, the same one deploys use), the facts come from the one registry
(`commands/facts.py`, one round trip per host), `assess_*` turns facts into Nagios states, and
the renderers make the one status line + perfdata, the JSON document and the Prometheus
textfile.

Nagios plugin convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. When several results combine,
CRITICAL beats WARNING beats UNKNOWN beats OK (monitoring-plugins' `max_state_alt`): a known
problem is more urgent than an unknown one.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from moola_ops import nagios
from moola_ops.deploy.commands import decisions
from moola_ops.deploy.commands import facts as facts_cmd
from moola_ops.deploy.commands import lock as lock_cmd
from moola_ops.log import steps

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
_RANK = {OK: 0, UNKNOWN: 1, WARNING: 2, CRITICAL: 3}


@dataclass(frozen=True)
class HealthPolicy:
    """Thresholds of the checks; defaults suit a RunPod volume holding a few bundles."""

    disk_warn_bytes: int = 5 * 1024**3
    disk_crit_bytes: int = 1 * 1024**3
    stale_lock_s: float = lock_cmd.MAX_AGE_S  # the longest a deploy may take (its deadlines)
    latency_warn_fraction: float = 0.8  # p99 above 80% of the SLA warns before it breaks
    # Nagios ranges from -w/-c ({figure: Range}, moola_ops.nagios); they beat the host's
    # inventory `warning:`/`critical:` fields, which beat the defaults above
    warning: dict = field(default_factory=dict, hash=False)
    critical: dict = field(default_factory=dict, hash=False)

    def ranges(self, host=None, sla_ms: float | None = None) -> tuple[dict, dict]:
        """(warning, critical) ranges for one inventory host (None: the flags only)."""
        warn, crit = nagios.defaults(
            sla_ms,
            warn_fraction=self.latency_warn_fraction,
            disk_warn_gib=self.disk_warn_bytes / 1024**3,
            disk_crit_gib=self.disk_crit_bytes / 1024**3,
            stale_lock_min=self.stale_lock_s / 60,
        )
        host_warn = dict(getattr(host, "warning", None) or {})
        host_crit = dict(getattr(host, "critical", None) or {})
        return (
            nagios.layered(warn, _ranges(host_warn), self.warning),
            nagios.layered(crit, _ranges(host_crit), self.critical),
        )


def _ranges(raw: dict) -> dict:
    return {k: v if isinstance(v, nagios.Range) else nagios.parse_range(v) for k, v in raw.items()}


DEFAULT_POLICY = HealthPolicy()


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
    p99_warning: object = field(default=None, repr=False)  # the nagios.Range that applied
    p99_critical: object = field(default=None, repr=False)
    gpus: list[dict] = field(default_factory=list)
    duration_s: float = 0.0
    service_up: bool | None = None  # the live server answered as `current` (None: not probed)
    service_ms: float | None = None  # one real request through the public port
    service_p99_ms: float | None = None  # --deep: a burst's p99 over HTTP

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
        data["p99_warning"] = str(self.p99_warning) if self.p99_warning else None
        data["p99_critical"] = str(self.p99_critical) if self.p99_critical else None
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
        """The run as data (the `--json` document adds its status line:
        `health_output.document`)."""
        return {
            "state": STATE_NAMES[self.state],
            "exit_code": self.state,
            "deep": self.deep,
            "started": self.started,
            "duration_s": round(self.duration_s, 3),
            "hosts": [h.to_dict() for h in self.hosts],
        }


# --- assessing facts ---------------------------------------------------------------------------


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


def assess_light(
    host: HostHealth,
    facts: facts_cmd.HostFacts,
    *,
    expect_gpu: str | bool | None,
    policy: HealthPolicy = HealthPolicy(),
    inventory_host=None,
) -> None:
    """Add the light checks (current, checksums, GPU, disk, lock) to `host` from its facts.

    `expect_gpu`: falsy when the host has no GPU, True for any GPU, or a name fragment
    (for example "H100") the GPU's name must contain.
    """
    add = host.checks.append
    if not facts.workspace_exists:
        add(CheckResult(steps.CHECK_CURRENT, CRITICAL, "workspace missing: deploy a bundle first"))
        return
    if not facts.complete:
        add(CheckResult(steps.CHECK_FACTS, UNKNOWN, "the fact script did not run to its end"))
    link = facts.link
    host.release = facts.current
    if link.link is None:
        add(CheckResult(steps.CHECK_CURRENT, CRITICAL, "no current release: deploy a bundle"))
    elif facts.current is None:
        problem = facts.current_problem or f"current -> {link.link} is not a release"
        add(CheckResult(steps.CHECK_CURRENT, CRITICAL, f"{problem}: roll back or redeploy"))
    else:
        add(CheckResult(steps.CHECK_CURRENT, OK, f"current -> {facts.current}"))

    sums = facts.checksums
    if link.resolves and facts.current is None:
        # a copy that matches its own manifest proves nothing: it is not a release Moola put
        # there, so its checksums are not judged (the current check above says why, CRITICAL)
        message = "not judged: current is not a release Moola deployed"
        add(CheckResult(steps.CHECK_CHECKSUMS, UNKNOWN, message))
    elif link.resolves:
        if sums is None:
            add(
                CheckResult(steps.CHECK_CHECKSUMS, CRITICAL, "current release has no manifest.json")
            )
        elif sums.problems:
            # the verifier's own fix is for a bundle being uploaded; a live release has one fix
            listed = "; ".join(_fact_only(p) for p in sums.problems[:3])
            message = f"{listed}: roll back or redeploy the release"
            add(CheckResult(steps.CHECK_CHECKSUMS, CRITICAL, message))
        else:
            message = f"{sums.version or 'release'} matches its manifest"
            add(CheckResult(steps.CHECK_CHECKSUMS, OK, message))

    gpu = facts.gpu
    host.gpus = [asdict(g) for g in gpu.gpus]
    name = steps.CHECK_GPU
    if expect_gpu:
        if not gpu.present:
            add(CheckResult(name, CRITICAL, "GPU expected but nvidia-smi is missing"))
        elif gpu.error:
            add(CheckResult(name, CRITICAL, f"nvidia-smi failed: {gpu.error}"))
        elif isinstance(expect_gpu, str) and not any(
            expect_gpu.lower() in g.name.lower() for g in gpu.gpus
        ):
            names = ", ".join(g.name for g in gpu.gpus)
            add(CheckResult(name, WARNING, f"expected a {expect_gpu} GPU, found {names}"))
        else:
            add(CheckResult(name, OK, ", ".join(g.name for g in gpu.gpus)))
    else:
        add(CheckResult(name, OK, "no GPU expected"))

    disk = facts.disk
    if disk is None:
        add(CheckResult(steps.CHECK_DISK, UNKNOWN, "could not read free disk space"))
    else:
        host.free_bytes = disk.free_bytes
        warn, crit = policy.ranges(inventory_host)
        state = nagios.judge(disk.free_bytes / 1024**3, warn.get("free_gib"), crit.get("free_gib"))
        hint = "" if state == OK else ": prune old releases and backups"
        add(CheckResult(steps.CHECK_DISK, state, f"{_gib(disk.free_bytes)} free{hint}"))

    if "unchecked" in facts.asked:
        add(_releases_check(host.host, facts, policy))

    lock = facts.lock
    if lock is None:
        add(CheckResult(steps.CHECK_LOCK, OK, "not locked"))
        return
    who = lock_cmd.describe_holder(lock.holder)
    stale = lock_cmd.stale_reason(lock.holder, lock.age_s, max_age_s=policy.stale_lock_s)
    warn, crit = policy.ranges(inventory_host)
    state = nagios.judge(lock.age_s / 60, warn.get("lock_min"), crit.get("lock_min"))
    if stale:
        message = (
            f"STALE deploy lock ({stale}; {lock.age_s / 60:.0f} min, {who}): break it with "
            f"`{lock_cmd.break_hint(host.host)}`"
        )
        add(CheckResult(steps.CHECK_LOCK, worst([state, WARNING]), message))
    elif state != OK:
        message = (
            f"deploy lock held {lock.age_s / 60:.0f} min ({who}), outside the lock_min range: "
            f"if that run is dead, break it with `{lock_cmd.break_hint(host.host)}`"
        )
        add(CheckResult(steps.CHECK_LOCK, state, message))
    else:
        add(CheckResult(steps.CHECK_LOCK, OK, f"deploy in progress ({who})"))


def assess_runtime(
    host: HostHealth,
    report: dict | None,
    exit_code: int,
    error: str = "",
    *,
    sla_p99_ms: float | None = None,
    policy: HealthPolicy = HealthPolicy(),
    inventory_host=None,
) -> None:
    """Add the deep checks (model, golden parity, latency vs SLA) from a runtime report."""
    add = host.checks.append
    if report is None:
        add(
            CheckResult(
                steps.CHECK_MODEL, CRITICAL, f"runtime check could not run: {error or exit_code}"
            )
        )
        return
    latency = report.get("latency") or {}
    host.p50_ms = _float(latency.get("p50_ms"))
    host.p99_ms = _float(latency.get("p99_ms"))
    sla = sla_p99_ms or _float(latency.get("sla_p99_ms")) or _float(report.get("sla_p99_ms"))
    host.sla_p99_ms = sla
    failed = [c for c in report.get("checks", []) if not c.get("ok", c.get("passed", True))]
    if exit_code == 0 and not failed:
        add(CheckResult(steps.CHECK_MODEL, OK, "model loads, golden outputs match"))
    else:
        names = ", ".join(str(c.get("name")) for c in failed) or f"exit {exit_code}"
        add(CheckResult(steps.CHECK_MODEL, CRITICAL, f"runtime check failed ({names}): roll back"))
    warn, crit = policy.ranges(inventory_host, sla)
    host.p99_warning, host.p99_critical = warn.get("p99_ms"), crit.get("p99_ms")
    own = "p99_ms" in policy.critical or "p99_ms" in dict(
        getattr(inventory_host, "critical", None) or {}
    )
    p99 = host.p99_ms
    if p99 is None:
        add(CheckResult(steps.CHECK_LATENCY, UNKNOWN, "the runtime report has no p99 latency"))
        return
    if host.p99_warning is None and host.p99_critical is None:
        add(CheckResult(steps.CHECK_LATENCY, OK, f"p99 {p99:.2f} ms (no SLA set)"))
        return
    state = nagios.judge(p99, host.p99_warning, host.p99_critical)
    sla_text = f" (SLA {sla:g} ms)" if sla else ""
    if state == CRITICAL:
        limit = f"critical range {host.p99_critical}" if own or not sla else f"{sla:g} ms SLA"
        message = f"p99 {p99:.2f} ms over the {limit}"
    elif state == WARNING:
        message = f"p99 {p99:.2f} ms outside the warning range {host.p99_warning}{sla_text}"
    else:
        message = f"p99 {p99:.2f} ms within " + (f"{sla:g} ms" if sla else "its thresholds")
    add(CheckResult(steps.CHECK_LATENCY, state, message))


_BUNDLE_FIX = re.compile(r"(: (upload or rebuild|remove it or rebuild)\b[^:]*)?\.?\s*$")


def _releases_check(name: str, facts: facts_cmd.HostFacts, policy: HealthPolicy) -> CheckResult:
    """Releases on disk that never passed their runtime check: WARNING (an interrupted run left
    them; `invoke prune` removes them), OK while a live deploy's lock says it is checking."""
    unchecked = decisions.unchecked_releases(facts)
    if not unchecked:
        count = len(facts.releases) if "releases" in facts.asked else None
        said = f"{count} on disk, " if count is not None else ""
        return CheckResult(steps.CHECK_RELEASES, OK, f"{said}each passed its check")
    names = ", ".join(unchecked)
    lock = facts.lock
    if lock is not None and not lock_cmd.stale_reason(
        lock.holder, lock.age_s, max_age_s=policy.stale_lock_s
    ):
        who = lock_cmd.describe_holder(lock.holder)
        return CheckResult(
            steps.CHECK_RELEASES, OK, f"{names} not checked yet: the deploy in progress ({who})"
        )
    return CheckResult(
        steps.CHECK_RELEASES,
        WARNING,
        f"{names} never passed its runtime check (an interrupted run left it): "
        f"`invoke prune --host {name}` removes it",
    )


def _fact_only(problem: str) -> str:
    """ "...; the file is damaged: upload or rebuild the bundle." -> "...; the file is damaged"."""
    return _BUNDLE_FIX.sub("", problem.strip())


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
