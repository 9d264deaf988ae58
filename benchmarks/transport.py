"""What the transport's deadlines cost, and how fast a dead host is noticed, in one run.

    python benchmarks/transport.py [--commands 200] [--upload-mb 64]

1. A short command (`true`) over one connection: `HostSession.run` (process-group report,
   host-side `timeout`, our own channel loop) vs Fabric's `Connection.run` on the same kind of
   connection (what the transport used before). Median of --commands runs each, alternated.
2. An upload of --upload-mb MB: `HostSession.upload` (deadline watchdog, keepalive listener) vs
   paramiko's `SFTPClient.put` alone. Median of 3 each.
3. A frozen host (every sshd process of the stand-in host stopped with SIGSTOP) during an
   upload: seconds until the upload fails, with keepalive_s = 1, 2 and 5 (3 silent intervals).

Runs on a real OpenSSH stand-in host on 127.0.0.1. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from moola_ops.hosts.inventory import Inventory  # noqa: E402
from moola_ops.hosts.standin import start_sandbox  # noqa: E402
from moola_ops.transport import HostSession, TransportError  # noqa: E402
from tests.integration.helpers import descendants  # noqa: E402


def command_latency(host, n: int) -> dict:
    ours, fabric = [], []
    with HostSession(host) as ssh:
        conn = ssh._conn  # the same Fabric Connection: its Runner is the baseline
        for _ in range(3):
            ssh.run("true")
            conn.run("true", hide=True, warn=True, in_stream=False)
        for _ in range(n):
            started = time.perf_counter()
            ssh.run("true")
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            conn.run("true", hide=True, warn=True, in_stream=False)
            fabric.append(time.perf_counter() - started)
    return {
        "hostsession_run_ms": round(statistics.median(ours) * 1000, 2),
        "fabric_run_ms": round(statistics.median(fabric) * 1000, 2),
    }


def upload_speed(host, workspace: str, size_mb: int) -> dict:
    local = Path(tempfile.mkdtemp()) / "blob.bin"
    local.write_bytes(os.urandom(1 << 20) * size_mb)
    ours, plain = [], []
    try:
        with HostSession(host) as ssh:
            sftp = ssh._conn.client.open_sftp()
            for _ in range(3):
                started = time.perf_counter()
                ssh.upload(local, f"{workspace}/a.bin")
                ours.append(time.perf_counter() - started)
                started = time.perf_counter()
                sftp.put(str(local), f"{workspace}/b.bin", confirm=True)
                plain.append(time.perf_counter() - started)
            sftp.close()
    finally:
        shutil.rmtree(local.parent, ignore_errors=True)
    return {
        "hostsession_upload_mb_s": round(size_mb / statistics.median(ours), 1),
        "paramiko_put_mb_s": round(size_mb / statistics.median(plain), 1),
    }


def frozen_detection(host, sshd_pid: int, workspace: str, keepalive_s: float) -> float:
    local = Path(tempfile.mkdtemp()) / "blob.bin"
    local.write_bytes(os.urandom(1 << 20) * 48)
    stopped: list[int] = []
    frozen_at: list[float] = []

    def progress(sent: int, total: int) -> None:
        if not stopped:
            for _ in range(2):
                for pid in descendants(sshd_pid):
                    if pid not in stopped:
                        os.kill(pid, signal.SIGSTOP)
                        stopped.append(pid)
            frozen_at.append(time.perf_counter())

    ssh = HostSession(host, keepalive_s=keepalive_s).open()
    try:
        ssh.upload(local, f"{workspace}/frozen.bin", progress=progress)
        raise SystemExit("the upload to a frozen host succeeded")
    except TransportError:
        return round(time.perf_counter() - frozen_at[0], 2)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        ssh.close()
        shutil.rmtree(local.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--upload-mb", type=int, default=64)
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="moola-bench-tx-")
    os.chmod(root, 0o755)
    sandbox = start_sandbox(root, ["bench-1"])
    try:
        (host,) = Inventory.from_sandbox(sandbox).resolve("bench-1")
        host = replace(host, connect_retries=0)
        running = sandbox.hosts["bench-1"]
        result = {"benchmark": "transport", "commands": args.commands}
        result.update(command_latency(host, args.commands))
        result.update(upload_speed(host, running.workspace, args.upload_mb))
        for keepalive in (1.0, 2.0, 5.0):
            seconds = frozen_detection(host, running.pid, running.workspace, keepalive)
            result[f"frozen_detected_s_keepalive_{keepalive:g}"] = seconds
            threading.Event().wait(0.5)  # let the thawed sshd finish the cut session
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)

    import paramiko

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    result.update(
        commit=commit,
        paramiko=paramiko.__version__,
        openssh=ssh_version,
        python=platform.python_version(),
        machine=f"{platform.machine()} {os.cpu_count()} cpus",
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
