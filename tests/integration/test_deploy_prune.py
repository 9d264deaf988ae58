"""A prune problem after a successful switch is a warning, never a failed deploy (issue 15,
item 6): in a canary rollout a failed host stops the fleet, and housekeeping must not do that."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from moola_ops import deploy as engine
from moola_ops.deploy.plan import render_plan
from moola_ops.hosts.inventory import Inventory
from moola_ops.log.journal import read_events
from tests.integration.conftest import running_hosts

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

FAST = engine.Options(
    check_runs=3, check_warmup=1, check_backend="eager", serve=False, keep_releases=1
)


@pytest.fixture(scope="module")
def prune_host():
    with running_hosts(["prune-1"]) as (sandbox, _root):
        (host,) = Inventory.from_sandbox(sandbox, connect_timeout_s=5).resolve("prune-1")
        yield host


def test_an_odd_folder_under_releases_is_left_alone_and_named_not_a_failed_deploy(
    prune_host, bundles, journal_file
):
    assert engine.deploy([prune_host], engine.resolve_bundle(str(bundles["v1.0"])), FAST).ok
    odd = Path(prune_host.workspace) / "releases" / "not a version; rm -rf"
    odd.mkdir()
    os.utime(odd, (1, 1))  # the oldest entry: the first a prune would take

    result = engine.deploy([prune_host], engine.resolve_bundle(str(bundles["v1.1"])), FAST)

    (outcome,) = result.outcomes
    assert result.ok and outcome.status == "ok", outcome
    assert os.readlink(Path(prune_host.workspace) / "current") == "releases/v1.1"
    (prune,) = [
        e for e in read_events(journal_file, deployment=result.deployment) if e["step"] == "prune"
    ]
    assert prune["status"] == "ok", prune
    assert prune["detail"]["left_alone"] == [odd.name]
    assert "prune left alone 'not a version; rm -rf'" in outcome.message  # what the log says
    assert odd.is_dir()  # nothing odd was deleted by guesswork
    odd.rmdir()


def test_one_odd_entry_turns_off_no_pruning_and_the_printed_status_agrees_with_the_log(
    prune_host, bundles, journal_file
):
    ws = Path(prune_host.workspace)
    keep_all = replace(FAST, keep_releases=5)
    for version in ("v1.0", "v1.1", "v1.2"):
        assert engine.deploy(
            [prune_host], engine.resolve_bundle(str(bundles[version])), keep_all
        ).ok
    (ws / "releases" / "-rf").mkdir()

    planned = engine.prune([prune_host], replace(FAST, plan=True))  # used to stop at "-rf"
    (plan,) = planned.outcomes
    assert plan.status == "planned" and plan.plan["prune"]["releases"] == ["v1.0"], plan
    assert plan.plan["prune"]["left_alone"] == ["-rf"]
    assert "prune left alone '-rf'" in render_plan(planned)

    result = engine.prune([prune_host], FAST)
    (outcome,) = result.outcomes
    (logged,) = [
        e for e in read_events(journal_file, deployment=result.deployment) if e["step"] == "prune"
    ]
    assert (outcome.status, logged["status"]) == ("ok", "ok"), (outcome, logged)
    assert logged["detail"]["releases"] == ["v1.0"] and logged["detail"]["left_alone"] == ["-rf"]
    assert "left alone '-rf'" in outcome.message
    assert sorted(p.name for p in (ws / "releases").iterdir() if p.is_dir()) == [
        "-rf",
        "v1.1",
        "v1.2",
    ]
    (ws / "releases" / "-rf").rmdir()


def test_a_prune_the_host_refuses_is_not_printed_as_ok(prune_host, bundles, journal_file):
    ws = Path(prune_host.workspace)
    backups = ws / "backups"
    backups.mkdir(exist_ok=True)
    # a snapshot the host's login user may not delete: the prune command fails on the host
    stuck = backups / "20000101T000000000000Z-v0.0.tar"
    stuck.write_bytes(b"x")
    backups.chmod(0o555)
    # a checkout in a private folder logs the stand-ins in as root, which ignores the mode:
    # an immutable file stops root too
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(stuck)], check=True)
    try:
        result = engine.prune([prune_host], replace(FAST, keep_backups=0))
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(stuck)], check=True)
        backups.chmod(0o755)
    (outcome,) = result.outcomes
    (logged,) = [
        e for e in read_events(journal_file, deployment=result.deployment) if e["step"] == "prune"
    ]
    assert logged["status"] == "skipped" and outcome.status == "failed", (outcome, logged)
    assert "prune skipped" in outcome.message and not result.ok
    stuck.unlink()
