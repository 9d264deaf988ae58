"""The data pipeline end to end and the `invoke data.*` tasks as a user runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moola_core.data.labeled import read_labeled, validate_labeled
from moola_core.data.pipeline import run_data_pipeline

REPO = Path(__file__).resolve().parents[2]


def invoke(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    result = invoke("data.market", "--out", str(out), "--seed", "4", "--bars", "4000", "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_pipeline_summary_and_files(tmp_path):
    summary = run_data_pipeline(tmp_path, seed=1, n_bars=3000, n_windows=60)
    for name in ("bars.parquet", "labeled.parquet", "split.json", "leakage.json", "summary.json"):
        assert (tmp_path / name).exists(), name
    assert summary["bars"]["n"] == 3000
    assert summary["labeled"]["windows"] == 60 and summary["labeled"]["errors"] == 0
    assert summary["labeled"]["valid_at_expansion_start"] == 1.0
    split = summary["split"]
    assert split["train"] + split["val"] + split["test"] + split["purged"] == 60
    assert summary["leakage"]["ok"] is True
    again = run_data_pipeline(tmp_path / "again", seed=1, n_bars=3000, n_windows=60)
    assert (tmp_path / "labeled.parquet").read_bytes() == (
        tmp_path / "again" / "labeled.parquet"
    ).read_bytes()
    assert again["split"] == {**split, "path": str(tmp_path / "again" / "split.json")}


def test_market_task_writes_a_valid_set(generated):
    out, summary = generated
    assert summary["labeled"]["windows"] == 174
    assert not [
        p for p in validate_labeled(read_labeled(out / "labeled.parquet")) if p.severity == "error"
    ]


def test_validate_task_exit_codes_and_listing(generated, tmp_path):
    out, _ = generated
    good = invoke("data.validate", "--path", str(out / "labeled.parquet"))
    assert good.returncode == 0 and "ok" in good.stdout
    df = read_labeled(out / "labeled.parquet")
    df.loc[3, "label"] = "breakout"
    df.loc[5, "expansion_end"] = 200
    df.assign(features=[f.tolist() for f in df["features"]]).to_parquet(tmp_path / "bad.parquet")
    bad = invoke("data.validate", "--path", str(tmp_path / "bad.parquet"))
    assert bad.returncode == 1
    assert "row 3, column label" in bad.stdout and "row 5, column expansion_end" in bad.stdout
    as_json = invoke("data.validate", "--path", str(tmp_path / "bad.parquet"), "--json")
    doc = json.loads(as_json.stdout)
    assert doc["ok"] is False and {p["row"] for p in doc["problems"]} >= {3, 5}
    strict = invoke("data.validate", "--path", str(out / "labeled.parquet"), "--strict")
    assert strict.returncode == 1  # augmented copies share bars


def test_leakage_task(generated, tmp_path):
    out, _ = generated
    ok = invoke(
        "data.leakage", "--path", str(out / "labeled.parquet"), "--split", str(out / "split.json")
    )
    assert ok.returncode == 0 and "no leakage" in ok.stdout
    split = json.loads((out / "split.json").read_text())
    moved = next(w for w in split["train"] if "-aug" in w)
    split["train"].remove(moved)
    split["test"].append(moved)
    (tmp_path / "leaky.json").write_text(json.dumps(split))
    leaky = invoke(
        "data.leakage",
        "--path",
        str(out / "labeled.parquet"),
        "--split",
        str(tmp_path / "leaky.json"),
    )
    assert leaky.returncode == 1 and "LEAK" in leaky.stdout and moved in leaky.stdout


def test_user_errors_are_one_line_without_traceback(tmp_path):
    missing = invoke("data.validate", "--path", str(tmp_path / "none.parquet"))
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    bad_difficulty = invoke("data.market", "--out", str(tmp_path), "--difficulty", "brutal")
    assert bad_difficulty.returncode == 1 and "unknown difficulty" in bad_difficulty.stderr
    assert "Traceback" not in bad_difficulty.stderr
