"""The checks of checklist phase 1 (preflight), each `-> (status, summary, facts)`: lint,
tests, data validation and leakage, the trained model (artifacts, parity, learned), the
dependency doctor. `phases.run_preflight` runs them in order and logs each as a step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

# A quick, meaningful default subset: the pure unit tests of the model contract and the
# checklist itself. `--tests all` runs the whole suite; `--tests none` records a skip.
DEFAULT_TESTS = ("tests/unit/test_spans.py", "tests/unit/test_checklist.py")


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
    """Validate the configured labeled set and divide it as a run does (sealed calibration
    split, time folds); any window sharing bars across the calibration boundary or between a
    fold's held-out and training windows fails."""
    from moola_core.data import labeled, splits
    from moola_core.data.problems import errors_only
    from moola_core.train.data import load_labeled_frame, prepare_data

    frame = load_labeled_frame(config)
    problems = errors_only(labeled.validate_labeled(frame))
    if problems:
        shown = "; ".join(str(p) for p in problems[:3])
        return "failed", f"{len(problems)} problem(s) in the labeled set: {shown}", {}
    data = prepare_data(config, frame)
    ids = data.window_ids
    checks = [
        (
            "calibration",
            splits.Split(ids(data.dev), [], ids(data.calibration)),
            config.split.embargo_minutes,
        )
    ]
    for k, fold in enumerate(data.folds, start=1):
        seen = list(fold.train) + list(fold.early_stopping)
        checks.append((f"fold {k}", splits.Split(ids(seen), [], ids(fold.held)), 0.0))
    leaks = {name: splits.leakage_report(frame, split, embargo) for name, split, embargo in checks}
    bad = {name: r for name, r in leaks.items() if not r.ok}
    facts = {
        "windows": len(frame),
        "development": len(data.dev),
        "calibration": len(data.calibration),
        "folds": [len(f.held) for f in data.folds],
        "purged": len(data.purged),
        "leaking_pairs": sum(len(r.pairs) for r in leaks.values()),
    }
    if bad:
        name, report = next(iter(bad.items()))
        return (
            "failed",
            (
                f"the division leaks at {name}: {len(report.pairs)} pair(s), "
                f"{len(report.embargo_breaches)} embargo breach(es)"
            ),
            facts,
        )
    return (
        "ok",
        (
            f"{len(frame)} windows valid; {facts['development']} in "
            f"{len(data.folds)} folds ({'/'.join(map(str, facts['folds']))}) and "
            f"{facts['calibration']} sealed for calibration, with no leakage"
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
    """'' when the run learned (in every fold the validation loss fell below its first epoch's,
    and its out-of-fold span IoU beats the majority baseline's), else why not, in a few words."""
    import json

    metrics = json.loads((run_path / "metrics.json").read_text())
    if "oof" not in metrics:
        return "it was trained before out-of-fold runs; train it again"
    learning = metrics.get("learning") or {}
    if not learning.get("val_loss_fell"):
        return (
            "the validation loss never fell below its first epoch's in some fold "
            f"(first {learning.get('first_val_loss')}, best {learning.get('best_val_loss')})"
        )
    model = metrics["oof"]["span_iou"]["value"]
    majority = metrics.get("baselines", {}).get("majority", {}).get("oof", {}).get("span_iou")
    if majority is None:
        return "no majority baseline recorded to compare with; train the run again"
    if not model > majority["value"]:
        return (
            f"out-of-fold span IoU {model:.3f} is not above the majority baseline's "
            f"{majority['value']:.3f}"
        )
    return ""


def check_doctor(root: Path) -> tuple[str, str, dict]:
    """The dependency doctor of `invoke doctor`: a failing check fails, warnings are reported."""
    from moola_ops.checklist.doctor import doctor_checks

    checks = doctor_checks(str(root))
    failed = [c for c in checks if c["status"] == "fail"]
    warned = [c for c in checks if c["status"] == "warn"]
    facts = {c["name"]: c["detail"] for c in checks}
    if failed:
        shown = "; ".join(f"{c['name']}: {c['detail']} -> {c['fix']}" for c in failed[:3])
        return "failed", f"{len(failed)} doctor check(s) failed: {shown}", facts
    note = f" ({len(warned)} warning(s): {', '.join(c['name'] for c in warned)})" if warned else ""
    return "ok", f"{len(checks)} doctor checks pass{note}", facts
