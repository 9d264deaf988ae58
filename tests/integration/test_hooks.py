"""User hooks from the inventory (docs/runbook.md "Hooks") on real OpenSSH stand-in hosts: each
runs at its named point as the logged step hook:<point>:<name>, with the MOOLA_* variables, on
the host (in its workspace) or here; a failing before-switch hook aborts with the host keeping
its release (the guard unwinds what the run did), then the `failed` hooks run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moola_ops import deploy as engine
from moola_ops.hosts.inventory import load_inventory
from moola_ops.log.journal import read_events
from tests.integration.conftest import running_hosts
from tests.integration.helpers import host_entry

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

FAST = engine.Options(serve=False, check_runs=3, check_warmup=1, check_backend="eager")
RECORD = 'echo "$MOOLA_POINT $MOOLA_PHASE $MOOLA_VERSION $MOOLA_PREVIOUS" >> hooks.txt'


@pytest.fixture(scope="module")
def standins():
    with running_hosts(["hk-1", "hk-2"]) as (sandbox, _root):
        yield sandbox


def inventory_with(tmp_path: Path, sandbox, name: str, hooks: dict):
    import yaml

    entry = host_entry(sandbox.hosts[name], with_python=True, groups=["hooked"])
    path = tmp_path / "hosts.yaml"
    path.write_text(
        yaml.safe_dump({"hosts": {name: entry}, "groups": {"hooked": {"hooks": hooks}}})
    )
    return load_inventory(path)


def current_of(host) -> str | None:
    link = Path(host.workspace) / "current"
    return os.readlink(link) if link.is_symlink() else None


def ended(journal_file, host: str, deployment: str) -> list[dict]:
    """The deployment's logged events on `host` that ended a step (not the "started" ones)."""
    events = read_events(journal_file, host=host, deployment=deployment)
    return [e for e in events if e["status"] != "started"]


def test_hooks_run_at_their_points_as_logged_steps_on_the_host_and_here(
    standins, bundles, journal_file, tmp_path
):
    here = tmp_path / "announced.txt"
    points = ["before-upload", "after-upload", "before-check", "after-check", "before-switch"]
    hooks = {p: [{"name": "record", "run": RECORD}] for p in [*points, "after-switch"]}
    hooks["after-switch"].append(
        {
            "name": "announce",
            "run": f'echo "$MOOLA_HOST $MOOLA_VERSION" >> {here}',
            "where": "local",
        }
    )
    (host,) = inventory_with(tmp_path, standins, "hk-1", hooks).resolve("hk-1")
    assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), FAST).ok
    result = engine.deploy([host], engine.resolve_bundle(str(bundles["v1.1"])), FAST)
    assert result.ok, result.outcomes

    recorded = (Path(host.workspace) / "hooks.txt").read_text().splitlines()
    assert recorded[-6:] == [f"{p} deploy v1.1 v1.0" for p in [*points, "after-switch"]]
    assert here.read_text().splitlines() == ["hk-1 v1.0", "hk-1 v1.1"]
    logged = [e["step"] for e in ended(journal_file, "hk-1", result.deployment)]
    assert logged[logged.index("preflight") :] == [
        "preflight",
        "hook:before-upload:record",
        "upload",
        "promote",
        "hook:after-upload:record",
        "hook:before-check:record",
        "check",
        "hook:after-check:record",
        "hook:before-switch:record",
        "switch",
        "post-check",
        "hook:after-switch:record",
        "hook:after-switch:announce",
        "prune",
        "unlock",
    ]


def test_a_repair_runs_the_upload_and_check_hooks_when_it_re_uploads(
    standins, bundles, journal_file, tmp_path
):
    points = ["before-upload", "after-upload", "before-check", "after-check"]
    hooks = {p: [{"name": "record", "run": RECORD}] for p in points}
    (host,) = inventory_with(tmp_path, standins, "hk-1", hooks).resolve("hk-1")
    v10 = engine.resolve_bundle(str(bundles["v1.0"]))
    assert engine.deploy([host], v10, FAST).ok
    record = Path(host.workspace) / "hooks.txt"
    record.unlink(missing_ok=True)
    assert engine.repair([host], v10, FAST).outcomes[0].status == "noop"
    assert not record.exists()  # nothing to repair: no upload, no hooks
    (Path(host.workspace) / "releases" / "v1.0" / "weights.pt").write_bytes(b"damaged")
    result = engine.repair([host], v10, FAST)
    assert result.ok, result.outcomes
    assert record.read_text().splitlines() == [f"{p} repair v1.0 v1.0" for p in points]
    logged = [e["step"] for e in ended(journal_file, "hk-1", result.deployment)]
    assert logged[logged.index("repair") :][:8] == [
        "repair",
        "hook:before-upload:record",
        "upload",
        "promote",
        "hook:after-upload:record",
        "hook:before-check:record",
        "check",
        "hook:after-check:record",
    ]


def test_a_failing_before_switch_hook_aborts_and_the_host_keeps_its_release(
    standins, bundles, journal_file, tmp_path
):
    failed_file = tmp_path / "failed.txt"
    hooks = {
        "before-switch": [{"name": "gate", "run": "echo 'not in business hours' >&2; exit 3"}],
        "failed": [
            {"name": "page", "run": f'echo "$MOOLA_FAILURE" > {failed_file}', "where": "local"}
        ],
    }
    (host,) = inventory_with(tmp_path, standins, "hk-2", hooks).resolve("hk-2")
    first = engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), FAST)
    assert first.outcomes[0].status == "failed"  # the gate holds the first switch too
    assert current_of(host) is None and not (Path(host.workspace) / "releases/v1.0").exists()

    (plain,) = inventory_with(tmp_path, standins, "hk-2", {}).resolve("hk-2")
    assert engine.deploy([plain], engine.resolve_bundle(str(bundles["v1.0"])), FAST).ok
    result = engine.deploy([host], engine.resolve_bundle(str(bundles["v1.1"])), FAST)
    (outcome,) = result.outcomes
    assert outcome.status == "failed" and outcome.current == "v1.0", outcome
    assert (
        "hook before-switch:gate on hk-2 exited 3: not in business hours; nothing switched, "
        "hk-2 keeps v1.0" in outcome.message
    )
    ws = Path(host.workspace)
    assert current_of(host) == "releases/v1.0"
    assert not (ws / "releases/v1.1").exists() and not (ws / "deploy.lock").exists()
    by_step = {e["step"]: e for e in ended(journal_file, "hk-2", result.deployment)}
    assert by_step["hook:before-switch:gate"]["status"] == "failed"
    assert by_step["hook:before-switch:gate"]["detail"]["exit_code"] == 3
    assert by_step["cleanup"]["detail"]["removed_release"] == "v1.1"
    assert by_step["hook:failed:page"]["status"] == "ok"
    assert "switch" not in by_step
    assert "hook before-switch:gate on hk-2 exited 3" in failed_file.read_text()


def test_a_hook_past_its_timeout_is_stopped_on_the_host_and_fails_the_run(
    standins, bundles, journal_file, tmp_path
):
    marker = tmp_path / "slept"
    hooks = {
        "before-check": [
            {"name": "slow", "run": f"sleep 30; touch {marker}", "timeout": 1},
        ]
    }
    (host,) = inventory_with(tmp_path, standins, "hk-2", hooks).resolve("hk-2")
    result = engine.deploy([host], engine.resolve_bundle(str(bundles["v1.2"])), FAST)
    (outcome,) = result.outcomes
    assert outcome.status == "failed"
    assert "hook before-check:slow on hk-2 ran past its timeout of 1s" in outcome.message
    ended_steps = ended(journal_file, "hk-2", result.deployment)
    slow = [e for e in ended_steps if e["step"] == "hook:before-check:slow"]
    assert slow[0]["detail"]["exit_code"] == 124  # the host's own `timeout` ended it
    assert current_of(host) == "releases/v1.0"
    assert not (Path(host.workspace) / "releases/v1.2").exists()
    assert not marker.exists()
