"""The deploy lock: `mkdir WORKSPACE/deploy.lock` succeeds for exactly one deployer (Kamal's lock).

The lock directory holds `holder.json` (who, when, what, pid, deployment id) so a refused
deployer can name the holder and an operator can judge a stale lock. Builders return shell
strings; `parse_*` read their output. Nothing here talks SSH.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
from collections.abc import Callable
from typing import Any

from moola_ops.hosts.layout import Layout, check_name

ACQUIRED = "MOOLA-LOCK-ACQUIRED"
HELD = "MOOLA-LOCK-HELD"
RELEASED = "MOOLA-LOCK-RELEASED"
NOT_OURS = "MOOLA-LOCK-NOT-OURS"
BROKEN = "MOOLA-LOCK-BROKEN"
FREE = "MOOLA-LOCK-FREE"
# The longest a deploy may take: moola_ops.deploy.Options().host_deadline_s (every step at its
# own deadline, plus cleanup). A lock older than this is stale whoever holds it.
MAX_AGE_S = 1800.0 + 3 * 600.0 + 8 * 300.0 + 6 * 30.0
_WRITE_FAILED = shlex.quote(json.dumps({"error": "cannot write the lock holder (disk full?)"}))


def holder_json(holder: dict[str, Any]) -> str:
    """The holder record as one compact JSON line (what `holder.json` contains)."""
    return json.dumps(holder, sort_keys=True, separators=(",", ":"))


def acquire(layout: Layout, holder: dict[str, Any]) -> str:
    """Create the workspace layout, then take the lock or print who holds it (always exit 0).

    The lock appears whole: holder.json is written into a private folder that is then renamed
    to deploy.lock in one rename(2), which fails while another holder's (non-empty) lock is
    there; so a refused deployer always finds the holder's name. A failed write (a full disk)
    leaves nothing behind.
    """
    deployment = check_name(holder["deployment"], "deployment id")
    lock = layout.lock
    fresh = layout.path(f".deploy.lock-{deployment}")
    holder_file = layout.path("deploy.lock", "holder.json")
    write = f"printf '%s\\n' {shlex.quote(holder_json(holder))} > {fresh}/holder.json"
    return (
        f"mkdir -p {layout.releases} {layout.incoming} {layout.backups} && "
        f"rm -rf {fresh} && mkdir {fresh} && "
        f"if ! {write}; then rm -rf {fresh}; echo {HELD}; echo {_WRITE_FAILED}; "
        f"elif [ ! -e {lock} ] && mv -T {fresh} {lock} 2>/dev/null; then echo {ACQUIRED}; "
        f"else rm -rf {fresh}; echo {HELD}; cat {holder_file} 2>/dev/null || echo '{{}}'; echo; fi"
    )


def parse_acquire(output: str) -> tuple[bool, dict[str, Any] | None]:
    """(acquired, holder) from the output of `acquire`; holder is who has it when refused."""
    lines = output.strip().splitlines()
    if not lines:
        raise ValueError("empty answer to the lock command")
    marker = next((i for i, line in enumerate(lines) if line in (ACQUIRED, HELD)), None)
    if marker is None:
        raise ValueError(f"unexpected answer to the lock command: {output.strip()[:200]!r}")
    if lines[marker] == ACQUIRED:
        return True, None
    return False, _parse_holder("\n".join(lines[marker + 1 : marker + 2]))


def release(layout: Layout, deployment: str) -> str:
    """Release the lock only if `deployment` holds it (moved aside atomically, then removed)."""
    check_name(deployment, "deployment id")
    aside = layout.path(f"deploy.lock.released-{deployment}")
    needle = shlex.quote(f'"deployment":"{deployment}"')
    holder_file = layout.path("deploy.lock", "holder.json")
    return (
        f"if ( [ -f {holder_file} ] || exit 1; exec 9<{holder_file}; flock -w 10 9 2>/dev/null; "
        f"grep -qF {needle} {holder_file} && mv -T {layout.lock} {aside} ); "
        f"then rm -rf {aside}; echo {RELEASED}; else echo {NOT_OURS}; fi"
    )


def parse_release(output: str) -> bool:
    """True when `release` removed our lock; False when the lock was not ours (or gone)."""
    return RELEASED in output.split()


def break_lock(layout: Layout, deployment: str) -> str:
    """Remove the lock whoever holds it; print the holder it had (for the log), or FREE."""
    check_name(deployment, "deployment id")
    aside = layout.path(f"deploy.lock.broken-{deployment}")
    holder_file = layout.path("deploy.lock", "holder.json")
    return (
        f"if [ -d {layout.lock} ]; then cat {holder_file} 2>/dev/null || echo '{{}}'; echo; "
        f"( [ -f {holder_file} ] && exec 9<{holder_file} && flock -w 10 9 2>/dev/null; "
        f"mv -T {layout.lock} {aside} ) && rm -rf {aside} && echo {BROKEN}; "
        f"else echo {FREE}; fi"
    )


def parse_break(output: str) -> tuple[bool, dict[str, Any] | None]:
    """(broken, previous holder) from the output of `break_lock`."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    if BROKEN in lines:
        return True, _parse_holder(lines[0] if lines[0] != BROKEN else "{}")
    return False, None


def _parse_holder(text: str) -> dict[str, Any]:
    # An unreadable holder still means "locked": report it as unknown rather than failing.
    try:
        holder = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {"unreadable": text[:200]}
    return holder if isinstance(holder, dict) else {"unreadable": text[:200]}


def stale_reason(
    holder: dict[str, Any] | None,
    age_s: float | None,
    *,
    max_age_s: float,
    here: str | None = None,
    pid_alive: Callable[[int], bool] | None = None,
) -> str | None:
    """Why a lock is stale, or None when its holder may still be running.

    Stale: its holder ran on this machine (`client` == `here`) and that pid is gone, or it is
    older than `max_age_s` (the longest a deploy may take), or it names no holder at all.
    """
    if not holder:
        return "it names no holder"
    here = socket.gethostname() if here is None else here
    pid = holder.get("pid")
    if holder.get("client") == here and isinstance(pid, int) and pid > 0:
        alive = (pid_alive or _pid_alive)(pid)
        if not alive:
            return f"its process {pid} on {here} is gone"
    if age_s is not None and age_s > max_age_s:
        return f"it is {age_s / 60:.0f} min old, longer than any deploy may take"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def break_hint(host: str) -> str:
    """The command that breaks a stale lock (in every message about one)."""
    return f"invoke lock --host {host} --break"


def describe_holder(holder: dict[str, Any] | None) -> str:
    """One phrase naming the holder: 'alice@laptop since 2026-... (deploy v0.3, pid 12, id X)'."""
    if not holder:
        return "an unknown holder (the lock has no holder file)"
    who = holder.get("actor", "someone")
    when = holder.get("since", "an unknown time")
    what = holder.get("what", "?")
    return (
        f"{who} since {when} ({what}, pid {holder.get('pid', '?')}, "
        f"deployment {holder.get('deployment', '?')})"
    )
