"""A prune problem after a successful switch is a warning, never a failed deploy (issue 15,
item 6): in a canary rollout a failed host stops the fleet, and housekeeping must not do that."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moola_ops import engine
from moola_ops.inventory import Inventory
from moola_ops.journal import read_events
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


def test_an_odd_folder_under_releases_is_a_prune_warning_not_a_failed_deploy(
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
    assert prune["status"] == "skipped" and prune["detail"]["warning"], prune
    assert odd.is_dir()  # nothing odd was deleted by guesswork
