"""HostSession: one SSH connection to one host, reused for every step of a run."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from moola_core.errors import MoolaError
from moola_ops.hosts.inventory import Host
from moola_ops.transport import agent, connect
from moola_ops.transport.errors import (
    Aborted,
    CommandTimeout,
    HostKeyError,
    TransportError,
    short_reason,
)
from moola_ops.transport.process import wrap_command
from moola_ops.transport.remote import (
    HOST_TIMEOUT_SLACK_S,
    KILL_WAIT_S,
    Result,
    await_pgid,
    kill_group,
    take_pgid,
)
from moola_ops.transport.watchdog import PROBE_SILENCE_S, Watchdog

CONNECT_BACKOFF_S = 1.0  # pause before the first connect retry; doubles, at most the cap
CONNECT_BACKOFF_MAX_S = 5.0
UPLOAD_BASE_S = 60.0  # an upload's default deadline: this plus its size at the slowest rate
UPLOAD_MIN_BYTES_PER_S = 1_000_000


class HostSession:
    """One SSH connection to one host; reuse it for every step of a run (few round trips)."""

    def __init__(
        self,
        host: Host,
        *,
        accept_new_host_key: bool = False,
        command_timeout_s: float = 900.0,
        keepalive_s: float | None = None,
        connect_backoff_s: float = CONNECT_BACKOFF_S,
    ):
        self.host = host
        self.accept_new_host_key = accept_new_host_key
        self.command_timeout_s = command_timeout_s
        # 0 turns keepalives off (deadlines still hold)
        self.keepalive_s = host.keepalive_s if keepalive_s is None else keepalive_s
        self.connect_backoff_s = connect_backoff_s
        self.accepted_key: str | None = None  # fingerprint pinned by accept_new_host_key
        self.connected_to: Host | None = None  # the host as reached (a pod: its address now)
        self.connect_attempts = 0  # how many attempts the last open() took
        self._conn = None
        self._sftp = None
        self._watchdog: Watchdog | None = None
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._transfer_active = False
        self._dropped: str | None = None  # why the connection was cut (watchdog, cancel)
        self.ctrl_c = False  # a Ctrl-C noted while Paramiko worked (see _ctrl_c_deferred)
        self.cut_on_ctrl_c = False  # an upload or read under way: a Ctrl-C cuts the connection
        self._agent_seen: set[str] = set()  # workspaces whose agent folder this session saw
        self.agent_installs = 0  # how often this session put the agent's folder on the host

    # -- connection -----------------------------------------------------------------------

    def open(self) -> HostSession:
        """Connect and authenticate; raise TransportError / HostKeyError with one clear line.

        Connection set-up failures are retried `host.connect_retries` times with a growing
        pause; a refused key or host key is not (it will not change by itself). A
        `runpod_pod_id` host is looked up first (`Host.endpoint`, moola_ops/hosts/runpod/); when
        the (possibly cached) address fails, the pod is looked up once more and, if it moved
        (a restart), connected to there.
        """
        # the look-up of a pod is plain HTTP, where a Ctrl-C may land anywhere; Paramiko is not
        target = self._endpoint(refresh=False)
        if not self.host.runpod_pod_id:
            with self._ctrl_c_deferred():
                return self._open(target)
        try:  # once at the cached address: a pod that moved is looked up, not waited for
            with self._ctrl_c_deferred():
                return self._open(target, retries=0)
        except TransportError as first:
            if self._cancelled.is_set():
                raise
            again = self._endpoint(refresh=True)
            moved = (again.hostname, again.port) != (target.hostname, target.port)
            if not moved and isinstance(first, HostKeyError):
                raise
            with self._ctrl_c_deferred():
                return self._open(again, retries=None if moved else target.connect_retries - 1)

    def _endpoint(self, *, refresh: bool) -> Host:
        """Where to connect now (a pod: asked of RunPod's API); cancel() ends the question."""
        try:
            return self.host.endpoint(refresh=refresh, cancel=self._cancelled)
        except MoolaError:
            self._check_cancelled()
            raise

    def _open(self, host: Host, retries: int | None = None) -> HostSession:
        retries = host.connect_retries if retries is None else retries
        attempts = 1 + max(0, int(retries))
        pause = self.connect_backoff_s
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            self.connect_attempts = attempt
            self._check_cancelled()
            if self.ctrl_c:
                raise Aborted()
            try:
                self._conn = connect.open_connection(self, host)
                break
            except connect.SetupFailed as failed:
                if attempt == attempts:
                    tries = f" after {attempts} attempts over {time.monotonic() - started:.0f}s"
                    raise TransportError(
                        f"cannot reach {host.name} ({host.address}) within "
                        f"{host.connect_timeout_s:g}s{tries if attempts > 1 else ''}: "
                        f"{failed.reason}; check the address, the port mapping and that the "
                        "host is up"
                    ) from None
                if self._cancelled.wait(pause) or self.ctrl_c:
                    raise Aborted() from None
                pause = min(pause * 2, CONNECT_BACKOFF_MAX_S)
        transport = self._conn.client.get_transport()
        self._dropped = None
        self.connected_to = host
        if self.keepalive_s and self.keepalive_s > 0:
            self._watchdog = Watchdog(self, transport, float(self.keepalive_s))
            self._watchdog.start()
        return self

    def close(self) -> None:
        """Close the connection (safe to call twice, and from another thread)."""
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        self._close_sftp()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _close_sftp(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
            self._sftp = None

    def cancel(self) -> None:
        """Stop what this session is doing, from any thread (Ctrl-C, a fleet's deadline).

        A running command has its remote process group killed and raises Aborted; a running
        upload or read is cut (the connection is closed) and raises Aborted; a connection being set up
        stops (its handshake is closed; a TCP connect still waiting ends by connect_timeout_s).
        Later calls raise Aborted at once, until `resume()` (cleanup on a live connection).
        With keepalives on, a keepalive goes out at once: a host that sends nothing back
        within PROBE_SILENCE_S is dead and its connection closed (`dead`), so nothing waits
        on it for long.
        """
        self._cancelled.set()
        with self._lock:
            cut = self._transfer_active
        if cut:
            self._drop("cancelled")
        elif self._watchdog is not None:
            self._watchdog.probe_now()

    def resume(self) -> bool:
        """After `cancel()`: let the session run commands again (the guard's cleanup), when its
        connection is still up and the host answered since the cancel (waiting for that at
        most PROBE_SILENCE_S and a little). False: open a new session, or none (`dead`)."""
        if self.liveness() is False or self._dropped is not None or self._conn is None:
            return False
        transport = self._conn.client.get_transport()
        if transport is None or not transport.is_active():
            return False
        self._cancelled.clear()
        return True

    def liveness(self) -> bool | None:
        """After `cancel()`: True once the host answered its keepalive, False when it did not
        (the connection was closed), None when that cannot be told (keepalives off, or the
        connection was cut by the cancel itself)."""
        watchdog = self._watchdog
        if watchdog is None or not watchdog.probing:
            return None
        end = time.monotonic() + PROBE_SILENCE_S + 1.0
        while True:
            verdict = watchdog.verdict()
            if verdict is not None or time.monotonic() > end:
                return verdict
            time.sleep(0.05)

    @property
    def dead(self) -> str | None:
        """Why the host counts as dead (no answer to keepalives, or to the cancel's probe), or
        None: a host found dead is not tried again in the same run."""
        reason = self._dropped  # the watchdog's sentence (moola_ops/transport/watchdog.py)
        return reason if reason and "stopped answering" in reason else None

    @property
    def cancelled(self) -> bool:
        """True once `cancel()` was called."""
        return self._cancelled.is_set()

    def __enter__(self) -> HostSession:
        return self.open() if self._conn is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- commands -------------------------------------------------------------------------

    def run(self, command: str, *, timeout_s: float | None = None) -> Result:
        """Run one shell command; return its exit code and output (non-zero does not raise).

        A command that runs the host agent (moola_ops/transport/agent.py) finds it installed:
        the session's first such command is guarded, and on a host without the agent's folder
        it is sent again behind the folder's install (one more round trip). Nothing of a
        guarded command runs when the folder is missing, so sending it again is safe.
        """
        workspace = agent.named_workspace(command)
        if workspace is None or workspace in self._agent_seen:
            return self._run(command, timeout_s=timeout_s)
        result = self._run(agent.guarded(workspace, command), timeout_s=timeout_s)
        if result.exit_code == agent.MISSING_RC and agent.MISSING in result.stderr:
            python = self.host.python
            result = self._run(
                agent.installed_then(workspace, command, python), timeout_s=timeout_s
            )
            self.agent_installs += 1
            if (
                result.exit_code == agent.INSTALL_FAILED_RC
                and agent.INSTALL_FAILED in result.stderr
            ):
                raise TransportError(
                    f"could not install the Moola agent on {self.host.name} under {workspace}"
                    f"/.moola/agent: {result.tail(300)}"
                )
        self._agent_seen.add(workspace)
        return result

    def _run(self, command: str, *, timeout_s: float | None = None) -> Result:
        """Run one shell command as given; return its exit code and output (see run).

        The command is killed on the host (its whole process group) when it outlives
        `timeout_s` (default `command_timeout_s`): CommandTimeout. A dead or broken connection
        raises TransportError, `cancel()` raises Aborted; both within about a second. A command
        killed by a signal on the host has exit code -1.
        """
        import paramiko

        self._check_cancelled()
        transport = self._transport()
        timeout = float(timeout_s or self.command_timeout_s)
        started = time.monotonic()
        deadline = started + timeout
        out, err = bytearray(), bytearray()
        pgid: int | None = None
        chan = None
        # should the loop below ever hang (keepalives off, a frozen peer), the watchdog cuts
        backstop = deadline + KILL_WAIT_S + 5
        cut = f"a command on {self.host.name} did not finish within {timeout:g}s"
        try:
            with (
                self._ctrl_c_deferred(),
                self._guard(backstop, f"{cut}; the connection was closed"),
            ):
                chan = transport.open_session(timeout=max(1.0, timeout))
                chan.settimeout(0.1)
                chan.exec_command(wrap_command(command, timeout + HOST_TIMEOUT_SLACK_S))
                chan.shutdown_write()
                stdout_done = False
                while True:
                    if self._cancelled.is_set():
                        self._kill(await_pgid(chan, pgid, err))
                        raise Aborted()
                    if self.ctrl_c:  # noted at a safe point: stopped below, like a raised one
                        raise KeyboardInterrupt
                    self._check_alive("during a command")
                    if time.monotonic() > deadline:
                        killed = self._kill(await_pgid(chan, pgid, err))
                        what = (
                            "was stopped on the host"
                            if killed
                            else (
                                "could not be stopped from here; the host stops it "
                                f"{HOST_TIMEOUT_SLACK_S:g}s later"
                            )
                        )
                        raise CommandTimeout(f"{cut} and {what}", timeout, killed)
                    while chan.recv_stderr_ready():
                        err += chan.recv_stderr(65536)
                    if pgid is None:
                        pgid, err = take_pgid(err)
                    if stdout_done:
                        if chan.exit_status_ready() and not chan.recv_stderr_ready():
                            break
                        chan.status_event.wait(0.1)
                        continue
                    try:
                        data = chan.recv(65536)
                    except TimeoutError:
                        continue
                    out += data
                    stdout_done = not data  # b"": end of output (stderr is in by now)
                code = chan.recv_exit_status()
        except (Aborted, MoolaError):
            raise
        except KeyboardInterrupt:  # Ctrl-C in the thread that runs it: the command stops too
            if chan is not None and not chan.closed:
                self._kill(await_pgid(chan, pgid, err))
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._check_cancelled()
            self._check_alive("during a command")
            raise TransportError(
                f"connection to {self.host.name} broke during a command: {short_reason(exc)}"
            ) from None
        finally:
            if chan is not None:
                with contextlib.suppress(Exception):
                    chan.close()
        if pgid is None:
            pgid, err = take_pgid(err, final=True)
        stdout = out.decode("utf-8", errors="replace")
        stderr = err.decode("utf-8", errors="replace")
        if code == -1:  # no exit status: the connection went away, or a signal killed it
            self._check_alive("during a command")
            if not transport.is_active():
                raise TransportError(f"connection to {self.host.name} broke during a command")
            stderr += "\n(the command was killed by a signal on the host)"
        return Result(code, stdout, stderr, time.monotonic() - started)

    def _kill(self, pgid: int | None) -> bool:
        """Kill a wrapped command's process group over a fresh channel; True when it is gone."""
        if pgid is None or pgid <= 1 or self._conn is None:
            return False
        return kill_group(self._conn.client.get_transport(), pgid)

    def upload(
        self,
        local: str | os.PathLike,
        remote: str,
        *,
        progress: Callable[[int, int], None] | None = None,
        deadline_s: float | None = None,
    ) -> int:
        """Copy a local file to `remote` (an absolute path, no shell) over SFTP; bytes sent.

        `progress(sent, total)` is called as blocks go out; raising `Aborted` in it stops the
        transfer. The upload ends by `deadline_s` (default UPLOAD_BASE_S + size at
        UPLOAD_MIN_BYTES_PER_S): past it, or when the host stops answering, the connection is
        closed and TransportError raised. A remote write error raises TransportError.
        """
        self._check_cancelled()
        self._transport()
        size = Path(local).stat().st_size
        limit = float(deadline_s or (UPLOAD_BASE_S + size / UPLOAD_MIN_BYTES_PER_S))
        reason = f"the upload to {self.host.name} did not finish within {limit:g}s"
        with self._lock:
            self._transfer_active = True
        try:
            with self._ctrl_c_deferred(cut=True), self._guard(time.monotonic() + limit, reason):
                if self._sftp is None:
                    self._sftp = self._conn.client.open_sftp()  # ours: Fabric caches a closed one
                self._sftp.put(str(local), remote, callback=progress, confirm=True)
        except Aborted:
            self._close_sftp()  # it may hold half a request: the next upload starts afresh
            raise
        except Exception as exc:
            self._check_cancelled()
            self._check_alive("during the upload")
            transport = self._conn.client.get_transport() if self._conn is not None else None
            # EOFError or "Socket is closed": the peer went away, often before paramiko's own
            # thread has marked the connection inactive; not a full disk
            gone = isinstance(exc, EOFError) or str(exc) == "Socket is closed"
            if gone or transport is None or not transport.is_active():
                raise TransportError(
                    f"connection to {self.host.name} broke during the upload: {short_reason(exc)}"
                ) from None
            if isinstance(exc, OSError):
                raise TransportError(
                    f"upload to {self.host.name}:{remote} failed: {short_reason(exc)} "
                    "(full disk or file-size limit on the host?)"
                ) from None
            raise TransportError(f"upload to {self.host.name} broke: {short_reason(exc)}") from None
        finally:
            with self._lock:
                self._transfer_active = False
        return size

    def read_bytes(
        self, remote: str, *, offset: int = 0, length: int | None = None, deadline_s: float = 120.0
    ) -> bytes:
        """Read `length` bytes (default: to the end) of `remote` (absolute path) from `offset`
        over SFTP, within `deadline_s`; a missing file or a broken connection raises
        TransportError."""
        self._check_cancelled()
        self._transport()
        reason = f"reading {self.host.name}:{remote} did not finish within {deadline_s:g}s"
        with self._lock:
            self._transfer_active = True  # cancel() cuts a read as it cuts an upload
        try:
            with (
                self._ctrl_c_deferred(cut=True),
                self._guard(time.monotonic() + deadline_s, reason),
            ):
                if self._sftp is None:
                    self._sftp = self._conn.client.open_sftp()
                with self._sftp.open(remote, "rb") as fh:
                    fh.seek(offset)
                    fh.prefetch(None if length is None else offset + length)
                    return fh.read() if length is None else fh.read(length)
        except Exception as exc:
            self._check_cancelled()
            self._check_alive(f"while reading {remote}")
            raise TransportError(
                f"reading {self.host.name}:{remote} failed: {short_reason(exc)}"
            ) from None
        finally:
            with self._lock:
                self._transfer_active = False

    # -- internals ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _ctrl_c_deferred(self, *, cut: bool = False):
        """Ctrl-C at safe points only, while this (main) thread is inside Paramiko.

        A KeyboardInterrupt raised between a Paramiko lock's acquire() and its `try:` leaves the
        lock held, and the next call on the connection (the kill of the remote command, the
        close) waits for it forever: on a busy machine a Ctrl-C lands there now and then. So
        while Paramiko works, SIGINT only notes `ctrl_c`; a command's loop stops at its next
        turn (its remote process group is killed), an upload or read is cut by the watchdog
        (`cut`), a connection attempt by its handshake watcher, and KeyboardInterrupt is raised
        from here. A second Ctrl-C raises at once. Other threads and a SIGINT handler someone
        else installed are left alone (the fleet's waiting thread handles its own Ctrl-C).
        """
        if (
            threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            yield
            return

        def note(signum, frame):
            if self.ctrl_c:
                raise KeyboardInterrupt
            self.ctrl_c = True

        self.ctrl_c, self.cut_on_ctrl_c = False, cut
        signal.signal(signal.SIGINT, note)
        try:
            yield
        except KeyboardInterrupt:
            raise
        except BaseException:
            if self.ctrl_c:  # the cut (or the stop) Ctrl-C caused: report the Ctrl-C
                raise KeyboardInterrupt from None
            raise
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            pressed, self.ctrl_c, self.cut_on_ctrl_c = self.ctrl_c, False, False
        if pressed:  # pressed as the work ended: still a Ctrl-C
            raise KeyboardInterrupt

    def _transport(self):
        if self._conn is None:
            raise TransportError(f"not connected to {self.host.name}")
        transport = self._conn.client.get_transport()
        if transport is None or not transport.is_active():
            self._check_alive("")
            raise TransportError(f"the connection to {self.host.name} is closed")
        return transport

    def _check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise Aborted()

    def _check_alive(self, during: str) -> None:
        """Raise the watchdog's sentence when it closed the connection (dead peer, deadline)."""
        reason = self._dropped
        if reason == "cancelled" or self._cancelled.is_set():
            raise Aborted()
        if reason:
            raise TransportError(f"{reason}{' (' + during + ')' if during else ''}")

    @contextlib.contextmanager
    def _guard(self, deadline: float, reason: str):
        """Close the connection if the block is still running at `deadline` (monotonic)."""
        watchdog = self._watchdog
        own = watchdog is None  # keepalives off: a watchdog for this deadline only
        if own:
            watchdog = Watchdog(self, self._transport(), 0.0)
            watchdog.start()
        watchdog.set_deadline(deadline, reason)
        try:
            yield
        finally:
            watchdog.set_deadline(None, "")
            if own:
                watchdog.stop()

    def _drop(self, reason: str) -> None:
        """Close the transport at once (from any thread): whatever waits on it fails."""
        self._dropped = reason
        conn = self._conn
        transport = conn.client.get_transport() if conn is not None else None
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()
