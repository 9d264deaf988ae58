"""Issue #15 on real sshd stand-in hosts: a failing local log, a hung or slow runtime check,
a lock broken mid-deploy. After each: the host is on a verified release, unlocked (or still
locked by its new owner), with no unchecked release, marker or check process left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from moola_ops import deploy as engine
from moola_ops.deploy.commands import lock as lock_cmd
from moola_ops.hosts.inventory import Inventory
from moola_ops.hosts.layout import Layout
from moola_ops.log.journal import read_events
from moola_ops.transport import HostSession
from tests.integration.conftest import running_hosts
from tests.integration.helpers import default_signals, hanging_python, write_inventory

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

REPO = Path(__file__).parents[2]


# the runtime check's own mechanics (timeouts, a hung check, Ctrl-C inside it) are what these
# tests drive: they deploy files only (`--no-serve`), where the runtime check runs before the
# switch (a host that serves is checked by its candidate server: tests/integration/test_serving.py)
FAST = engine.Options(check_runs=3, check_warmup=1, check_backend="eager", serve=False)
# the hung check's `sleep` argument, to find it among the processes: this run's own (another
# suite on the machine runs the same test at the same time, issue #24)
HANG = f"987.{os.getpid():07d}"


@pytest.fixture(scope="module")
def hosts():
    with running_hosts(["hard-1", "hard-2", "hard-3"]) as (sandbox, root):
        yield sandbox, Inventory.from_sandbox(sandbox, connect_timeout_s=5), root


def hung_checks_left() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[:2] == [b"sleep", HANG.encode()]:
                found.append(int(entry.name))
    return found


def settled(host, version: str, *, new: str) -> None:
    ws = Path(host.workspace)
    assert os.readlink(ws / "current") == f"releases/{version}"
    assert not (ws / "releases" / new).exists()
    assert not (ws / "releases" / f"{new}.sha256").exists()
    check = engine.verify_current(host)
    assert check.ok and check.version == version, check.problems


def test_a_timed_out_check_is_stopped_on_the_host_and_leaves_nothing(hosts, bundles, journal_file):
    _, inventory, root = hosts
    (host,) = inventory.resolve("hard-1")
    assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), FAST).ok
    python, started = hanging_python(root, host, HANG)
    hung = replace(host, python=python)
    result = engine.deploy(
        [hung], engine.resolve_bundle(str(bundles["v1.1"])), replace(FAST, check_timeout_s=2)
    )
    outcome = result.outcomes[0]
    assert started.exists()  # the check really ran and hung
    assert outcome.status == "failed" and "did not finish within 2s" in outcome.message
    assert "stopped on the host" in outcome.message
    settled(host, "v1.0", new="v1.1")
    assert not (Path(host.workspace) / "deploy.lock").exists()
    assert hung_checks_left() == []


def test_ctrl_c_during_a_hung_check_is_honoured_at_once(hosts, bundles, journal_file, tmp_path):
    _, inventory, root = hosts
    (host,) = inventory.resolve("hard-2")
    assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), FAST).ok
    python, started = hanging_python(root, host, HANG)
    write_inventory(tmp_path / "hosts.yaml", {"hard-2": host}, python=python)
    invoke = str(Path(sys.executable).parent / "invoke")
    proc = subprocess.Popen(
        [
            invoke,
            "deploy",
            "--host",
            "hard-2",
            "--bundle",
            str(bundles["v1.1"]),
            "--inventory",
            str(tmp_path / "hosts.yaml"),
            "--check-runs",
            "3",
            "--check-timeout",
            "600",
            "--no-serve",  # files only: the runtime check runs (and hangs) before the switch
        ],
        cwd=REPO,
        env={**os.environ, "MOOLA_LOG": str(journal_file)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,
    )
    bound = time.monotonic() + 300  # a bound on a broken run, not a timing assertion
    while not started.exists() and proc.poll() is None and time.monotonic() < bound:
        time.sleep(0.05)
    assert started.exists(), proc.communicate(timeout=60)
    proc.send_signal(signal.SIGINT)
    # honoured long before the 600 s check deadline: the wait is cut, the host cleaned up
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "hard-2\taborted\tv1.0" in out
    settled(host, "v1.0", new="v1.1")
    assert not (Path(host.workspace) / "deploy.lock").exists()
    assert hung_checks_left() == []
    cleanup = [e for e in read_events(journal_file) if e["step"] == "cleanup"][-1]
    assert cleanup["detail"]["killed_check"] and cleanup["detail"]["removed_release"] == "v1.1"


def _deploy_paused_at(step, host, bundle, gate, monkeypatch, opts=FAST):
    monkeypatch.setenv("MOOLA_PAUSE_AT", step)
    monkeypatch.setenv("MOOLA_PAUSE_FILE", str(gate))
    results = []
    worker = threading.Thread(target=lambda: results.append(engine.deploy([host], bundle, opts)))
    worker.start()
    bound = time.monotonic() + 300
    while not Path(f"{gate}.waiting").exists() and time.monotonic() < bound:
        time.sleep(0.05)
    assert Path(f"{gate}.waiting").exists()
    return worker, results


def test_a_log_that_fails_after_the_switch_still_switches_back_and_unlocks(
    hosts, bundles, journal_file, tmp_path, monkeypatch
):
    sandbox, _, _ = hosts
    smoky = Inventory.from_sandbox(
        sandbox, smoke='test "$(basename "$(pwd -P)")" != v1.1', connect_timeout_s=5
    )
    (host,) = smoky.resolve("hard-3")
    assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), FAST).ok
    gate = tmp_path / "gate"
    worker, results = _deploy_paused_at(
        "post-check", host, engine.resolve_bundle(str(bundles["v1.1"])), gate, monkeypatch
    )
    # `current` has moved to v1.1 (its smoke check will fail); now the local log breaks
    journal_file.unlink()
    journal_file.mkdir()
    gate.touch()
    worker.join(300)
    outcome = results[0].outcomes[0]
    assert outcome.status == "failed" and "switched back to v1.0" in outcome.message
    assert "could not be written" in outcome.message  # the log failure, in one sentence
    assert "Traceback" not in outcome.message
    settled(host, "v1.0", new="v1.1")
    assert not (Path(host.workspace) / "deploy.lock").exists()
    actions = [line for line in (Path(host.workspace) / "revisions.log").read_text().splitlines()]
    assert '"action":"auto-rollback"' in actions[-1]  # the host's own log still recorded it


def test_a_lock_broken_before_the_switch_stops_the_switch(
    hosts, bundles, journal_file, tmp_path, monkeypatch
):
    _, inventory, _ = hosts
    (host,) = inventory.resolve("hard-1")  # current v1.0
    gate = tmp_path / "gate"
    worker, results = _deploy_paused_at(
        "switch", host, engine.resolve_bundle(str(bundles["v1.2"])), gate, monkeypatch
    )
    assert engine.break_lock(host) is not None  # someone breaks our lock ...
    other = {"deployment": "20260101T000000Z-0the12", "actor": "other@ci", "what": "deploy vX"}
    with HostSession(host) as ssh:  # ... and another deploy takes it
        assert lock_cmd.parse_acquire(
            ssh.run(lock_cmd.acquire(Layout(host.workspace), other)).stdout
        )[0]
    gate.touch()
    worker.join(300)
    outcome = results[0].outcomes[0]
    assert outcome.status == "failed" and "no longer ours" in outcome.message
    settled(host, "v1.0", new="v1.2")
    assert engine.lock_status(host)["deployment"] == other["deployment"]  # theirs, untouched
    with pytest.raises(Exception, match="belongs to other@ci"):
        engine.release_lock(host)  # not ours: only its holder (by deployment id) or --break
    assert engine.release_lock(host, other["deployment"])


def test_one_hung_host_never_holds_the_fleet_past_its_deadline(hosts, bundles, journal_file):
    _, inventory, root = hosts
    hung_host, good = inventory.resolve("hard-2,hard-3")
    python, started = hanging_python(root, hung_host, HANG)
    hung = replace(hung_host, python=python)
    # a check deadline far away, but each host's whole run bounded at 25 s
    opts = replace(FAST, check_timeout_s=600, deadline_s=25)
    result = engine.deploy([hung, good], engine.resolve_bundle(str(bundles["v1.2"])), opts)
    by_host = {o.host: o for o in result.outcomes}
    assert by_host["hard-3"].ok, by_host["hard-3"]
    assert by_host["hard-2"].status == "failed"
    # the first cause is named: the deadline, not a later unlock or cleanup problem
    message = by_host["hard-2"].message
    assert "deadline" in message or "did not finish within" in message, message
    assert not message.startswith("unlock")
    assert by_host["hard-2"].duration_s < 600  # bounded by the host's deadline, not the check's
    bound = time.monotonic() + 60  # the host's own `timeout` ends the check at the deadline
    while hung_checks_left() and time.monotonic() < bound:
        time.sleep(0.5)
    assert hung_checks_left() == []


def test_a_stale_lock_is_called_stale_with_the_break_command(hosts, bundles, journal_file):
    import socket

    _, inventory, _ = hosts
    (host,) = inventory.resolve("hard-3")
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that is gone on this machine
    holder = {
        "deployment": "20260101T000000Z-dead01",
        "actor": "me@here",
        "what": "deploy v9",
        "pid": dead.pid,
        "client": socket.gethostname(),
        "since": "2026-01-01T00:00:00Z",
    }
    with HostSession(host) as ssh:
        ssh.run(lock_cmd.acquire(Layout(host.workspace), holder))
    refused = engine.deploy([host], engine.resolve_bundle(str(bundles["v1.2"])), FAST)
    message = refused.outcomes[0].message
    assert refused.outcomes[0].status == "refused" and "STALE" in message
    assert f"invoke lock --host {host.name} --break" in message
    assert "is gone" in engine.lock_status(host)["stale"]
    from moola_ops.watch.health import WARNING
    from moola_ops.watch.health_run import probe_host

    health = probe_host(host, time.monotonic() + 60)
    lock_check = {c.name: c for c in health.checks}["lock"]
    assert lock_check.state == WARNING and "STALE" in lock_check.message
    assert engine.break_lock(host)["deployment"] == holder["deployment"]


def test_current_outside_releases_is_never_taken_for_a_release(hosts, bundles, journal_file):
    _, inventory, root = hosts
    (host,) = inventory.resolve("hard-3")
    for version in ("v1.0", "v1.2"):
        assert engine.deploy([host], engine.resolve_bundle(str(bundles[version])), FAST).ok
    ws = Path(host.workspace)
    outside = root / "stash-v1.2"
    if not outside.exists():
        shutil.copytree(ws / "releases" / "v1.2", outside)
    (ws / "current").unlink()
    (ws / "current").symlink_to(outside)
    from moola_ops.watch.health import CRITICAL
    from moola_ops.watch.health_run import probe_host

    health = probe_host(host, time.monotonic() + 60)
    current = {c.name: c for c in health.checks}["current"]
    assert current.state == CRITICAL and "not a release in this workspace" in current.message
    assert not engine.verify_current(host).ok
    again = engine.deploy([host], engine.resolve_bundle(str(bundles["v1.2"])), FAST)
    outcome = again.outcomes[0]
    assert outcome.status == "ok", outcome  # not a "noop": the copy outside is not v1.2
    assert "treated as no current release" in outcome.message and outcome.previous is None
    assert os.readlink(ws / "current") == "releases/v1.2"

    (ws / "current").unlink()
    (ws / "current").symlink_to("/etc")
    back = engine.rollback([host], "v1.0", FAST)
    assert back.ok, back.outcomes
    revisions = (ws / "revisions.log").read_text()
    assert '"previous":"etc"' not in revisions and '"previous":null' in revisions.splitlines()[-1]


def test_repair_re_uploads_the_same_bytes_of_a_damaged_release(hosts, bundles, journal_file):
    _, inventory, _ = hosts
    (host,) = inventory.resolve("hard-3")  # current v1.0 (rollback above)
    weights = Path(host.workspace) / "releases" / "v1.0" / "weights.pt"
    weights.write_bytes(b"damaged")
    assert not engine.verify_current(host).ok
    result = engine.repair([host], engine.resolve_bundle(str(bundles["v1.0"])), FAST)
    assert result.ok and "repaired v1.0" in result.outcomes[0].message, result.outcomes
    logged = {
        e["step"]: e["status"] for e in read_events(journal_file, deployment=result.deployment)
    }
    assert logged["verify"] == "failed" and logged["repair"] == "ok"
    assert logged["promote"] == "ok" and logged["check"] == "ok" and logged["post-check"] == "ok"
    assert engine.verify_current(host).ok
    other = engine.repair([host], engine.resolve_bundle(str(bundles["v1.1"])), FAST)
    assert other.outcomes[0].status in ("failed", "noop")


def test_a_log_that_fails_after_promote_still_unlocks_and_removes_the_release(
    hosts, bundles, journal_file, tmp_path, monkeypatch
):
    _, inventory, _ = hosts
    (host,) = inventory.resolve("hard-1")
    assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), FAST).ok
    gate = tmp_path / "gate"
    worker, results = _deploy_paused_at(
        "promote", host, engine.resolve_bundle(str(bundles["v1.1"])), gate, monkeypatch
    )
    journal_file.unlink()
    journal_file.mkdir()  # the promote line (and every later one) cannot be written
    gate.touch()
    worker.join(300)
    outcome = results[0].outcomes[0]
    assert outcome.status == "failed" and "could not be written" in outcome.message
    settled(host, "v1.0", new="v1.1")
    assert not (Path(host.workspace) / "deploy.lock").exists()
    assert not list((Path(host.workspace) / "incoming").iterdir())
