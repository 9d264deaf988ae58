"""A host's text never drives the operator's terminal, through the real front door (#24 item
15): a lock holder whose fields carry escape sequences (clear screen, window title) and a
`current` link whose target does, shown by `invoke lock`, `invoke deploy` (refused by that
lock) and `invoke healthcheck`. Before the fix `invoke lock` cleared the screen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import write_inventory

pytestmark = pytest.mark.ssh

REPO = Path(__file__).resolve().parents[2]
INVOKE = str(Path(sys.executable).parent / "invoke")
CLEAR, TITLE = "\x1b[2J\x1b[H", "\x1b]0;owned\x07"


def _raw_controls(text: str) -> list[str]:
    return sorted({c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0})


@pytest.fixture
def hostile(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(["esc-1"])
    host = sandbox.hosts["esc-1"]
    ws = Path(host.workspace)
    (ws / "deploy.lock").mkdir(parents=True)
    holder = {
        "actor": f"mallory{CLEAR}\u202eyrollam",
        "what": f"deploy v0.3{TITLE}",
        "since": "2025-11-27T16:33:00Z",
        "deployment": "20251127T163300Z-abc123",
        "pid": 7,
        "client": "far",
    }
    (ws / "deploy.lock" / "holder.json").write_text(json.dumps(holder))  # escapes as \u001b
    (ws / "current").symlink_to(f"/tmp/nowhere{CLEAR}")
    inventory = write_inventory(tmp_path / "hosts.yaml", {"esc-1": host})
    env = {**os.environ, "MOOLA_LOG": str(tmp_path / "deployments.jsonl")}

    def task(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [INVOKE, "-r", str(REPO), *args, "--inventory", str(inventory)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return task


def test_invoke_lock_shows_the_holder_without_obeying_its_escapes(hostile):
    shown = hostile("lock", "--host", "esc-1")
    assert shown.returncode == 0, shown.stderr
    assert _raw_controls(shown.stdout + shown.stderr) == []
    assert "mallory\\x1b[2J\\x1b[H" in shown.stdout and "\\u202e" in shown.stdout


def test_a_refused_deploy_and_the_health_check_show_them_escaped_too(hostile, bundles):
    refused = hostile("deploy", "--host", "esc-1", "--bundle", str(bundles["v1.0"]))
    assert refused.returncode != 0
    assert "mallory\\x1b[2J" in refused.stdout + refused.stderr
    assert _raw_controls(refused.stdout + refused.stderr) == []
    health = hostile("healthcheck")
    assert health.returncode == 2, health.stdout + health.stderr
    assert "nowhere\\x1b[2J" in health.stdout
    assert _raw_controls(health.stdout + health.stderr) == []
