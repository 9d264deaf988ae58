"""The one module that talks SSH: connect (strict host keys), run a command, upload a file.

Builders in `moola_ops.commands` decide *what* runs; this module only runs it, over Paramiko
(connections are set up with Fabric, so ~/.ssh/config aliases work). Host keys are checked
against known_hosts (~/.ssh/known_hosts plus the host's own `known_hosts` file from the
inventory); an unknown key is refused unless the caller passes `accept_new_host_key=True`, in
which case it is pinned and reported (the caller logs it). A changed key is always refused.

Every operation is bounded in time (docs/runbook.md, "Deadlines"):
- connect: `connect_timeout_s` per attempt; set-up failures (refused, timed out, dropped
  handshake) are retried `connect_retries` times with a growing pause (1 s, 2 s, at most 5 s).
  Nothing else is ever retried: a command or upload may have changed the host.
- keepalive: every `keepalive_s` seconds of silence Moola asks the server for an answer; when
  nothing at all arrived for KEEPALIVE_MAX_MISSED intervals the peer is dead (stopped sshd,
  cut network), the connection is closed and whatever waits on it fails with one sentence.
- run: `timeout_s` (default `command_timeout_s`). The command runs on the host in its own
  process group under `timeout` (a backstop should our connection die); at the deadline Moola
  kills that whole group over a second channel and raises CommandTimeout.
- upload: `deadline_s`, by default UPLOAD_BASE_S + size / UPLOAD_MIN_BYTES_PER_S.
- `cancel()` (Ctrl-C, a fleet deadline) ends a running command or upload within a second.

    with HostSession(host) as ssh:
        result = ssh.run(commands.facts.gather(layout, host.python), timeout_s=30)
        ssh.upload(local_archive, remote_path, progress=callback)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moola_core.errors import MoolaError
from moola_ops.inventory import Host

# Paramiko's transport thread logs a failed handshake ("Error reading SSH protocol banner") with
# a traceback through Python's last-resort handler on stderr, which cron mails; the failure
# already reaches the user as one TransportError sentence. A handler of our own keeps it quiet
# (a program that configures logging still gets the records through the root logger).
logging.getLogger("paramiko").addHandler(logging.NullHandler())

KEEPALIVE_MAX_MISSED = 3  # silent keepalive intervals before the peer counts as dead
CONNECT_BACKOFF_S = 1.0  # pause before the first connect retry; doubles, at most the cap
CONNECT_BACKOFF_MAX_S = 5.0
UPLOAD_BASE_S = 60.0  # an upload's default deadline: this plus its size at the slowest rate
UPLOAD_MIN_BYTES_PER_S = 1_000_000
KILL_WAIT_S = 10.0  # how long the kill of a timed-out command may take over its own channel
# The host-side `timeout` fires this much after our own deadline, so that while the connection
# lives Moola decides first (and an exit status 124 of the command itself stays unambiguous).
HOST_TIMEOUT_SLACK_S = 15.0
_PGID_TAG = "moola-pgid:"  # first stderr line of a wrapped command: its process group id


class TransportError(MoolaError):
    """The host could not be reached, refused us, or the connection broke."""


class HostKeyError(TransportError):
    """The host's key is unknown or changed: never connect silently."""


class CommandTimeout(TransportError):
    """A remote command outlived its deadline; its process group was killed on the host."""

    def __init__(self, message: str, timeout_s: float, killed: bool):
        super().__init__(message)
        self.timeout_s = timeout_s
        self.killed = killed  # False: the kill could not be confirmed (host-side timeout remains)


class Aborted(Exception):  # noqa: N818 - it is an event (Ctrl-C), not an error condition
    """Raised inside an upload callback to stop a transfer (Ctrl-C, cancelled fleet); also
    what a `run` or `upload` raises after `HostSession.cancel()`."""


@dataclass
class Result:
    """What one remote command did."""

    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, chars: int = 400) -> str:
        """The last characters of stderr (or stdout), for one-line error messages."""
        text = (self.stderr.strip() or self.stdout.strip()).replace("\n", " | ")
        return text[-chars:]


def wrap_command(command: str, host_timeout_s: float) -> str:
    """`command` as the host runs it: report the process group, then run it under `timeout`.

    The login shell execs into `timeout` (or, on a host without it, the shell), so the process
    group id printed first is the group of everything the command starts: killing it kills them
    all. The command itself runs in the user's login shell ($SHELL), as an unwrapped one would.
    """
    limit = max(1, int(host_timeout_s + 0.999))
    inner = f'"${{SHELL:-/bin/sh}}" -c {shlex.quote(command)}'
    return (
        f"echo {_PGID_TAG}$$ >&2; "
        f"if command -v timeout >/dev/null 2>&1; then exec timeout -k 5 {limit} {inner}; "
        f"else exec {inner}; fi"
    )


def kill_command(pgid: int) -> str:
    """Stop a process group: TERM, up to 3 s to end, then KILL; exit 0 once it is gone.

    `kill -SIG -PGID` without `--`: dash's builtin (Debian's /bin/sh) takes no `--`."""
    group = f"-{int(pgid)}"
    return (
        f"kill -TERM {group} 2>/dev/null || exit 0; i=0; "
        f"while kill -0 {group} 2>/dev/null && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; "
        f"kill -KILL {group} 2>/dev/null; sleep 0.1; ! kill -0 {group} 2>/dev/null"
    )


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
        self._watchdog: _Watchdog | None = None
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._upload_active = False
        self._dropped: str | None = None  # why the connection was cut (watchdog, cancel)

    # -- connection -----------------------------------------------------------------------

    def open(self) -> HostSession:
        """Connect and authenticate; raise TransportError / HostKeyError with one clear line.

        Connection set-up failures are retried `host.connect_retries` times with a growing
        pause; a refused key or host key is not (it will not change by itself). A
        `runpod_pod_id` host is looked up first (`Host.endpoint`, moola_ops/runpod.py); when
        the (possibly cached) address fails, the pod is looked up once more and, if it moved
        (a restart), connected to there.
        """
        target = self.host.endpoint()
        if not self.host.runpod_pod_id:
            return self._open(target)
        try:  # once at the cached address: a pod that moved is looked up, not waited for
            return self._open(target, retries=0)
        except TransportError as first:
            if self._cancelled.is_set():
                raise
            again = self.host.endpoint(refresh=True)
            moved = (again.hostname, again.port) != (target.hostname, target.port)
            if not moved and isinstance(first, HostKeyError):
                raise
            return self._open(again, retries=None if moved else target.connect_retries - 1)

    def _open(self, host: Host, retries: int | None = None) -> HostSession:
        retries = host.connect_retries if retries is None else retries
        attempts = 1 + max(0, int(retries))
        pause = self.connect_backoff_s
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            self.connect_attempts = attempt
            self._check_cancelled()
            try:
                self._conn = self._connect_once(host)
                break
            except _SetupFailed as failed:
                if attempt == attempts:
                    tries = f" after {attempts} attempts over {time.monotonic() - started:.0f}s"
                    raise TransportError(
                        f"cannot reach {host.name} ({host.address}) within "
                        f"{host.connect_timeout_s:g}s{tries if attempts > 1 else ''}: "
                        f"{failed.reason}; check the address, the port mapping and that the "
                        "host is up"
                    ) from None
                if self._cancelled.wait(pause):
                    raise Aborted() from None
                pause = min(pause * 2, CONNECT_BACKOFF_MAX_S)
        transport = self._conn.client.get_transport()
        self._dropped = None
        self.connected_to = host
        if self.keepalive_s and self.keepalive_s > 0:
            self._watchdog = _Watchdog(self, transport, float(self.keepalive_s))
            self._watchdog.start()
        return self

    def _connect_once(self, host: Host):
        import paramiko
        from fabric import Config, Connection

        timeout = host.connect_timeout_s
        kwargs: dict = {"banner_timeout": timeout, "auth_timeout": timeout}
        if host.identity_file:
            kwargs.update(key_filename=host.identity_file, look_for_keys=False, allow_agent=False)
        conn = Connection(
            host.hostname,
            user=host.user,
            port=host.port,
            connect_timeout=max(1, int(round(timeout))),
            connect_kwargs=kwargs,
            config=Config(
                overrides={"run": {"hide": True, "warn": True, "in_stream": False}},
                # None: ~/.ssh/config and /etc/ssh/ssh_config, so aliases work as with `ssh`
                runtime_ssh_path=host.ssh_config,
            ),
        )
        client = conn.client
        known_files = self._known_hosts_files(conn)
        pod = host.runpod_pod_id
        if pod:  # pinned under a stable alias: a pod's address changes on every restart
            _load_pod_keys(client, known_files, pod, conn.host, conn.port)
        else:
            for path in known_files:
                if path.exists():
                    client.load_host_keys(str(path))
        if self.accept_new_host_key:
            client.set_missing_host_key_policy(_PinNewKey(self, known_files[-1], pod))
        else:
            client.set_missing_host_key_policy(_RefuseUnknown(pod))
        settled = threading.Event()
        threading.Thread(target=self._stop_on_cancel, args=(conn, settled), daemon=True).start()
        try:
            if self._cancelled.is_set():
                raise Aborted()
            conn.open()
        except HostKeyError:
            conn.close()
            raise
        except Aborted:
            conn.close()
            raise
        except paramiko.BadHostKeyException as exc:
            conn.close()
            raise HostKeyError(
                changed_key_message(
                    host, conn.host, conn.port, exc.key, exc.expected_key, known_files
                )
            ) from None
        except paramiko.AuthenticationException:
            conn.close()
            raise TransportError(
                f"{host.name} ({host.address}) refused our key: check identity_file and that "
                "the public key is in the host's authorized_keys"
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            conn.close()
            self._check_cancelled()
            raise _SetupFailed(_reason(exc)) from None
        finally:
            settled.set()
        return conn

    def _stop_on_cancel(self, conn, settled: threading.Event) -> None:
        """While `conn` is being opened: on cancel(), close its transport (Fabric's close()
        skips one still handshaking) so a hanging handshake ends at once."""
        while not settled.is_set():
            if self._cancelled.wait(0.1):
                transport = conn.client.get_transport()
                if transport is not None:
                    with contextlib.suppress(Exception):
                        transport.close()
                    return
                settled.wait(0.05)  # the TCP connect is still under way

    def _known_hosts_files(self, conn) -> list[Path]:
        files = [Path("~/.ssh/known_hosts").expanduser()]
        configured = conn.ssh_config.get("userknownhostsfile")
        if configured:
            files += [Path(p).expanduser() for p in configured.split()]
        if self.host.known_hosts:
            files.append(Path(self.host.known_hosts).expanduser())
        return list(dict.fromkeys(files))

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
        upload is cut (the connection is closed) and raises Aborted; a connection being set up
        stops (its handshake is closed; a TCP connect still waiting ends by connect_timeout_s).
        Later calls raise Aborted at once: open a new HostSession to clean up after a cancel.
        """
        self._cancelled.set()
        with self._lock:
            cut = self._upload_active
        if cut:
            self._drop("cancelled")

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
            with self._guard(backstop, f"{cut}; the connection was closed"):
                chan = transport.open_session(timeout=max(1.0, timeout))
                chan.settimeout(0.1)
                chan.exec_command(wrap_command(command, timeout + HOST_TIMEOUT_SLACK_S))
                chan.shutdown_write()
                stdout_done = False
                while True:
                    if self._cancelled.is_set():
                        self._kill(_await_pgid(chan, pgid, err))
                        raise Aborted()
                    self._check_alive("during a command")
                    if time.monotonic() > deadline:
                        killed = self._kill(_await_pgid(chan, pgid, err))
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
                        pgid, err = _take_pgid(err)
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
                self._kill(_await_pgid(chan, pgid, err, wait_s=0.5))
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._check_cancelled()
            self._check_alive("during a command")
            raise TransportError(
                f"connection to {self.host.name} broke during a command: {_reason(exc)}"
            ) from None
        finally:
            if chan is not None:
                with contextlib.suppress(Exception):
                    chan.close()
        if pgid is None:
            pgid, err = _take_pgid(err, final=True)
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
        transport = self._conn.client.get_transport()
        if transport is None or not transport.is_active():
            return False
        chan = None
        try:
            chan = transport.open_session(timeout=KILL_WAIT_S)
            chan.settimeout(KILL_WAIT_S)
            chan.exec_command(kill_command(pgid))
            chan.shutdown_write()
            ended = time.monotonic() + KILL_WAIT_S
            while not chan.exit_status_ready():
                if time.monotonic() > ended or chan.closed and not chan.exit_status_ready():
                    return False
                chan.status_event.wait(0.1)
            return chan.recv_exit_status() == 0
        except Exception:
            return False
        finally:
            if chan is not None:
                with contextlib.suppress(Exception):
                    chan.close()

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
            self._upload_active = True
        try:
            with self._guard(time.monotonic() + limit, reason):
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
                    f"connection to {self.host.name} broke during the upload: {_reason(exc)}"
                ) from None
            if isinstance(exc, OSError):
                raise TransportError(
                    f"upload to {self.host.name}:{remote} failed: {_reason(exc)} "
                    "(full disk or file-size limit on the host?)"
                ) from None
            raise TransportError(f"upload to {self.host.name} broke: {_reason(exc)}") from None
        finally:
            with self._lock:
                self._upload_active = False
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
        try:
            with self._guard(time.monotonic() + deadline_s, reason):
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
                f"reading {self.host.name}:{remote} failed: {_reason(exc)}"
            ) from None

    # -- internals ------------------------------------------------------------------------

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
            watchdog = _Watchdog(self, self._transport(), 0.0)
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


class _SetupFailed(Exception):
    """One connection attempt failed before the session existed (retried by open())."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _take_pgid(err: bytearray, final: bool = False) -> tuple[int | None, bytearray]:
    """Split the wrapper's `moola-pgid:N` line off the front of stderr once it is complete.

    Returns (None, err) while the line is still incomplete, (-1, err) when there is none."""
    tag = _PGID_TAG.encode()
    end = err.find(b"\n")
    if end < 0:
        waiting = tag.startswith(bytes(err)) or err.startswith(tag)
        return (None, err) if waiting and not final else (-1, err)
    if not err.startswith(tag):
        return -1, err
    try:
        pgid = int(err[len(tag) : end])
    except ValueError:
        return -1, err
    return pgid, err[end + 1 :]


def _await_pgid(chan, pgid: int | None, err: bytearray, wait_s: float = 2.0) -> int | None:
    """The command's process group, reading stderr a little longer if its line is not in yet
    (the command may already be running while our reader has not looked)."""
    end = time.monotonic() + wait_s
    while pgid is None and time.monotonic() < end and not chan.closed:
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        pgid, _ = _take_pgid(err)
        if pgid is None:
            time.sleep(0.02)
    return pgid


class _Watchdog(threading.Thread):
    """Keepalives and deadlines for one connection, on a daemon thread.

    Every `interval` seconds without a packet from the peer it sends an OpenSSH keepalive that
    asks for an answer; when nothing at all arrived for KEEPALIVE_MAX_MISSED intervals, or an
    operation's deadline passed, it closes the transport so that the waiting call fails.
    """

    def __init__(self, session: HostSession, transport, interval: float):
        super().__init__(name=f"moola-keepalive-{session.host.name}", daemon=True)
        self.session = session
        self.transport = transport
        self.interval = interval
        self.heard = time.monotonic()
        self.dropped: str | None = None
        self._deadline: tuple[float, str] | None = None
        self._stopped = threading.Event()
        self._sender: threading.Thread | None = None
        self._probed = 0.0
        if interval > 0:
            self._listen()

    def _listen(self) -> None:
        # Any packet from the peer proves it alive: during an upload the acknowledgements
        # arrive while our own keepalive may still sit behind megabytes of data.
        packetizer = self.transport.packetizer
        read_message = packetizer.read_message

        def read_and_note():
            message = read_message()
            self.heard = time.monotonic()
            return message

        packetizer.read_message = read_and_note

    def set_deadline(self, when: float | None, reason: str) -> None:
        self._deadline = None if when is None else (when, reason)

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        tick = 0.25 if self.interval <= 0 else min(0.25, self.interval / 4)
        while not self._stopped.wait(tick):
            if not self.transport.is_active():
                return
            now = time.monotonic()
            deadline = self._deadline
            if deadline is not None and now > deadline[0]:
                self._drop(deadline[1])
                return
            if self.interval <= 0:
                continue
            silent = now - self.heard
            if silent > self.interval * KEEPALIVE_MAX_MISSED:
                self._drop(
                    f"{self.session.host.name} stopped answering: no reply to keepalives for "
                    f"{silent:.0f}s (sshd stopped or the network is down)"
                )
                return
            if silent >= self.interval and now - self._probed >= self.interval:
                self._probe()
                self._probed = now

    def _probe(self) -> None:
        if self._sender is not None and self._sender.is_alive():
            return  # the previous keepalive is still stuck in a full send buffer
        self._sender = threading.Thread(target=self._send_keepalive, daemon=True)
        self._sender.start()

    def _send_keepalive(self) -> None:
        from paramiko.common import cMSG_GLOBAL_REQUEST
        from paramiko.message import Message

        message = Message()
        message.add_byte(cMSG_GLOBAL_REQUEST)
        message.add_string("keepalive@openssh.com")
        message.add_boolean(True)  # want a reply: OpenSSH answers with REQUEST_FAILURE
        with contextlib.suppress(Exception):
            self.transport._send_user_message(message)

    def _drop(self, reason: str) -> None:
        self.dropped = reason
        self.session._drop(reason)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, EOFError):
        return "the connection was closed"
    text = str(exc).strip()
    return text or type(exc).__name__


def key_fingerprint_line(key) -> str:
    """A key as `ssh-keygen -lf` prints it: `256 SHA256:... (ED25519)`."""
    kind = key.get_name().removeprefix("ssh-").split("-")[0].upper()
    if kind.startswith("ECDSA"):
        kind = "ECDSA"
    return f"{key.get_bits()} SHA256:{_fingerprint(key)} ({kind})"


def changed_key_message(host: Host, hostname: str, port: int, new_key, old_key, files) -> str:
    """The sentence for a changed host key: both fingerprints and the known_hosts line to fix."""
    entry = hostname if port in (None, 22) else f"[{hostname}]:{port}"
    pod = host.runpod_pod_id
    names = [entry]
    if pod:  # a pod's key is pinned under its alias (moola_ops/runpod.py)
        from moola_ops.runpod import key_alias

        names.insert(0, key_alias(pod))
    where = _known_hosts_line(files, names, old_key)
    fix = f"edit {where[0]} line {where[1]}" if where else "edit the known_hosts file that holds it"
    remove = f"ssh-keygen -R '{where[2] if where else entry}'" + (
        f" -f {where[0]}" if where else ""
    )
    if pod:
        then = (
            f"compare `invoke pods.known-host --pod {pod}` with the pod's own "
            f"`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` and pin it with `--pin` (or {fix})"
        )
    else:
        then = (
            "check the new fingerprint out of band (on the host: ssh-keygen -lf "
            f"/etc/ssh/ssh_host_*_key.pub), then {fix} (or run `{remove}`) and connect again"
        )
    rebuilt = "the pod was re-created" if pod else "the host was rebuilt"
    return (
        f"host key of {host.name} ({entry}) CHANGED: the host now offers "
        f"{key_fingerprint_line(new_key)} but known_hosts has {key_fingerprint_line(old_key)}; "
        f"refusing to connect. If {rebuilt}, {then}"
    )


def _known_hosts_line(files, names: list[str], key) -> tuple[str, int, str] | None:
    """(file, 1-based line, name) of the known_hosts entry for one of `names` with `key`,
    hashed or not."""
    from paramiko.hostkeys import HostKeyEntry, HostKeys

    for path in files:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, 1):
            try:
                parsed = HostKeyEntry.from_line(line, number)
            except Exception:
                continue
            if parsed is None or parsed.key is None or parsed.key != key:
                continue
            for name in parsed.hostnames:
                for wanted in names:
                    hashed = name.startswith("|1|") and HostKeys.hash_host(wanted, name) == name
                    if name == wanted or hashed:
                        return str(path), number, wanted
    return None


def _load_pod_keys(client, files: list[Path], pod_id: str, hostname: str, port: int) -> None:
    """Give paramiko the key pinned for the pod under its alias (`runpod-<id>`, as OpenSSH's
    HostKeyAlias) as the key of its current address; a pin under `[ip]:port` counts only when
    the alias has none (that address may have belonged to another pod before).
    """
    import paramiko

    from moola_ops.runpod import key_alias

    keys = paramiko.HostKeys()
    for path in files:
        if path.exists():
            keys.load(str(path))
    name = hostname if port in (None, 22) else f"[{hostname}]:{port}"
    pinned = keys.lookup(key_alias(pod_id)) or keys.lookup(name) or {}
    for key_type in list(pinned):
        client.get_host_keys().add(name, key_type, pinned[key_type])


class _RefuseUnknown:
    """Missing-host-key policy: refuse with one sentence that says how to pin the key."""

    def __init__(self, pod_id: str | None = None):
        self.pod_id = pod_id

    def missing_host_key(self, client, hostname, key):
        if self.pod_id:
            raise HostKeyError(
                f"host key of pod {self.pod_id} ({hostname}) is not pinned ({key.get_name()} "
                f"SHA256:{_fingerprint(key)}): check it with `invoke pods.known-host --pod "
                f"{self.pod_id}` and pin it with `--pin` (or deploy with `--accept-new-host-key`; "
                "that choice is logged)"
            )
        raise HostKeyError(
            f"host key of {hostname} is not in known_hosts ({key.get_name()} "
            f"SHA256:{_fingerprint(key)}): verify it and add it (ssh-keyscan, or "
            "`--accept-new-host-key` to pin it now; that choice is logged)"
        )


class _PinNewKey:
    """Missing-host-key policy for an explicit, logged trust-on-first-use."""

    def __init__(self, session: HostSession, known_hosts: Path, pod_id: str | None = None):
        self.session = session
        self.known_hosts = known_hosts
        self.pod_id = pod_id

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        if self.pod_id:  # under the pod's alias, so the pin survives the next restart
            from moola_ops.runpod import key_alias

            hostname = key_alias(self.pod_id)
        with open(self.known_hosts, "a") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        self.session.accepted_key = f"{key.get_name()} SHA256:{_fingerprint(key)}"


def _fingerprint(key) -> str:
    import base64
    import hashlib

    digest = hashlib.sha256(key.asbytes()).digest()
    return base64.b64encode(digest).decode().rstrip("=")
