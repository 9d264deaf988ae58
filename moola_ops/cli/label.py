"""`invoke label.*`: review windows in Label Studio and merge the labels back (docs/labeling.md).

    label.studio   start (or --stop) a local Label Studio on 127.0.0.1
    label.export   windows worth reviewing -> one batch of pre-annotated tasks
    label.import   a batch's finished annotations -> a NEW labeled set file
    label.status   per batch: done, accepted / edited / rejected (keeper rate), agreement, pace

Label Studio is named by --url/--token, else LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY, else the
local one `invoke label.studio` started. numpy, pandas and torch load inside the tasks only.
"""

from __future__ import annotations

from invoke import Collection

from moola_ops.cli._common import READS, task, user_errors
from moola_ops.terminal import console, is_tty, print_json

CONNECTION = {
    "url": "Label Studio's address (default: LABEL_STUDIO_URL, else the local `label.studio`)",
    "token": "its API token, legacy or personal (default: LABEL_STUDIO_API_KEY, else the local one's)",
}
STATE = "folder of the labeling ledger: batches, imports, status (default .moola/labeling)"


def _say(text: str) -> None:
    import sys

    print(f"label: {text}", file=sys.stderr, flush=True)


@task(
    help={
        "stop": "stop the local Label Studio this task started (its data folder stays)",
        "data_dir": "its data folder: SQLite database, media (default .moola/labelstudio/data)",
        "port": "port on 127.0.0.1 (0, the default: a free one)",
        "json": "print the address, token and pid as one JSON document",
    },
    dry="label.studio starts or stops a local Label Studio; `invoke label.status --offline` shows "
    "the batches without it",
)
@user_errors
def studio(c, stop=False, data_dir=".moola/labelstudio/data", port=0, json=False):
    """Start a local Label Studio (its own venv, SQLite, 127.0.0.1), or --stop it."""
    from moola_ops.labeling import server

    if stop:
        stopped = server.stop_local()
        if json:
            print_json({"stopped": stopped.pid if stopped else None})
        else:
            print(f"stopped Label Studio (pid {stopped.pid})" if stopped else "none was running")
        return
    running = server.load_state()
    if running is None:
        _say("starting Label Studio (about 10 s; the first start after install can take longer)")
        running = server.start_studio(data_dir, port=int(port))
        server.save_state(running)
    if json:
        print_json(running.to_dict())
        return
    print(f"Label Studio at {running.url} (pid {running.pid}, data {running.data_dir})")
    print(f"log in as {server.ADMIN}; API token in {server.state_file()} (mode 0600)")
    print("stop it with `invoke label.studio --stop`")


@task(
    help={
        "labeled": "labeled parquet(s) whose auto-labels to check, comma separated",
        "hosts": "hosts whose captured live windows to review (pulled first); shadow/live "
        "disagreements among them come first",
        "limit": "tasks in the batch, most instructive first (default 100)",
        "project": "Label Studio project title, created when absent (default 'Moola review')",
        "run": "run whose answers pre-annotate the tasks (default: runs/selected.json's)",
        "runs_dir": "runs folder (default runs)",
        "features": "also draw the 11 model features under the bars (new projects only)",
        "skip_labeled": "labeled parquet(s) whose windows count as reviewed: overlaps are left out",
        "no_pull": "use the capture cache as it is (do not pull from the hosts first)",
        "cache": "capture cache (default .moola/captures)",
        "inventory": "inventory file (default inventory/hosts.yaml or MOOLA_INVENTORY)",
        "state": STATE,
        **CONNECTION,
        "json": "print the result as one JSON document",
    },
    dry="label.export pulls captures, creates tasks in Label Studio and records the batch; "
    "`invoke label.status` shows the batches already sent",
)
@user_errors
def export(
    c,
    labeled="",
    hosts="",
    limit=100,
    project="Moola review",
    run="",
    runs_dir="runs",
    features=False,
    skip_labeled="",
    no_pull=False,
    cache=".moola/captures",
    inventory="",
    state=".moola/labeling",
    url="",
    token="",
    json=False,
):
    """Send the windows most worth reviewing to Label Studio, pre-annotated (one batch)."""
    from moola_ops.labeling import connect, export_batch

    client = connect(url, token)
    selected = []
    if hosts:
        from moola_ops.hosts.inventory import load_inventory

        selected = load_inventory(inventory or None).resolve(hosts)
    result = export_batch(
        client,
        labeled=_paths(labeled),
        hosts=selected,
        cache=cache,
        pull=not no_pull,
        run_id=run,
        runs_dir=runs_dir,
        limit=int(limit),
        project=project,
        with_features=features,
        skip_labeled=_paths(skip_labeled),
        state=state,
        say=_say,
    )
    if json:
        print_json(result.to_dict())
        return
    print(result.summary())
    print(f"review: {result.url}/projects/{result.project_id}/data")
    print(f"then:   invoke label.import --batch {result.batch}")


def _paths(value: str) -> list[str]:
    return [p.strip() for p in (value or "").split(",") if p.strip()]


@task(
    name="import",
    help={
        "batch": "batch id printed by `invoke label.export` (`invoke label.status` lists them)",
        "base": "labeled set to merge into (default: the newest one `label.import` wrote; none: "
        "the reviewed windows alone)",
        "out": "the NEW labeled parquet (default labeled-<batch>.parquet beside the base, or in "
        "data/); an existing file is never overwritten",
        "skip_invalid": "leave out annotations Moola cannot read instead of refusing the import",
        "state": STATE,
        **CONNECTION,
        "json": "print the result as one JSON document",
    },
    dry="label.import writes a new labeled set and records the import; `invoke label.status` "
    "shows each batch's finished reviews",
)
@user_errors
def import_(
    c,
    batch,
    base="",
    out="",
    skip_invalid=False,
    state=".moola/labeling",
    url="",
    token="",
    json=False,
):
    """Merge a batch's finished annotations into a new, validated labeled set file."""
    from moola_ops.labeling import connect, import_batch

    result = import_batch(
        connect(url, token),
        batch,
        base=base or None,
        out=out or None,
        skip_invalid=skip_invalid,
        state=state,
    )
    if json:
        print_json(result.to_dict())
        return
    for line in result.deleted + result.invalid:
        print(f"note: {line}")
    print(result.summary())
    print(
        f"train on it: data.source: file and data.path: {result.out} in the training config "
        "(docs/labeling.md)"
    )


@task(
    help={
        "offline": "do not ask Label Studio: show what the ledger recorded at each import",
        "state": STATE,
        **CONNECTION,
        "json": "print the figures as one JSON document",
    },
    dry=READS,  # the figures are not saved under --dry
)
@user_errors
def status(c, offline=False, state=".moola/labeling", url="", token="", json=False):
    """Per batch: tasks, done, accepted / edited / rejected (keeper rate), agreement, s/task."""
    from moola_ops.labeling import connect, label_status
    from moola_ops.labeling.status import COLUMNS, cell

    payload = label_status(
        None if offline else connect(url, token), state, save=not c.config.run.dry
    )
    if json:
        print_json(payload)
        return
    rows = payload["batches"]
    if not rows:
        print("no batches yet: send one with `invoke label.export`")
        return
    rows = [*rows, {**payload["total"], "batch": "all", "seconds_per_task": None}]
    if is_tty():
        from rich.table import Table

        table = Table(*(title for _key, title in COLUMNS))
        for row in rows:
            table.add_row(*(cell(row, key) for key, _title in COLUMNS))
        console().print(table)
    else:
        print("  ".join(title for _key, title in COLUMNS))
        for row in rows:
            print("  ".join(cell(row, key) for key, _title in COLUMNS))
    source = "live from Label Studio" if payload["live"] else "from the ledger (offline)"
    print(f"{source}; keeper rate = accepted as-is / done")


label = Collection("label", studio, export, import_, status)
EXPORTS = [label]
