"""Helpers shared by the integration tests and the benchmarks that drive stand-in hosts.

Plain functions, no fixtures and no heavy imports: the benchmarks (transport, serving, shadow,
cli) import them as well as the tests.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path


def default_signals() -> None:
    """In the child: Ctrl-C and SIGTERM at their defaults. A test run started in the background
    by a shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt; the
    tests that send a signal must not depend on how they were started."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), read from /proc. Given a
    stand-in host's sshd pid: every process serving connections to that host."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def host_entry(host, *, with_python: bool = False, **extra) -> dict:
    """An explicit inventory entry (no `sandbox: true`) for one stand-in host: a
    `moola_ops.hosts.standin.SandboxHost` or an inventory `Host`. `with_python` adds the host's own
    python; `extra` keys (groups, serve_port, latency_sla_ms, python, ...) are added as given.
    `serve_port` is 0 unless given: a free port, never the fixed default another suite holds."""
    entry = {
        "hostname": host.hostname,
        "port": host.port,
        "user": host.user,
        "identity_file": host.identity_file,
        "known_hosts": host.known_hosts,
        "workspace": host.workspace,
        "serve_port": 0,
    }
    if with_python:
        entry["python"] = host.python
    entry.update(copy.deepcopy(extra))  # no shared lists: plain YAML, no &id anchors
    return entry


def write_inventory(path: Path, hosts: Mapping[str, object], **options) -> Path:
    """Write an inventory file naming `hosts` ({name: host}) explicitly; `options` go to
    `host_entry` for every host. Returns `path`."""
    import yaml

    entries = {name: host_entry(host, **options) for name, host in hosts.items()}
    path.write_text(yaml.safe_dump({"hosts": entries}))
    return path


def window(seed: int) -> list[list[float]]:
    """A 105-bar OHLC random walk from 100.0, the same for the same seed."""
    rng = random.Random(seed)
    rows, price = [], 100.0
    for _ in range(105):
        close = price * (1 + rng.gauss(0, 0.003))
        high = max(price, close) * (1 + abs(rng.gauss(0, 0.001)))
        low = min(price, close) * (1 - abs(rng.gauss(0, 0.001)))
        rows.append([price, high, low, close])
        price = close
    return rows


def wait_for(condition, what: str, timeout_s: float = 60.0, poll_s: float = 0.01):
    """Poll a condition until it is true (returned) or the deadline passes (AssertionError
    naming `what`): never a fixed sleep standing in for an event."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def hanging_python(root: Path, host, sleep_arg: str) -> tuple[str, Path]:
    """A `python:` for `host` whose runtime check touches a flag file (returned: the moment it
    started) and then runs on as `sleep SLEEP_ARG` (find it by that argument); everything else
    is the host's real python."""
    flags = root / "flags"
    flags.mkdir(exist_ok=True)
    flags.chmod(0o777)
    started = flags / f"{host.name}-check-started"
    wrapper = root / f"python-hangs-{host.name}"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "moola_core.runtime" ]; then\n'
        f"  touch {started}; exec sleep {sleep_arg}\nfi\n"
        f'exec {host.python} "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper), started


class Frozen:
    """A stand-in host whose link is cut: its sshd listener and every session process stopped
    with SIGSTOP (our own processes). Open connections stay up and the kernel still accepts new
    ones, while nothing answers: what a cut network looks like to the client. `thaw()` ends it."""

    def __init__(self, sshd_pid: int):
        self.pids: list[int] = []
        for _ in range(2):  # a child forked while we listed is caught the second time
            for pid in [sshd_pid, *descendants(sshd_pid)]:
                if pid not in self.pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
                        self.pids.append(pid)

    def thaw(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.pids = []


def interrupt_mid_check(
    hosts, sandbox, root: Path, bundle, *, cut: str | None, sleep_arg: str, env: dict
) -> tuple[int, str, str, float]:
    """`invoke deploy --no-serve` of `bundle` to `hosts` whose runtime checks run on (each says
    when it started); once every check runs, the sshd of host `cut` is frozen (if given) and the
    deploy gets one SIGINT. Returns (exit code, stdout, stderr, seconds from SIGINT to exit).
    The moments come from the checks' flag files, never a sleep. Used by
    tests/integration/test_dead_host.py and benchmarks/dead_host.py."""
    import subprocess
    import sys

    import yaml

    entries, flags = {}, []
    for host in hosts:
        python, flag = hanging_python(root, host, sleep_arg)
        flag.unlink(missing_ok=True)
        entries[host.name] = host_entry(host, python=python, connect_timeout_s=5)
        flags.append(flag)
    inventory = root / "interrupted-hosts.yaml"
    inventory.write_text(yaml.safe_dump({"hosts": entries}))
    invoke = str(Path(sys.executable).parent / "invoke")
    names = ",".join(h.name for h in hosts)
    args = [invoke, "deploy", "--host", names, "--bundle", str(bundle), "--no-serve"]
    args += ["--inventory", str(inventory), "--check-runs", "3"]
    proc = subprocess.Popen(
        args,
        cwd=Path(__file__).parents[2],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,
    )
    frozen = None
    try:
        wait_for(lambda: all(f.exists() for f in flags), "every host's check to start", 300)
        if cut is not None:
            frozen = Frozen(sandbox.hosts[cut].pid)  # its link is cut mid-check
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=600)
        return proc.returncode, out, err, time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if frozen is not None:
            frozen.thaw()


@contextlib.contextmanager
def release_server(release: Path, state: Path, *extra: str):
    """A real model server process for `release` on 127.0.0.1 (CPU, one thread): yields its
    port once ready (golden parity passed), terminates it on the way out."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(release / "code"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moola_core.runtime", "serve", "--release", str(release)]
        + ["--port", "0", "--device", "cpu", "--state-file", str(state), *extra],
        cwd=release,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )

    def ready() -> bool:
        assert proc.poll() is None, proc.stderr.read()
        return state.exists() and json.loads(state.read_text()).get("ready", False)

    try:
        wait_for(ready, "the server to be ready", timeout_s=180)
        yield json.loads(state.read_text())["port"], proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def in_thread(fn):
    """Run fn in a daemon thread; returns (thread, box) where box gets 'result' or 'error'."""
    box: dict = {}

    def body():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, box


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs now (an exited process not yet reaped, a zombie, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


def gone(pid: int, limit_s: float = 15.0) -> bool:
    """True once `pid` has exited (a zombie counts): a kill travels over a second channel and
    lands a moment after the call returns, so wait for it (bounded) instead of racing it."""
    end = time.monotonic() + limit_s
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z" or time.monotonic() > end:
            return state == "Z"
        time.sleep(0.05)
