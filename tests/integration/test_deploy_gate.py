"""Deploy reads phase 2's quality-gate verdict from the verified manifest (issue: no bad model
ships): a bundle whose run failed the gate, or was never judged, is refused before anything
reaches the host, unless a person's override is recorded in it (at selection) or given at
deploy time (--override-gate); the log shows the verdict either way, an override as its own
status."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from moola_ops import deploy as engine
from moola_ops.hosts.inventory import Inventory
from moola_ops.log.journal import read_events
from tests.integration.conftest import make_bundle, running_hosts

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

FAST = engine.Options(check_runs=3, check_warmup=1, check_backend="eager", serve=False)
FAILED_GATE = {"passed": False, "metric": "span_iou", "summary": "lost to the linear baseline"}


@pytest.fixture(scope="module")
def gate_host():
    with running_hosts(["gate-1"]) as (sandbox, _root):
        (host,) = Inventory.from_sandbox(sandbox, connect_timeout_s=5).resolve("gate-1")
        yield host


def _gate_step(journal_file, deployment):
    (event,) = [e for e in read_events(journal_file, deployment=deployment) if e["step"] == "gate"]
    return event


def _assert_refused_before_upload(result, journal_file, gate_host, version: str, *says: str):
    """Refused with exit 1, the sentences in the message, the gate step failed, nothing sent."""
    (outcome,) = result.outcomes
    assert outcome.status == "failed" and result.exit_code == 1
    for text in says:
        assert text in outcome.message
    assert _gate_step(journal_file, result.deployment)["status"] == "failed"
    steps = {e["step"] for e in read_events(journal_file, deployment=result.deployment)}
    assert "upload" not in steps and "promote" not in steps
    assert not list(Path(gate_host.workspace).glob(f"releases/{version}*"))


def test_a_bundle_whose_run_failed_the_gate_is_refused_before_upload(
    gate_host, tmp_path, journal_file
):
    archive = make_bundle(tmp_path, "v3.0", metrics={"gate": FAILED_GATE})
    result = engine.deploy([gate_host], engine.resolve_bundle(str(archive)), FAST)
    _assert_refused_before_upload(
        result,
        journal_file,
        gate_host,
        "v3.0",
        "failed the quality gate (lost to the linear baseline)",
        "--override",
    )


def test_an_override_ships_and_the_log_names_who_and_why(gate_host, tmp_path, journal_file):
    override = {"reason": "hotfix for a data bug", "by": "ana", "at": "2026-11-27T10:00:00Z"}
    archive = make_bundle(tmp_path, "v3.1", metrics={"gate": {**FAILED_GATE, "override": override}})
    result = engine.deploy([gate_host], engine.resolve_bundle(str(archive)), FAST)
    assert result.ok, result.outcomes
    detail = _gate_step(journal_file, result.deployment)
    assert detail["status"] == "overridden"  # its own state: never shown as a pass
    assert "ana overrode it" in detail["detail"]["summary"]
    assert "hotfix for a data bug" in detail["detail"]["summary"]


def test_a_bundle_whose_run_was_never_judged_is_refused_unless_overridden_at_deploy(
    gate_host, tmp_path, journal_file
):
    archive = make_bundle(tmp_path, "v3.2", metrics={"oof": {"span_iou": 0.7}})
    bundle = engine.resolve_bundle(str(archive))
    refused = engine.deploy([gate_host], bundle, FAST)
    _assert_refused_before_upload(
        refused,
        journal_file,
        gate_host,
        "v3.2",
        "carries no quality-gate result",
        "never went through `invoke select`",
        "--override-gate",
    )

    forced = engine.deploy(
        [gate_host], bundle, replace(FAST, gate_override="data fix, approved by Ana")
    )
    assert forced.ok, forced.outcomes
    line = _gate_step(journal_file, forced.deployment)
    assert line["status"] == "overridden" and line["detail"]["gate"] == "unjudged"
    assert line["detail"]["override"] == "data fix, approved by Ana"
    assert line["detail"]["summary"].startswith("OVERRIDDEN at deploy: data fix, approved by Ana")


def test_invoke_deploy_refuses_an_empty_override_reason(tmp_path):
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "deploy",
            "--host",
            "x",
            "--bundle",
            "v9",
            "--override-gate",
            " ",
        ],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MOOLA_LOG": str(tmp_path / "log.jsonl")},
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "--override-gate needs a reason" in done.stderr


def test_a_never_judged_candidate_may_be_placed_as_a_shadow_and_the_log_says_so(
    gate_host, tmp_path, journal_file
):
    archive = make_bundle(tmp_path, "v3.3", metrics={"oof": {"span_iou": 0.7}})
    placed = engine.place(
        [gate_host], engine.resolve_bundle(str(archive)), FAST, phase="shadow", what="shadow"
    )
    assert placed.ok, placed.outcomes
    (line,) = [e for e in read_events(journal_file, phase="shadow") if e["step"] == "gate"]
    assert line["status"] == "ok" and line["detail"]["gate"] == "unjudged"
    assert "placed for shadow, where it serves no answer" in line["detail"]["summary"]
