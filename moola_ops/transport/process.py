"""Builders for how any remote command runs: in its own process group under the host's
`timeout`, the group id printed first, and the command that stops that group. The transport
(moola_ops/transport) wraps every command it sends with `wrap_command`."""

from __future__ import annotations

import shlex

PGID_TAG = "moola-pgid:"  # first stderr line of a wrapped command: its process group id


def wrap_command(command: str, host_timeout_s: float) -> str:
    """`command` as the host runs it: report the process group, then run it under `timeout`.

    The login shell execs into `timeout` (or, on a host without it, the shell), so the process
    group id printed first is the group of everything the command starts: killing it kills them
    all. The command itself runs in the user's login shell ($SHELL), as an unwrapped one would.
    """
    limit = max(1, int(host_timeout_s + 0.999))
    # the command appears once: sshd hands all of this to the login shell as ONE argument, which
    # Linux caps at 128 KiB (MAX_ARG_STRLEN), and the serving program travels inline
    return (
        f"echo {PGID_TAG}$$ >&2; "
        f"if command -v timeout >/dev/null 2>&1; then set -- timeout -k 5 {limit}; "
        f'else set --; fi; exec "$@" "${{SHELL:-/bin/sh}}" -c {shlex.quote(command)}'
    )


def kill_command(pgid: int) -> str:
    """Stop a process group: TERM, up to 3 s to end, then KILL; exit 0 once it is gone.

    `kill -SIG -PGID` without `--`: dash's builtin (Debian's /bin/sh) takes no `--`."""
    return f"{stop_group(f'-{int(pgid)}')} || exit 0; ! kill -0 -{int(pgid)} 2>/dev/null"


def stop_group(group: str) -> str:
    """TERM the process group `group` (a shell word such as `-1234` or `"-$p"`), give it up to
    3 s to end, then KILL whatever ignored the TERM. False when no such group was there."""
    return (
        f"kill -TERM {group} 2>/dev/null && {{ i=0; "
        f"while kill -0 {group} 2>/dev/null && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; "
        f"kill -KILL {group} 2>/dev/null; sleep 0.1; true; }}"
    )
