"""The one module that talks SSH: connect (strict host keys), run a command, upload a file.

Builders in `moola_ops.commands` decide *what* runs; this module only runs it, over Fabric
(Paramiko underneath). Host keys are checked against known_hosts (~/.ssh/known_hosts plus the
host's own `known_hosts` file from the inventory); an unknown key is refused unless the caller
passes `accept_new_host_key=True`, in which case it is pinned and reported (the caller logs it).
A changed key is always refused. Every connect and command has a timeout.

    with HostSession(host) as ssh:
        result = ssh.run(commands.facts.gather(layout, host.python))
        ssh.upload(local_archive, remote_path, progress=callback)
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
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


class TransportError(MoolaError):
    """The host could not be reached, refused us, or the connection broke."""


class HostKeyError(TransportError):
    """The host's key is unknown or changed: never connect silently."""


class Aborted(Exception):  # noqa: N818 - it is an event (Ctrl-C), not an error condition
    """Raised inside an upload callback to stop a transfer (Ctrl-C, cancelled fleet)."""


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


class HostSession:
    """One SSH connection to one host; reuse it for every step of a run (few round trips)."""

    def __init__(
        self,
        host: Host,
        *,
        accept_new_host_key: bool = False,
        command_timeout_s: float = 900.0,
    ):
        self.host = host
        self.accept_new_host_key = accept_new_host_key
        self.command_timeout_s = command_timeout_s
        self.accepted_key: str | None = None  # fingerprint pinned by accept_new_host_key
        self.connected_to: Host | None = None  # the host as reached (a pod: its address now)
        self._conn = None
        self._sftp = None

    # -- connection -----------------------------------------------------------------------

    def open(self) -> HostSession:
        """Connect and authenticate; raise TransportError / HostKeyError with one clear line.

        A `runpod_pod_id` host is looked up first (`Host.endpoint`, moola_ops/runpod.py); when
        the (possibly cached) address fails, the pod is looked up once more and, if it moved
        (a restart), connected to there.
        """
        target = self.host.endpoint()
        try:
            return self._open(target)
        except TransportError:
            if not self.host.runpod_pod_id:
                raise
            again = self.host.endpoint(refresh=True)
            if (again.hostname, again.port) == (target.hostname, target.port):
                raise
            return self._open(again)

    def _open(self, host: Host) -> HostSession:
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
        try:
            conn.open()
        except HostKeyError:
            raise
        except paramiko.BadHostKeyException as exc:
            fix = (
                f"if the pod was re-created, compare `invoke pods.known-host --pod {pod}` with "
                "the pod's own `ssh-keygen -lf` and pin it with `--pin`"
                if pod
                else "if the host was rebuilt, verify the new key and replace its known_hosts line"
            )
            raise HostKeyError(
                f"host key of {host.name} ({conn.host}:{conn.port}) CHANGED from the one in "
                f"known_hosts ({exc.expected_key.get_fingerprint().hex()}): refusing to connect; "
                f"{fix}"
            ) from None
        except paramiko.AuthenticationException:
            raise TransportError(
                f"{host.name} ({host.address}) refused our key: check identity_file and that "
                "the public key is in the host's authorized_keys"
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise TransportError(
                f"cannot reach {host.name} ({host.address}) within {timeout:g}s: "
                f"{_reason(exc)}; check the address, the port mapping and that the host is up"
            ) from None
        self._conn = conn
        self.connected_to = host
        return self

    def _known_hosts_files(self, conn) -> list[Path]:
        files = [Path("~/.ssh/known_hosts").expanduser()]
        configured = conn.ssh_config.get("userknownhostsfile")
        if configured:
            files += [Path(p).expanduser() for p in configured.split()]
        if self.host.known_hosts:
            files.append(Path(self.host.known_hosts).expanduser())
        return list(dict.fromkeys(files))

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
            self._sftp = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> HostSession:
        return self.open() if self._conn is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- commands -------------------------------------------------------------------------

    def run(self, command: str, *, timeout_s: float | None = None) -> Result:
        """Run one shell command; return its exit code and output (non-zero does not raise).

        Raises TransportError when the connection breaks or the command outlives its timeout.
        """
        from invoke.exceptions import CommandTimedOut, UnexpectedExit

        conn = self._require()
        started = time.monotonic()
        timeout = timeout_s or self.command_timeout_s
        try:
            res = conn.run(command, timeout=timeout)
        except CommandTimedOut:
            raise TransportError(
                f"a command on {self.host.name} did not finish within {timeout:g}s"
            ) from None
        except UnexpectedExit as exc:  # only with warn=False; kept for safety
            res = exc.result
        except MoolaError:
            raise
        except Exception as exc:  # paramiko/socket errors: the connection is gone
            raise TransportError(
                f"connection to {self.host.name} broke during a command: {_reason(exc)}"
            ) from None
        if res.exited == -1 or not self._alive():
            raise TransportError(f"connection to {self.host.name} broke during a command")
        return Result(res.exited, res.stdout, res.stderr, time.monotonic() - started)

    def upload(
        self,
        local: str | os.PathLike,
        remote: str,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Copy a local file to `remote` (an absolute path, no shell) over SFTP; bytes sent.

        `progress(sent, total)` is called as blocks go out; raising `Aborted` in it stops the
        transfer. A broken connection or a remote write error raises TransportError.
        """
        self._require()
        if self._sftp is None:
            self._sftp = self._conn.sftp()
        size = Path(local).stat().st_size
        try:
            self._sftp.put(str(local), remote, callback=progress, confirm=True)
        except Aborted:
            raise
        except OSError as exc:
            if not self._alive():
                raise TransportError(
                    f"connection to {self.host.name} broke during the upload: {_reason(exc)}"
                ) from None
            raise TransportError(
                f"upload to {self.host.name}:{remote} failed: {_reason(exc)} "
                "(full disk or file-size limit on the host?)"
            ) from None
        except Exception as exc:
            raise TransportError(f"upload to {self.host.name} broke: {_reason(exc)}") from None
        return size

    def read_bytes(self, remote: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """Read `length` bytes (default: to the end) of `remote` (absolute path) from `offset`
        over SFTP; a missing file or a broken connection raises TransportError."""
        self._require()
        if self._sftp is None:
            self._sftp = self._conn.sftp()
        try:
            with self._sftp.open(remote, "rb") as fh:
                fh.seek(offset)
                fh.prefetch(None if length is None else offset + length)
                return fh.read() if length is None else fh.read(length)
        except Exception as exc:
            if not self._alive():
                raise TransportError(
                    f"connection to {self.host.name} broke while reading {remote}: {_reason(exc)}"
                ) from None
            raise TransportError(
                f"reading {self.host.name}:{remote} failed: {_reason(exc)}"
            ) from None

    def _require(self):
        if self._conn is None:
            raise TransportError(f"not connected to {self.host.name}")
        return self._conn

    def _alive(self) -> bool:
        transport = self._conn.transport if self._conn is not None else None
        return bool(transport and transport.is_active())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return text or type(exc).__name__


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
