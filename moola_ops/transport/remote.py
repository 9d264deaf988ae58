"""How a command runs on the host: wrapped in its own process group under the host's
`timeout` (the wrapper and the kill are built in `moola_ops/transport/process.py`), its group
id read off the front of stderr, killed over a second channel; and what it returned (Result)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from moola_ops.transport.process import PGID_TAG, kill_command, wrap_command  # noqa: F401

KILL_WAIT_S = 10.0  # how long the kill of a timed-out command may take over its own channel
# The host-side `timeout` fires this much after our own deadline, so that while the connection
# lives Moola decides first (and an exit status 124 of the command itself stays unambiguous).
HOST_TIMEOUT_SLACK_S = 15.0


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


def take_pgid(err: bytearray, final: bool = False) -> tuple[int | None, bytearray]:
    """Split the wrapper's `moola-pgid:N` line off the front of stderr once it is complete.

    Returns (None, err) while the line is still incomplete, (-1, err) when there is none."""
    tag = PGID_TAG.encode()
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


def await_pgid(chan, pgid: int | None, err: bytearray, wait_s: float = 2.0) -> int | None:
    """The command's process group, reading stderr a little longer if its line is not in yet
    (the command may already be running while our reader has not looked)."""
    end = time.monotonic() + wait_s
    while pgid is None and time.monotonic() < end and not chan.closed:
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        pgid, _ = take_pgid(err)
        if pgid is None:
            time.sleep(0.02)
    return pgid


def kill_group(transport, pgid: int) -> bool:
    """Kill a wrapped command's process group over a fresh channel of `transport` (Paramiko);
    True when it is gone, False when that could not be confirmed."""
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
