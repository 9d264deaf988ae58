"""benchmarks/negatives.py: its threshold rule and paired bootstrap are right, and it runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "negatives.py"


def _module():
    spec = importlib.util.spec_from_file_location("negatives_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_f1_threshold_answers_exactly_the_patterns_when_they_separate():
    neg = _module()
    confidence = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.75])
    has = np.array([True, True, True, False, False, True])
    t = neg.f1_threshold(confidence, has)
    assert np.array_equal(confidence >= t, has)
    # overlapping scores: answering everything (F1 2*4/(6+4) = 0.8) beats the 0.9-only cut
    t2 = neg.f1_threshold(np.array([0.9, 0.1, 0.5, 0.4]), np.array([True, True, False, False]))
    assert t2 == pytest.approx(0.1)


def _parts(answered, has, iou):
    answered, has = np.array(answered), np.array(has)
    iou = np.array(iou, dtype=float) * has
    return {
        "tp": (answered & has).astype(float)[None],
        "ans": answered.astype(float)[None],
        "pos": has.astype(float)[None],
        "iou": iou[None],
        "iou_answered": (iou * (answered & has))[None],
    }


def test_bootstrap_figures_and_paired_differences_match_hand_counts():
    neg = _module()
    has = [True, True, True, False, False, False]
    arms = {
        "threshold": _parts([True, True, True, True, True, True], has, [1, 0.5, 0, 0, 0, 0]),
        "objectness": _parts([True, True, False, False, False, False], has, [1, 0.5, 0, 0, 0, 0]),
    }
    out = neg.bootstrap(arms, n_boot=200)
    assert out["threshold"]["precision"][0] == pytest.approx(0.5)  # 3 of 6 answered hold one
    assert out["threshold"]["recall"][0] == pytest.approx(1.0)
    assert out["objectness"]["precision"][0] == pytest.approx(1.0)
    assert out["objectness"]["recall"][0] == pytest.approx(2 / 3, abs=1e-4)
    assert out["objectness"]["f1"][0] == pytest.approx(0.8)  # 2*2 / (2 + 3)
    assert out["threshold"]["span_iou"][0] == pytest.approx(0.5)  # mean over the 3 patterns
    assert out["objectness"]["span_iou_answered"][0] == pytest.approx(0.75)
    diff = out["objectness"]["minus_threshold"]
    assert diff["span_iou"] == [0.0, 0.0, 0.0]  # same spans: the paired difference is exact
    assert diff["precision"][0] == pytest.approx(0.5)
    assert diff["precision"][1] <= 0.5 <= diff["precision"][2]


def test_the_quick_run_ends_with_one_json_object(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["chosen_on_validation"] in summary["val"]
    assert set(summary["test"]) == {
        "threshold",
        "threshold_f1",
        "objectness",
        "objectness_f1",
        "linear_detector",
    }
    assert summary["provenance"]["versions"]["torch"]
    for arm in summary["test"].values():
        assert 0.0 <= arm["f1"][1] <= arm["f1"][0] <= arm["f1"][2] <= 1.0
