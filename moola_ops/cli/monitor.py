"""`invoke monitor`: production monitoring from the captures, a Nagios plugin for cron.

Exit codes 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; one status line with perfdata (or --json);
--prom writes a Prometheus textfile atomically; the run ends within --timeout.
"""

from __future__ import annotations

import sys

from invoke.exceptions import Exit

from moola_ops.cli._common import task
from moola_ops.terminal import print_json


@task(
    help={
        "host": "the inventory host to monitor",
        "since": "the window: a duration (30m, 6h, 2d) or an ISO time (default 1h)",
        "reference": "training data for drift: a labeled parquet or a run id (default: the run "
        "the live release was built from, found through its manifest)",
        "runs_dir": "where training runs live (default runs)",
        "json": "print one JSON document instead of the status line",
        "prom": "also write a Prometheus textfile-collector file here (atomic rename)",
        "timeout": "seconds the whole run may take (default 60); a host that does not send its "
        "captures in time is UNKNOWN and the cached ones are used",
        "cache": "local folder for pulled captures (default .moola/captures)",
        "no_pull": "use only what is already in the local cache (no SSH)",
        "inventory": "inventory file (default inventory/hosts.yaml or env MOOLA_INVENTORY)",
    },
    nagios="MOOLA-MONITOR",
    dry="monitor pulls captures into the local cache and saves its result for the report; `invoke "
    "--dry healthcheck --host H` reads the host without writing",
)
def monitor(
    c,
    host,
    since="1h",
    reference="",
    runs_dir="runs",
    json=False,
    prom="",
    timeout=60.0,
    cache="",
    no_pull=False,
    inventory="",
):
    """Request rate, errors, latency, label mix and input drift (PSI) of the live release."""
    from moola_core.errors import MoolaError
    from moola_ops.watch.health import UNKNOWN, worst
    from moola_ops.watch.health_output import write_textfile
    from moola_ops.watch.monitor import prometheus_text, render_text, run_monitor, status_line

    try:
        result = run_monitor(
            host,
            since=since,
            reference=reference,
            runs_dir=runs_dir,
            inventory_path=inventory or None,
            cache=cache or None,
            timeout_s=float(timeout),
            pull=not no_pull,
        )
    except MoolaError as exc:
        line = f"MOOLA-MONITOR UNKNOWN - {' '.join(str(exc).split())}"
        if json:
            print_json({"state": "UNKNOWN", "exit_code": UNKNOWN, "status_line": line})
        else:
            print(line)
        raise Exit(code=UNKNOWN) from None
    code = result.state
    if prom:
        try:
            write_textfile(prom, prometheus_text(result))
        except OSError as exc:
            print(f"cannot write --prom {prom}: {exc.strerror or exc}", file=sys.stderr)
            code = worst([code, UNKNOWN])
    if json:
        print_json(result.to_dict())
    else:
        print(status_line(result))
        print("\n".join(render_text(result)), flush=True)
    raise Exit(code=code)


EXPORTS = [monitor]
