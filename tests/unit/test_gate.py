"""Phase 2's quality gate: the verdict from paired differences, what deploy may ship
(gate_allows), and the phase failing, overridden and shown in the checklist."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moola_core.bundle.gate import gate_allows
from moola_core.train.gate import evaluate_gate
from moola_ops.checklist import spec

N = 60


def _truth(rng):
    start = rng.integers(40, 80, N)
    return {
        "label": rng.integers(0, 2, N),
        "start": start,
        "end": start + rng.integers(5, 15, N),
        "group": np.arange(N) // 2,
    }


def _shifted(truth, rng, spread):
    """Predictions whose boundaries are off by up to `spread` bars (0: perfect)."""
    s = truth["start"] + rng.integers(-spread, spread + 1, N)
    e = np.maximum(s, truth["end"] + rng.integers(-spread, spread + 1, N))
    return {"label": truth["label"], "start": s, "end": e}


def _predictions(model_spread, linear_spread, heuristic_spread, test_model_spread=None):
    rng = np.random.default_rng(0)
    out = {"baselines": {"heuristic": {}, "linear": {}}}
    for split in ("val", "test"):
        truth = _truth(rng)
        spread = model_spread if split == "val" or test_model_spread is None else test_model_spread
        out[split] = {**_shifted(truth, rng, spread), "truth": truth}
        out["baselines"]["linear"][split] = _shifted(truth, rng, linear_spread)
        out["baselines"]["heuristic"][split] = _shifted(truth, rng, heuristic_spread)
    return out


def test_a_clearly_better_model_passes():
    gate = evaluate_gate(_predictions(0, 4, 8), n_boot=300)
    assert gate["passed"] is True
    assert {(c["split"], c["baseline"]) for c in gate["checks"]} == {
        ("val", "heuristic"),
        ("val", "linear"),
        ("test", "heuristic"),
        ("test", "linear"),
    }
    assert all(c["ci_low"] > 0 for c in gate["checks"] if c["split"] == "val")
    assert gate["summary"].startswith("quality gate passed")


def test_a_model_no_better_than_the_linear_baseline_fails_on_validation():
    gate = evaluate_gate(_predictions(4, 4, 8), n_boot=300)
    assert gate["passed"] is False
    failed = [c for c in gate["checks"] if not c["ok"]]
    assert [(c["split"], c["baseline"]) for c in failed] == [("val", "linear")]
    assert "val vs linear" in gate["summary"] and "FAIL" in gate["summary"]


def test_a_regression_on_test_beyond_its_ci_fails():
    gate = evaluate_gate(_predictions(0, 4, 8, test_model_spread=12), n_boot=300)
    assert gate["passed"] is False
    failed = {(c["split"], c["rule"]) for c in gate["checks"] if not c["ok"]}
    assert failed and all(f == ("test", "no_regression") for f in failed)


def test_a_run_without_the_linear_baseline_cannot_pass():
    predictions = _predictions(0, 4, 8)
    del predictions["baselines"]["linear"]
    gate = evaluate_gate(predictions, n_boot=100)
    assert gate["passed"] is False and "no predictions" in gate["summary"]


def test_gate_allows_reads_only_the_manifest():
    passed = {"run_id": "r1", "metrics": {"gate": {"passed": True, "metric": "span_iou"}}}
    assert gate_allows(passed) == (True, "r1 passed the quality gate (span_iou).")
    failed = {"run_id": "r2", "metrics": {"gate": {"passed": False, "summary": "val vs linear"}}}
    ok, why = gate_allows(failed)
    assert not ok and "r2 failed the quality gate (val vs linear)" in why and "--override" in why
    overridden = {
        "run_id": "r2",
        "metrics": {
            "gate": {
                "passed": False,
                "override": {"reason": "hotfix", "by": "ana", "at": "2026-11-27"},
            }
        },
    }
    ok, why = gate_allows(overridden)
    assert ok and "ana" in why and "hotfix" in why
    ok, why = gate_allows({"run_id": "r3", "metrics": {}})
    assert not ok and "no quality-gate result" in why
    assert gate_allows({"gate": {"passed": True}})[0] is True  # a run's metrics dict
    blank = {"metrics": {"gate": {"passed": False, "override": {"reason": "  "}}}}
    assert gate_allows(blank)[0] is False


def test_gate_allows_takes_a_real_manifest(tmp_path):
    from moola_core.bundle.build import build_bundle
    from moola_core.bundle.verify import verify_bundle
    from tests.unit.tiny_runs import freeze_runtime_code, make_tiny_run

    code = freeze_runtime_code(tmp_path / "code")
    make_tiny_run(tmp_path / "runs", "r-ok", metrics={"gate": {"passed": True}})
    make_tiny_run(tmp_path / "runs", "r-bad", metrics={"gate": {"passed": False}})
    for run_id, version, expected in (("r-ok", "v0.1", True), ("r-bad", "v0.2", False)):
        built = build_bundle(
            version,
            run_id,
            runs_dir=tmp_path / "runs",
            out_dir=tmp_path / "bundles",
            code_root=code,
        )
        assert gate_allows(verify_bundle(built.path).manifest)[0] is expected


# -- the phase ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weak_runs(tmp_path_factory):
    """Two tiny 1-epoch runs: they cannot beat the linear baseline, so the gate fails."""
    import torch

    from moola_core.train import load_config, train_run
    from moola_core.train.data import prepare_data

    torch.set_num_threads(1)
    runs_dir = tmp_path_factory.mktemp("runs")
    config = load_config(
        overrides={
            "data.n_windows": 60,
            "model.hidden": 4,
            "model.layers": 1,
            "optim.max_epochs": 1,
        }
    )
    data = prepare_data(config)
    for seed in (1, 2):
        train_run(
            config.model_copy(update={"seed": seed}),
            runs_dir,
            progress="none",
            data=data,
            n_boot=50,
        )
    return runs_dir


def test_select_fails_on_a_failing_gate_and_an_override_ships_it_signed(
    weak_runs, tmp_path, monkeypatch
):
    from moola_ops.checklist import states as cl
    from moola_ops.checklist.phases import run_select
    from moola_ops.log.journal import read_events

    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("MOOLA_LOG", str(log))
    report = run_select(runs_dir=weak_runs, n_boot=200)
    assert not report.ok
    assert [(s.step, s.status) for s in report.steps] == [("choice", "ok"), ("gate", "failed")]
    assert "--override" in report.steps[1].summary
    selected = json.loads((weak_runs / "selected.json").read_text())
    assert selected["gate"]["passed"] is False and "override" not in selected["gate"]
    run_metrics = json.loads((weak_runs / selected["run_id"] / "metrics.json").read_text())
    assert run_metrics["gate"]["passed"] is False  # what a bundle of this run would carry
    assert gate_allows(run_metrics)[0] is False
    states = {
        s.check: s for s in cl.checklist_states(spec.load_checklist(), read_events(log)).steps
    }
    assert states["select.gate"].state == "failed"

    report = run_select(runs_dir=weak_runs, n_boot=200, override="demo of a signed override")
    assert report.ok
    assert report.steps[1].summary.startswith("OVERRIDDEN by ")
    selected = json.loads((weak_runs / "selected.json").read_text())
    assert selected["gate"]["override"]["reason"] == "demo of a signed override"
    run_metrics = json.loads((weak_runs / selected["run_id"] / "metrics.json").read_text())
    assert gate_allows(run_metrics)[0] is True
    states = {
        s.check: s for s in cl.checklist_states(spec.load_checklist(), read_events(log)).steps
    }
    assert states["select.gate"].state == "done"
    assert "OVERRIDDEN" in states["select.gate"].detail and states["select.gate"].by

    from moola_core.errors import MoolaError

    with pytest.raises(MoolaError, match="needs a reason"):
        run_select(runs_dir=weak_runs, n_boot=50, override="   ")


def test_preflight_model_step_fails_a_run_that_did_not_learn(weak_runs):
    from moola_core.train import load_config
    from moola_ops.checklist.preflight import check_learned, check_model

    run = sorted(p for p in weak_runs.iterdir() if p.is_dir())[0]
    # one epoch: no later validation loss to have fallen
    assert "validation loss never fell" in check_learned(run)
    status, summary, _ = check_model(load_config(None), weak_runs, run.name)
    assert status == "failed" and "did not learn" in summary

    history = run / "history.jsonl"
    rows = [json.loads(history.read_text().splitlines()[0])]
    rows.append({**rows[0], "epoch": 2, "val_loss": rows[0]["val_loss"] - 1.0})
    history.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = json.loads((run / "metrics.json").read_text())
    majority = metrics["baselines"]["majority"]["val"]["span_iou"]["value"]
    metrics["val"]["span_iou"]["value"] = majority  # no better than predicting the mean span
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert "not above the majority baseline" in check_learned(run)
    metrics["val"]["span_iou"]["value"] = majority + 0.1
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert check_learned(run) == ""
