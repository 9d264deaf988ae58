"""`invoke label status`: per batch, how far the review got and what it found.

Live from Label Studio when it answers (one export per project); otherwise, with `offline`,
from what the ledger recorded at each import. The figures are saved in the ledger's
status.json, which the HTML report's labeling section reads (the report never needs Label
Studio running).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from moola_ops.labeling import ledger
from moola_ops.labeling.review import TaskReview, review_tasks, summarize
from moola_ops.labeling.tasks import Answer

COLUMNS = (
    ("batch", "batch"),
    ("tasks", "tasks"),
    ("done", "done"),
    ("accepted", "accepted"),
    ("edited", "edited"),
    ("rejected", "rejected"),
    ("keeper_rate", "keeper rate"),
    ("pending", "pending"),
    ("skipped", "skipped"),
    ("deleted", "deleted"),
    ("agreement", "agreement"),
    ("seconds_per_task", "s/task"),
    ("imported", "imported"),
)


def label_status(
    client=None, state: str | os.PathLike = ledger.DEFAULT_STATE, *, save: bool = True
) -> dict:
    """{"live": bool, "batches": [figures per batch], "total": figures over all}; saved unless
    `save=False` (Invoke's --dry: the ledger is read, nothing written)."""
    batches = ledger.list_batches(state)
    rows = []
    live = client is not None
    if live:
        exports: dict[int, dict[int, dict]] = {}
        users = client.users()
        for batch in batches:
            pid = int(batch["project_id"])
            if pid not in exports:
                from moola_ops.labeling.studio import NotFound

                try:
                    exports[pid] = {int(t["id"]): t for t in client.export_tasks(pid)}
                except NotFound:
                    exports[pid] = {}
            rows.append(summarize(batch, review_tasks(batch, exports[pid], users)))
    else:
        rows = [summarize(batch, recorded_reviews(batch)) for batch in batches]
    payload = {"live": live, "at": ledger.now_iso(), "batches": rows, "total": total(rows)}
    if save:
        ledger.write_json(status_path(state), payload)
    return payload


def recorded_reviews(batch: dict) -> list[TaskReview]:
    """The batch's tasks as its imports recorded them (the rest count as pending)."""
    seen = {}
    for record in batch.get("imports", []):
        for raw in record.get("reviews", []):
            answer = raw.pop("answer", None)
            review = TaskReview(**raw)
            review.answer = None if answer is None else Answer(**answer)
            seen[review.task_id] = review
    return [
        seen.get(int(t["task_id"]))
        or TaskReview(t["key"], int(t["task_id"]), t["window_id"], t["source"], "pending")
        for t in batch["tasks"]
    ]


def total(rows: list[dict]) -> dict:
    """The figures over every batch (rates weighted by tasks)."""
    keys = ("tasks", "done", "pending", "skipped", "deleted", "invalid", "accepted", "edited")
    out = {k: sum(r[k] for r in rows) for k in (*keys, "rejected", "imported", "double_reviewed")}
    out["keeper_rate"] = round(out["accepted"] / out["done"], 4) if out["done"] else None
    agreeing = sum((r["agreement"] or 0) * r["double_reviewed"] for r in rows)
    out["agreement"] = (
        round(agreeing / out["double_reviewed"], 4) if out["double_reviewed"] else None
    )
    return out


def status_path(state: str | os.PathLike = ledger.DEFAULT_STATE) -> Path:
    return Path(state) / "status.json"


def saved_status(state: str | os.PathLike = ledger.DEFAULT_STATE) -> dict | None:
    """The last saved figures, or None."""
    try:
        return json.loads(status_path(state).read_text())
    except (OSError, ValueError):
        return None


def cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key in ("keeper_rate", "agreement"):
        return f"{100 * value:.0f}%"
    return str(value)
