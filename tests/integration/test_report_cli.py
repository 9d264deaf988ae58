"""The front door: `invoke ab`, `invoke monitor`, `invoke report`, `invoke shadow` as a user runs
them (the real `.venv/bin/invoke` in a subprocess), over a local capture cache (--no-pull)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moola_core.data import labeled as labeled_io
from moola_core.data import synthetic
from moola_ops.serving.captures import add_local_file
from tests.unit.capture_factory import ab_traffic, write_lines

INVOKE = str(Path(sys.executable).parent / "invoke")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    frame = synthetic.make_labeled_set(n_windows=174, seed=7)
    outcomes = labeled_io.write_labeled(frame, tmp / "outcomes.parquet")
    records = ab_traffic(frame, 200, seed=1, live_acc=0.55, shadow_acc=0.95)
    raw = write_lines(tmp / "raw" / "20261127T170000Z-1.jsonl", records)
    add_local_file(tmp / "cache", "h1", "v0.1", raw)
    drifted = [
        dict(r, ohlc=[[o, h, lo, o] for o, h, lo, _ in r["ohlc"]])
        for r in records
        if r["role"] == "live"
    ]
    add_local_file(tmp / "cache", "h2", "v0.1", write_lines(tmp / "raw2" / raw.name, drifted))
    inventory = tmp / "hosts.yaml"
    inventory.write_text(
        "hosts:\n  h1: {hostname: 127.0.0.1, port: 9}\n  h2: {hostname: 127.0.0.1, port: 9}\n"
    )
    return {"tmp": tmp, "outcomes": outcomes, "inventory": inventory, "cache": tmp / "cache"}


def run(*args: str, env_log: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if env_log:
        env["MOOLA_LOG"] = str(env_log)
    return subprocess.run(
        [INVOKE, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )


def test_ab_json_from_the_cache(world):
    res = run(
        "ab",
        "--host",
        "h1",
        "--no-pull",
        "--no-record",
        "--json",
        "--outcomes",
        str(world["outcomes"]),
        "--cache",
        str(world["cache"]),
        "--inventory",
        str(world["inventory"]),
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["decision"] == "promote" and data["n_pairs"] == 200
    assert data["outcomes"]["accuracy"]["diff"]["ci_low"] > 0


def test_ab_with_a_missing_outcomes_file_is_one_sentence(world):
    res = run(
        "ab",
        "--host",
        "h1",
        "--no-pull",
        "--outcomes",
        "/nonexistent.parquet",
        "--inventory",
        str(world["inventory"]),
    )
    assert res.returncode != 0
    assert res.stderr.strip().startswith("error: --outcomes /nonexistent.parquet does not exist")
    assert "Traceback" not in res.stderr


def test_monitor_states_and_prometheus_file(world):
    prom = world["tmp"] / "prom" / "moola_monitor.prom"
    common = [
        "--no-pull",
        "--since",
        "2020-01-01T00:00:00Z",
        "--cache",
        str(world["cache"]),
        "--reference",
        str(world["outcomes"]),
        "--inventory",
        str(world["inventory"]),
    ]
    ok = run("monitor", "--host", "h1", "--prom", str(prom), *common)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("MOOLA-MONITOR OK - h1:")
    assert 'moola_monitor_feature_psi{host="h1",feature="body_pct"}' in prom.read_text()
    drifted = run("monitor", "--host", "h2", "--json", *common)
    assert drifted.returncode == 2
    assert json.loads(drifted.stdout)["state"] == "CRITICAL"
    unknown = run("monitor", "--host", "nope", "--inventory", str(world["inventory"]))
    assert unknown.returncode == 3 and unknown.stdout.startswith("MOOLA-MONITOR UNKNOWN - ")


def test_report_json(world):
    if not (world["cache"] / "h1" / "ab.json").is_file():  # run alone: make the A/B first
        test_ab_json_from_the_cache(world)
    out = world["tmp"] / "report.html"
    res = run(
        "report",
        "--out",
        str(out),
        "--runs-dir",
        str(world["tmp"] / "no-runs"),
        "--cache",
        str(world["cache"]),
        "--no-real",
        "--json",
        env_log=world["tmp"] / "log.jsonl",
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert out.is_file() and data["path"] == str(out)
    assert {"latency", "ab-h1"} <= set(data["figures"])
    assert "candidates" in data["missing"]


def test_shadow_refuses_an_unknown_action(world):
    res = run("shadow", "restart", "--host", "h1", "--inventory", str(world["inventory"]))
    assert res.returncode != 0
    assert "unknown shadow action 'restart'" in res.stderr
