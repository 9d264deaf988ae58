"""The checklist phases that are not the deploy engine: preflight (1), select (2), verify (5),
accept (6). Each runs its checks, records one deployment-log line per step, and returns a plain
report the task renders. Heavy libraries (torch, pandas) load inside the functions only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moola_core.errors import MoolaError
from moola_ops import steps as names
from moola_ops.journal import Journal, read_events

PREFLIGHT_STEPS = ("lint", "tests", "data", "model", "doctor")
# A quick, meaningful default subset: the pure unit tests of the model contract and the
# checklist itself. `--tests all` runs the whole suite; `--tests none` records a skip.
DEFAULT_TESTS = ("tests/unit/test_spans.py", "tests/unit/test_checklist.py")


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


def _tail(text: str, lines: int = 1) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])[:300]


def check_lint(root: Path) -> tuple[str, str, dict]:
    """ruff check and ruff format --check over the project."""
    ruff = [sys.executable, "-m", "ruff"]
    found = []
    for args in (["check"], ["format", "--check"]):
        proc = subprocess.run(
            [*ruff, *args, "--output-format=concise", "."], cwd=root, capture_output=True, text=True
        )
        if proc.returncode:
            # concise lines look like "path:line:col: CODE message"
            found += [ln for ln in proc.stdout.splitlines() if ln.count(":") >= 3]
            found += [] if found else [_tail(proc.stderr or proc.stdout)]
    if found:
        shown = "; ".join(found[:3])
        return (
            "failed",
            (
                f"ruff found {len(found)} problem(s): {shown}; fix them or run "
                "`ruff check --fix . && ruff format .`"
            ),
            {"problems": found[:20]},
        )
    return "ok", "ruff check and format --check pass", {}


def check_tests(root: Path, tests: str) -> tuple[str, str, dict]:
    """pytest over the configured subset ('none' skips, 'all' runs tests/)."""
    if tests == "none":
        return "skipped", "tests skipped (--tests none)", {}
    targets = ["tests"] if tests == "all" else (tests.split(",") if tests else list(DEFAULT_TESTS))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    summary = _tail(proc.stdout)
    if proc.returncode:
        return "failed", f"pytest failed: {summary}", {"targets": targets}
    return "ok", f"pytest {' '.join(targets)}: {summary}", {"targets": targets}


def check_data(config) -> tuple[str, str, dict]:
    """Validate the configured labeled set and split it; any leak across splits fails."""
    from moola_core.data import labeled, splits
    from moola_core.data.problems import errors_only
    from moola_core.train.data import load_labeled_frame

    frame = load_labeled_frame(config)
    problems = errors_only(labeled.validate_labeled(frame))
    if problems:
        shown = "; ".join(str(p) for p in problems[:3])
        return "failed", f"{len(problems)} problem(s) in the labeled set: {shown}", {}
    fractions = (
        1.0 - config.split.val_share - config.split.test_share,
        config.split.val_share,
        config.split.test_share,
    )
    split = splits.split_labeled(frame, fractions, config.split.embargo_minutes)
    report = splits.leakage_report(frame, split, config.split.embargo_minutes)
    facts = {
        "windows": len(frame),
        "train": len(split.train),
        "val": len(split.val),
        "test": len(split.test),
        "leaking_pairs": len(report.pairs),
    }
    if not report.ok:
        return (
            "failed",
            (
                f"the split leaks: {len(report.pairs)} pair(s), "
                f"{len(report.embargo_breaches)} embargo breach(es)"
            ),
            facts,
        )
    return (
        "ok",
        (
            f"{len(frame)} windows valid; split {facts['train']}/{facts['val']}/"
            f"{facts['test']} with no leakage"
        ),
        facts,
    )


def check_model(config, runs_dir: Path, run_id: str | None) -> tuple[str, str, dict]:
    """The model loads (weights_only), gives finite outputs, and the same seed gives the same."""
    import io

    import torch

    from moola_core.models import build_model
    from moola_core.spec import N_FEATURES, WINDOW_LEN

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, WINDOW_LEN, N_FEATURES, generator=gen)  # [B, T, F]
    valid = torch.ones(8, WINDOW_LEN, dtype=torch.bool)

    def built(seed: int):
        torch.manual_seed(seed)
        return build_model(config.model_dict())

    a, b = built(config.seed), built(config.seed)
    pa, pb = a.predict(x, valid), b.predict(x, valid)
    if not all(torch.equal(pa[k], pb[k]) for k in pa):
        return "failed", "two models built with the same seed disagree: seeding is broken", {}
    facts: dict[str, Any] = {"parameters": sum(p.numel() for p in a.parameters())}
    if not torch.isfinite(pa["class_probs"]).all():
        return "failed", "a fresh model gives non-finite class probabilities", facts
    # which trained runs to check: the one asked for, else the selected one, else every candidate
    if run_id:
        run_ids = [run_id]
    elif (runs_dir / "selected.json").exists():
        import json

        selected = runs_dir / "selected.json"
        try:
            run_ids = [json.loads(selected.read_text())["run_id"]]
        except (ValueError, KeyError, TypeError):  # the bare "'run_id'" said nothing useful
            return "failed", f"{selected} has no run_id: run `invoke select` again", facts
    else:
        from moola_core.train.runs import list_runs

        run_ids = [r.run_id for r in list_runs(runs_dir)]
    from moola_core.train.runs import load_model

    for rid in run_ids:
        model = load_model(rid, runs_dir)  # weights loaded with weights_only=True
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)  # what a host does with the shipped weights
        out1, out2 = model.predict(x, valid), model.predict(x, valid)
        if not all(torch.equal(out1[k], out2[k]) for k in out1):
            return "failed", f"run {rid} gives different outputs for the same input", facts
        if not torch.isfinite(out1["class_probs"]).all():
            return "failed", f"run {rid} gives non-finite class probabilities", facts
        learned = check_learned(runs_dir / rid)
        if learned:
            return "failed", f"run {rid} did not learn: {learned}", facts
    facts["runs_checked"] = run_ids
    what = f"{len(run_ids)} trained run(s)" if run_ids else "a fresh model (no trained run yet)"
    learned = "; validation loss fell and beats the majority baseline" if run_ids else ""
    return (
        "ok",
        f"{what}: load with weights_only, finite, deterministic{learned}; seeding reproducible",
        facts,
    )


def check_learned(run_path: Path) -> str:
    """'' when the run learned (its validation loss fell below the first epoch's and its
    validation span IoU beats the majority baseline's), else why not, in a few words."""
    import json

    history = [
        json.loads(line)
        for line in (run_path / "history.jsonl").read_text().splitlines()
        if line.strip()
    ]
    losses = [row["val_loss"] for row in history if row.get("val_loss") is not None]
    if len(losses) < 2 or not min(losses[1:]) < losses[0]:
        return f"the validation loss never fell below its first epoch's ({losses[:1]})"
    metrics = json.loads((run_path / "metrics.json").read_text())
    model = metrics["val"]["span_iou"]["value"]
    majority = metrics.get("baselines", {}).get("majority", {}).get("val", {}).get("span_iou")
    if majority is None:
        return "no majority baseline recorded to compare with; train the run again"
    if not model > majority["value"]:
        return (
            f"validation span IoU {model:.3f} is not above the majority baseline's "
            f"{majority['value']:.3f}"
        )
    return ""


def check_doctor(root: Path) -> tuple[str, str, dict]:
    """The dependency doctor of `invoke doctor`: a failing check fails, warnings are reported."""
    from moola_ops.doctor import doctor_checks

    checks = doctor_checks(str(root))
    failed = [c for c in checks if c["status"] == "fail"]
    warned = [c for c in checks if c["status"] == "warn"]
    facts = {c["name"]: c["detail"] for c in checks}
    if failed:
        shown = "; ".join(f"{c['name']}: {c['detail']} -> {c['fix']}" for c in failed[:3])
        return "failed", f"{len(failed)} doctor check(s) failed: {shown}", facts
    note = f" ({len(warned)} warning(s): {', '.join(c['name'] for c in warned)})" if warned else ""
    return "ok", f"{len(checks)} doctor checks pass{note}", facts


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
    journal = Journal("preflight")
    checks = {
        "lint": lambda: check_lint(root),
        "tests": lambda: check_tests(root, tests),
        "data": lambda: check_data(config),
        "model": lambda: check_model(config, runs_dir, run_id),
        "doctor": lambda: check_doctor(root),
    }
    steps = []
    for name in PREFLIGHT_STEPS:
        fn = checks[name]
        if name in skip:
            fn = lambda name=name: ("skipped", f"{name} skipped (--skip)", {})  # noqa: E731
        steps.append(_run_step(journal, name, fn))
        if on_step:
            on_step(steps[-1])
    return PhaseReport("preflight", journal.deployment, steps)


# --- phase 2: select --------------------------------------------------------------------------


def run_select(
    *,
    runs_dir: str | os.PathLike = "runs",
    metric: str | None = None,
    n_boot: int = 1000,
    override: str | None = None,
) -> PhaseReport:
    """Phase 2: choose a run on held-out metrics (moola_core.train.select_run), then the quality
    gate (moola_core.train.gate): the phase fails unless the chosen run beats the heuristic and
    the linear baseline on validation (paired CI above 0) without regressing on test, or a
    person overrides it with a reason (`override`), recorded as a sign-off in the log."""
    from moola_core.train import select_run

    kwargs: dict[str, Any] = {"n_boot": n_boot}
    if metric:
        kwargs["primary_metric"] = metric
    if override is not None:
        if not override.strip():
            raise MoolaError('--override needs a reason, e.g. --override "hotfix, approved by X".')
        kwargs["override"] = override
        kwargs["by"] = _operator()
    journal = Journal("select")
    choice: dict[str, Any] = {}

    def choose() -> tuple[str, str, dict]:
        choice.update(select_run(runs_dir, **kwargs))
        why = choice.get("reason") or ""
        return "ok", f"selected {choice.get('run_id')}" + (f": {why}" if why else ""), choice

    step = _run_step(journal, "choice", choose)
    steps = [step]
    if step.status == "ok":
        steps.append(_run_step(journal, "gate", lambda: _gate_step(choice)))
    return PhaseReport("select", journal.deployment, steps, {"selection": choice})


def _gate_step(choice: dict) -> tuple[str, str, dict]:
    """The gate verdict of the chosen run as a step: ok, ok with a named override, or failed."""
    gate = choice.get("gate") or {}
    facts = {"run_id": choice.get("run_id"), "gate": gate}
    if gate.get("passed"):
        return "ok", f"{choice.get('run_id')}: {gate.get('summary')}", facts
    override = gate.get("override")
    if override:
        return (
            "ok",
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
    from moola_ops.health import OK, STATE_NAMES, WARNING, run_healthcheck

    run = run_healthcheck(
        selection, deep=True, timeout_s=timeout_s, inventory=inventory, record=False
    )
    events = read_events()
    from moola_ops.checklist import serving_deployment

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
    return PhaseReport("verify", "", steps, {"hosts": [h.to_dict() for h in run.hosts]})


# --- phase 6: accept --------------------------------------------------------------------------


def run_accept(deployment: str, by: str, note: str = "", *, checklist_path=None) -> PhaseReport:
    """Phase 6: record a named sign-off, refused unless phases 1-5 of `deployment` passed."""
    from moola_ops.checklist import DEFAULT_CHECKLIST, checklist_states, load_checklist

    by = " ".join((by or "").split())
    if not by or len(by) > 80:
        raise MoolaError("--by must name the person signing off (1-80 characters)")
    checklist = load_checklist(checklist_path or DEFAULT_CHECKLIST)
    report = checklist_states(checklist, read_events(), deployment)
    open_steps = [s for s in report.steps if s.phase <= 5 and s.state not in ("done", "skipped")]
    journal = Journal("accept", bundle=report.bundle, deployment=deployment, actor=by)
    if open_steps:
        listed = ", ".join(f"{s.phase}/{s.step} {s.state}" for s in open_steps[:6])
        journal.record(
            "",
            "signoff",
            "refused",
            summary=f"phases 1-5 not passed: {listed}",
            operator=_operator(),
        )
        raise MoolaError(
            f"deployment {deployment} cannot be accepted: phases 1-5 have steps not done "
            f"({listed}); run them and check with `invoke checklist --deployment {deployment}`"
        )
    journal.record(
        "", "signoff", "ok", summary=f"accepted by {by}", operator=_operator(), hosts=report.hosts
    )
    journal.record(
        "", "notes", "ok" if note else "skipped", summary=note or "no release notes given (--note)"
    )
    steps = [
        StepOutcome(
            "signoff", "ok", f"{report.bundle} on {', '.join(report.hosts)} accepted by {by}"
        ),
        StepOutcome("notes", "ok" if note else "skipped", note or "no notes"),
    ]
    return PhaseReport("accept", deployment, steps, {"bundle": report.bundle, "by": by})


def _operator() -> str:
    from moola_ops.journal import current_actor

    return current_actor()
