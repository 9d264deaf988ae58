"""The seam between reviewed labels and the gate: two runs compared on reviewed windows that
neither of them trained on.

`reviewed_holdout(labeled_set, runs)` keeps the rows a person reviewed (`review_batch` set by
`invoke label.import`) whose bars are in no run's training split (a run's training windows are
its labeled set minus the val and test ids its predictions.json names; windows are matched by
their bars, so a renamed copy still counts as trained on). `compare_on_reviewed(candidate,
live, labeled_set)` scores both runs there and returns the paired difference candidate - live
with a bootstrap CI (moola_core.metrics.paired_difference), the figure a gate needs:

    from moola_ops.labeling.holdout import compare_on_reviewed
    verdict = compare_on_reviewed("cand-run", "live-run", "data/labeled-b....parquet")
    verdict["diff"]["span_iou"]   # {"value", "ci_low", "ci_high"}; verdict["n"] windows

torch, numpy and pandas load inside the functions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from moola_core.errors import MoolaError

METRICS = ("span_iou", "accuracy")


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
    for split in ("val", "test"):
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
    import torch

    from moola_core import metrics as M
    from moola_core.data.labeled import to_model_arrays
    from moola_core.train.runs import load_model

    holdout = reviewed_holdout(labeled_set, [candidate, live], runs_dir)
    if len(holdout) < 2:
        raise MoolaError(
            f"only {len(holdout)} reviewed window(s) of {labeled_set} are untouched by both "
            f"runs' training; review more windows (`invoke label.export`) before gating on them"
        )
    arrays = to_model_arrays(holdout)
    truth = {"label": arrays.label, "start": arrays.start, "end": arrays.end}
    x, valid = torch.from_numpy(arrays.x), torch.from_numpy(arrays.valid)
    preds = {}
    for name, run_id in (("candidate", candidate), ("live", live)):
        with torch.inference_mode():
            out = load_model(run_id, runs_dir).predict(x, valid)
        preds[name] = {k: v.numpy() for k, v in out.items()}
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
