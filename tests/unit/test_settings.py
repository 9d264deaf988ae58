"""Settings through Invoke's configuration hierarchy (invoke.yaml, -f FILE, INVOKE_* env), with
the MOOLA_* environment variables still winning, as the shipped invoke.yaml documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def run(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MOOLA_", "INVOKE_"))}
    return subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(REPO), *args],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def line(step: str) -> str:
    return (
        json.dumps(
            {
                "time": "2026-11-27T10:00:00.000Z",
                "deployment": "d1",
                "actor": "me",
                "host": "h1",
                "bundle": "v1",
                "phase": "deploy",
                "step": step,
                "status": "ok",
                "duration_s": 0.1,
                "detail": {},
            }
        )
        + "\n"
    )


def test_the_shipped_invoke_yaml_holds_the_built_in_defaults():
    doc = yaml.safe_load((REPO / "invoke.yaml").read_text())
    assert doc["moola"]["log"] == "logs/deployments.jsonl"
    assert doc["moola"]["inventory"] == "inventory/hosts.yaml"
    assert doc["healthcheck"]["timeout"] == 30 and doc["deploy"]["parallel"] == 4


def test_config_file_then_invoke_env_then_moola_env(tmp_path):
    for name in ("from-file", "from-invoke-env", "from-moola-env"):
        (tmp_path / f"{name}.jsonl").write_text(line(name))
    config = tmp_path / "ops.yaml"
    config.write_text(yaml.safe_dump({"moola": {"log": str(tmp_path / "from-file.jsonl")}}))
    done = run(tmp_path, "-f", str(config), "log")
    assert "from-file" in done.stdout, done.stdout + done.stderr
    invoke_env = {"INVOKE_MOOLA_LOG": str(tmp_path / "from-invoke-env.jsonl")}
    done = run(tmp_path, "log", env=invoke_env)
    assert "from-invoke-env" in done.stdout, done.stdout + done.stderr
    done = run(
        tmp_path,
        "-f",
        str(config),
        "log",
        env={**invoke_env, "MOOLA_LOG": str(tmp_path / "from-moola-env.jsonl")},
    )
    assert "from-moola-env" in done.stdout, done.stdout + done.stderr


def test_a_healthcheck_setting_applies_and_a_bad_one_is_unknown(tmp_path):
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text("hosts:\n  gone:\n    hostname: 127.0.0.1\n    port: 9\n")
    config = tmp_path / "ops.yaml"
    config.write_text(yaml.safe_dump({"healthcheck": {"critical": "free_gib=1:", "timeout": 7}}))
    done = run(
        tmp_path,
        "-f",
        str(config),
        "healthcheck",
        "--inventory",
        str(inventory),
        "--json",
        env={"MOOLA_LOG": str(tmp_path / "l.jsonl")},
    )
    assert done.returncode == 2, done.stdout + done.stderr  # ran: the closed port is CRITICAL
    config.write_text(yaml.safe_dump({"healthcheck": {"warning": "p99_ms=soon"}}))
    done = run(tmp_path, "-f", str(config), "healthcheck", "--inventory", str(inventory))
    assert done.returncode == 3
    assert done.stdout.startswith("MOOLA UNKNOWN - --warning: threshold range 'soon'")
