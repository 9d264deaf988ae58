"""Deploy reads phase 2's quality-gate verdict from the verified manifest (issue: no bad model
ships): a bundle whose run failed the gate is refused before anything reaches the host, unless a
person's override is recorded in it; the log shows the verdict either way."""

from __future__ import annotations

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


def test_a_bundle_whose_run_failed_the_gate_is_refused_before_upload(
    gate_host, tmp_path, journal_file
):
    archive = make_bundle(tmp_path, "v3.0", metrics={"gate": FAILED_GATE})
    result = engine.deploy([gate_host], engine.resolve_bundle(str(archive)), FAST)
    (outcome,) = result.outcomes
    assert outcome.status == "failed" and result.exit_code == 1
    assert "failed the quality gate (lost to the linear baseline)" in outcome.message
    assert "--override" in outcome.message
    assert _gate_step(journal_file, result.deployment)["status"] == "failed"
    steps = {e["step"] for e in read_events(journal_file, deployment=result.deployment)}
    assert "upload" not in steps and "promote" not in steps
    assert not list(Path(gate_host.workspace).glob("releases/v3.0*"))


def test_an_override_ships_and_the_log_names_who_and_why(gate_host, tmp_path, journal_file):
    override = {"reason": "hotfix for a data bug", "by": "ana", "at": "2026-11-27T10:00:00Z"}
    archive = make_bundle(tmp_path, "v3.1", metrics={"gate": {**FAILED_GATE, "override": override}})
    result = engine.deploy([gate_host], engine.resolve_bundle(str(archive)), FAST)
    assert result.ok, result.outcomes
    detail = _gate_step(journal_file, result.deployment)
    assert detail["status"] == "ok"
    assert "ana overrode it" in detail["detail"]["summary"]
    assert "hotfix for a data bug" in detail["detail"]["summary"]
