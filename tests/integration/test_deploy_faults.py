"""Faults that need their own hosts: Ctrl-C through `invoke deploy`, a cut connection, a full disk."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from moola_ops import deploy as engine
from moola_ops.hosts.inventory import Inventory
from moola_ops.log.journal import read_events
from moola_ops.transport import agent
from tests.integration.conftest import running_hosts
from tests.integration.helpers import default_signals, descendants, write_inventory

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

REPO = Path(__file__).parents[2]


FAST = engine.Options(check_runs=3, check_warmup=1, check_backend="eager")


@pytest.fixture(scope="module")
def hosts():
    with running_hosts(["cut-1", "sig-1"]) as (sandbox, _root):
        yield sandbox, Inventory.from_sandbox(sandbox, connect_timeout_s=5)


def settled_on(host, version: str) -> None:
    ws = Path(host.workspace)
    assert os.readlink(ws / "current") == f"releases/{version}"
    assert not (ws / "deploy.lock").exists()
    check = engine.verify_current(host)
    assert check.ok and check.version == version, check.problems


def test_connection_cut_mid_upload_leaves_current_and_releases_the_lock(
    hosts, bundles, journal_file
):
    sandbox, inventory = hosts
    (host,) = inventory.resolve("cut-1")
    assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), FAST).ok

    def progress(name, total):
        def cut(sent, _total):
            # every process serving connections to the host: all descendants of its sshd
            for pid in descendants(sandbox.hosts["cut-1"].pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # our own sandbox's connection processes

        return cut

    result = engine.deploy(
        [host], engine.resolve_bundle(str(bundles["v1.1"])), replace(FAST, progress=progress)
    )
    outcome = result.outcomes[0]
    # the cut lands during the upload or, when the last block was already sent, the command
    # after it: either way the run stops there and says which step broke
    assert outcome.status == "failed" and "broke" in outcome.message, outcome
    assert "(during upload)" in outcome.message or "(during promote)" in outcome.message
    settled_on(host, "v1.0")
    logged = {e["step"]: e for e in read_events(journal_file, deployment=result.deployment)}
    assert "failed" in (logged["upload"]["status"], logged.get("promote", {}).get("status"))
    # the lock was released over a fresh connection (host key checked again)
    assert logged["unlock"]["status"] == "ok" and logged["unlock"]["detail"]["released"]


def _invoke_deploy_paused_at(step, host, bundle, journal_file, tmp_path) -> subprocess.Popen:
    """`invoke deploy` in its own process, told to wait at the entry of `step` (the engine's
    MOOLA_PAUSE_AT hook) until the test has sent its signal: no race with the deploy's speed."""
    # the host's own python: a login as root (a checkout in a private folder) gets root's PATH
    write_inventory(tmp_path / "hosts.yaml", {"sig-1": host}, with_python=True)
    gate = tmp_path / f"gate-{step}"
    env = {
        **os.environ,
        "MOOLA_LOG": str(journal_file),
        "MOOLA_PAUSE_AT": step,
        "MOOLA_PAUSE_FILE": str(gate),
    }
    invoke = str(Path(sys.executable).parent / "invoke")
    args = [
        "deploy",
        "--host",
        "sig-1",
        "--bundle",
        str(bundle),
        "--inventory",
        str(tmp_path / "hosts.yaml"),
        "--check-runs",
        "3",
    ]
    proc = subprocess.Popen(
        [invoke, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,
    )
    waiting = Path(f"{gate}.waiting")
    deadline = time.monotonic() + 300  # not a timing assertion: a bound on a broken run
    while not waiting.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert waiting.exists(), proc.communicate(timeout=60)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_mid_deploy_through_invoke(hosts, bundles, journal_file, tmp_path, signum):
    _, inventory = hosts
    (host,) = inventory.resolve("sig-1")
    assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), FAST).ok
    # the deploy holds the lock and is about to upload when the signal arrives
    proc = _invoke_deploy_paused_at("upload", host, bundles["v1.1"], journal_file, tmp_path)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert "interrupted" in out and "sig-1\taborted\tv1.0" in out  # what each host ended on
    settled_on(host, "v1.0")
    events = read_events(journal_file, phase="deploy")
    assert any(e["status"] == "aborted" and e["step"] == "close" for e in events)
    assert any(
        e["status"] == "ok" and e["step"] == "unlock" and e["bundle"] == "v1.1" for e in events
    )


def test_sigint_after_the_switch_leaves_the_checked_release_live(
    hosts, bundles, journal_file, tmp_path
):
    _, inventory = hosts
    (host,) = inventory.resolve("sig-1")
    assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), FAST).ok
    # current has moved to v1.2; its check through current is about to run
    proc = _invoke_deploy_paused_at("post-check", host, bundles["v1.2"], journal_file, tmp_path)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    # documented: Ctrl-C exits 130 even here, and says the new release is live and checked
    assert proc.returncode == 130, (out, err)
    assert "v1.2 is live and checked on sig-1" in out
    settled_on(host, "v1.2")
    logged = {
        e["step"]: e["status"]
        for e in read_events(journal_file, phase="deploy")
        if e["bundle"] == "v1.2"
    }
    assert logged["post-check"] == "ok" and logged["unlock"] == "ok" and "prune" not in logged


# a file-size limit the host agent's files fit under and a bundle archive does not
AGENT_FITS_KB = max(len(data) for _, data in agent._files()) // 1024 + 8


def test_full_disk_during_upload_fails_cleanly(bundles, journal_file):
    # an sshd whose processes may not write files over AGENT_FITS_KB: the upload hits "disk full"
    assert bundles["v1.0"].stat().st_size > AGENT_FITS_KB * 1024
    with running_hosts(["full-1"], fsize_limit_kb=AGENT_FITS_KB) as (sandbox, _root):
        (host,) = Inventory.from_sandbox(sandbox, connect_timeout_s=5).resolve("full-1")
        _full_disk_case(host, bundles, journal_file)


def test_a_disk_too_full_for_the_agent_fails_before_anything_changes(bundles, journal_file):
    """The agent's install (the lock's round trip) is the first write: it fails in one sentence
    with the host's words, and the host is left as it was (no lock, no release)."""
    with running_hosts(["full-2"], fsize_limit_kb=16) as (sandbox, _root):
        (host,) = Inventory.from_sandbox(sandbox, connect_timeout_s=5).resolve("full-2")
        result = engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), FAST)
        (outcome,) = result.outcomes
        assert outcome.status == "failed", outcome
        assert "could not install the Moola agent on full-2" in outcome.message
        ws = Path(host.workspace)
        assert not (ws / "deploy.lock").exists() and not (ws / "current").exists()
        assert not (ws / "releases" / "v1.0").exists()
        assert [p.name for p in (ws / ".moola" / "agent").iterdir()] == []  # no half folder
    logged = {e["step"]: e["status"] for e in read_events(journal_file)}
    assert logged["lock"] == "failed" and "upload" not in logged


def _full_disk_case(host, bundles, journal_file):
    result = engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), FAST)
    outcome = result.outcomes[0]
    assert outcome.status == "failed" and "upload" in outcome.message, outcome
    ws = Path(host.workspace)
    assert not (ws / "current").exists() and not (ws / "deploy.lock").exists()
    assert not list((ws / "incoming").iterdir())  # the partial upload was removed
    assert not (ws / "releases" / "v1.0").exists()
    logged = {e["step"]: e["status"] for e in read_events(journal_file)}
    assert logged["upload"] == "failed" and logged["unlock"] == "ok"
    assert json.dumps(result.as_dict())  # the outcome serialises for --json


def test_lock_and_log_tasks_through_invoke(hosts, journal_file, tmp_path):
    _, inventory = hosts
    (host,) = inventory.resolve("sig-1")
    # the host's own python: a login as root (a checkout in a private folder) gets root's PATH
    write_inventory(tmp_path / "hosts.yaml", {"sig-1": host}, with_python=True)
    env = {**os.environ, "MOOLA_LOG": str(journal_file)}
    invoke = str(Path(sys.executable).parent / "invoke")

    def task(*args):
        return subprocess.run(
            [invoke, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )

    inv = ["--inventory", str(tmp_path / "hosts.yaml")]
    shown = task("lock", "--host", "sig-1", *inv, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"sig-1": {"holder": None, "locked": False}}
    unknown = task("lock", "--host", "sig-9", *inv)
    assert unknown.returncode == 1 and "known hosts: sig-1" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad = task("deploy", "--host", "sig-1", "--bundle", "v1;reboot", *inv)
    assert bad.returncode == 1 and "invalid bundle version" in bad.stderr
    logged = task("log", "--json", "--last", "5")
    assert logged.returncode == 0 and isinstance(json.loads(logged.stdout), list)
