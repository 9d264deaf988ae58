"""`invoke healthcheck` as cron runs it: real sshd hosts, a bare environment, no TTY.

Each test runs the real front door (`.venv/bin/invoke` by absolute path) in a subprocess with
`env -i PATH=/usr/bin:/bin`, from a scratch directory, against an inventory naming running
stand-in hosts. Releases are laid out by hand here (files + manifest with their sha256), so
the light check is tested without waiting for a model; the deep check runs in the e2e test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.helpers import host_entry

pytestmark = pytest.mark.ssh

REPO = Path(__file__).resolve().parents[2]
INVOKE = str(Path(sys.executable).parent / "invoke")


def make_release(workspace: str, version: str, *, current: bool = True) -> Path:
    """Lay out releases/<version> with a manifest listing each file's size and sha256."""
    rel = Path(workspace) / "releases" / version
    rel.mkdir(parents=True)
    entries = []
    for name, data in {"weights.pt": os.urandom(4096), "golden.pt": b"golden"}.items():
        (rel / name).write_bytes(data)
        entries.append(
            {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    (rel / "manifest.json").write_text(json.dumps({"version": version, "files": entries}))
    with open(Path(workspace) / "revisions.log", "a") as log:  # as a deploy records it
        log.write(json.dumps({"action": "deploy", "version": version}) + "\n")
    if current:
        link = Path(workspace) / "current"
        link.unlink(missing_ok=True)
        link.symlink_to(f"releases/{version}")
    return rel


def write_inventory(path: Path, sandbox, extra: dict | None = None) -> Path:
    """A plain inventory (no `sandbox: true`) naming the running stand-in hosts explicitly."""
    import yaml

    hosts = {name: host_entry(h, groups=["local"]) for name, h in sandbox.hosts.items()}
    hosts.update(extra or {})
    path.write_text(yaml.safe_dump({"hosts": hosts}))
    return path


def healthcheck(cwd: Path, *args: str, env_extra: dict | None = None, timeout: float = 60):
    """Run the front door exactly as cron would: absolute path, bare environment, no TTY."""
    env = {"PATH": "/usr/bin:/bin", **(env_extra or {})}
    started = time.monotonic()
    proc = subprocess.run(
        [
            "env",
            "-i",
            *[f"{k}={v}" for k, v in env.items()],
            INVOKE,
            "-r",
            str(REPO),
            "healthcheck",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    proc.elapsed = time.monotonic() - started
    return proc


@pytest.fixture
def fleet(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(["local-1", "local-2"])
    for host in sandbox.hosts.values():
        make_release(host.workspace, "v0.1")
    inventory = write_inventory(tmp_path / "hosts.yaml", sandbox)
    return sandbox, inventory, tmp_path


def test_healthy_fleet_is_ok_in_a_bare_environment(fleet):
    sandbox, inventory, cwd = fleet
    prom = cwd / "textfile" / "moola.prom"
    proc = healthcheck(cwd, "--inventory", str(inventory), "--prom", str(prom))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("MOOLA OK - 2/2 hosts OK (fast), serving v0.1 | ")
    assert "\x1b[" not in proc.stdout + proc.stderr  # no colour codes off a TTY
    assert "'hosts_ok'=2;;;0;2" in first
    assert 'moola_health_state{host="local-1"} 0' in prom.read_text()
    # every host's result is in the deployment log (relative to the working directory)
    events = [
        json.loads(line) for line in (cwd / "logs/deployments.jsonl").read_text().splitlines()
    ]
    assert {(e["host"], e["phase"], e["step"], e["status"]) for e in events} == {
        ("local-1", "healthcheck", "fast", "ok"),
        ("local-2", "healthcheck", "fast", "ok"),
    }


def test_no_torch_numpy_or_pandas_is_imported(fleet):
    sandbox, inventory, cwd = fleet
    proc = healthcheck(
        cwd, "--inventory", str(inventory), env_extra={"PYTHONPROFILEIMPORTTIME": "1"}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    imported = {m.group(1).strip() for m in re.finditer(r"\|\s+([\w.]+)$", proc.stderr, re.M)}
    assert "moola_ops.watch.health" in imported and "paramiko" in imported  # the profile is real
    heavy = {m for m in imported if m.split(".")[0] in {"torch", "numpy", "pandas"}}
    assert not heavy


def test_json_and_states_for_broken_hosts(fleet):
    sandbox, inventory, cwd = fleet
    ws1, ws2 = (sandbox.hosts[n].workspace for n in ("local-1", "local-2"))
    # local-2: a stale deploy lock (two hours old) -> WARNING
    lock = Path(ws2) / "deploy.lock"
    lock.mkdir()
    (lock / "holder.json").write_text('{"actor": "ana@laptop", "what": "deploy v0.2"}')
    old = time.time() - 7200
    os.utime(lock, (old, old))
    proc = healthcheck(cwd, "--inventory", str(inventory), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["state"] == "WARNING" and doc["exit_code"] == 1
    states = {h["host"]: h["state"] for h in doc["hosts"]}
    assert states == {"local-1": "OK", "local-2": "WARNING"}

    # local-1: one flipped byte in the weights -> CRITICAL, and it names the file
    weights = Path(ws1) / "releases/v0.1/weights.pt"
    data = bytearray(weights.read_bytes())
    data[0] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = healthcheck(cwd, "--inventory", str(inventory), "--host", "local-1")
    assert proc.returncode == 2
    assert proc.stdout.startswith("MOOLA CRITICAL - 0/1 hosts OK (fast); local-1 CRITICAL ")
    assert "weights.pt" in proc.stdout.splitlines()[0]

    # a typo in the host name is the caller's problem: UNKNOWN
    proc = healthcheck(cwd, "--inventory", str(inventory), "--host", "local-9")
    assert proc.returncode == 3
    assert proc.stdout.startswith("MOOLA UNKNOWN - unknown host or group 'local-9'")
    assert "Traceback" not in proc.stderr


def test_a_lock_is_as_old_as_its_holder_says_not_its_folders_mtime(fleet):
    sandbox, inventory, cwd = fleet
    lock = Path(sandbox.hosts["local-2"].workspace) / "deploy.lock"
    lock.mkdir()  # a fresh mtime: just made (or touched by anything)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3 * 3600))
    holder = {"actor": "ana@laptop", "what": "deploy v0.2", "since": since, "client": "far"}
    (lock / "holder.json").write_text(json.dumps(holder))
    proc = healthcheck(cwd, "--inventory", str(inventory), "--host", "local-2", "--json")
    doc = json.loads(proc.stdout)
    (host,) = doc["hosts"]
    check = next(c for c in host["checks"] if c["name"] == "lock")
    assert check["state"] == "WARNING" and "STALE" in check["message"], check
    assert "180 min" in check["message"] and f"since {since}" in check["message"]


def test_a_hanging_host_is_critical_within_the_timeout(fleet):
    sandbox, _, cwd = fleet
    # a TCP peer that accepts connections and never says a word (no SSH banner)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    hung = {
        "hostname": "127.0.0.1",
        "port": listener.getsockname()[1],
        "user": "nobody",
        "identity_file": sandbox.hosts["local-1"].identity_file,
        "workspace": "/workspace/moola",
        "connect_timeout_s": 60,  # longer than --timeout: the run's bound must win
    }
    inventory = write_inventory(cwd / "hung.yaml", sandbox, {"hung-1": hung})
    try:
        proc = healthcheck(cwd, "--inventory", str(inventory), "--timeout", "3", "--json")
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()
    assert proc.elapsed < 3 + 3.0, proc.elapsed  # the bound plus interpreter start-up
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    states = {h["host"]: h["state"] for h in doc["hosts"]}
    assert states == {"local-1": "OK", "local-2": "OK", "hung-1": "CRITICAL"}
    hung_host = next(h for h in doc["hosts"] if h["host"] == "hung-1")
    # the timeout the user gave, not the 2.5 s inside it that leaves room for the log
    assert hung_host["checks"][0]["message"] == "no answer within the 3 s timeout"
    assert accepted  # it really connected to the silent peer


def test_a_stopped_host_is_critical_and_the_others_are_checked(fleet):
    sandbox, inventory, cwd = fleet
    host = sandbox.hosts["local-2"]
    os.killpg(host.pid, 15)
    time.sleep(0.2)
    proc = healthcheck(cwd, "--inventory", str(inventory), "--group", "local")
    assert proc.returncode == 2
    first = proc.stdout.splitlines()[0]
    assert first.startswith("MOOLA CRITICAL - 1/2 hosts OK (fast); local-2 CRITICAL ssh: ")


def test_unwritable_prom_file_is_unknown_but_the_checks_still_report(fleet):
    sandbox, inventory, cwd = fleet
    blocker = cwd / "not-a-dir"
    blocker.write_text("a file where the textfile directory should be")
    proc = healthcheck(cwd, "--inventory", str(inventory), "--prom", str(blocker / "moola.prom"))
    assert proc.returncode == 3
    assert proc.stdout.startswith("MOOLA OK - 2/2 hosts OK")
    assert proc.stderr.startswith("cannot write --prom ")
    assert "Traceback" not in proc.stderr


def test_thresholds_from_flags_and_inventory_and_globs(fleet):
    sandbox, _, cwd = fleet
    import yaml

    inventory = write_inventory(cwd / "hosts.yaml", sandbox)
    doc = yaml.safe_load(inventory.read_text())
    # local-2 wants a million GiB free: its own inventory threshold makes it CRITICAL
    doc["hosts"]["local-2"]["critical"] = {"free_gib": "1000000:"}
    inventory.write_text(yaml.safe_dump(doc))
    proc = healthcheck(cwd, "--inventory", str(inventory), "--host", "local-*")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.startswith("MOOLA CRITICAL - 1/2 hosts OK (fast); local-2 CRITICAL disk: ")
    # the flag beats the inventory field
    proc = healthcheck(
        cwd,
        "--inventory",
        str(inventory),
        "--host",
        "local-*",
        "--critical",
        "free_gib=0:",
        "--warning",
        "free_gib=1000000:",
    )
    assert proc.returncode == 1, proc.stdout
    assert proc.stdout.startswith("MOOLA WARNING - 0/2 hosts OK (fast)")
    # every failure to even run the check is UNKNOWN with a status line
    for args in (("--warning", "p99_ms=fast"), ("--timeout", "abc"), ("--host", "nope-*")):
        proc = healthcheck(cwd, "--inventory", str(inventory), *args)
        assert proc.returncode == 3, (args, proc.stdout, proc.stderr)
        assert proc.stdout.startswith("MOOLA UNKNOWN - ") and "Traceback" not in proc.stderr
    doc["hosts"]["local-1"]["warning"] = {"free_gib": "ten"}
    inventory.write_text(yaml.safe_dump(doc))
    proc = healthcheck(cwd, "--inventory", str(inventory))
    assert proc.returncode == 3 and "'ten' is not a number" in proc.stdout
