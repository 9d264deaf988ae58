"""What a person (or cron mail) sees while `invoke deploy`, `rollback`, `verify` and
`healthcheck --deep` work: real tasks in a subprocess against real OpenSSH stand-in hosts.

Off a terminal: one plain line per finished step on stderr, no escape codes, stdout unchanged.
On a terminal (a pseudo-terminal here): the live per-host view draws each host's step.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import running_hosts
from tests.integration.helpers import write_inventory

pytestmark = pytest.mark.ssh

REPO = Path(__file__).resolve().parents[2]
INVOKE = str(Path(sys.executable).parent / "invoke")


@pytest.fixture(scope="module")
def pair():
    with running_hosts(["pg-1", "pg-2"]) as (sandbox, _root):
        yield sandbox


def inventory(path: Path, sandbox) -> Path:
    # the stand-ins share 127.0.0.1: each picks a free port for its model server
    return write_inventory(
        path, sandbox.hosts, with_python=True, groups=["pg"], latency_sla_ms=60000, serve_port=0
    )


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MOOLA_LOG": str(cwd / "log.jsonl"), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [INVOKE, "-r", str(REPO), *args],
        cwd=cwd,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def run_in_terminal(cwd: Path, *args: str) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; return (exit code, what it drew)."""
    env = {
        **os.environ,
        "MOOLA_LOG": str(cwd / "log.jsonl"),
        "PYTHONPATH": str(REPO),
        "TERM": "xterm-256color",
        "COLUMNS": "140",
        "LINES": "40",
    }
    parent, child = pty.openpty()
    proc = subprocess.Popen(
        [INVOKE, "-r", str(REPO), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
    )
    os.close(child)
    chunks, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([parent], [], [], 1.0)
        if ready:
            try:
                data = os.read(parent, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(parent)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_deploy_rollback_and_verify_print_each_step_off_a_terminal(pair, bundles, tmp_path):
    hosts = inventory(tmp_path / "hosts.yaml", pair)
    first = run(
        tmp_path,
        "deploy",
        "--host",
        "pg",
        "--bundle",
        str(bundles["v1.0"]),
        "--inventory",
        str(hosts),
    )
    assert first.returncode == 0, first.stdout + first.stderr
    steps = [line.split() for line in first.stderr.splitlines()]
    for host in ("pg-1", "pg-2"):
        mine = [s[3] for s in steps if s[1:3] == ["deploy", host] and s[4] == "ok"]
        for step in ("connect", "lock", "upload", "promote", "check", "switch", "post-check"):
            assert step in mine, (host, step, first.stderr)
    assert "\x1b" not in first.stderr + first.stdout
    assert first.stdout.splitlines()[-1].endswith(": OK")  # the result is still on stdout

    run(
        tmp_path,
        "deploy",
        "--host",
        "pg",
        "--bundle",
        str(bundles["v1.1"]),
        "--inventory",
        str(hosts),
    )
    back = run(tmp_path, "rollback", "--host", "pg-1", "--inventory", str(hosts))
    assert back.returncode == 0, back.stdout + back.stderr
    # the host serves: traffic went to the warm standby and was checked over HTTP (no model
    # load); the runtime check is `invoke verify`'s, below
    assert any(
        line.split()[1:5] == ["rollback", "pg-1", "serve-post-check", "ok"]
        for line in back.stderr.splitlines()
    ), back.stderr

    verify = run(tmp_path, "verify", "--host", "pg-1", "--inventory", str(hosts))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    shown = [line.split()[1:5] for line in verify.stderr.splitlines()]
    assert ["healthcheck", "pg-1", "runtime-check", "ok"] in shown, verify.stderr
    assert ["verify", "pg-1", "sanity", "ok"] in shown


def test_a_terminal_gets_the_live_per_host_view(pair, bundles, tmp_path):
    hosts = inventory(tmp_path / "hosts.yaml", pair)
    code, drawn = run_in_terminal(
        tmp_path,
        "deploy",
        "--host",
        "pg",
        "--bundle",
        str(bundles["v1.2"]),
        "--inventory",
        str(hosts),
    )
    assert code == 0, drawn[-3000:]
    assert "deploy v1.2" in drawn  # the live view's title
    # each host's row showed a step while it ran, then the final table replaced the view
    for host in ("pg-1", "pg-2"):
        assert any(
            host in line and ("upload" in line or "check" in line or "promote" in line)
            for line in drawn.splitlines()
        ), drawn[-3000:]
    assert "deploy " in drawn and ": OK" in drawn

    code, drawn = run_in_terminal(
        tmp_path, "healthcheck", "--deep", "--group", "pg", "--inventory", str(hosts)
    )
    assert code == 0, drawn[-3000:]
    assert "runtime-check" in drawn  # the deep check's step was on screen while it ran
    assert "'hosts_ok'=" not in drawn  # a person gets the table, not the raw perfdata
