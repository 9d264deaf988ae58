"""`invoke sandbox up|down|status`: local stand-in hosts, so every task works without RunPod.

Each stand-in host is a real OpenSSH server on 127.0.0.1 with its own host key, workspace and
known_hosts entry (moola_ops.hosts.standin); the shipped inventory names them local-1, local-2, ...
"""

from __future__ import annotations

from moola_ops.cli._common import task, user_errors
from moola_ops.terminal import console, is_tty, print_json

ACTIONS = ("up", "down", "status")


def host_names(count: int) -> list[str]:
    """The stand-in host names for `--hosts N`: local-1 .. local-N (as in the inventory)."""
    return [f"local-{i}" for i in range(1, count + 1)]


def sandbox_rows(root: str = ".sandbox") -> list[dict]:
    """One dict per recorded stand-in host: name, address, alive, pid, workspace."""
    from moola_ops.hosts.standin import load_state

    state = load_state(root)
    if state is None:
        return []
    return [
        {
            "name": h.name,
            "address": f"{h.user}@{h.hostname}:{h.port}",
            "alive": h.alive(),
            "pid": h.pid,
            "workspace": h.workspace,
        }
        for h in sorted(state.hosts.values(), key=lambda h: h.name)
    ]


def _show(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print_json({"hosts": rows})
        return
    if not rows:
        print("no stand-in hosts running: start them with `invoke sandbox up`")
        return
    if is_tty():
        from rich.table import Table

        table = Table("host", "address", "state", "pid", "workspace")
        for r in rows:
            state = "[green]up[/]" if r["alive"] else "[red]down[/]"
            table.add_row(r["name"], r["address"], state, str(r["pid"]), r["workspace"])
        console().print(table)
    else:
        for r in rows:
            state = "up" if r["alive"] else "down"
            print(f"{r['name']}  {r['address']}  {state}  pid {r['pid']}  {r['workspace']}")


def _sandbox_refusal(kw: dict) -> str | None:
    if kw.get("action") == "status":
        return None
    return (
        f"sandbox {kw.get('action')} starts or stops local sshd processes; "
        "`invoke sandbox status` shows them"
    )


@task(
    positional=["action"],
    auto_shortflags=False,
    help={
        "action": "up (start), down (stop and forget) or status",
        "hosts": "with `up`: how many stand-in hosts to run, named local-1..local-N (default 2)",
        "root": "directory holding the sandbox state and host workspaces (default .sandbox)",
        "json": "print the hosts as one JSON document",
    },
    dry=_sandbox_refusal,
)
@user_errors
def sandbox(c, action, hosts=2, root=".sandbox", json=False):
    """Start, stop or show the local stand-in hosts (real sshd on 127.0.0.1)."""
    from moola_core.errors import MoolaError
    from moola_ops.hosts.standin import start_sandbox, stop_sandbox

    if action not in ACTIONS:
        raise MoolaError(f"unknown sandbox action {action!r}: use one of {', '.join(ACTIONS)}")
    if action == "up":
        count = int(hosts)
        if not 1 <= count <= 32:
            raise MoolaError(f"--hosts {count} is out of range: use 1 to 32 stand-in hosts")
        start_sandbox(root, host_names(count))
        _show(sandbox_rows(root), json)
    elif action == "down":
        stopped = stop_sandbox(root)
        if json:
            print_json({"stopped": stopped})
        else:
            print(f"stopped {', '.join(stopped)}" if stopped else "no stand-in hosts were running")
    else:
        _show(sandbox_rows(root), json)


EXPORTS = [sandbox]
