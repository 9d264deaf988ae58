"""Checklist tasks: `checklist`, `preflight` (phase 1), `select` (2), `verify` (5), `accept` (6).

Each task calls one function of moola_ops.checklist.states / moola_ops.checklist.phases, renders the result
(rich on a TTY, plain otherwise, `--json` always) and exits non-zero when something failed.
"""

from __future__ import annotations

from invoke.exceptions import Exit

from moola_ops.checklist.view import MARKS, render_checklist, render_phase
from moola_ops.cli._common import READS, task, user_errors
from moola_ops.terminal import console, is_tty, print_json


def _finish(report, as_json: bool) -> None:
    if as_json:
        print_json(report.to_dict())
    else:
        render_phase(report)
    if not report.ok:
        raise Exit(code=1)


@task(
    help={
        "deployment": "deployment id to show (default: the newest deployment in the log)",
        "file": "checklist file (default checklists/deployment.yaml)",
        "json": "print one JSON document",
    },
    dry=READS,
)
@user_errors
def checklist(c, deployment="", file="", json=False):
    """Show the eight phases and every step's state from the deployment log."""
    from moola_ops.checklist.spec import DEFAULT_CHECKLIST, load_checklist
    from moola_ops.checklist.states import checklist_states
    from moola_ops.log.journal import read_events

    spec = load_checklist(file or DEFAULT_CHECKLIST)
    report = checklist_states(spec, read_events(), deployment or None)
    if json:
        print_json(report.to_dict())
    else:
        render_checklist(report, spec)


@task(
    help={
        "config": "training config whose data and model are checked (default configs/jade.yaml)",
        "tests": "pytest targets, comma separated; 'all' = tests/, 'none' = skip "
        "(default: invoke.yaml preflight.tests, else a quick unit subset)",
        "skip": "preflight steps to skip, comma separated: lint,tests,data,model,doctor",
        "run": "run id whose weights are checked (default: runs/selected.json when present)",
        "runs_dir": "where training runs live (default runs)",
        "json": "print one JSON document",
    },
    dry="preflight runs the tests and the model checks and records phase 1 in the log; `invoke "
    "doctor` checks the environment without recording anything",
)
@user_errors
def preflight(c, config="", tests="", skip="", run="", runs_dir="runs", json=False):
    """Phase 1: lint, tests, data validation + leakage, model checks, dependency doctor."""
    from moola_ops.checklist.phases import run_preflight

    # Invoke's configuration hierarchy: `preflight: {tests: ...}` in invoke.yaml or `invoke -f FILE`
    tests = tests or (c.config.get("preflight") or {}).get("tests", "")

    def live(step) -> None:  # progress as each check ends; the table follows
        if not json and is_tty():
            console().print(
                f"{MARKS.get(step.status, '?')} {step.step}: {step.summary}", markup=False
            )

    report = run_preflight(
        config_path=config or None,
        tests=tests,
        skip=tuple(s.strip() for s in skip.split(",") if s.strip()),
        run_id=run or None,
        runs_dir=runs_dir,
        on_step=live,
    )
    _finish(report, json)


@task(
    help={
        "metric": "primary out-of-fold metric to choose and gate by (default: invoke.yaml "
        "select.metric, else span_iou)",
        "runs_dir": "where training runs live (default runs)",
        "override": "ship a run that fails the quality gate anyway; the reason is recorded with "
        "your name as a sign-off in the log (invoke checklist shows it)",
        "reviewed": "a reviewed labeled set (invoke label.import): the candidate must also be no "
        "worse than the live release on its windows neither trained on (default: the labeled "
        "file the candidates trained on, when it holds reviewed windows)",
        "live": "the live release's run (default: the newest release the deployment log shows "
        "switched and checked, and the run its bundle was built from)",
        "json": "print one JSON document",
    },
    dry="select records the chosen run (runs/selected.json and the log); `invoke compare` shows the "
    "same table without choosing",
)
@user_errors
def select(c, metric="", runs_dir="runs", override=None, reviewed="", live="", json=False):
    """Phase 2: pick the variant to ship on out-of-fold metrics (with CIs), then the quality gate:
    exit 1 unless it beats the heuristic and the linear baseline out of fold, is no worse on the
    gate's stream beyond the stated margins and, where reviewed labels exist, no worse than the
    live release on them (or --override "reason", logged as an override)."""
    from moola_ops.checklist.phases import run_select
    from moola_ops.labeling.holdout import reviewed_gate

    metric = metric or (c.config.get("select") or {}).get("metric", "")  # invoke.yaml select.metric
    against_live = reviewed_gate(
        runs_dir, reviewed=reviewed or None, live=live or None, metric=metric or "span_iou"
    )
    report = run_select(
        runs_dir=runs_dir, metric=metric or None, override=override, reviewed=against_live
    )
    _finish(report, json)


@task(
    help={
        "host": "inventory host names, groups and/or globs (local-*), comma separated",
        "timeout": "seconds the whole check may take (default 300)",
        "inventory": "inventory file (default inventory/hosts.yaml or env MOOLA_INVENTORY)",
        "json": "print one JSON document",
        "refresh": "ask RunPod where pods are now instead of using the 60 s cache",
    },
    dry="verify records phase 5 in the log; `invoke verify --host H` itself changes nothing on the "
    "hosts, `invoke --dry healthcheck --host H` reads them without recording",
)
@user_errors
def verify(c, host, timeout=300.0, inventory="", json=False, refresh=False):
    """Phase 5: runtime check through `current` on each host, latency against the SLA."""
    from moola_ops.checklist.phases import run_verify
    from moola_ops.hosts.inventory import load_inventory
    from moola_ops.hosts.runpod import refresh_cache

    refresh_cache(refresh)

    # like deploy and rollback: the hosts just deployed from --inventory can be verified there
    from moola_ops.progress import show

    hosts = load_inventory(inventory or None) if inventory else None
    with show("verify", plain=not json):
        report = run_verify(host, timeout_s=float(timeout), inventory=hosts)
    _finish(report, json)


@task(
    help={
        "deployment": "deployment id to accept (see `invoke checklist`)",
        "by": "name of the person signing off",
        "note": "release notes recorded with the sign-off (phase 6 documentation)",
        "json": "print one JSON document",
    },
    dry="accept writes a sign-off to the log; `invoke checklist --deployment ID` shows whether phases "
    "1-5 passed",
)
@user_errors
def accept(c, deployment, by, note="", json=False):
    """Phase 6: record a sign-off; refused unless phases 1-5 of the deployment passed."""
    from moola_ops.checklist.phases import run_accept

    report = run_accept(deployment, by, note)
    _finish(report, json)


EXPORTS = [checklist, preflight, select, verify, accept]
