"""Transport faults over real OpenSSH stand-in hosts: frozen sshd, deadlines, kills, retries.

A "frozen" host has every process of its sshd except the listener stopped with SIGSTOP: the
TCP connection stays up and the kernel keeps acknowledging, exactly what a hung sshd or a
network that silently drops packets looks like to the client. Each test picks the moment of
the fault itself (a progress callback, a file the remote command writes), never a sleep.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from moola_ops.deploy.commands import release
from moola_ops.hosts.inventory import Inventory
from moola_ops.hosts.layout import Layout
from moola_ops.transport import Aborted, CommandTimeout, HostKeyError, HostSession, TransportError
from tests.integration.helpers import descendants, gone, in_thread

pytestmark = pytest.mark.ssh


@pytest.fixture
def host(sandbox_factory):
    sandbox = sandbox_factory(["tx-1"])
    (resolved,) = Inventory.from_sandbox(sandbox, connect_timeout_s=5).resolve("tx-1")
    resolved = replace(resolved, connect_retries=0)
    yield resolved, sandbox.hosts["tx-1"]


class Freezer:
    """SIGSTOP every process under a stand-in host's sshd listener; SIGCONT them at the end."""

    def __init__(self, sshd_pid: int):
        self.sshd_pid = sshd_pid
        self.stopped: list[int] = []

    def freeze(self) -> None:
        # twice: a process forked between listing and stopping its parent is caught the second
        # time (a stopped parent forks no more)
        for _ in range(2):
            for pid in descendants(self.sshd_pid):
                if pid not in self.stopped:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
                        self.stopped.append(pid)
        assert self.stopped, "no sshd session process to freeze"

    def thaw(self) -> None:
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.stopped.clear()


@pytest.fixture
def ctrl_c():
    """Ctrl-C reaches this process for the test: a suite started in the background by a shell
    (as a second suite that loads the machine is) inherits SIGINT ignored, and then
    `_thread.interrupt_main()` does nothing and the interrupted command runs on until pytest's
    300 s timeout (issue #24). The previous disposition comes back afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def freezer(host):
    frozen = Freezer(host[1].pid)
    yield frozen
    frozen.thaw()


def _wait_for(path: Path, limit_s: float = 30.0) -> None:
    """Wait until the remote command wrote `path` (the test's chosen moment)."""
    end = time.monotonic() + limit_s
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def test_a_command_past_its_deadline_is_killed_with_its_children(host):
    resolved, running = host
    pid_file = Path(running.workspace) / "child.pid"
    with HostSession(resolved) as ssh:
        with pytest.raises(CommandTimeout) as caught:
            # the command never ends by itself; its background child must die with it
            ssh.run(f"sleep 1000 & echo $! > {pid_file}; wait", timeout_s=2)
        assert caught.value.killed and caught.value.timeout_s == 2
        assert "did not finish within 2s and was stopped on the host" in str(caught.value)
        assert gone(int(pid_file.read_text()))
        assert ssh.run("echo still usable").stdout == "still usable\n"


def _stubborn_check(workspace: Path, pid_file: Path) -> str:
    """A 'runtime check' that ignores SIGTERM and is not the direct child of `timeout` (the
    shell runs it after `cd`, as the real check runs): it writes its pid, then waits."""
    program = (
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    )
    return f"cd {workspace} && python3 -c {shlex.quote(program)}"


@pytest.fixture
def stubborn_pid(host):
    """Where the stubborn check writes its pid; a check that survived a failed test is killed
    at teardown, so a broken build leaves no process behind."""
    pid_file = Path(host[1].workspace) / "stubborn.pid"
    yield pid_file
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_bounded_check_that_ignores_sigterm_ends_at_its_bound(host, stubborn_pid):
    resolved, running = host
    ws = Path(running.workspace)
    layout = Layout(str(ws))
    pid_file = stubborn_pid
    with HostSession(resolved) as ssh:
        ssh.run(f"mkdir -p {ws}/incoming")
        # the host's bound is 2 s; before the fix the check lived on and held the channel open
        # until our own 60 s deadline (CommandTimeout)
        out = ssh.run(
            release.bounded(_stubborn_check(ws, pid_file), layout, "dep-1", 2), timeout_s=60
        )
        assert out.exit_code == 124
    assert gone(int(pid_file.read_text()))


def test_kill_bounded_ends_a_check_that_ignores_sigterm(host, stubborn_pid):
    resolved, running = host
    ws = Path(running.workspace)
    layout = Layout(str(ws))
    pid_file = stubborn_pid
    ssh = HostSession(resolved).open()
    try:
        ssh.run(f"mkdir -p {ws}/incoming")
        command = release.bounded(_stubborn_check(ws, pid_file), layout, "dep-2", 600)
        thread, box = in_thread(lambda: ssh.run(command, timeout_s=700))
        _wait_for(pid_file)
        ssh.cancel()  # Ctrl-C: the engine's cleanup then stops the check from a new connection
        thread.join(30)
        assert isinstance(box.get("error"), Aborted)
    finally:
        ssh.close()
    with HostSession(resolved) as again:
        assert again.run(release.kill_bounded(layout, "dep-2")).ok
    assert gone(int(pid_file.read_text()))
    assert not (ws / "incoming" / "dep-2.pid").exists()


def test_exit_codes_output_and_a_signal_come_back_unchanged(host):
    resolved, _ = host
    with HostSession(resolved) as ssh:
        done = ssh.run("echo out; echo err >&2; exit 7")
        assert (done.exit_code, done.stdout, done.stderr) == (7, "out\n", "err\n")
        big = ssh.run("head -c 300000 /dev/zero | tr '\\0' a")
        assert big.stdout == "a" * 300000
        # the wrapper quotes the command once more: quotes and $ reach the shell unchanged
        quoted = ssh.run("""printf '%s|' "it's" 'a "b"' '$NOT' "$((1+1))"; echo""")
        assert quoted.stdout == 'it\'s|a "b"|$NOT|2|\n' and quoted.stderr == ""
        killed = ssh.run("kill -KILL $$")
        assert killed.exit_code == -1 and "killed by a signal" in killed.stderr


def test_cancel_stops_a_running_command_on_the_host_within_seconds(host):
    resolved, running = host
    pid_file = Path(running.workspace) / "cancel.pid"
    ssh = HostSession(resolved).open()
    try:
        thread, box = in_thread(
            lambda: ssh.run(f"sleep 1000 & echo $! > {pid_file}; wait", timeout_s=600)
        )
        _wait_for(pid_file)
        ssh.cancel()
        thread.join(30)
        assert not thread.is_alive() and isinstance(box.get("error"), Aborted)
        assert gone(int(pid_file.read_text()))
        with pytest.raises(Aborted):
            ssh.run("true")  # a cancelled session does nothing more
    finally:
        ssh.close()


def test_a_cancel_just_after_connecting_leaves_the_session_to_kill_its_command(host):
    # open() watches its handshake on a thread that closes the transport on cancel(); a cancel
    # landing just after the connection was made used to close the new session's transport
    # too, so the command under way was never killed (seen in CI as an orphaned `sleep`)
    resolved, _running = host
    ssh = HostSession(resolved).open()
    try:
        transport = ssh._conn.client.get_transport()
        ssh.cancel()  # the watcher is still waiting on its 0.1 s tick: the moment of the race
        for thread in threading.enumerate():
            if thread.name == f"moola-connect-cancel-{resolved.name}":
                thread.join(5)
        assert transport.is_active(), "the handshake watcher closed an established connection"
    finally:
        ssh.close()


def test_an_upload_to_a_frozen_sshd_ends_by_keepalive_with_one_sentence(host, freezer, tmp_path):
    resolved, running = host
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(1 << 20) * 48)  # more than TCP buffers + SSH window hold
    ssh = HostSession(resolved, keepalive_s=1).open()

    def progress(sent: int, total: int) -> None:
        if not freezer.stopped:
            freezer.freeze()  # right after the first block went out

    try:
        thread, box = in_thread(
            lambda: ssh.upload(local, f"{running.workspace}/big.bin", progress=progress)
        )
        thread.join(120)  # the default deadline would be 110 s: keepalives end it first
        assert not thread.is_alive(), "the upload hung on a frozen host"
        error = box.get("error")
        assert isinstance(error, TransportError), box
        assert "tx-1 stopped answering: no reply to keepalives" in str(error)
        assert "during the upload" in str(error) and "\n" not in str(error)
    finally:
        ssh.close()


def test_an_upload_without_keepalives_ends_by_its_deadline(host, freezer, tmp_path):
    resolved, running = host
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(1 << 20) * 48)
    ssh = HostSession(resolved, keepalive_s=0).open()

    def progress(sent: int, total: int) -> None:
        if not freezer.stopped:
            freezer.freeze()

    try:
        thread, box = in_thread(
            lambda: ssh.upload(
                local, f"{running.workspace}/big.bin", progress=progress, deadline_s=3
            )
        )
        thread.join(60)
        assert not thread.is_alive(), "the upload outlived its deadline"
        assert isinstance(box.get("error"), TransportError), box
        assert "the upload to tx-1 did not finish within 3s" in str(box["error"])
    finally:
        ssh.close()


def test_cancel_cuts_an_upload_stuck_on_a_frozen_host(host, freezer, tmp_path):
    resolved, running = host
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(1 << 20) * 48)
    ssh = HostSession(resolved, keepalive_s=0).open()
    frozen = threading.Event()

    def progress(sent: int, total: int) -> None:
        if not freezer.stopped:
            freezer.freeze()
            frozen.set()

    try:
        thread, box = in_thread(
            lambda: ssh.upload(local, f"{running.workspace}/b", progress=progress)
        )
        assert frozen.wait(60)
        ssh.cancel()
        thread.join(30)
        assert not thread.is_alive() and isinstance(box.get("error"), Aborted), box
    finally:
        ssh.close()


def test_a_command_to_a_frozen_host_ends_by_keepalive(host, freezer):
    resolved, _ = host
    ssh = HostSession(resolved, keepalive_s=1).open()
    try:
        ssh.run("true")  # the session's own sshd process exists once a command ran
        freezer.freeze()
        thread, box = in_thread(lambda: ssh.run("true", timeout_s=600))
        thread.join(60)
        assert not thread.is_alive()
        assert isinstance(box.get("error"), TransportError), box
        assert "stopped answering" in str(box["error"])
        assert not isinstance(box["error"], CommandTimeout)
    finally:
        ssh.close()


class DropFirstProxy:
    """A TCP forwarder to sshd that hangs up on the first `drops` connections (a flaky link
    or sshd's MaxStartups), then forwards the rest."""

    def __init__(self, port: int, drops: int = 1):
        self.target = port
        self.drops = drops
        self.accepted = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.server.accept()
                self.accepted += 1
                if self.accepted <= self.drops:
                    client.close()
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.target))
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()


def test_connection_setup_is_retried_with_backoff(host):
    resolved, _ = host
    proxy = DropFirstProxy(resolved.port, drops=2)
    try:
        via = replace(resolved, port=proxy.port, connect_retries=2)
        # the stand-in's known_hosts pins 127.0.0.1 at sshd's own port; the proxy's differs
        known = (
            Path(resolved.known_hosts)
            .read_text()
            .replace(f"[127.0.0.1]:{resolved.port}", f"[127.0.0.1]:{proxy.port}")
        )
        Path(resolved.known_hosts).write_text(known)
        with HostSession(via, connect_backoff_s=0.1) as ssh:
            assert ssh.connect_attempts == 3 and proxy.accepted == 3
            assert ssh.run("echo ok").stdout == "ok\n"
        proxy.drops, proxy.accepted = 10, 0
        with pytest.raises(TransportError, match=r"after 2 attempts"):
            HostSession(replace(via, connect_retries=1), connect_backoff_s=0.1).open()
        assert proxy.accepted == 2
    finally:
        proxy.close()


def test_a_changed_host_key_names_both_fingerprints_and_the_line_to_edit(host, tmp_path):
    resolved, running = host
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = Path(resolved.known_hosts)
    entry = f"[127.0.0.1]:{resolved.port}"
    lines = known.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(entry + " "))
    kind, blob = other.with_suffix(".pub").read_text().split()[:2]
    lines[index] = f"{entry} {kind} {blob}"
    known.write_text("\n".join(lines) + "\n")

    def keygen_l(path) -> str:  # "256 SHA256:... comment (ED25519)" -> without the comment
        done = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True)
        words = done.stdout.split()
        return f"{words[0]} {words[1]} {words[-1]}"

    new_key = Path(running.host_dir) / "ssh_host_ed25519_key.pub"
    session = HostSession(resolved)
    with pytest.raises(HostKeyError) as caught:
        session.open()
    message = str(caught.value)
    assert f"now offers {keygen_l(new_key)}" in message
    assert f"known_hosts has {keygen_l(other.with_suffix('.pub'))}" in message
    assert f"edit {known} line {index + 1}" in message
    assert session.connect_attempts == 1  # a changed key is never retried


def test_an_upload_stopped_by_its_callback_leaves_the_session_usable(host, tmp_path):
    # the engine's Ctrl-C path: the progress callback raises Aborted, then the lock is released
    # over the same connection
    resolved, running = host
    local = tmp_path / "small.bin"
    local.write_bytes(os.urandom(1 << 20))

    def stop(sent: int, total: int) -> None:
        raise Aborted()

    with HostSession(resolved) as ssh:
        with pytest.raises(Aborted):
            ssh.upload(local, f"{running.workspace}/small.bin", progress=stop)
        assert ssh.run("echo unlocked").stdout == "unlocked\n"
        ssh.upload(local, f"{running.workspace}/again.bin")
        assert Path(running.workspace, "again.bin").read_bytes() == local.read_bytes()


def test_cancel_ends_a_handshake_that_hangs(host):
    # a port that accepts TCP and never speaks SSH: the banner wait would last connect_timeout_s
    resolved, _ = host
    silent = socket.create_server(("127.0.0.1", 0))
    accepted = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            held.append(silent.accept()[0])
            accepted.set()

    threading.Thread(target=accept, daemon=True).start()
    mute = replace(resolved, port=silent.getsockname()[1], connect_timeout_s=120)
    ssh = HostSession(mute)
    try:
        thread, box = in_thread(ssh.open)
        assert accepted.wait(30)
        ssh.cancel()
        thread.join(30)
        assert not thread.is_alive(), "cancel did not end the handshake"
        assert isinstance(box.get("error"), Aborted), box
    finally:
        silent.close()
        for conn in held:
            conn.close()


def test_ctrl_c_in_the_running_thread_stops_the_remote_command(host, ctrl_c):
    import _thread

    resolved, running = host
    pid_file = Path(running.workspace) / "ctrl-c.pid"

    def press_ctrl_c() -> None:
        _wait_for(pid_file)  # the command runs: now
        _thread.interrupt_main()

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with HostSession(resolved) as ssh:
        with pytest.raises(KeyboardInterrupt):
            # written whole, then renamed: the file never exists empty
            ssh.run(f"sleep 1000 & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; wait")
        assert gone(int(pid_file.read_text()))
        assert ssh.run("echo usable").stdout == "usable\n"


class _InterruptedAfterAcquire:
    """A Paramiko lock on which, once armed, a Ctrl-C lands just after the lock was taken and
    before the `try:` that would release it: the moment a real Ctrl-C hits now and then on a busy
    machine (the SIGINT handler runs between any two bytecodes of the main thread)."""

    def __init__(self, real):
        self.real, self.armed, self.fired = real, threading.Event(), False

    def acquire(self, *args, **kwargs):
        got = self.real.acquire(*args, **kwargs)
        if got and self.armed.is_set() and not self.fired:
            import _thread

            self.fired = True
            _thread.interrupt_main()
            time.sleep(0)  # the handler runs here, with the lock held
        return got

    def release(self):
        self.real.release()

    def locked(self):
        return self.real.locked()

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()


def test_a_ctrl_c_landing_inside_paramiko_never_hangs_the_session(host, ctrl_c):
    # Issue #24: under load the test above hung until pytest's 300 s timeout. A KeyboardInterrupt
    # raised inside Paramiko between a lock's acquire() and its try: leaves the lock held, and
    # the next call on the channel (the kill of the remote command) waits for it forever.
    resolved, running = host
    pid_file = Path(running.workspace) / "inside.pid"
    with HostSession(resolved) as ssh:
        hung = threading.Event()
        box: dict = {}

        def arm_then_watch() -> None:
            _wait_for(pid_file)  # the command runs: the next stderr poll takes the lock
            box["lock"].armed.set()
            time.sleep(20)  # far past any kill; then unstick a leaked lock so the test can end
            if box["lock"].real.locked():
                hung.set()
                box["lock"].real.release()

        real_open = ssh._conn.client.get_transport().open_session

        def open_session(*args, **kwargs):
            chan = real_open(*args, **kwargs)
            if "lock" not in box:  # the command's channel: its stderr buffer's lock
                box["lock"] = _InterruptedAfterAcquire(chan.in_stderr_buffer._lock)
                chan.in_stderr_buffer._lock = box["lock"]
                threading.Thread(target=arm_then_watch, daemon=True).start()
            return chan

        ssh._conn.client.get_transport().open_session = open_session
        with pytest.raises(KeyboardInterrupt):
            ssh.run(f"sleep 1000 & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; wait")
        assert box["lock"].fired
        assert not hung.is_set(), "a Ctrl-C inside Paramiko left a lock held: the session hung"
        assert gone(int(pid_file.read_text()))
        assert ssh.run("echo usable").stdout == "usable\n"


def test_ctrl_c_during_an_upload_in_the_running_thread_cuts_it(host, tmp_path, ctrl_c):
    # the Ctrl-C is noted inside Paramiko's SFTP loop and the watchdog cuts the connection:
    # KeyboardInterrupt comes back, not a half-written packet or a held lock
    import _thread

    resolved, running = host
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(1 << 20) * 16)

    def press(sent: int, total: int) -> None:
        if sent and not press.done:
            press.done = True
            _thread.interrupt_main()

    press.done = False
    with HostSession(resolved) as ssh:
        with pytest.raises(KeyboardInterrupt):
            ssh.upload(local, f"{running.workspace}/big.bin", progress=press)
        assert press.done


def test_an_upload_whose_connection_is_killed_says_the_connection_broke(host, tmp_path):
    resolved, running = host
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(1 << 20) * 16)
    killed: list[int] = []

    def cut(sent: int, total: int) -> None:
        if not killed:
            for pid in descendants(running.pid):  # this host's connection processes only
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

    with HostSession(resolved) as ssh, pytest.raises(TransportError) as caught:
        ssh.upload(local, f"{running.workspace}/cut.bin", progress=cut)
    assert str(caught.value).startswith("connection to tx-1 broke during the upload")
    assert "full disk" not in str(caught.value)
