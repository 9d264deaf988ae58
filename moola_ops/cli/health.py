"""`invoke healthcheck`: the cron check of phase 8, a Nagios plugin that also speaks JSON/Prom.

Cron-critical: this module and everything it imports stay free of torch, numpy and pandas, it
needs no TTY and no environment beyond PATH, and the whole run ends within --timeout.
"""

from __future__ import annotations

import os
import sys

from invoke.exceptions import Exit

from moola_ops.cli._common import console, is_tty, print_json, task
from moola_ops.runpod import REFRESH_HELP

FAST_TIMEOUT_S = 30.0
DEEP_TIMEOUT_S = 300.0


def _long_output(run) -> list[str]:
    """Nagios long output: one line per host and check after the status line."""
    from moola_ops.health import STATE_NAMES

    lines = []
    for h in run.hosts:
        lines.append(f"{h.host}: {STATE_NAMES[h.state]} ({h.duration_s:.2f} s)")
        for c in h.checks:
            lines.append(f"  {STATE_NAMES[c.state]:<8} {c.name}: {c.message}")
    return lines


def _render_tty(run) -> None:
    from rich.table import Table

    from moola_ops.health import STATE_NAMES, status_line

    colour = {"OK": "green", "WARNING": "yellow", "CRITICAL": "red", "UNKNOWN": "magenta"}
    out = console()
    out.print(status_line(run), markup=False)
    table = Table("host", "state", "check", "message")
    for h in run.hosts:
        for i, c in enumerate(h.checks):
            name = STATE_NAMES[c.state]
            table.add_row(
                h.host if i == 0 else "",
                f"[{colour[name]}]{name}[/]",
                c.name,
                c.message,
            )
    out.print(table)


@task(
    help={
        "host": "inventory host names, comma separated (default: every host in the inventory)",
        "group": "an inventory group to check instead of --host",
        "deep": "also run the model check through `current` (daily): load, golden, latency",
        "json": "print one JSON document instead of the status line",
        "prom": "also write a Prometheus textfile-collector file here (atomic rename)",
        "timeout": "seconds the whole run may take; a host not done by then is CRITICAL "
        f"(0, the default: {FAST_TIMEOUT_S:g}, with --deep {DEEP_TIMEOUT_S:g})",
        "inventory": "inventory file (default inventory/hosts.yaml or env MOOLA_INVENTORY)",
        "parallel": "hosts checked at once (default 16; 1 checks one after another)",
        "refresh": REFRESH_HELP,
    }
)
def healthcheck(
    c,
    host="",
    group="",
    deep=False,
    json=False,
    prom="",
    timeout=0.0,
    inventory="",
    parallel=16,
    refresh=False,
):
    """Check hosts in parallel; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios)."""
    from moola_core.errors import MoolaError
    from moola_ops.health import UNKNOWN, prometheus_text, run_healthcheck, status_line, worst
    from moola_ops.health import write_textfile as write_prom
    from moola_ops.runpod import refresh_cache

    refresh_cache(refresh)  # runpod_pod_id hosts: the first look-up asks the API

    limit = float(timeout) or (DEEP_TIMEOUT_S if deep else FAST_TIMEOUT_S)
    selection = ",".join(s for s in (host, group) if s)
    try:
        run = run_healthcheck(selection or None, deep=deep, timeout_s=limit,
                              inventory_path=inventory or None, parallel=int(parallel))  # fmt: skip
    except MoolaError as exc:
        # the plugin itself could not run (unknown host, broken inventory)
        line = f"MOOLA UNKNOWN - {' '.join(str(exc).split())}"
        if json:
            print_json({"state": "UNKNOWN", "exit_code": UNKNOWN, "status_line": line})
        else:
            print(line)
        raise Exit(code=UNKNOWN) from None
    code = run.state
    if prom:
        try:
            write_prom(prom, prometheus_text(run))
        except OSError as exc:  # the checks ran; their result still counts, plus UNKNOWN
            print(f"cannot write --prom {prom}: {exc.strerror or exc}", file=sys.stderr)
            code = worst([code, UNKNOWN])
    try:
        if json:
            print_json(run.to_dict())
        elif is_tty():
            _render_tty(run)
        else:
            print(status_line(run))
            print("\n".join(_long_output(run)), flush=True)
    except BrokenPipeError:  # `| head -1` read the status line and left: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise Exit(code=code)


EXPORTS = [healthcheck]
