"""`invoke lock --host H [--release --deployment ID | --break]`: who holds each host's deploy
lock; release your own, break a stale one (both logged). Shares the deploy tasks' helpers."""

from __future__ import annotations

from moola_ops.cli._common import task, user_errors
from moola_ops.cli.deploy import HOST_HELP, INVENTORY_HELP, _hosts
from moola_ops.hosts.runpod import REFRESH_HELP
from moola_ops.terminal import print_json


def lock_line(state: dict) -> str:
    """The words for one host's row of `invoke lock`: from its --json entry."""
    from moola_ops.deploy.commands.lock import describe_holder

    # An empty holder ({}: a lock directory without holder.json, left by a run that died
    # between mkdir and writing it) is still a lock: test for None, never for truth.
    if "broken" in state:
        broken = state["broken"]
        return (
            f"broke the lock of {describe_holder(state['holder'])}" if broken else "was not locked"
        )
    if "released" in state:
        return "released" if state["released"] else "was not locked"
    if not state["locked"]:
        return "free"
    holder = state["holder"]
    if holder.get("stale"):
        return f"STALE lock of {describe_holder(holder)} ({holder['stale']}): {holder['break']}"
    return f"locked by {describe_holder(holder)}"


@task(
    name="lock",
    help={
        "host": HOST_HELP,
        "release": "release the lock held by --deployment ID (only its holder may)",
        "deployment": "the deployment id holding the lock (with --release)",
        "break_": "break the lock whoever holds it (a stale lock; logged)",
        "inventory": INVENTORY_HELP,
        "json": "print JSON",
        "refresh": REFRESH_HELP,
    },
    dry=lambda kw: (
        f"lock --{'break' if kw.get('break_') else 'release'} would change the lock; "
        "`invoke lock --host H` shows who holds it"
        if kw.get("break_") or kw.get("release")
        else None
    ),
)
@user_errors
def lock_(
    c, host, release=False, deployment="", break_=False, inventory="", json=False, refresh=False
):
    """Show who holds each host's deploy lock; --release your own, --break a stale one."""
    from moola_ops import deploy as engine

    report = {}
    for h in _hosts(host, inventory, refresh):
        if break_:
            holder = engine.break_lock(h)
            report[h.name] = {"broken": holder is not None, "holder": holder}
        elif release:
            released = engine.release_lock(h, deployment or None)
            report[h.name] = {"released": released}
        else:
            holder = engine.lock_status(h)
            report[h.name] = {"locked": holder is not None, "holder": holder}
        if not json:
            print(f"{h.name}: {lock_line(report[h.name])}")
    if json:
        print_json(report)


EXPORTS = [lock_]
