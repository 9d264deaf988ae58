"""`invoke log`: the deployment log as a table, with filters; health-check runs collapsed.

Reads every file of the log (rotated ones included, oldest first) through moola_ops.log.journal;
the rows are built by the pure functions of moola_ops.render.
"""

from __future__ import annotations

from moola_ops.cli._common import READS, task, user_errors
from moola_ops.terminal import print_json


@task(
    help={
        "phase": "only these phases, comma separated (deploy, rollback, verify, healthcheck, ...)",
        "host": "only these hosts, comma separated; globs work (local-*)",
        "deployment": "only this deployment id (or its first characters)",
        "since": "only lines since: 30m, 2h, 3d, 1w ago, or a UTC date / date-time",
        "failed": "only lines whose step failed, was aborted or refused",
        "overridden": "only overrides: steps a person shipped past with a reason",
        "health": "one row per health-check line (default: one row per run, passing runs "
        "in a row collapsed)",
        "last": "show the last N rows (default 30; 0: all)",
        "json": "print the matching log lines as JSON (never collapsed)",
    },
    dry=READS,
)
@user_errors
def log(
    c,
    phase="",
    host="",
    deployment="",
    since="",
    failed=False,
    overridden=False,
    health=False,
    last=30,
    json=False,
):
    """Show the deployment log (logs/deployments.jsonl or env MOOLA_LOG), newest last."""
    from moola_ops.log.journal import read_events
    from moola_ops.render import LogFilter, format_table, log_rows, parse_since, split_list

    count = int(last)
    rules = LogFilter(
        phases=split_list(phase),
        hosts=split_list(host),
        deployment=deployment,
        since=parse_since(since) if since else "",
        failed=failed,
        overridden=overridden,
    )
    everything = read_events()
    events = [e for e in everything if rules.keep(e)]
    if json:
        print_json(events[-count:] if count > 0 else events)
        return
    if not everything:
        print("the deployment log is empty: nothing has been deployed, checked or built here yet")
        return
    # a health line asked for by name or by failure is shown as it is
    collapse = not (health or failed or "healthcheck" in rules.phases)
    rows = log_rows(events, collapse_health=collapse)
    rows = rows[-count:] if count > 0 else rows
    if not rows:
        print(f"no log lines match ({len(everything)} lines in the log)")
        return
    print("\n".join(format_table(rows)))


EXPORTS = [log]
