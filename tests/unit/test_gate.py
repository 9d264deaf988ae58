"""Phase 2's quality gate: the decision rule (superiority out of fold with a Bonferroni share
of the error rate, non-inferiority of stream false alarms), what deploy may ship
(gate_state / gate_allows), and the phase failing (exit 1), overridden (its own state) and
shown in the checklist and the log."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from moola_core.bundle.gate import gate_allows, gate_state
from moola_core.streams import StreamScore
from moola_core.train.gate import (
    REVIEWED_WHERE,
    WINDOW_MARGIN,
    Evidence,
    GateRules,
    add_reviewed,
    decide,
    evaluate_gate,
    reviewed_rules,
)
from moola_ops.checklist import spec

REPO = Path(__file__).resolve().parents[2]
N = 120


def _evidence(name, values, stream=None, n=N):
    ids = tuple(f"w{i}" for i in range(n))
    return Evidence(name, ids, np.arange(n) // 2, np.asarray(values, dtype=float), stream or [])


def _windows(mean_gain, sd=0.1, seed=0, n=N):
    """(candidate, linear, heuristic) whose per-window differences have this mean and spread."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.4, 0.8, n)
    noise = rng.normal(0, sd, n)
    noise -= noise.mean()  # the sample's mean gain is exactly mean_gain
    candidate = base + mean_gain + noise
    return (
        _evidence("cand", candidate, n=n),
        _evidence("linear", base, n=n),
        _evidence("heuristic", base - 0.2, n=n),
    )


def _score(false_alarms_per_session, sessions=20, bars=390, delays=None):
    fa = np.full(sessions, false_alarms_per_session, dtype=np.int64)
    delays = np.array(delays if delays is not None else [0, 1, 2, 3] * 5, dtype=np.int64)
    return StreamScore(
        np.arange(sessions),
        np.full(sessions, bars),
        fa,
        np.full(sessions, bars - 20),
        fa * 2,
        np.arange(len(delays)) % sessions,
        delays,
    )


def test_a_clearly_better_variant_passes_with_a_stated_one_sided_bound():
    cand, linear, heuristic = _windows(0.08)
    gate = decide(cand, {"linear": linear, "heuristic": heuristic}, GateRules(n_boot=800))
    assert gate["passed"] is True
    checks = {c["name"]: c for c in gate["checks"] if c["evidence"] == "windows"}
    assert set(checks) == {"span_iou vs heuristic", "span_iou vs linear"}
    # no stream in this evidence: its checks say so instead of passing silently
    skipped = [c for c in gate["checks"] if c["evidence"] == "stream"]
    assert len(skipped) == 2 and all(c.get("skipped") for c in skipped)
    assert "no stream (not checked)" in gate["summary"]
    assert checks["span_iou vs linear"]["value"] == pytest.approx(0.08, abs=1e-3)
    assert 0 < checks["span_iou vs linear"]["bound"] < 0.08
    assert gate["summary"].startswith("quality gate passed for cand")
    assert gate["alpha"] == 0.025 and gate["variants_compared"] == 1


def test_a_variant_equal_to_the_linear_baseline_fails():
    cand, linear, heuristic = _windows(0.0)
    gate = decide(cand, {"linear": linear, "heuristic": heuristic}, GateRules(n_boot=800))
    assert gate["passed"] is False
    failed = [c["name"] for c in gate["checks"] if not c["ok"]]
    assert failed == ["span_iou vs linear"] and "FAIL" in gate["summary"]


def test_choosing_among_more_variants_needs_more_evidence():
    # a gain of about 2.3 standard errors (0.1 / sqrt(160)): enough at a one-sided 0.025
    # (z 1.96), not at 0.025 / 5 (z 2.58)
    cand, linear, heuristic = _windows(0.018, sd=0.1, n=160)
    comparators = {"linear": linear, "heuristic": heuristic}
    alone = decide(cand, comparators, GateRules(n_boot=4000))
    among_five = decide(cand, comparators, GateRules(n_boot=4000, variants_compared=5))
    assert alone["passed"] is True and among_five["passed"] is False
    bound = {
        g["variants_compared"]: next(c["bound"] for c in g["checks"] if c["baseline"] == "linear")
        for g in (alone, among_five)
    }
    assert bound[5] < 0 < bound[1]
    assert "/ 5 variants" in among_five["summary"]


def test_stream_false_alarms_may_exceed_a_baselines_only_by_the_stated_margin():
    cand, linear, heuristic = _windows(0.08)
    rules = GateRules(n_boot=500, recall_margin=None)
    # 3 false alarms per 390-bar session is 7.7 per 1,000 bars, 4 is 10.3
    quiet = {"linear": Evidence(**{**linear.__dict__, "stream": [_score(3)]})}
    quiet["heuristic"] = Evidence(**{**heuristic.__dict__, "stream": [_score(3)]})
    same = decide(Evidence(**{**cand.__dict__, "stream": [_score(3)]}), quiet, rules)
    assert same["passed"] is True and same["evidence"]["stream"] is True
    noisy = decide(Evidence(**{**cand.__dict__, "stream": [_score(4)]}), quiet, rules)
    assert noisy["passed"] is False
    failed = [c for c in noisy["checks"] if not c["ok"]]
    assert {c["metric"] for c in failed} == {"false_alarms_per_1k"}
    assert failed[0]["value"] == pytest.approx(1000 / 390, abs=1e-3) and failed[0]["margin"] == 1.0
    # without a stream (a labeled file) the verdict rests on the windows and says so
    bare = decide(cand, {"linear": linear, "heuristic": heuristic}, rules)
    assert bare["passed"] is True and bare["evidence"]["stream"] is False


def test_recall_non_inferiority_when_the_rules_ask_for_it():
    cand, linear, heuristic = _windows(0.08)
    rules = GateRules(n_boot=500, recall_margin=0.1, stream_against=("linear",))
    sure = _score(1, delays=[0] * 20)
    late = _score(1, delays=[9] * 20)  # every expansion found 9 bars in: recall within 5 is 0
    base = {"linear": Evidence(**{**linear.__dict__, "stream": [sure]}), "heuristic": heuristic}
    gate = decide(Evidence(**{**cand.__dict__, "stream": [late]}), base, rules)
    (recall,) = [c for c in gate["checks"] if c.get("metric") == "recall_within"]
    assert recall["ok"] is False and recall["value"] == pytest.approx(-1.0)


def test_a_run_without_the_linear_baseline_cannot_pass():
    cand, _, heuristic = _windows(0.2)
    gate = decide(cand, {"heuristic": heuristic}, GateRules(n_boot=200))
    assert gate["passed"] is False and "span_iou vs linear: no predictions" in gate["summary"]


def test_against_the_live_release_on_reviewed_windows_the_candidate_may_trail_by_the_margin():
    # issue #25: not worse than the live release on reviewed windows, by more than WINDOW_MARGIN
    rules = reviewed_rules("span_iou", variants_compared=1, n_boot=800)
    for gain, ok in ((0.0, True), (-0.02, True), (-0.12, False)):
        cand, live, _ = _windows(gain, sd=0.1)
        live = replace(live, name="live", where=REVIEWED_WHERE)
        gate = decide(replace(cand, where=REVIEWED_WHERE), {"live": live}, rules)
        (check,) = gate["checks"]
        assert check["rule"] == "non_inferiority" and check["margin"] == WINDOW_MARGIN
        assert check["value"] == pytest.approx(gain, abs=1e-3)
        assert gate["passed"] is ok and check["ok"] is ok, (gain, check)
        assert f"> -{WINDOW_MARGIN:g}" in gate["summary"] and "reviewed" in gate["summary"]


def test_the_reviewed_verdict_joins_the_out_of_fold_one_and_can_fail_it():
    cand, linear, heuristic = _windows(0.08)
    oof = decide(cand, {"linear": linear, "heuristic": heuristic}, GateRules(n_boot=800))
    assert oof["passed"] is True
    worse, live, _ = _windows(-0.12)
    reviewed = decide(worse, {"live": replace(live, name="live")}, reviewed_rules("span_iou", 1))
    joined = add_reviewed(oof, reviewed)
    assert joined["passed"] is False and oof["passed"] is True  # the input is not changed
    assert [c["evidence"] for c in joined["checks"]].count("reviewed") == 1
    assert joined["summary"].startswith("quality gate FAILED: out of fold, quality gate passed")
    assert "against the live release" in joined["summary"]
    # no reviewed windows to judge on: recorded with the reason, not counted
    skipped = add_reviewed(oof, "no release is live")
    assert skipped["passed"] is True and skipped["checks"][-1]["skipped"] is True
    assert skipped["summary"].endswith("reviewed windows not checked: no release is live")


def test_evaluate_gate_pools_the_seeds_of_one_variant():
    rng = np.random.default_rng(3)
    start = rng.integers(40, 80, N)
    truth = {"label": [0] * N, "start": start.tolist(), "end": (start + 9).tolist()}
    truth["group"] = (np.arange(N) // 2).tolist()

    def shifted(spread, seed):
        r = np.random.default_rng(seed)
        s = start + r.integers(-spread, spread + 1, N)
        return {"label": [0] * N, "start": s.tolist(), "end": (s + 9).tolist()}

    def predictions(seed):
        return {
            "oof": {**shifted(1, seed), "truth": truth, "window_id": [f"w{i}" for i in range(N)]},
            "baselines": {
                "linear": {"oof": shifted(4, 100)},
                "heuristic": {"oof": shifted(8, 101)},
            },
        }

    gate = evaluate_gate([predictions(1), predictions(2)], name="jade", n_boot=500)
    assert gate["passed"] is True and gate["evidence"]["windows"] == N


def test_gate_state_reads_only_the_manifest():
    assert gate_state({"run_id": "r1", "metrics": {"gate": {"passed": True}}})[0] == "passed"
    failed = {"run_id": "r2", "metrics": {"gate": {"passed": False, "summary": "vs linear"}}}
    state, why = gate_state(failed)
    assert state == "failed" and "r2 failed the quality gate (vs linear)" in why
    assert "--override-gate" in why
    over = {"reason": "hotfix", "by": "ana", "at": "2026-11-27"}
    state, why = gate_state(
        {"run_id": "r2", "metrics": {"gate": {"passed": False, "override": over}}}
    )
    assert state == "overridden" and "ana overrode it" in why and "hotfix" in why
    state, why = gate_state({"run_id": "r3", "metrics": {}})
    assert state == "unjudged" and "never went through `invoke select`" in why
    blank = {"metrics": {"gate": {"passed": False, "override": {"reason": "  "}}}}
    assert gate_state(blank)[0] == "failed"
    # what deploy asks without a deploy-time override
    assert gate_allows({"gate": {"passed": True}})[0] is True  # a run's metrics dict
    assert gate_allows({"run_id": "r3", "metrics": {}})[0] is False


def test_gate_state_takes_a_real_manifest(tmp_path):
    from moola_core.bundle.build import build_bundle
    from moola_core.bundle.verify import verify_bundle
    from tests.unit.tiny_runs import freeze_runtime_code, make_tiny_run

    code = freeze_runtime_code(tmp_path / "code")
    make_tiny_run(tmp_path / "runs", "r-ok", metrics={"gate": {"passed": True}})
    make_tiny_run(tmp_path / "runs", "r-bad", metrics={"gate": {"passed": False}})
    make_tiny_run(tmp_path / "runs", "r-never", metrics={"oof": {}})
    for run_id, version, expected in (
        ("r-ok", "v0.1", "passed"),
        ("r-bad", "v0.2", "failed"),
        ("r-never", "v0.3", "unjudged"),
    ):
        built = build_bundle(
            version, run_id, runs_dir=tmp_path / "runs", out_dir=tmp_path / "b", code_root=code
        )
        assert gate_state(verify_bundle(built.path).manifest)[0] == expected


# -- the phase ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weak_runs(tmp_path_factory):
    """Two tiny 1-epoch runs of one variant: they cannot beat the linear baseline."""
    import torch

    from moola_core.train import train_run
    from moola_core.train.data import prepare_data
    from tests.unit.tiny_runs import tiny_config

    torch.set_num_threads(1)
    runs_dir = tmp_path_factory.mktemp("runs")
    config = tiny_config(**{"model.hidden": 4, "optim.max_epochs": 1})
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


def _invoke(*args, env=None):
    import os

    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_invoke_select_exits_1_with_one_sentence_when_the_gate_fails(weak_runs, tmp_path):
    log = tmp_path / "log.jsonl"
    done = _invoke("select", "--runs-dir", str(weak_runs), env={"MOOLA_LOG": str(log)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "quality gate FAILED for jade" in done.stdout and "select: FAILED" in done.stdout
    assert '--override "reason"' in done.stdout
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(e["step"], e["status"]) for e in lines] == [("choice", "ok"), ("gate", "failed")]


def test_select_fails_on_a_failing_gate_and_an_override_is_its_own_state(
    weak_runs, tmp_path, monkeypatch
):
    from moola_ops.checklist import states as cl
    from moola_ops.checklist.phases import run_select
    from moola_ops.log.journal import read_events
    from moola_ops.render import LogFilter, format_table, log_rows

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
    assert gate_state(run_metrics)[0] == "failed"
    states = {
        s.check: s for s in cl.checklist_states(spec.load_checklist(), read_events(log)).steps
    }
    assert states["select.gate"].state == "failed"

    report = run_select(runs_dir=weak_runs, n_boot=200, override="demo of a signed override")
    assert report.ok  # the phase goes on, as an override, not as a pass
    assert report.steps[1].status == "overridden"
    assert report.steps[1].summary.startswith("OVERRIDDEN by ")
    selected = json.loads((weak_runs / "selected.json").read_text())
    assert selected["gate"]["override"]["reason"] == "demo of a signed override"
    run_metrics = json.loads((weak_runs / selected["run_id"] / "metrics.json").read_text())
    assert gate_state(run_metrics)[0] == "overridden"
    events = read_events(log)
    assert events[-1]["status"] == "overridden"
    report_states = cl.checklist_states(spec.load_checklist(), events)
    states = {s.check: s for s in report_states.steps}
    assert states["select.gate"].state == "overridden" and states["select.gate"].by
    assert "OVERRIDDEN" in states["select.gate"].detail
    assert report_states.phase_states()[2] == "overridden"
    # invoke log: its own status, the reason in full, and a filter for overrides
    only = [e for e in events if LogFilter(overridden=True).keep(e)]
    assert [e["step"] for e in only] == ["gate"]
    table = "\n".join(format_table(log_rows(only)))
    assert "overridden" in table and "demo of a signed override" in table

    from moola_core.errors import MoolaError

    with pytest.raises(MoolaError, match="needs a reason"):
        run_select(runs_dir=weak_runs, n_boot=50, override="   ")


def test_preflight_model_step_fails_a_run_that_did_not_learn(weak_runs):
    from moola_core.train import load_config
    from moola_ops.checklist.preflight import check_learned, check_model

    run = sorted(p for p in weak_runs.iterdir() if p.is_dir())[0]
    # one epoch per fold: no later validation loss to have fallen
    assert "validation loss never fell" in check_learned(run)
    status, summary, _ = check_model(load_config(None), weak_runs, run.name)
    assert status == "failed" and "did not learn" in summary

    metrics = json.loads((run / "metrics.json").read_text())
    metrics["learning"]["val_loss_fell"] = True
    majority = metrics["baselines"]["majority"]["oof"]["span_iou"]["value"]
    metrics["oof"]["span_iou"]["value"] = majority  # no better than predicting the mean span
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert "not above the majority baseline" in check_learned(run)
    metrics["oof"]["span_iou"]["value"] = majority + 0.1
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert check_learned(run) == ""


def _fake_run(runs_dir, run_id, variant, seed, pred, baselines, stream_fa, base_fa, truth, ids):
    """A finished run as select_run reads it: metrics.json and predictions.json (OOF windows,
    baselines, stream scores); no weights are needed to choose and gate."""
    from moola_core import metrics as M

    run = runs_dir / run_id
    run.mkdir(parents=True)
    listed = {k: np.asarray(v).tolist() for k, v in pred.items()}
    oof = {**listed, "truth": truth, "window_id": ids}
    predictions = {
        "oof": oof,
        "baselines": {
            k: {"oof": {kk: np.asarray(vv).tolist() for kk, vv in v.items()}}
            for k, v in baselines.items()
        },
        "stream": {
            "model": _score(stream_fa).to_dict(),
            "baselines": {k: _score(base_fa).to_dict() for k in baselines},
        },
    }
    (run / "predictions.json").write_text(json.dumps(predictions))
    metrics = {
        "run_id": run_id,
        "variant": variant,
        "seed": seed,
        "dataset_fingerprint": "sha256:same",
        "oof": M.evaluate(pred, truth, n_boot=50),
        "baselines": {},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_select_ships_the_best_variant_that_passed_the_gate(tmp_path):
    from moola_core.train import select_run

    rng = np.random.default_rng(5)
    start = rng.integers(40, 80, N)
    truth = {
        "label": [0] * N,
        "start": start.tolist(),
        "end": (start + 9).tolist(),
        "group": (np.arange(N) // 2).tolist(),
    }
    ids = [f"w{i}" for i in range(N)]

    def spans(spread, seed):
        r = np.random.default_rng(seed)
        s = start + r.integers(-spread, spread + 1, N)
        return {"label": np.zeros(N, int), "start": s, "end": s + 9}

    baselines = {"linear": spans(5, 100), "heuristic": spans(8, 101)}
    runs_dir = tmp_path / "runs"
    # "noisy": the best spans, but 5 false alarms per session where the baselines raise 2
    for seed in (1, 2):
        _fake_run(
            runs_dir, f"noisy-s{seed}", "noisy", seed, spans(0, seed), baselines, 5, 2, truth, ids
        )
    # "quiet": slightly worse spans, as few false alarms as the baselines
    for seed in (2, 1):
        _fake_run(
            runs_dir,
            f"quiet-s{seed}",
            "quiet",
            seed,
            spans(1, 10 + seed),
            baselines,
            2,
            2,
            truth,
            ids,
        )
    record = select_run(runs_dir, n_boot=100)
    assert record["variant"] == "quiet" and record["gate"]["passed"] is True
    assert record["run_id"] == "quiet-s1"  # the smallest seed
    assert "noisy scored higher but failed the gate" in record["reason"]
    noisy = json.loads((runs_dir / "noisy-s1" / "metrics.json").read_text())["gate"]
    assert noisy["passed"] is False and noisy["variants_compared"] == 2
