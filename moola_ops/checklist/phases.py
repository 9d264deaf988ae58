"""The checklist phases that are not the deploy engine: preflight (1), select (2), verify (5),
accept (6). Each runs its checks, records one deployment-log line per step, and returns a plain
report the task renders. Heavy libraries (torch, pandas) load inside the functions only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moola_core.errors import MoolaError
from moola_ops.checklist.preflight import (
    check_data,
    check_doctor,
    check_lint,
    check_model,
    check_tests,
)
from moola_ops.log import steps as names
from moola_ops.log.journal import Journal, read_events

PREFLIGHT_STEPS = names.PREFLIGHT_STEPS


@dataclass
class StepOutcome:
    """One step of a phase: its status (ok, failed, skipped), a one-line summary, facts."""

    step: str
    status: str
    summary: str
    duration_s: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class PhaseReport:
    """What one phase run did, step by step, under its deployment-log id."""

    phase: str
    deployment: str
    steps: list[StepOutcome]
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "deployment": self.deployment,
            "ok": self.ok,
            "steps": [asdict(s) for s in self.steps],
            **self.facts,
        }


def _run_step(
    journal: Journal, name: str, fn: Callable[[], tuple[str, str, dict]], bundle: str = ""
) -> StepOutcome:
    """Run one check; any exception is that step's failure (recorded), never the phase's crash."""
    started = time.monotonic()
    try:
        status, summary, facts = fn()
    except KeyboardInterrupt:
        journal.record("", name, "aborted", duration_s=time.monotonic() - started)
        raise
    except Exception as exc:  # a check that crashes has failed; say why in one line
        status, summary, facts = "failed", _one_line(exc), {}
    outcome = StepOutcome(name, status, summary, round(time.monotonic() - started, 3), facts)
    # facts nest under one key: they can never clash with the log line's own fields
    journal.record(
        "",
        name,
        status,
        duration_s=outcome.duration_s,
        bundle=bundle,
        summary=summary,
        facts=_jsonable(facts),
    )
    return outcome


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:400]


def _jsonable(facts: dict) -> dict:
    import json

    return json.loads(json.dumps(facts, default=str))


# --- phase 1: preflight -----------------------------------------------------------------------


def run_preflight(
    *,
    config_path: str | None = None,
    tests: str = "",
    skip: tuple[str, ...] = (),
    runs_dir: str | os.PathLike = "runs",
    run_id: str | None = None,
    root: str | os.PathLike = ".",
    on_step: Callable[[StepOutcome], None] | None = None,
) -> PhaseReport:
    """Phase 1: lint, tests, data validation + leakage, model checks, dependency doctor."""
    from moola_core.train import load_config

    unknown = set(skip) - set(PREFLIGHT_STEPS)
    if unknown:
        raise MoolaError(f"unknown preflight step(s) {sorted(unknown)}: use {PREFLIGHT_STEPS}")
    root, runs_dir = Path(root), Path(runs_dir)
    config = load_config(config_path)
    journal = Journal(names.PREFLIGHT_PHASE)
    checks = {
        names.PREFLIGHT_LINT: lambda: check_lint(root),
        names.PREFLIGHT_TESTS: lambda: check_tests(root, tests),
        names.PREFLIGHT_DATA: lambda: check_data(config),
        names.PREFLIGHT_MODEL: lambda: check_model(config, runs_dir, run_id),
        names.PREFLIGHT_DOCTOR: lambda: check_doctor(root),
    }
    steps = []
    for name in PREFLIGHT_STEPS:
        fn = checks[name]
        if name in skip:
            fn = lambda name=name: ("skipped", f"{name} skipped (--skip)", {})  # noqa: E731
        steps.append(_run_step(journal, name, fn))
        if on_step:
            on_step(steps[-1])
    return PhaseReport(names.PREFLIGHT_PHASE, journal.deployment, steps)


# --- phase 2: select --------------------------------------------------------------------------


def run_select(
    *,
    runs_dir: str | os.PathLike = "runs",
    metric: str | None = None,
    n_boot: int = 1000,
    override: str | None = None,
    reviewed=None,
) -> PhaseReport:
    """Phase 2: choose a variant on out-of-fold metrics (moola_core.train.select_run), then the
    quality gate (moola_core.train.gate): the phase fails unless the variant beats the heuristic
    and the linear baseline out of fold and is no worse on the gate's stream than they are
    beyond the stated margins, or a person overrides it with a reason (`override`), recorded
    in the log as an override (its own state, not a pass). `reviewed`
    (moola_ops.labeling.holdout.reviewed_gate) adds the live release on reviewed windows."""
    from moola_core.train import select_run

    kwargs: dict[str, Any] = {"n_boot": n_boot, "reviewed": reviewed}
    if metric:
        kwargs["primary_metric"] = metric
    if override is not None:
        if not override.strip():
            raise MoolaError('--override needs a reason, e.g. --override "hotfix, approved by X".')
        kwargs["override"] = override
        kwargs["by"] = _operator()
    journal = Journal(names.SELECT)
    choice: dict[str, Any] = {}

    def choose() -> tuple[str, str, dict]:
        choice.update(select_run(runs_dir, **kwargs))
        why = choice.get("reason") or ""
        return "ok", f"selected {choice.get('run_id')}" + (f": {why}" if why else ""), choice

    step = _run_step(journal, names.SELECT_CHOICE, choose)
    steps = [step]
    if step.status == "ok":
        steps.append(_run_step(journal, names.SELECT_GATE, lambda: _gate_step(choice)))
    return PhaseReport(names.SELECT, journal.deployment, steps, {"selection": choice})


def _gate_step(choice: dict) -> tuple[str, str, dict]:
    """The gate verdict of the chosen run as a step: ok, overridden (a named person's reason,
    its own status in the log), or failed."""
    gate = choice.get("gate") or {}
    facts = {"run_id": choice.get("run_id"), "gate": gate}
    if gate.get("passed"):
        return "ok", f"{choice.get('run_id')}: {gate.get('summary')}", facts
    override = gate.get("override")
    if override:
        facts["override"] = override
        return (
            "overridden",
            (
                f"OVERRIDDEN by {override['by']} ({override['at']}): {override['reason']}; "
                f"{gate.get('summary')}"
            ),
            facts,
        )
    return (
        "failed",
        (
            f"{choice.get('run_id')}: {gate.get('summary') or 'no gate result'}; train a better "
            'model or ship it anyway with `invoke select --override "reason"`'
        ),
        facts,
    )


# --- phase 5: verify --------------------------------------------------------------------------


def run_verify(selection: str, *, timeout_s: float = 300.0, inventory=None) -> PhaseReport:
    """Phase 5: the runtime check through `current` on each host, then sanity and latency
    through the live server (a real request answered by `current`'s release; a burst's p99 over
    HTTP against the SLA; docs/serving.md). A host that never started serving is judged on the
    runtime check alone.

    Recorded under the newest deployment of each host, so the checklist of that deployment
    shows phase 5 done (or failed) with who and when.
    """
    from moola_ops.watch.health import OK, STATE_NAMES, WARNING
    from moola_ops.watch.health_run import run_healthcheck

    run = run_healthcheck(
        selection, deep=True, timeout_s=timeout_s, inventory=inventory, record=False
    )
    events = read_events()
    from moola_ops.checklist.states import serving_deployment

    steps = []
    for h in run.hosts:
        # the deploy run that made this release live (not a later one that failed)
        deployment = serving_deployment(events, h.host, h.release)
        journal = Journal(names.VERIFY_PHASE, bundle=h.release or "", deployment=deployment)
        by_name = {c.name: c for c in h.checks}
        # sanity = reachable, current valid, checksums, model + golden; latency is its own step
        sanity_checks = (
            names.CHECK_SSH,
            names.CHECK_CURRENT,
            names.CHECK_CHECKSUMS,
            names.CHECK_MODEL,
            names.CHECK_SERVICE,  # the live server answers as `current`
        )
        bad = [c for c in h.checks if c.name in sanity_checks and c.state != OK]
        sanity_ok = not bad and names.CHECK_MODEL in by_name
        if sanity_ok:
            summary = f"{h.release}: model loads, golden outputs match"
            if h.service_up:
                summary += f"; the live server answers as {h.release}"
        else:
            summary = "; ".join(f"{c.name}: {c.message}" for c in bad) or "no model check ran"
        journal.record(
            h.host,
            names.VERIFY_SANITY,
            "ok" if sanity_ok else "failed",
            summary=summary,
            duration_s=h.duration_s,
            no_deployment=deployment is None,
        )
        steps.append(
            StepOutcome(f"{h.host}:sanity", "ok" if sanity_ok else "failed", summary, h.duration_s)
        )
        # through the live server when it serves (the path users hit), else the runtime check
        latency = by_name.get(names.CHECK_SERVICE_LATENCY) or by_name.get(names.CHECK_LATENCY)
        lat_ok = latency is not None and latency.state in (OK, WARNING)
        lat_summary = latency.message if latency else "no latency measured"
        if latency is not None and latency.name == names.CHECK_SERVICE_LATENCY:
            lat_summary = f"live server: {lat_summary}"
        journal.record(
            h.host,
            names.VERIFY_LATENCY,
            "ok" if lat_ok else "failed",
            summary=lat_summary,
            p50_ms=h.p50_ms,
            p99_ms=h.p99_ms,
            sla_p99_ms=h.sla_p99_ms,
            service_ms=h.service_ms,
            service_p99_ms=h.service_p99_ms,
            state=STATE_NAMES[latency.state] if latency else "UNKNOWN",
        )
        steps.append(
            StepOutcome(
                f"{h.host}:latency",
                "ok" if lat_ok else "failed",
                lat_summary,
                0.0,
                {"p50_ms": h.p50_ms, "p99_ms": h.p99_ms, "sla_p99_ms": h.sla_p99_ms},
            )
        )
    return PhaseReport(names.VERIFY_PHASE, "", steps, {"hosts": [h.to_dict() for h in run.hosts]})


# --- phase 6: accept --------------------------------------------------------------------------


def run_accept(deployment: str, by: str, note: str = "", *, checklist_path=None) -> PhaseReport:
    """Phase 6: record a named sign-off, refused unless phases 1-5 of `deployment` passed."""
    from moola_ops.checklist.spec import DEFAULT_CHECKLIST, load_checklist
    from moola_ops.checklist.states import checklist_states

    by = " ".join((by or "").split())
    if not by or len(by) > 80:
        raise MoolaError("--by must name the person signing off (1-80 characters)")
    checklist = load_checklist(checklist_path or DEFAULT_CHECKLIST)
    report = checklist_states(checklist, read_events(), deployment)
    open_steps = [
        s for s in report.steps if s.phase <= 5 and s.state not in ("done", "skipped", "overridden")
    ]
    overridden = [f"{s.phase}/{s.step}" for s in report.steps if s.state == "overridden"]
    journal = Journal(names.ACCEPT, bundle=report.bundle, deployment=deployment, actor=by)
    if open_steps:
        listed = ", ".join(f"{s.phase}/{s.step} {s.state}" for s in open_steps[:6])
        journal.record(
            "",
            names.ACCEPT_SIGNOFF,
            "refused",
            summary=f"phases 1-5 not passed: {listed}",
            operator=_operator(),
        )
        raise MoolaError(
            f"deployment {deployment} cannot be accepted: phases 1-5 have steps not done "
            f"({listed}); run them and check with `invoke checklist --deployment {deployment}`"
        )
    summary = f"accepted by {by}"
    if overridden:
        summary += f", with overridden steps {', '.join(overridden)}"
    journal.record(
        "",
        names.ACCEPT_SIGNOFF,
        "ok",
        summary=summary,
        operator=_operator(),
        hosts=report.hosts,
        overridden=overridden,
    )
    journal.record(
        "",
        names.ACCEPT_NOTES,
        "ok" if note else "skipped",
        summary=note or "no release notes given (--note)",
    )
    steps = [
        StepOutcome(
            names.ACCEPT_SIGNOFF,
            "ok",
            f"{report.bundle} on {', '.join(report.hosts)} accepted by {by}",
        ),
        StepOutcome(names.ACCEPT_NOTES, "ok" if note else "skipped", note or "no notes"),
    ]
    return PhaseReport(names.ACCEPT, deployment, steps, {"bundle": report.bundle, "by": by})


def _operator() -> str:
    from moola_ops.log.journal import current_actor

    return current_actor()
