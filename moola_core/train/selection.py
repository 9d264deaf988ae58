"""Phase 2, model selection: choose the run to ship on a held-out metric and say why.

The choice is made on the validation split only: first the variant with the best mean over its
seeds (one lucky seed on ~35 windows proves little), then that variant's best seed. The test
split is never looked at to choose; its figure is reported next to the heuristic's as the
honest estimate of what the chosen run does on unseen windows.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from moola_core import metrics as M
from moola_core.errors import MoolaError
from moola_core.train import runs
from moola_core.train.compare import compare_runs


def _ci(entry: dict) -> list[float]:
    return [round(entry["ci_low"], 4), round(entry["ci_high"], 4)]


def select_run(
    runs_dir: str | Path = "runs",
    primary_metric: str = "span_iou",
    *,
    write: bool = True,
    n_boot: int = 1000,
) -> dict:
    """Pick the run to ship by `primary_metric` on validation; write runs/selected.json.

    Returns the record written: run_id, variant, seed, metric, split, value, ci, variant_mean,
    test (value and ci), heuristic_test, beats_heuristic, reason, candidates, selected_at.
    """
    if primary_metric not in M.METRICS:
        raise MoolaError(
            f"unknown metric {primary_metric!r}; choose one of {', '.join(M.METRICS)}."
        )
    sign = -1.0 if primary_metric in M.LOWER_IS_BETTER else 1.0
    comparison = compare_runs(runs_dir, split="val", n_boot=n_boot)
    variants = comparison.models()
    if not variants:
        raise MoolaError(
            f"no run in {runs_dir} has validation predictions; train with `invoke train`."
        )
    variants.sort(key=lambda r: (-sign * r["metrics"][primary_metric]["value"], r["variant"]))
    best = variants[0]
    per_seed = best["metrics"][primary_metric]["per_set"]
    pick = max(range(len(per_seed)), key=lambda i: (sign * per_seed[i], -i))
    run = runs.load_run(best["run_ids"][pick], runs_dir)

    val_entry = run.metrics["val"][primary_metric]
    test_entry = run.metrics["test"][primary_metric]
    heuristic = run.metrics.get("baselines", {}).get("heuristic", {}).get("test", {})
    heuristic_entry = heuristic.get(primary_metric)
    mean_entry = best["metrics"][primary_metric]

    better = "higher" if sign > 0 else "lower"
    reason = (
        f"{best['variant']} has the best mean validation {primary_metric} over its "
        f"{len(per_seed)} seed(s), {M.format_metric(mean_entry)} ({better} is better)"
    )
    if len(variants) > 1:
        runner = variants[1]
        reason += (
            f"; runner-up {runner['variant']} {M.format_metric(runner['metrics'][primary_metric])}"
        )
        if (
            sign * (mean_entry["ci_low"] if sign > 0 else mean_entry["ci_high"])
            <= sign * (runner["metrics"][primary_metric]["ci_high" if sign > 0 else "ci_low"])
        ):
            reason += " (the intervals overlap, so the lead is not certain)"
    reason += (
        f". Seed {run.seed} ({run.run_id}) is that variant's best on validation: "
        f"{M.format_metric(val_entry)}. On the untouched test split it scores "
        f"{M.format_metric(test_entry)}"
    )
    beats = None
    if heuristic_entry:
        if sign > 0:
            beats = test_entry["ci_low"] > heuristic_entry["ci_high"]
        else:
            beats = test_entry["ci_high"] < heuristic_entry["ci_low"]
        reason += (
            f" against the heuristic's {M.format_metric(heuristic_entry)}"
            f" ({'intervals separate' if beats else 'intervals overlap'})"
        )
    reason += "."

    record = {
        "run_id": run.run_id,
        "variant": best["variant"],
        "seed": run.seed,
        "metric": primary_metric,
        "split": "val",
        "value": round(val_entry["value"], 4),
        "ci": _ci(val_entry),
        "variant_mean": {"value": round(mean_entry["value"], 4), "ci": _ci(mean_entry)},
        "test": {"value": round(test_entry["value"], 4), "ci": _ci(test_entry)},
        "heuristic_test": (
            {"value": round(heuristic_entry["value"], 4), "ci": _ci(heuristic_entry)}
            if heuristic_entry
            else None
        ),
        "beats_heuristic": beats,
        "reason": reason,
        "candidates": {
            "runs": sum(len(v["run_ids"]) for v in variants),
            "variants": [v["variant"] for v in variants],
        },
        "selected_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if write:
        runs.write_json(Path(runs_dir) / runs.SELECTED, record)
    return record
