"""A `current` Moola did not deploy (a copy of a release outside releases/), with serving on
(#24 item 6): the health check judges no checksums of the copy and still reports the live
service, and a rollback back to the release whose server is live keeps that server instead of
starting a second one for it."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from moola_ops import deploy as engine
from moola_ops.hosts.inventory import Inventory
from moola_ops.log.journal import read_events
from moola_ops.watch.health import CRITICAL, OK, WARNING
from moola_ops.watch.health_run import probe_host
from tests.integration.conftest import running_hosts

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

FAST = engine.Options(check_runs=3, check_warmup=1, check_backend="eager")


@pytest.fixture(scope="module")
def host():
    with running_hosts(["own-1"]) as (sandbox, root):
        (resolved,) = Inventory.from_sandbox(sandbox, connect_timeout_s=5).resolve("own-1")
        yield resolved, root  # the sandbox stops its model servers with it


def _live(ws: Path) -> dict:
    return json.loads((ws / "serve" / "state.json").read_text())["live"]


def test_a_foreign_current_is_not_judged_ok_and_a_rollback_keeps_the_live_server(
    host, bundles, journal_file
):
    resolved, root = host
    ws = Path(resolved.workspace)
    for version in ("v1.0", "v1.1"):
        assert engine.deploy([resolved], engine.resolve_bundle(str(bundles[version])), FAST).ok
    live = _live(ws)
    assert live["release"] == "v1.1"
    copy = root / "copy-of-v1.1"
    shutil.copytree(ws / "releases" / "v1.1", copy)
    (ws / "current").unlink()
    (ws / "current").symlink_to(copy)

    checks = {c.name: c for c in probe_host(resolved, time.monotonic() + 120).checks}
    assert checks["current"].state == CRITICAL
    # the copy matches its own manifest, which proves nothing: never "OK" (it was)
    assert checks["checksums"].state != OK and "not judged" in checks["checksums"].message
    # the live server is still reported (the line used to disappear)
    assert checks["service"].state == WARNING, checks["service"]
    assert "serving v1.1" in checks["service"].message

    back = engine.rollback([resolved], None, FAST)
    (outcome,) = back.outcomes
    assert outcome.status == "ok", outcome
    assert os.readlink(ws / "current") == "releases/v1.1"
    after = _live(ws)
    assert (after["pid"], after["port"]) == (live["pid"], live["port"])  # no second server
    steps = [e["step"] for e in read_events(journal_file, deployment=back.deployment)]
    assert "serve-start" not in steps and "serve-post-check" in steps, steps
    health = {c.name: c for c in probe_host(resolved, time.monotonic() + 120).checks}
    assert health["service"].state == OK and health["checksums"].state == OK
