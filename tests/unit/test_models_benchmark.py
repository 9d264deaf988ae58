"""benchmarks/models.py end to end on tiny models: it trains, chooses on validation, tests once
on fresh data and streams, simulates the gate, and prints the issue's JSON keys last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KEYS_BY_MODEL = (
    "stream_false_alarms_per_1k_bars",
    "stream_detection_delay_p50_bars",
    "stream_recall_within_5_bars",
)


def test_the_quick_run_writes_its_page_and_ends_with_one_json_object(tmp_path):
    out = tmp_path / "models.md"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "models.py"),
            "--quick",
            "--seeds",
            "17,13",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    for key in KEYS_BY_MODEL:
        assert set(summary[key]) == {"live", "after_the_fact", "linear", "heuristic"}, key
        assert set(summary[key + "_ci"]) == set(summary[key])
    for key in ("gate_false_pass_rate", "gate_power_at_0_05"):
        assert 0.0 <= summary[key] <= 1.0
    assert 0.0 <= summary["calibration_ece_fresh"] <= 1.0
    assert 0.0 <= summary["abstain_recall_fresh"] <= 1.0
    assert summary["live_variant"] in ("jade", "jade_nopos")
    assert summary["after_the_fact_variant"] == "jade_after"
    assert summary["provenance"]["versions"]["torch"] and summary["quick"] is True
    page = out.read_text()
    for heading in (
        "## Validation: out of fold",
        "## Test once: the stream",
        "## Test once: calibration and the abstain threshold",
        "## The gate's error rates at real data sizes (simulation)",
    ):
        assert heading in page
