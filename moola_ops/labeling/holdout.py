"""The seam between reviewed labels and the gate: two runs compared on reviewed windows that
neither of them trained on.

`reviewed_holdout(labeled_set, runs)` keeps the rows a person reviewed (`review_batch` set by
`invoke label.import`) whose bars are in no run's training windows (a run's training windows are
its labeled set minus the windows its predictions.json names as held out: the sealed
calibration split, which the final model never trained on, or a pre-#22 run's val and test;
windows are matched by their bars, so a renamed copy still counts as trained on).
`compare_on_reviewed(candidate, live, labeled_set)` scores both runs there and returns the
paired difference candidate - live with a bootstrap CI (moola_core.metrics.paired_difference):

    from moola_ops.labeling.holdout import compare_on_reviewed
    verdict = compare_on_reviewed("cand-run", "live-run", "data/labeled-b....parquet")
    verdict["diff"]["span_iou"]   # {"value", "ci_low", "ci_high"}; verdict["n"] windows

The gate (`invoke select`, moola_core.train.gate) uses the same windows: `reviewed_gate(...)`
finds the reviewed set (given, or the labeled file the candidates trained on when it holds
reviewed rows) and the live release's run (given, or the newest release the deployment log shows
switched and checked), and gives select_run the per-window Evidence of each variant and of the
live run there (`reviewed_evidence`).

torch, numpy and pandas load inside the functions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from moola_core.errors import MoolaError

METRICS = ("span_iou", "accuracy")
HELD_OUT = ("calibration_split", "val", "test")  # predictions.json splits no weight trained on


def trained_fingerprints(run_id: str, runs_dir: str | os.PathLike = "runs") -> set[str]:
    """Fingerprints of the windows a run trained on (its set minus its val and test windows)."""
    import numpy as np
    import yaml

    from moola_core.data.labeled import as_ohlc
    from moola_core.train.config import config_from_dict
    from moola_core.train.data import load_labeled_frame
    from moola_core.train.runs import PREDICTIONS, run_dir
    from moola_ops.labeling.windows import fingerprints

    path = run_dir(run_id, runs_dir)
    config = config_from_dict(yaml.safe_load((path / "config.yaml").read_text()))
    frame = load_labeled_frame(config)
    held = set()
    predictions = json.loads((path / PREDICTIONS).read_text())
    for split in HELD_OUT:
        held.update(predictions.get(split, {}).get("window_id", []))
    train = frame[~frame["window_id"].astype(str).isin(held)]
    if not len(train):
        return set()
    return set(fingerprints(np.stack([as_ohlc(c) for c in train["features"]])))


def reviewed_holdout(labeled_set: str | os.PathLike, run_ids: list[str], runs_dir="runs"):
    """The reviewed rows of `labeled_set` that none of `run_ids` trained on."""
    import numpy as np

    from moola_core.data.labeled import as_ohlc, read_labeled
    from moola_ops.labeling.windows import fingerprints

    frame = read_labeled(labeled_set)
    if "review_batch" not in frame.columns:
        raise MoolaError(
            f"{labeled_set} holds no reviewed windows (no review_batch column); pass a set "
            "written by `invoke label.import`"
        )
    reviewed = frame[frame["review_batch"].notna()].reset_index(drop=True)
    trained = set().union(*(trained_fingerprints(r, runs_dir) for r in run_ids))
    if not len(reviewed):
        return reviewed
    prints = fingerprints(np.stack([as_ohlc(c) for c in reviewed["features"]]))
    keep = np.array([fp not in trained for fp in prints], dtype=bool)
    return reviewed[keep].reset_index(drop=True)


def _predict_holdout(run_ids: list[str], labeled_set, runs_dir):
    """(the reviewed windows none of `run_ids` trained on, their model arrays, truth with
    overlap groups, {run_id: predictions}); fewer than two windows is an error."""
    import torch

    from moola_core.data.labeled import sharing_pairs, to_model_arrays
    from moola_core.data.splits import overlap_groups
    from moola_core.train.runs import load_model

    holdout = reviewed_holdout(labeled_set, run_ids, runs_dir)
    if len(holdout) < 2:
        raise MoolaError(
            f"only {len(holdout)} reviewed window(s) of {labeled_set} are untouched by the "
            "runs' training; review more windows (`invoke label.export`) before gating on them"
        )
    arrays = to_model_arrays(holdout)
    truth = {
        "label": arrays.label,
        "start": arrays.start,
        "end": arrays.end,
        "group": overlap_groups(len(holdout), sharing_pairs(holdout).keys()),
    }
    x, valid = torch.from_numpy(arrays.x), torch.from_numpy(arrays.valid)
    preds = {}
    for run_id in dict.fromkeys(run_ids):
        with torch.inference_mode():
            out = load_model(run_id, runs_dir).predict(x, valid)
        preds[run_id] = {k: v.numpy() for k, v in out.items()}
    return holdout, arrays, truth, preds


def compare_on_reviewed(
    candidate: str,
    live: str,
    labeled_set: str | os.PathLike,
    runs_dir: str | os.PathLike = "runs",
    n_boot: int = 1000,
) -> dict:
    """{"n", "candidate": {metric: value}, "live": {...}, "diff": {metric: {value, ci_low,
    ci_high}}} on the reviewed windows neither run trained on."""
    import numpy as np

    from moola_core import metrics as M

    holdout, arrays, truth, by_run = _predict_holdout([candidate, live], labeled_set, runs_dir)
    preds = {"candidate": by_run[candidate], "live": by_run[live]}
    result = {"n": len(holdout), "set": str(Path(labeled_set)), "candidate": {}, "live": {}}
    result["diff"] = {}
    for metric in METRICS:
        for name in ("candidate", "live"):
            result[name][metric] = round(float(M.point_metrics(preds[name], truth)[metric]), 4)
        diff = M.paired_difference(
            [preds["candidate"]], [preds["live"]], truth, metric, n_boot=n_boot
        )
        result["diff"][metric] = {k: round(float(v), 4) for k, v in diff.items()}
    result["windows"] = [str(w) for w in np.asarray(arrays.window_id)]
    return result


def reviewed_evidence(
    candidate_runs: list[str],
    live: str,
    labeled_set: str | os.PathLike,
    runs_dir: str | os.PathLike = "runs",
    metric: str = "span_iou",
):
    """(the candidate's Evidence, the live run's Evidence) on the reviewed windows that none
    of `candidate_runs` (a variant's seeds, pooled) and `live` trained on."""
    import numpy as np

    from moola_core.train.gate import REVIEWED_WHERE, Evidence, per_window

    _, arrays, truth, preds = _predict_holdout([*candidate_runs, live], labeled_set, runs_dir)
    ids = tuple(str(w) for w in arrays.window_id)

    def evidence(name: str, values, seeds=()) -> Evidence:
        return Evidence(name, ids, truth["group"], values, [], seeds, REVIEWED_WHERE)

    mine = np.mean([per_window(preds[r], truth, metric) for r in candidate_runs], axis=0)
    return (
        evidence(",".join(candidate_runs), mine),
        evidence("live", per_window(preds[live], truth, metric)),
    )


def live_run(runs_dir: str | os.PathLike = "runs", log: str | os.PathLike | None = None):
    """(the run id of the release the deployment log shows live, its bundle version), or
    (None, None): the newest release switched and checked by a deploy or rollback, and the
    run its bundle was built from (the bundle's build line)."""
    from moola_ops.log import steps
    from moola_ops.log.journal import read_events

    events = read_events(log)
    version = None
    for e in reversed(events):
        if (
            e.get("phase") in (steps.DEPLOY, steps.ROLLBACK)
            and e.get("step") in (steps.POST_CHECK, steps.POST_CHECK_RUNTIME)
            and e.get("status") == "ok"
            and e.get("bundle")
        ):
            version = e["bundle"]
            break
    if version is None:
        return None, None
    for e in reversed(events):
        detail = e.get("detail") or {}
        if e.get("phase") == steps.BUNDLE and e.get("bundle") == version and detail.get("run_id"):
            return str(detail["run_id"]), version
    return None, version


def reviewed_gate(
    runs_dir: str | os.PathLike = "runs",
    *,
    reviewed: str | os.PathLike | None = None,
    live: str | None = None,
    log: str | os.PathLike | None = None,
    metric: str = "span_iou",
):
    """What `select_run(reviewed=...)` takes: run_ids -> (Evidence, Evidence) on the reviewed
    windows, or the sentence saying why they are not checked; None when there is no reviewed
    set at all (neither given nor the labeled file the candidates trained on)."""
    from moola_core.train.runs import run_dir

    if reviewed is not None and not Path(reviewed).is_file():
        raise MoolaError(f"--reviewed {reviewed}: no such labeled set")
    version = None
    if live is None:
        live, version = live_run(runs_dir, log)
    elif not (Path(runs_dir) / live).is_dir():
        raise MoolaError(f"--live {live}: no such run in {runs_dir}")

    def for_variant(run_ids: list[str]):
        path = reviewed or _reviewed_training_set(run_dir(run_ids[0], runs_dir))
        if path is None:
            return "the labeled set these runs trained on holds no reviewed windows"
        if live is None:
            if version:
                return (
                    f"the live release {version} has no bundle build line naming its run in "
                    "the deployment log; pass --live RUN"
                )
            return "no release is live (no checked deploy in the deployment log); pass --live RUN"
        if not (Path(runs_dir) / live).is_dir():
            return f"the live release's run {live} is not in {runs_dir}; copy it there"
        try:
            return reviewed_evidence(run_ids, live, path, runs_dir, metric)
        except MoolaError as exc:
            return str(exc)

    if reviewed is None and not any(
        _reviewed_training_set(p) for p in Path(runs_dir).iterdir() if (p / "config.yaml").is_file()
    ):
        return None
    return for_variant


def _reviewed_training_set(run_path: Path) -> str | None:
    """The labeled file a run trained on, when it holds reviewed rows; else None."""
    import pyarrow.parquet as pq
    import yaml

    try:
        config = yaml.safe_load((run_path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    data = config.get("data") or {}
    path = data.get("path")
    if data.get("source") != "file" or not path or not Path(path).is_file():
        return None
    try:
        if "review_batch" not in pq.read_schema(path).names:
            return None
    except Exception:  # noqa: BLE001 - not a parquet file: no reviewed rows to find
        return None
    return str(path)
