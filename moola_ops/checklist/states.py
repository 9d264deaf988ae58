"""The eight-phase checklist: loaded from checklists/deployment.yaml, its states from the log.

The YAML says which steps exist; `CHECKS` says which deployment-log line proves each check, so a
step's state (done, failed, pending, skipped, with who and when) is a pure function of the log.
Nothing here writes the log: the tasks that run a phase record their own lines. The definition
(the YAML's schema and `CHECKS`) is `moola_ops/checklist/spec.py`; this module reads states.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moola_core.errors import MoolaError
from moola_ops.checklist.spec import CHECKS, Checklist
from moola_ops.log import steps as names


@dataclass
class StepState:
    """A step's state for one deployment, and the log line that decided it."""

    phase: int
    step: str
    title: str
    check: str
    manual: bool
    state: str  # one of STATES
    by: str = ""  # actor of the deciding line
    at: str = ""  # time of the deciding line
    hosts: dict[str, str] = field(default_factory=dict)  # per-host state where it applies
    detail: str = ""


@dataclass
class ChecklistReport:
    """Every step's state for one deployment (or for no deployment yet)."""

    deployment: str | None
    bundle: str
    hosts: list[str]
    steps: list[StepState]

    def phase_states(self) -> dict[int, str]:
        """One state per phase: failed if any step failed; "not needed" if every step was
        skipped (no rollback happened); pending if a step is still open; overridden if a step
        was overridden (never "done"); done if all are done or skipped."""
        result = {}
        for number in sorted({s.phase for s in self.steps}):
            states = [s.state for s in self.steps if s.phase == number]
            if "failed" in states:
                result[number] = "failed"
            elif all(st == "skipped" for st in states):
                result[number] = "not needed"
            elif all(st in ("done", "skipped", "overridden") for st in states):
                result[number] = "overridden" if "overridden" in states else "done"
            else:
                result[number] = "pending"
        return result

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view for --json."""
        from dataclasses import asdict

        return {
            "deployment": self.deployment,
            "bundle": self.bundle,
            "hosts": self.hosts,
            "phases": self.phase_states(),
            "steps": [asdict(s) for s in self.steps],
        }


_STATUS_TO_STATE = {
    "ok": "done",
    "overridden": "overridden",
    "failed": "failed",
    "aborted": "failed",
    "refused": "failed",
    "skipped": "skipped",
}


def deployment_ids(events: list[dict]) -> list[str]:
    """Ids of deploy runs in the log, oldest first."""
    seen: dict[str, None] = {}
    for e in events:
        if e.get("phase") == names.DEPLOY and e.get("deployment"):
            seen.setdefault(e["deployment"], None)
    return list(seen)


def run_of(event: dict) -> str:
    """The training run a log line is about: detail.run_id, or a selection's facts.run_id."""
    detail = event.get("detail") or {}
    facts = detail.get("facts") if isinstance(detail.get("facts"), dict) else {}
    return str(detail.get("run_id") or facts.get("run_id") or "")


def serving_deployment(events: list[dict], host: str, release: str | None) -> str | None:
    """The newest deploy run that left `release` live on `host` (its post-switch check passed);
    else the newest deploy run touching `host`. Verify results are recorded under it, so a
    failed deploy of another version is never credited with them."""
    if release:
        for e in reversed(events):
            if (
                e.get("phase") == names.DEPLOY
                and e.get("host") == host
                and e.get("bundle") == release
                and e.get("step") == names.POST_CHECK
                and e.get("status") == "ok"
            ):
                return e.get("deployment") or None
    return latest_deployment(events, host)


def latest_deployment(events: list[dict], host: str | None = None) -> str | None:
    """The newest deploy run in the log (touching `host` when given), or None."""
    for e in reversed(events):
        if e.get("phase") == names.DEPLOY and (host is None or e.get("host") == host):
            return e.get("deployment") or None
    return None


def _verdict(lines: list[dict]) -> tuple[str, dict, dict[str, str]]:
    """State of a check from its log lines: the newest final line per host decides."""
    final = [e for e in lines if e.get("status") in _STATUS_TO_STATE]
    if not final:
        return "pending", {}, {}
    per_host: dict[str, dict] = {}
    for e in final:
        per_host[e.get("host", "")] = e  # newest wins (lines are oldest first)
    hosts = {h: _STATUS_TO_STATE[e["status"]] for h, e in per_host.items() if h}
    states = [_STATUS_TO_STATE[e["status"]] for e in per_host.values()]
    newest = max(per_host.values(), key=lambda e: e.get("time", ""))
    if "failed" in states:
        deciding = next(e for e in per_host.values() if _STATUS_TO_STATE[e["status"]] == "failed")
        return "failed", deciding, hosts
    if all(s == "skipped" for s in states):
        return "skipped", newest, hosts
    if "overridden" in states:
        deciding = next(e for e in per_host.values() if e["status"] == "overridden")
        return "overridden", deciding, hosts
    return "done", newest, hosts


def checklist_states(
    checklist: Checklist, events: list[dict], deployment: str | None = None
) -> ChecklistReport:
    """Each step's state for `deployment` (default: the newest one) from the log's events."""
    if deployment is None:
        deployment = latest_deployment(events)
    elif deployment not in {e.get("deployment") for e in events}:
        known = deployment_ids(events)[-5:]
        raise MoolaError(
            f"deployment {deployment!r} is not in the log; recent ones: {', '.join(known) or 'none'}"
        )
    own = [e for e in events if deployment and e.get("deployment") == deployment]
    opened = min((e.get("time", "") for e in own), default=None)
    hosts = sorted({e["host"] for e in own if e.get("host")})
    bundle = next((e["bundle"] for e in own if e.get("bundle")), "")
    # the archive this deployment shipped (its open line, else a promote line)
    sha256 = next(
        (
            str(e["detail"]["sha256"])
            for e in own
            if isinstance(e.get("detail"), dict) and e["detail"].get("sha256")
        ),
        "",
    )
    # the bundle's build line (phase 3) says which run it was built from (phase 2)
    built = [
        e
        for e in events
        if e.get("phase") == names.BUNDLE
        and e.get("step") == names.BUNDLE_BUILD
        and bundle
        and e.get("bundle") == bundle
        and e.get("status") == "ok"
        and (opened is None or e.get("time", "") <= opened)
    ]
    build_line = built[-1] if built else None
    bundle_run = run_of(build_line) if build_line else ""
    # the "after" window ends when another deploy run touches one of these hosts
    # (a deploy that failed before its release went live leaves this one serving: it does not)
    closes = min(
        (
            e.get("time", "")
            for e in events
            if e.get("phase") == names.DEPLOY
            and e.get("deployment") != deployment
            and e.get("host") in hosts
            and opened
            and e.get("time", "") > opened
            and e.get("step") == names.POST_CHECK
            and e.get("status") == "ok"
        ),
        default=None,
    )

    steps = []
    for phase in checklist.phases:
        for step in phase.steps:
            check = CHECKS[step.check]
            matching = [e for e in events if check.proves(e)]
            tie = ""  # why the lines found do not count for this deployment
            if check.scope == "before":
                lines = [e for e in matching if opened is None or e.get("time", "") <= opened]
                if check.phase == names.SELECT and bundle_run and lines:
                    # phase 2 counts for the run the bundle was built from: its own selection,
                    # else an override recorded when the bundle was built
                    chosen = [e for e in lines if run_of(e) in ("", bundle_run)]
                    override = (
                        (build_line.get("detail") or {}).get("override") if build_line else ""
                    )
                    if chosen:
                        lines = chosen
                    elif override:
                        lines = [
                            {
                                **build_line,
                                "status": "overridden",
                                "detail": {
                                    "summary": f"run {bundle_run} was not selected; bundle built with "
                                    f"override: {override}"
                                },
                            }
                        ]
                    else:
                        tie = (
                            f"bundle {bundle} was built from run {bundle_run}, which no "
                            f"selection chose (last: {run_of(lines[-1]) or 'unknown'}): "
                            f"select it with `invoke select`, or rebuild with --override "
                            "REASON"
                        )
                lines = lines[-1:]
            elif check.scope == "bundle":
                lines = [
                    e
                    for e in matching
                    if bundle
                    and e.get("bundle") == bundle
                    and (opened is None or e.get("time", "") <= opened)
                ][-1:]
            elif check.scope == "deployment":
                lines = [e for e in matching if deployment and e.get("deployment") == deployment]
            else:  # after
                lines = [
                    e
                    for e in matching
                    if opened
                    and e.get("host") in hosts
                    and e.get("time", "") >= opened
                    and (closes is None or e.get("time", "") < closes)
                ]
                if check.phase in (names.VERIFY_PHASE, names.HEALTHCHECK) and bundle:
                    # only checks of this deployment's release count (not of the one still
                    # live after this deployment failed, nor of the one rolled back to)
                    lines = [e for e in lines if e.get("bundle") == bundle]
            if check.phase == "select" and deployment:
                # a deploy that shipped past the gate (--override-gate) says so on phase 2
                forced = [
                    e
                    for e in own
                    if e.get("step") == names.GATE
                    and e.get("status") == "overridden"
                    and (e.get("detail") or {}).get("override")
                ]
                if forced and (tie or not lines or lines[-1].get("status") != "ok"):
                    lines, tie = forced[-1:], ""
            state, deciding, per_host = _verdict(lines)
            if check.phase == names.BUNDLE and state == "done" and sha256:
                built_sha = str((deciding.get("detail") or {}).get("sha256") or "")
                if built_sha and built_sha != sha256:
                    tie = (
                        f"the deployed archive (sha256 {sha256[:12]}) is not the one built "
                        f"and verified as {bundle} (sha256 {built_sha[:12]})"
                    )
            if tie:
                state, per_host = "failed", {}
            if state == "pending" and step.optional and deployment:
                state = "skipped"
            detail = deciding.get("detail", {}) if deciding else {}
            if tie:
                detail = {"summary": tie}
            steps.append(
                StepState(
                    phase=phase.number,
                    step=step.id,
                    title=step.title,
                    check=step.check,
                    manual=step.manual,
                    state=state,
                    by=deciding.get("actor", ""),
                    at=deciding.get("time", ""),
                    hosts=per_host,
                    detail=str(detail.get("summary") or detail.get("error") or ""),
                )
            )
    return ChecklistReport(deployment=deployment, bundle=bundle, hosts=hosts, steps=steps)
