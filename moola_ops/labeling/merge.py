"""`invoke label.import`: a batch's finished annotations -> a NEW labeled set file.

The reviewed windows become rows of the labeled set's original schema (window_id, label,
expansion_start, expansion_end, features[, start_ts, end_ts]) plus provenance columns
(`REVIEW_COLUMNS`: batch, source, verdict, reviewer, time, seconds, the pre-annotation judged
against, reviewer agreement). They are merged into the base set: a reviewed window replaces the
base row with its id or its bars (the auto-label it checked), a rejected one removes it. The
merged set must pass the same validator as `invoke data.validate` (windows that share bars are
counted; `data.splits` keeps each such group in one split when a run trains on the set, as for
every set); only then is the new file written, beside never over the base. The ledger then records which tasks were merged,
so importing the same batch again merges nothing twice.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from moola_core.errors import MoolaError
from moola_ops.labeling import ledger
from moola_ops.labeling.review import TaskReview, review_tasks, summarize

REVIEW_COLUMNS = (
    "review_batch",
    "review_source",
    "review_verdict",
    "reviewer",
    "reviewed_at",
    "review_seconds",
    "review_agreement",
    "pre_label",
    "pre_start",
    "pre_end",
    "pre_score",
)


@dataclass
class ImportResult:
    """What one import did."""

    batch: str
    out: str
    base: str | None
    rows: int  # windows in the new set
    verdicts: dict[str, int] = field(default_factory=dict)  # of the tasks merged now
    replaced: int = 0  # base rows a reviewed window replaced
    removed: int = 0  # base rows a rejection removed
    pending: int = 0
    skipped: int = 0
    already: int = 0  # tasks merged by an earlier import of this batch
    deleted: list[str] = field(default_factory=list)  # one sentence each
    invalid: list[str] = field(default_factory=list)  # left out with --skip-invalid
    sharing: int = 0  # pairs of windows that share bars (kept in one split when training)
    status: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        v = self.verdicts
        base = (
            f"{self.base} ({self.replaced} replaced, {self.removed} removed)"
            if self.base
            else "no base set"
        )
        return (
            f"batch {self.batch}: merged {v.get('accepted', 0)} accepted, {v.get('edited', 0)} "
            f"edited, {v.get('rejected', 0)} rejected into {self.out} ({self.rows} windows; "
            f"base {base}); {self.sharing} pairs of windows share bars (training keeps each "
            "pair in one split); "
            f"{self.pending} pending, {self.skipped} skipped, {len(self.deleted)} deleted, "
            f"{self.already} imported before"
        )


def fetch_reviews(client, batch: dict) -> list[TaskReview]:
    """The batch's tasks as Label Studio holds them now."""
    from moola_ops.labeling.studio import NotFound

    try:
        client.project(batch["project_id"])
    except NotFound:
        raise MoolaError(
            f"project {batch['project_id']} of batch {batch['batch']} is gone from Label "
            f"Studio at {client.url}; nothing was imported"
        ) from None
    exported = {int(t["id"]): t for t in client.export_tasks(batch["project_id"])}
    return review_tasks(batch, exported, client.users())


def default_out(base: str | None, batch: str, imported_before: int = 0) -> Path:
    """labeled-<batch>.parquet beside the base (or in data/); -2, -3... for later imports."""
    folder = Path(base).parent if base else Path("data")
    suffix = f"-{imported_before + 1}" if imported_before else ""
    return folder / f"labeled-{batch}{suffix}.parquet"


def import_batch(
    client,
    batch_id: str,
    *,
    base: str | None = None,
    out: str | None = None,
    skip_invalid: bool = False,
    state: str | os.PathLike = ledger.DEFAULT_STATE,
) -> ImportResult:
    """Import one batch; see the module docstring. Nothing is written unless all is well."""
    started = time.monotonic()
    batch = ledger.load_batch(batch_id, state)
    base = base or ledger.latest_output(state)
    reviews = fetch_reviews(client, batch)
    seconds = {"fetch": round(time.monotonic() - started, 2)}
    done_before = {t for record in batch["imports"] for t in record["task_ids"]}
    fresh = [r for r in reviews if r.task_id not in done_before]
    result = ImportResult(batch_id, "", base, 0)
    result.already = len(reviews) - len(fresh)
    result.pending = sum(r.state == "pending" for r in fresh)
    result.skipped = sum(r.state == "skipped" for r in fresh)
    result.deleted = [
        f"task {r.task_id} (window {r.window_id}) was deleted in Label Studio; it is left out"
        for r in fresh
        if r.state == "deleted"
    ]
    invalid = [r.sentence(batch["url"], batch["project_id"]) for r in fresh if r.state == "invalid"]
    if invalid and not skip_invalid:
        shown = "; ".join(invalid[:5]) + (
            f"; and {len(invalid) - 5} more" if len(invalid) > 5 else ""
        )
        raise MoolaError(
            f"{len(invalid)} annotation(s) cannot be read, nothing was written: {shown}"
        )
    result.invalid = invalid
    done = [r for r in fresh if r.state == "done"]
    if not done:
        where = f" (merged before into {batch['imports'][-1]['out']})" if batch["imports"] else ""
        raise MoolaError(
            f"batch {batch_id} has no newly reviewed task to import: {result.pending} pending, "
            f"{result.skipped} skipped, {len(result.deleted)} deleted, {result.already} "
            f"imported before{where}; nothing was written"
        )
    out_path = Path(out) if out else default_out(base, batch_id, len(batch["imports"]))
    result.out = str(out_path)
    if out_path.exists():
        raise MoolaError(
            f"{out_path} exists; Moola never overwrites a labeled set: pass another --out"
        )
    if base and Path(base).resolve() == out_path.resolve():
        raise MoolaError(
            "--out names the base set; the import writes a new file, pass another --out"
        )
    mark = time.monotonic()
    merged = merge(batch, done, base, result, state)
    seconds["merge"] = round(time.monotonic() - mark, 2)
    mark = time.monotonic()
    check(merged, result)
    seconds["validate"] = round(time.monotonic() - mark, 2)
    mark = time.monotonic()
    write(merged, out_path)
    seconds["write"] = round(time.monotonic() - mark, 2)
    result.rows = len(merged)
    result.verdicts = {
        v: sum(r.verdict == v for r in done) for v in ("accepted", "edited", "rejected")
    }
    batch["imports"].append(
        {
            "at": ledger.now_iso(),
            "out": str(out_path),
            "base": base,
            "rows": len(merged),
            "task_ids": [r.task_id for r in done],
            "verdicts": result.verdicts,
            "reviews": [r.to_dict() for r in done],
        }
    )
    ledger.update_batch(batch, state)
    result.status = summarize(batch, reviews)
    seconds["total"] = round(time.monotonic() - started, 2)
    result.seconds = seconds
    return result


def merge(batch: dict, done: list[TaskReview], base: str | None, result: ImportResult, state):
    """The new labeled DataFrame: base rows not replaced or rejected, then the reviewed rows."""
    import numpy as np
    import pandas as pd

    from moola_core.data.labeled import as_ohlc, read_labeled
    from moola_ops.labeling.windows import fingerprints

    ohlc = ledger.load_windows(batch["batch"], state)
    position = {t["key"]: i for i, t in enumerate(batch["tasks"])}
    records = {t["key"]: t for t in batch["tasks"]}
    frame = read_labeled(base) if base else None
    # a reviewed window replaces the base row holding the same bars (the auto-label it
    # checked, whatever its id); a rejected one removes it
    verdict_of = {records[r.key]["fingerprint"]: r.verdict for r in done}
    if frame is not None and len(frame):
        base_prints = fingerprints(np.stack([as_ohlc(c) for c in frame["features"]]))
        hit = np.array([fp in verdict_of for fp in base_prints], dtype=bool)
        removed = np.array([verdict_of.get(fp) == "rejected" for fp in base_prints], dtype=bool)
        result.removed = int(removed.sum())
        result.replaced = int((hit & ~removed).sum())
        frame = frame[~hit].reset_index(drop=True)
    taken = set() if frame is None else {str(w) for w in frame["window_id"]}
    rows = []
    for r in done:
        if r.verdict == "rejected":
            continue
        record = records[r.key]
        window_id = str(record["window_id"])
        if window_id in taken:  # a different window under the same id: keep both, apart
            window_id = f"{window_id}~{record['fingerprint'][:8]}"
        taken.add(window_id)
        pre = record["pre"]
        rows.append(
            {
                "window_id": window_id,
                "label": r.answer.label,
                "expansion_start": int(r.answer.start),
                "expansion_end": int(r.answer.end),
                "features": ohlc[position[r.key]],
                "start_ts": record.get("start_ts"),
                "end_ts": record.get("end_ts"),
                "review_batch": batch["batch"],
                "review_source": record["source"],
                "review_verdict": r.verdict,
                "reviewer": r.reviewer,
                "reviewed_at": r.reviewed_at,
                "review_seconds": r.seconds,
                "review_agreement": None if r.agree is None else float(r.agree),
                "pre_label": pre["label"],
                "pre_start": int(pre["start"]),
                "pre_end": int(pre["end"]),
                "pre_score": float(pre["score"]),
            }
        )
    reviewed = pd.DataFrame(rows)
    with_time = (frame is not None and "start_ts" in frame.columns) or any(
        row["start_ts"] for row in rows
    )
    if len(reviewed):
        if with_time:
            for col in ("start_ts", "end_ts"):
                reviewed[col] = pd.to_datetime(reviewed[col], utc=True)
        else:
            reviewed = reviewed.drop(columns=["start_ts", "end_ts"])
    if frame is None or not len(frame):
        merged = reviewed
    else:
        for col in REVIEW_COLUMNS:
            if col not in frame.columns:
                frame[col] = None
        merged = pd.concat([frame, reviewed], ignore_index=True) if len(reviewed) else frame
    if not len(merged):
        raise MoolaError(
            f"batch {batch['batch']}: every reviewed window was rejected and there is no base "
            "set; nothing was written (pass --base FILE to remove rejected windows from it)"
        )
    for col in ("review_seconds", "review_agreement", "pre_score"):
        if col in merged.columns:
            merged[col] = pd.to_numeric(merged[col], errors="coerce")
    for col in ("pre_start", "pre_end"):
        if col in merged.columns:
            merged[col] = pd.array(merged[col], dtype="Int64")
    return merged


def check(merged, result: ImportResult) -> None:
    """The data.validate validator; one sentence on failure. Windows that share bars are
    counted (validation warns about them; the splitter keeps each such group in one split)."""
    from moola_core.data.labeled import validate_labeled
    from moola_core.data.problems import errors_only

    problems = validate_labeled(merged)
    errors = errors_only(problems)
    if errors:
        shown = "; ".join(str(p) for p in errors[:3])
        raise MoolaError(
            f"the merged set would not pass `invoke data.validate` ({len(errors)} error(s): "
            f"{shown}); nothing was written"
        )
    result.sharing = len(problems) - len(errors)


def write(merged, out: Path) -> None:
    """Write the new set atomically (a reader never sees half a file)."""
    from moola_core.data.labeled import write_labeled

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        write_labeled(merged, tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
