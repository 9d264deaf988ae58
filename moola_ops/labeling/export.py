"""`invoke label.export`: choose the windows worth a reviewer's time and send them to Label
Studio as one batch of tasks, each with the selected run's pre-annotation.

gather (labeled parquet, captures pulled from hosts) -> drop exact duplicates -> drop windows
already reviewed or sharing bars with one -> pre-annotate -> order (disagreements, then least
confident) -> the first `limit` -> project (created with Moola's labeling config, or reused)
-> tasks imported -> the batch recorded in the ledger.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from moola_core.errors import MoolaError
from moola_ops.labeling import ledger
from moola_ops.labeling import tasks as T
from moola_ops.labeling import windows as W

DEFAULT_PROJECT = "Moola review"
DEFAULT_LIMIT = 100
SOURCE_RANK = {s: i for i, s in enumerate(W.SOURCES)}


@dataclass
class ExportResult:
    """What one export did."""

    batch: str
    url: str
    project_id: int
    project: str
    project_created: bool
    run_id: str
    tasks: int
    considered: int
    by_source: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)  # duplicate, reviewed, overlap, limit
    pulled: list[str] = field(default_factory=list)  # one line per host pulled
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        sources = ", ".join(f"{n} {s}" for s, n in self.by_source.items() if n) or "none"
        out = ", ".join(f"{n} {why}" for why, n in self.left_out.items() if n) or "none"
        verb = "created" if self.project_created else "reused"
        return (
            f"batch {self.batch}: {self.tasks} tasks ({sources}) in project {self.project_id} "
            f"'{self.project}' ({verb}) at {self.url}, pre-annotated by {self.run_id}; "
            f"{self.considered} windows considered, left out: {out}"
        )


def gather(
    labeled: list[str],
    hosts: list,
    cache: str | os.PathLike,
    *,
    pull: bool = True,
    result: ExportResult | None = None,
) -> W.Candidates:
    """The candidate windows of every source asked for (captures pulled first)."""
    parts = [W.from_labeled(path) for path in labeled]
    for host in hosts:
        if pull:
            from moola_ops.serving.captures_pull import pull_host

            pulled = pull_host(host, cache)
            if result is not None:
                result.pulled.append(pulled.summary())
        parts.append(W.from_captures(cache, host.name))
    return W.Candidates.concat(parts)


def choose(
    cands: W.Candidates,
    *,
    run_id: str,
    runs_dir: str | os.PathLike,
    limit: int,
    state: str | os.PathLike,
    skip_labeled: list[str] = (),
    result: ExportResult,
):
    """Drop duplicates and reviewed/overlapping windows, pre-annotate, order, take `limit`
    -> (chosen Candidates, their PreAnnotations, fingerprints)."""
    import numpy as np

    from moola_ops.labeling.preannotate import preannotate

    result.considered = len(cands)
    prints = W.fingerprints(cands.ohlc)
    keep: dict[str, int] = {}
    for i, fp in enumerate(prints):  # one copy of each window: the most telling source
        j = keep.get(fp)
        if j is None or SOURCE_RANK[cands.source[i]] < SOURCE_RANK[cands.source[j]]:
            keep[fp] = i
    unique = sorted(keep.values())
    result.left_out["duplicate"] = len(cands) - len(unique)
    seen = ledger.reviewed_fingerprints(state)
    fresh = [i for i in unique if prints[i] not in seen]
    result.left_out["reviewed"] = len(unique) - len(fresh)
    rows = ledger.reviewed_rows(state)
    for path in skip_labeled:
        other = W.from_labeled(path)
        rows = np.union1d(rows, W.row_hashes(other.ohlc).reshape(-1))
    overlap = W.overlapping(cands.ohlc[fresh], rows) if fresh else np.zeros(0, dtype=bool)
    result.left_out["overlap"] = int(overlap.sum())
    remaining = cands.take([i for i, o in zip(fresh, overlap, strict=True) if not o])
    remaining_prints = [prints[i] for i, o in zip(fresh, overlap, strict=True) if not o]
    if not len(remaining):
        return remaining, [], []
    started = time.monotonic()
    pre = preannotate(remaining.ohlc, run_id, runs_dir)
    result.seconds["preannotate"] = round(time.monotonic() - started, 2)
    W.disagreement_with_auto(remaining, pre)
    ranked = W.order(remaining, pre)[: max(0, int(limit))]
    result.left_out["limit"] = len(remaining) - len(ranked)
    return (
        remaining.take(ranked),
        [pre[i] for i in ranked],
        [remaining_prints[i] for i in ranked],
    )


def ensure_project(client, title: str, run_id: str, with_features: bool) -> tuple[dict, bool]:
    """The project named `title` (created with Moola's config when absent) -> (project, created).

    A reused project must hold Moola's controls."""
    found = client.projects(title)
    if len(found) > 1:
        ids = ", ".join(str(p["id"]) for p in found)
        raise MoolaError(
            f"{len(found)} Label Studio projects are titled '{title}' (ids {ids}); rename all "
            "but one or pass another --project"
        )
    created = not found
    if created:
        project = client.create_project(
            title,
            T.labeling_config(with_features),
            "Windows Moola asks you to review: mark the expansion span and choose the pattern, "
            "or choose reject. Written by `invoke label.export`.",
        )
    else:
        project = found[0]
        if not T.config_matches(project.get("label_config", "")):
            raise MoolaError(
                f"project {project['id']} '{title}' has a labeling config without Moola's "
                f"controls ({T.OBJECT}, {T.SPAN}, {T.PATTERN}); pass another --project"
            )
    return project, created


def export_batch(
    client,
    *,
    labeled: list[str] = (),
    hosts: list = (),
    cache: str | os.PathLike = ".moola/captures",
    pull: bool = True,
    run_id: str = "",
    runs_dir: str | os.PathLike = "runs",
    limit: int = DEFAULT_LIMIT,
    project: str = DEFAULT_PROJECT,
    with_features: bool = False,
    skip_labeled: list[str] = (),
    state: str | os.PathLike = ledger.DEFAULT_STATE,
    say=None,
) -> ExportResult:
    """Export one batch; see the module docstring. `say(text)` hears progress."""
    from moola_ops.labeling.preannotate import selected_run

    say = say or (lambda _text: None)
    if not labeled and not hosts:
        raise MoolaError("nothing to export from: pass --labeled FILE and/or --hosts NAMES")
    if int(limit) < 1:
        raise MoolaError(f"--limit {limit} must be at least 1")
    run_id = selected_run(runs_dir, run_id)
    started = time.monotonic()
    client.whoami()  # Label Studio up and the token right, before any work
    result = ExportResult("", client.url, 0, project, False, run_id, 0, 0)
    result.seconds["connect"] = round(time.monotonic() - started, 2)
    mark = time.monotonic()
    cands = gather(list(labeled), list(hosts), cache, pull=pull, result=result)
    for line in result.pulled:
        say(f"pulled {line}")
    W.require_any(cands, " and ".join([*map(str, labeled), *(h.name for h in hosts)]))
    result.seconds["gather"] = round(time.monotonic() - mark, 2)
    say(f"{len(cands)} windows gathered; choosing and pre-annotating with {run_id}")
    chosen, pre, prints = choose(
        cands,
        run_id=run_id,
        runs_dir=runs_dir,
        limit=limit,
        state=state,
        skip_labeled=list(skip_labeled),
        result=result,
    )
    if not len(chosen):
        raise MoolaError(
            f"all {result.considered} windows were left out (duplicates {result.left_out['duplicate']}, "
            f"already reviewed {result.left_out['reviewed']}, sharing bars with a reviewed "
            f"window {result.left_out['overlap']}); nothing to send"
        )
    mark = time.monotonic()
    proj, result.project_created = ensure_project(client, project, run_id, with_features)
    result.project_id = int(proj["id"])
    batch_id = ledger.new_batch_id(state)
    result.batch = batch_id
    features = _features(chosen.ohlc) if with_features else None
    payloads, records = [], []
    for i in range(len(chosen)):
        key = f"{batch_id}/{i}"
        why = W.reason(chosen.source[i], chosen.origin[i], pre[i])
        payloads.append(
            T.task_payload(
                key=key,
                window_id=chosen.window_id[i],
                batch=batch_id,
                source=chosen.source[i],
                reason=why,
                ohlc=chosen.ohlc[i],
                pre=pre[i],
                model_version=run_id,
                features=None if features is None else features[i],
            )
        )
        records.append(
            {
                "key": key,
                "window_id": chosen.window_id[i],
                "fingerprint": prints[i],
                "source": chosen.source[i],
                "reason": why,
                "origin": chosen.origin[i],
                "start_ts": chosen.start_ts[i],
                "end_ts": chosen.end_ts[i],
                "pre": pre[i].to_dict(),
            }
        )
    result.seconds["build"] = round(time.monotonic() - mark, 2)
    mark = time.monotonic()
    batch = {
        "batch": batch_id,
        "created_at": ledger.now_iso(),
        "url": client.url,
        "project_id": result.project_id,
        "project": project,
        "run_id": run_id,
        "runs_dir": str(Path(runs_dir)),
        "sources": sorted({*map(str, labeled), *(f"host:{h.name}" for h in hosts)}),
        "tasks": records,
        "imports": [],
    }
    task_ids: list[int] = []
    try:
        client.import_tasks(
            result.project_id,
            payloads,
            progress=lambda done, total: say(f"imported {done} of {total} tasks"),
            created=task_ids,
        )
    finally:
        # whatever Label Studio created is recorded, so nothing is sent or counted twice
        if task_ids:
            for record, task_id in zip(records, task_ids, strict=False):
                record["task_id"] = task_id
            batch["tasks"] = records[: len(task_ids)]
            ledger.save_batch(batch, chosen.ohlc[: len(task_ids)], state)
    # Label Studio shows the predictions of the project's model version as pre-annotations
    # (it accepts a version only once predictions of it exist)
    client.update_project(result.project_id, model_version=run_id)
    result.seconds["import"] = round(time.monotonic() - mark, 2)
    result.tasks = len(task_ids)
    result.by_source = {s: chosen.source.count(s) for s in W.SOURCES}
    result.seconds["total"] = round(time.monotonic() - started, 2)
    return result


def _features(ohlc):
    """The 11 model features per bar, for the optional feature channels."""
    import numpy as np
    import torch

    from moola_core.runtime.hostfeatures import compute_features

    values, valid = compute_features(torch.from_numpy(np.ascontiguousarray(ohlc)))
    out = values.numpy().astype(np.float64)
    out[~valid.numpy()] = 0.0
    return out
