"""End a local process group that Moola started, by its pid, never someone else's.

Stand-in sshds and a local Label Studio are started in their own sessions; stopping one sends
SIGTERM to its group, waits, then SIGKILL. `is_ours()` is asked before every signal so a pid
the kernel has given to another program since is left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable


def end_group(pid: int, is_ours: Callable[[], bool], timeout_s: float, poll_s: float) -> bool:
    """SIGTERM the group led by `pid`, SIGKILL it after `timeout_s`; True when it was ours."""
    if not is_ours():
        reap(pid)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:  # it ended between the check and the signal
        reap(pid)
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and is_ours():
        reap(pid)
        time.sleep(poll_s)
    if is_ours():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    reap(pid)
    return True


def reap(pid: int) -> None:
    """Collect the exit status if `pid` is our child and has ended (no zombie left)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
