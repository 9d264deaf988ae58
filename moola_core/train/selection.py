"""Phase 2, model selection: choose the run to ship on a held-out metric and say why.

The choice is made on the validation split only: first the variant with the best mean over its
seeds (one lucky seed on ~35 windows proves little), then that variant's best seed. The test
split is never looked at to choose; its figure is reported next to the heuristic's as the
honest estimate of what the chosen run does on unseen windows.

Then the quality gate (moola_core.train.gate) is evaluated for every candidate run and written
into its metrics.json, so any bundle built from any of them carries its verdict; the chosen
run's verdict (and a person's override of a failing one) also goes into runs/selected.json.
"""

from __future__ import annotations

import datetime as dt
import json
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
    override: str | None = None,
    by: str | None = None,
) -> dict:
    """Pick the run to ship by `primary_metric` on validation; write runs/selected.json.

    Returns the record written: run_id, variant, seed, metric, split, value, ci, variant_mean,
    test (value and ci), heuristic_test, beats_heuristic, gate, reason, candidates,
    selected_at. `override` (a reason) with `by` (who) lets a run that failed the gate ship:
    it is recorded in `gate["override"]` of the record and of the run's metrics.json.
    """
    if override is not None and not override.strip():
        raise MoolaError('--override needs a reason, e.g. --override "hotfix, approved by X".')
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

    gates = _gate_candidates(runs_dir, variants, primary_metric, n_boot, write)
    gate = gates[run.run_id]
    if not gate["passed"] and override:
        gate["override"] = {
            "reason": " ".join(override.split()),
            "by": by or "unknown",
            "at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if write:
            _store_gate(run, gate)
    reason += " " + gate["summary"][0].upper() + gate["summary"][1:] + "."
    if gate.get("override"):
        reason += f" Overridden by {gate['override']['by']}: {gate['override']['reason']}."

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
        "gate": gate,
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


def _store_gate(run: runs.Run, gate: dict) -> None:
    """Write the gate verdict into the run's metrics.json (what a bundle's manifest carries)."""
    metrics = json.loads((run.path / runs.METRICS).read_text())
    metrics["gate"] = gate
    runs.write_json(run.path / runs.METRICS, metrics)


def _gate_candidates(runs_dir, variants, metric: str, n_boot: int, write: bool) -> dict:
    """Evaluate the gate of every candidate run -> {run_id: gate}; stored in each metrics.json."""
    from moola_core.train.gate import evaluate_gate

    gates = {}
    for row in variants:
        for run_id in row["run_ids"]:
            run = runs.load_run(run_id, runs_dir)
            predictions = json.loads((run.path / runs.PREDICTIONS).read_text())
            gates[run_id] = evaluate_gate(predictions, metric, n_boot=n_boot)
            if write:
                _store_gate(run, gates[run_id])
    return gates
