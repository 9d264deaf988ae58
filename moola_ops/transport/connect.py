"""One connection attempt for a HostSession: Fabric/Paramiko set-up with strict host keys,
a handshake that a cancel() can end at once, and failures as one sentence (or SetupFailed,
which HostSession.open retries)."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from moola_ops.hosts.inventory import Host
from moola_ops.transport.errors import Aborted, HostKeyError, TransportError, short_reason
from moola_ops.transport.known_hosts import (
    PinNewKey,
    RefuseUnknown,
    changed_key_message,
    load_pod_keys,
)


class SetupFailed(Exception):
    """One connection attempt failed before the session existed (retried by open())."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def open_connection(session, host: Host):
    """Open one Fabric connection to `host` with the session's host-key policy."""
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
    known_files = known_hosts_files(conn, session.host)
    pod = host.runpod_pod_id
    if pod:  # pinned under a stable alias: a pod's address changes on every restart
        load_pod_keys(client, known_files, pod, conn.host, conn.port)
    else:
        for path in known_files:
            if path.exists():
                client.load_host_keys(str(path))
    if session.accept_new_host_key:
        client.set_missing_host_key_policy(PinNewKey(session, known_files[-1], pod))
    else:
        client.set_missing_host_key_policy(RefuseUnknown(pod))
    handshake = _Handshake()
    threading.Thread(
        target=_stop_on_cancel,
        args=(session, conn, handshake),
        name=f"moola-connect-cancel-{host.name}",
        daemon=True,
    ).start()
    try:
        if session.cancelled:
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
            changed_key_message(host, conn.host, conn.port, exc.key, exc.expected_key, known_files)
        ) from None
    except paramiko.AuthenticationException:
        conn.close()
        raise TransportError(
            f"{host.name} ({host.address}) refused our key: check identity_file and that "
            "the public key is in the host's authorized_keys"
        ) from None
    except (OSError, EOFError, paramiko.SSHException) as exc:
        conn.close()
        session._check_cancelled()
        raise SetupFailed(short_reason(exc)) from None
    finally:
        handshake.settle()
    return conn


class _Handshake:
    """Whether a connection attempt is still under way, decided under one lock: the watcher
    closes a transport only while the attempt is unsettled. Without the lock a cancel() landing
    just after the connection was made closed the new session's transport under its first
    command (the command then ran on, unkilled: sshd saw the client leave)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.settled = threading.Event()

    def settle(self) -> None:
        with self.lock:
            self.settled.set()


def _stop_on_cancel(session, conn, handshake: _Handshake) -> None:
    """While `conn` is being opened: on cancel(), close its transport (Fabric's close()
    skips one still handshaking) so a hanging handshake ends at once. Once the attempt settled
    it does nothing: cancelling an open session is the session's own work (it kills what runs)."""
    while not handshake.settled.is_set():
        if session._cancelled.wait(0.1) or session.ctrl_c:
            with handshake.lock:
                if handshake.settled.is_set():
                    return
                transport = conn.client.get_transport()
                if transport is not None:
                    with contextlib.suppress(Exception):
                        transport.close()
                    return
            handshake.settled.wait(0.05)  # the TCP connect is still under way


def known_hosts_files(conn, host: Host) -> list[Path]:
    """~/.ssh/known_hosts, ssh_config's UserKnownHostsFile and the host's own file, in order."""
    files = [Path("~/.ssh/known_hosts").expanduser()]
    configured = conn.ssh_config.get("userknownhostsfile")
    if configured:
        files += [Path(p).expanduser() for p in configured.split()]
    if host.known_hosts:
        files.append(Path(host.known_hosts).expanduser())
    return list(dict.fromkeys(files))
