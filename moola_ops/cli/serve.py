"""`invoke serve --host H start|stop|status|restart|token|rotate-token` and `invoke serve --host
H --ensure`.

The model server on each host: started detached from the SSH session (pid file and log under
WORKSPACE/serve/), behind a small front proxy on the host's public port (inventory
`serve_port`, default 8080). `--ensure` is idempotent and cron-safe: it starts what is missing
for `current` and does nothing otherwise. `token` prints the host's client token (clients send
it as `Authorization: Bearer TOKEN`), `rotate-token` replaces it. See docs/serving.md.
"""

from __future__ import annotations

import invoke
from invoke.exceptions import Exit
from invoke.parser import Argument

from moola_ops.cli._common import task, user_errors
from moola_ops.terminal import console, is_tty, print_json


class _EnsureFlag(Argument):
    """`--ensure` names the action too (it fills the positional `action` with "ensure")."""

    action: Argument | None = None

    def set_value(self, value, cast=True):
        super().set_value(value, cast=cast)
        if value and self.action is not None and self.action.value is None:
            self.action.set_value("ensure")


class ServeTask(invoke.Task):
    """Invoke requires every positional argument to be given, so `invoke serve --host H
    --ensure` (the issue's cron line) would not parse with `action` positional. The one change
    to Invoke's parsing: the `--ensure` flag also fills `action`. Everything else is the
    standard task (`moola_ops.cli._common.task`: long flags only, `-h` shows help)."""

    def get_arguments(self, ignore_unknown_help=None):
        args = super().get_arguments(ignore_unknown_help)
        action = next(a for a in args if a.name == "action")
        for i, arg in enumerate(args):
            if arg.name == "ensure":
                flag = _EnsureFlag(names=arg.names, kind=bool, default=False, help=arg.help)
                flag.action = action
                args[i] = flag
        return args


def _serve_refusal(kw: dict) -> str | None:
    """`invoke --dry serve`: status reads (and records nothing), rotate-token says what it
    would do; every other action acts."""
    if kw.get("action") in ("status", "rotate-token") and not kw.get("ensure"):
        return None
    if kw.get("action") == "token":
        return (
            "serve token makes a token on a host that has none; `invoke serve --host H token` "
            "without --dry shows it"
        )
    action = "--ensure" if kw.get("ensure") else (kw.get("action") or "ACTION")
    return (
        f"serve {action} changes what runs on the hosts; `invoke serve --host H status` shows "
        "what runs, `invoke deploy --plan` what a deploy would start"
    )


@task(
    klass=ServeTask,
    positional=["action"],
    help={
        "action": "start (idempotent), stop (drain, then exit), status, restart (zero downtime), "
        "token (print the clients' token), rotate-token (replace it)",
        "host": "inventory host names and/or groups, comma separated",
        "ensure": "cron-safe: start the proxy and `current`'s server when missing, else nothing",
        "device": "auto (CUDA when torch sees a GPU), cpu or cuda",
        "no_standby": "after a switch, drain the previous release instead of keeping it warm",
        "inventory": "inventory file (default inventory/hosts.yaml or env MOOLA_INVENTORY)",
        "json": "print one JSON document",
    },
    dry=_serve_refusal,
)
@user_errors
def serve(
    c, action=None, host="", ensure=False, device="auto", no_standby=False, inventory="", json=False
):
    """Run the model server on hosts: start, stop, status, restart, or --ensure (cron)."""
    from moola_core.errors import MoolaError
    from moola_ops.hosts.inventory import load_inventory
    from moola_ops.serving import control as serving

    if ensure and action not in (None, "ensure"):
        raise MoolaError("give an action or --ensure, not both")
    chosen = "ensure" if ensure else action
    if chosen not in serving.ACTIONS + serving.TOKEN_ACTIONS:
        raise MoolaError(
            f"unknown serve action {action!r}: use start, stop, status, restart, token, "
            "rotate-token or --ensure"
        )
    hosts = load_inventory(inventory or None).resolve(host)
    if chosen in serving.TOKEN_ACTIONS:
        rotate = chosen == "rotate-token"
        if rotate and c.config.run.dry:  # Invoke's --dry: say it, change nothing
            print(f"would replace the clients' token on {', '.join(h.name for h in hosts)}")
            return
        _show_tokens(serving.tokens(hosts, rotate=rotate), len(hosts), json)
        return
    outcomes = serving.run(
        hosts, chosen, device=device, keep_standby=not no_standby, record=not c.config.run.dry
    )
    if json:
        print_json([o.__dict__ for o in outcomes])
    elif is_tty():
        out = console()
        for o in outcomes:
            mark = "[green]ok[/]" if o.ok else "[red]FAILED[/]"
            out.print(f"{o.host}: {mark} {o.message}", highlight=False)
    else:
        for o in outcomes:
            print(f"{o.host}\t{'ok' if o.ok else 'FAILED'}\t{o.duration_s:.1f}s\t{o.message}")
    if not all(o.ok for o in outcomes):
        raise Exit(code=2 if chosen == "status" else 1)


def _show_tokens(outcomes, n_hosts: int, as_json: bool) -> None:
    """The tokens on stdout (one host: the token alone, for `$(invoke serve token --host H)`;
    several: host and token), what is known of each on stderr; exit 1 when a host failed."""
    import sys

    if as_json:
        print_json([o.__dict__ for o in outcomes])
    for o in outcomes:
        if not as_json and o.ok:
            print(o.token if n_hosts == 1 else f"{o.host}\t{o.token}", flush=True)
        print(f"{o.host}: {o.message if o.ok else 'FAILED ' + o.message}", file=sys.stderr)
    if not all(o.ok for o in outcomes):
        raise Exit(code=1)


EXPORTS = [serve]
