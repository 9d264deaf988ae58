"""Pods by id end to end: real sshd stand-in hosts found only through `runpod_pod_id`, and the
local stand-in of RunPod's GraphQL API (tests/runpod_standin.py) saying where they are.

A "restart" stops the host's sshd and starts it again on another port with the same host key
and workspace (RunPod keeps /workspace, the volume); the stand-in API then reports the new
port. A "re-created" pod gets a new host key.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from moola_ops import deploy as engine
from moola_ops.hosts import runpod
from moola_ops.hosts.inventory import load_inventory
from moola_ops.hosts.standin import start_sandbox
from moola_ops.log.journal import read_events
from moola_ops.transport import HostKeyError, HostSession
from moola_ops.watch.health import CRITICAL, OK, UNKNOWN
from moola_ops.watch.health_run import run_healthcheck
from tests.integration.conftest import start_hosts
from tests.integration.helpers import default_signals

pytestmark = [pytest.mark.ssh]

REPO = Path(__file__).resolve().parents[2]
POD = "podabc123xyz"
FAST = engine.Options(check_runs=3, check_warmup=1, check_backend="eager", keep_releases=2)


@pytest.fixture
def pod_host(runpod_api, tmp_path):
    """One stand-in sshd host registered in the stand-in API as pod POD; an inventory file that
    names it only by pod id. Yields a dict with sandbox, root, inventory path, known_hosts."""
    sandbox, root = start_hosts(["pod-1"])
    sh = sandbox.hosts["pod-1"]
    runpod_api.add(POD, "trainer", ssh_port=sh.port)
    known = tmp_path / "known_hosts_pods"
    inventory = tmp_path / "hosts.yaml"
    entry = {
        "runpod_pod_id": POD,
        "user": sh.user,
        "identity_file": sh.identity_file,
        "known_hosts": str(known),
        "workspace": sh.workspace,
        "python": sh.python,
        "connect_timeout_s": 5,
        "serve_port": 0,  # a free port: never the fixed 8080 another suite may hold
    }
    inventory.write_text(yaml.safe_dump({"hosts": {"pod-1": entry}}))
    state = {"sandbox": sandbox, "root": root, "inventory": inventory, "known": known}
    try:
        yield state
    finally:
        state["sandbox"].stop()
        shutil.rmtree(root, ignore_errors=True)


def restart(state, *, new_host_key: bool = False) -> int:
    """Stop the pod's sshd, start it on a different port (a RunPod stop/resume); its port."""
    old = state["sandbox"].hosts["pod-1"]
    state["sandbox"].stop()
    if new_host_key:  # a re-created pod: new keys
        for f in Path(old.host_dir).glob("ssh_host_ed25519_key*"):
            f.unlink()
    for _ in range(5):
        sandbox = start_sandbox(state["root"], ["pod-1"])
        if sandbox.hosts["pod-1"].port != old.port:
            state["sandbox"] = sandbox
            return sandbox.hosts["pod-1"].port
        sandbox.stop()
    raise AssertionError("could not restart the stand-in host on another port")


def current_of(workspace: str) -> str | None:
    link = Path(workspace) / "current"
    return os.readlink(link) if link.is_symlink() else None


@pytest.mark.slow
def test_deploy_follows_the_pod_across_a_restart(runpod_api, pod_host, bundles, journal_file):
    inventory_text = pod_host["inventory"].read_text()
    (host,) = load_inventory(pod_host["inventory"]).resolve("pod-1")
    workspace = pod_host["sandbox"].hosts["pod-1"].workspace
    v10 = engine.resolve_bundle(str(bundles["v1.0"]))
    v11 = engine.resolve_bundle(str(bundles["v1.1"]))

    first = engine.deploy([host], v10, replace(FAST, accept_new_host_key=True))
    assert first.ok, first.outcomes
    assert current_of(workspace) == "releases/v1.0"
    pinned = pod_host["known"].read_text().splitlines()
    assert len(pinned) == 1 and pinned[0].startswith(f"runpod-{POD} ssh-ed25519 ")

    new_port = restart(pod_host)
    runpod_api.set_ssh(POD, new_port)
    asked = len(runpod_api.requests)
    # the same, unedited inventory; strict host keys; the cache still holds the old port
    (host,) = load_inventory(pod_host["inventory"]).resolve("pod-1")
    second = engine.deploy([host], v11, FAST)
    assert second.ok, second.outcomes
    assert current_of(workspace) == "releases/v1.1"
    assert len(runpod_api.requests) == asked + 1  # the old address failed: asked once more
    assert pod_host["inventory"].read_text() == inventory_text
    assert pod_host["known"].read_text().splitlines() == pinned  # the alias pin still serves
    connects = [
        e for e in read_events(journal_file) if e["step"] == "connect" and e["status"] == "ok"
    ]
    assert len(connects) == 2


def test_a_recreated_pod_is_refused_until_its_new_key_is_pinned(runpod_api, pod_host):
    (host,) = load_inventory(pod_host["inventory"]).resolve("pod-1")
    with HostSession(host, accept_new_host_key=True) as ssh:
        assert ssh.accepted_key
    new_port = restart(pod_host, new_host_key=True)
    runpod_api.set_ssh(POD, new_port)
    with pytest.raises(HostKeyError) as err:
        HostSession(host).open()
    assert "CHANGED" in str(err.value) and f"invoke pods.known-host --pod {POD}" in str(err.value)

    env = cli_env(runpod_api, pod_host)
    check = invoke(env, "pods.known-host", "--pod", POD)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "DIFFERS from the pinned key" in check.stdout
    pin = invoke(env, "pods.known-host", "--pod", POD, "--pin")
    assert pin.returncode == 0 and f"pinned as runpod-{POD}" in pin.stdout
    again = invoke(env, "pods.known-host", "--pod", POD, "--json")
    assert json.loads(again.stdout)["state"] == "match"
    with HostSession(host) as ssh:  # strict again, and the new key is the pinned one
        assert ssh.run("echo ok").stdout.strip() == "ok"
        assert ssh.connected_to.port == new_port and host.port is None


def test_healthcheck_says_why_a_pod_is_down_without_connecting(runpod_api, pod_host):
    inv = load_inventory(pod_host["inventory"])
    runpod_api.stop(POD)
    run = run_healthcheck("pod-1", inventory=inv, timeout_s=20, record=False)
    (h,) = run.hosts
    assert h.state == CRITICAL and run.state == CRITICAL
    assert [c.name for c in h.checks] == ["pod"]
    assert f"is stopped (EXITED): resume it with `invoke pods.resume --pod {POD}`" in h.summary()

    runpod_api.add(POD, "trainer", ssh_port=pod_host["sandbox"].hosts["pod-1"].port)
    runpod_api.drop_tcp22(POD)
    runpod.refresh_cache()  # as `--refresh` does
    run = run_healthcheck("pod-1", inventory=inv, timeout_s=20, record=False)
    assert run.state == CRITICAL and "expose TCP port 22" in run.hosts[0].summary()


def test_an_api_outage_is_unknown_not_a_dead_host(runpod_api, pod_host):
    inv = load_inventory(pod_host["inventory"])
    runpod_api.fail(503, times=50)
    run = run_healthcheck("pod-1", inventory=inv, timeout_s=29, record=False)
    (h,) = run.hosts
    assert h.state == UNKNOWN and h.checks[0].name == "pod"
    assert "the RunPod API did not read within" in h.summary()


def test_a_running_pod_is_healthy_by_id(runpod_api, pod_host):
    inv = load_inventory(pod_host["inventory"])
    with HostSession(inv.resolve("pod-1")[0], accept_new_host_key=True):
        pass
    run = run_healthcheck("pod-1", inventory=inv, timeout_s=20, record=False)
    assert run.hosts[0].checks[0].name == "ssh" and run.hosts[0].checks[0].state == OK


# --- the front door: every pods task, and no output ever shows the key -------------------------


def cli_env(api, pod_host) -> dict[str, str]:
    base = pod_host["inventory"].parent
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": str(REPO),
        "RUNPOD_API_KEY": api.key,
        "RUNPOD_API_BASE_URL": api.url,
        "MOOLA_RUNPOD_CACHE": str(base / "cli-runpod-pods.json"),
        "MOOLA_LOG": str(base / "deployments.jsonl"),
        "MOOLA_INVENTORY": str(pod_host["inventory"]),
    }


def invoke(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(REPO), *args],
        cwd=Path(env["MOOLA_LOG"]).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_every_task_keeps_the_key_out_of_every_output(runpod_api, pod_host, bundles):
    runpod_api.add("spare42", "spare", ssh_port=1, status="EXITED")
    env = cli_env(runpod_api, pod_host)
    outputs: list[tuple[str, subprocess.CompletedProcess]] = []

    def run(*args: str, expect: int | None = 0, **extra: str) -> subprocess.CompletedProcess:
        proc = invoke({**env, **extra}, *args)
        outputs.append((" ".join(args), proc))
        if expect is not None:
            assert proc.returncode == expect, (args, proc.stdout, proc.stderr)
        return proc

    listing = run("pods")
    assert f"{POD}\ttrainer\tRUNNING\t1 x H100 80GB HBM3\t$2.99/h" in listing.stdout
    assert "\tpod-1" in listing.stdout and "spare42\tspare\tEXITED" in listing.stdout
    rows = {p["id"]: p for p in json.loads(run("pods", "--json").stdout)["pods"]}
    assert rows[POD]["hosts"] == ["pod-1"] and rows[POD]["ssh"]["port"] > 1
    assert rows["spare42"]["ssh"] is None and "pods.resume" in rows["spare42"]["ssh_problem"]

    run("pods.known-host", "--pod", POD, "--pin")
    bundle = str(bundles["v1.0"])
    run("deploy", "--host", "pod-1", "--bundle", bundle, "--check-runs", "3", "--refresh")
    run("healthcheck", "--host", "pod-1", "--json")
    run("lock", "--host", "pod-1")
    run("backups", "--host", "pod-1", "--refresh")

    refused = run("pods.stop", "--pod", POD, expect=1)
    assert f"confirm with --yes {POD}" in refused.stderr
    assert (
        "must be the same pod" in run("pods.stop", "--pod", POD, "--yes", "other1", expect=1).stderr
    )
    run("pods.stop", "--pod", POD, "--yes", POD)
    down = run("healthcheck", "--host", "pod-1", expect=2)
    assert f"pod-1 CRITICAL pod: pod {POD} (trainer) is stopped (EXITED)" in down.stdout
    deploy_down = run("deploy", "--host", "pod-1", "--bundle", bundle, expect=1)
    assert "is stopped (EXITED)" in deploy_down.stdout
    runpod_api.resume_port[POD] = pod_host["sandbox"].hosts["pod-1"].port
    run("pods.resume", "--pod", POD, "--yes", POD)
    run("healthcheck", "--host", "pod-1")

    no_yes = run("pods.terminate", "--pod", "spare42", expect=1)
    assert "repeat the id to confirm, --yes spare42" in no_yes.stderr
    run("pods.terminate", "--pod", "spare42", "--yes", "spare42")
    assert "spare42" not in runpod_api.pods

    runpod_api.fail(503, times=4)  # every try of one call
    outage = run("pods", expect=1)
    assert "the RunPod API did not read within" in outage.stderr
    runpod_api.fail(429, times=4, retry_after=0)
    run("healthcheck", "--host", "pod-1", "--refresh", expect=3)
    wrong = run("pods", expect=1, RUNPOD_API_KEY="rpa_WRONGKEY0123456789")
    assert "refused the API key (HTTP 401)" in wrong.stderr

    log = Path(env["MOOLA_LOG"]).read_text()
    cache = Path(env["MOOLA_RUNPOD_CACHE"]).read_text()
    pod_lines = read_events(env["MOOLA_LOG"], phase="pods")
    assert [(e["step"], e["detail"]["pod"]) for e in pod_lines] == [
        ("known-host-pin", POD),
        ("stop", POD),
        ("resume", POD),
        ("terminate", "spare42"),
    ]
    for secret in (runpod_api.key, "rpa_WRONGKEY0123456789"):
        for what, proc in outputs:
            assert secret not in proc.stdout and secret not in proc.stderr, what
        assert secret not in log and secret not in cache
        assert secret not in pod_host["known"].read_text()


def test_stop_on_a_terminal_asks_for_the_pod_id(runpod_api, pod_host):
    """A person at a terminal types the id; anything else leaves the pod running."""
    if not shutil.which("script"):
        pytest.fail("util-linux `script` is needed to give the task a terminal")
    env = {**cli_env(runpod_api, pod_host), "TERM": "xterm"}
    command = f"{sys.executable} -m invoke -r {REPO} pods.stop --pod {POD}"

    def at_terminal(typed: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["script", "-qec", command, "/dev/null"],
            input=typed,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    wrong = at_terminal("yes\n")
    assert wrong.returncode == 1 and "not confirmed" in wrong.stdout
    assert runpod_api.pods[POD]["desiredStatus"] == "RUNNING"
    right = at_terminal(POD + "\n")
    assert right.returncode == 0, right.stdout
    assert "stop requested (desired status EXITED)" in right.stdout
    assert runpod_api.pods[POD]["desiredStatus"] == "EXITED"


def test_ctrl_c_ends_a_deploy_whose_pod_look_up_trickles(runpod_api, pod_host, bundles, tmp_path):
    # issue #24: a deploy to a pod host took 180 s to end after Ctrl-C while RunPod's API
    # answered slowly; the look-up now ends with the host's session, at once
    import signal

    runpod_api.trickle("body")
    env = {**os.environ, "MOOLA_LOG": str(tmp_path / "deployments.jsonl")}
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "invoke"),
            "deploy",
            "--host",
            "pod-1",
            "--inventory",
            str(pod_host["inventory"]),
            "--bundle",
            str(bundles["v1.0"]),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,  # a suite started in the background ignores SIGINT
    )
    try:
        assert runpod_api.trickling.wait(120), "the deploy never asked RunPod"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)  # a hang detector: the budget alone is 25 s
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "interrupted (Ctrl-C)" in out
    assert "Traceback" not in err
