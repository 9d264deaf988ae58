"""`invoke bundle`, `bundle.verify`, `bundle.show` as a person runs them (real Invoke, real files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from moola_core.bundle.build import REPO_ROOT
from tests.unit.tiny_runs import make_tiny_run


def invoke(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MOOLA_LOG": str(cwd / "deploy.jsonl")}
    return subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(REPO_ROOT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bundle_tasks_build_verify_show_and_refuse(tmp_path):
    make_tiny_run(tmp_path / "runs", "run-7", metrics={"calibration_split": {"accuracy": 0.75}})
    (tmp_path / "runs" / "selected.json").write_text(json.dumps({"run_id": "run-7"}))

    built = invoke(tmp_path, "bundle", "--version", "v0.3", "--json")
    assert built.returncode == 0, built.stderr
    result = json.loads(built.stdout)
    assert result["run_id"] == "run-7" and result["path"] == "bundles/moola-v0.3.tar.gz"

    again = invoke(tmp_path, "bundle", "--version", "v0.3")
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "already exists and bundle versions are immutable" in again.stderr
    forced = invoke(tmp_path, "bundle", "--version", "v0.3", "--force", "--json")
    assert forced.returncode == 0 and json.loads(forced.stdout)["replaced"] is True
    bad = invoke(tmp_path, "bundle", "--version", "v0.3;reboot")
    assert bad.returncode == 1 and "is not valid" in bad.stderr

    log = [json.loads(line) for line in (tmp_path / "deploy.jsonl").read_text().splitlines()]
    assert [(e["phase"], e["status"]) for e in log] == [
        ("bundle", "ok"),
        ("bundle", "refused"),
        ("bundle", "ok"),
    ]
    assert log[2]["detail"]["force"] is True and log[2]["detail"]["replaced"] is True

    verified = invoke(tmp_path, "bundle.verify", "bundles/moola-v0.3.tar.gz", "--json")
    assert json.loads(verified.stdout)["sha256"] == result["sha256"]
    shown = invoke(tmp_path, "bundle.show", "bundles/moola-v0.3.tar.gz")
    assert shown.returncode == 0 and "run-7" in shown.stdout
    # metrics are a table, one row per metric and a column per split, not a flattened dump
    rows = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines() if line.strip()}
    assert rows["metric"] == ["calibration_split"] and rows["accuracy"] == ["0.750"], shown.stdout
    # a version works where a path does, as for `invoke deploy --bundle v0.3`
    by_version = invoke(tmp_path, "bundle.show", "v0.3", "--json")
    assert by_version.returncode == 0 and json.loads(by_version.stdout)["version"] == "v0.3"
    assert invoke(tmp_path, "bundle.verify", "v0.3").returncode == 0
    missing = invoke(tmp_path, "bundle.show", "v9.9")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "bundles/moola-v9.9.tar.gz exists (build it with `invoke bundle" in missing.stderr

    archive = tmp_path / "bundles" / "moola-v0.3.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    broken = invoke(tmp_path, "bundle.verify", str(archive))
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert broken.stderr.startswith("error: ")


def test_a_bundle_from_an_unselected_run_needs_an_override_with_a_reason(tmp_path):
    metrics = {
        "oof": {"span_iou": {"value": 0.61, "ci_low": 0.55, "ci_high": 0.67}},
        "calibration_split": {"span_iou": {"value": 0.58, "ci_low": 0.5, "ci_high": 0.66}},
    }
    make_tiny_run(tmp_path / "runs", "run-7", metrics=metrics)
    make_tiny_run(tmp_path / "runs", "run-8", metrics=metrics)
    (tmp_path / "runs" / "selected.json").write_text(json.dumps({"run_id": "run-7"}))
    refused = invoke(tmp_path, "bundle", "--version", "v0.4", "--run", "run-8")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "run run-8 is not the selected run run-7" in refused.stderr
    assert not (tmp_path / "bundles" / "moola-v0.4.tar.gz").exists()
    built = invoke(
        tmp_path,
        "bundle",
        "--version",
        "v0.4",
        "--run",
        "run-8",
        "--override",
        "hotfix: run-7 misses the new session filter",
    )
    assert built.returncode == 0, built.stderr
    line = json.loads((tmp_path / "deploy.jsonl").read_text().splitlines()[-1])
    assert line["detail"]["override"] == "hotfix: run-7 misses the new session filter"
    assert line["detail"]["run_id"] == "run-8" and line["detail"]["selected_run"] == "run-7"
    shown = invoke(tmp_path, "bundle.show", "v0.4")
    span = next(v for v in shown.stdout.splitlines() if v.startswith("span_iou"))
    assert span.split(maxsplit=1)[1].split() == [
        "0.610",
        "[0.550,",
        "0.670]",
        "0.580",
        "[0.500,",
        "0.660]",
    ]
