"""The one room that talks SSH: connect (strict host keys), run a command, upload a file.

Builders in `moola_ops.deploy.commands` decide *what* runs; this module only runs it, over Paramiko
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

Modules: `session` (HostSession: connect, run, upload, read, cancel), `connect` (one
connection attempt), `known_hosts` (host-key checking and the changed-key sentence),
`remote` (how a command is wrapped and killed on the host), `watchdog` (keepalives and
deadlines), `errors`. Import the names from `moola_ops.transport`.
"""

from __future__ import annotations

import logging

from moola_ops.transport.errors import Aborted, CommandTimeout, HostKeyError, TransportError
from moola_ops.transport.known_hosts import changed_key_message, key_fingerprint_line
from moola_ops.transport.process import kill_command, wrap_command
from moola_ops.transport.remote import HOST_TIMEOUT_SLACK_S, KILL_WAIT_S, Result
from moola_ops.transport.session import (
    CONNECT_BACKOFF_MAX_S,
    CONNECT_BACKOFF_S,
    UPLOAD_BASE_S,
    UPLOAD_MIN_BYTES_PER_S,
    HostSession,
)
from moola_ops.transport.watchdog import KEEPALIVE_MAX_MISSED

# Paramiko's transport thread logs a failed handshake ("Error reading SSH protocol banner") with
# a traceback through Python's last-resort handler on stderr, which cron mails; the failure
# already reaches the user as one TransportError sentence. A handler of our own keeps it quiet
# (a program that configures logging still gets the records through the root logger).
logging.getLogger("paramiko").addHandler(logging.NullHandler())

__all__ = [
    "CONNECT_BACKOFF_MAX_S",
    "CONNECT_BACKOFF_S",
    "HOST_TIMEOUT_SLACK_S",
    "KEEPALIVE_MAX_MISSED",
    "KILL_WAIT_S",
    "UPLOAD_BASE_S",
    "UPLOAD_MIN_BYTES_PER_S",
    "Aborted",
    "CommandTimeout",
    "HostKeyError",
    "HostSession",
    "Result",
    "TransportError",
    "changed_key_message",
    "key_fingerprint_line",
    "kill_command",
    "wrap_command",
]
