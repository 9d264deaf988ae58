"""Phase 2, model selection: choose the variant to ship on out-of-fold evidence, gate it, say why.

Runs are grouped into variants (a recipe: same name, same data) and a variant's figure pools
its seeds. First the quality gate (moola_core.train.gate) is decided for every variant, each at
a Bonferroni share of the error rate for the number of variants compared, and written into each
of its runs' metrics.json (so a bundle built from any run carries its variant's verdict). Then
the choice reads only the out-of-fold (OOF) predictions: among the variants that passed, the
one with the best mean of the primary metric over its seeds (when none passed, the best of all,
whose failure the phase then reports). Choosing among passing variants keeps the gate's error
rate: each variant's test already spends only its share of it. The run shipped is that
variant's run with the smallest seed: no figure is looked at to pick it, so no lucky seed is
chosen. The calibration split's figure of that run is reported beside the heuristic's and the
linear baseline's, as the final model's own held-out check. The chosen variant's verdict (and a
person's override of a failing one) also goes into runs/selected.json.

When a reviewed labeled set exists (issue #25), `reviewed` (built by moola_ops, which knows
the live release) gives each variant's Evidence and the live release's on the reviewed windows
neither trained on; the variant must then also be no worse than the live release there
(moola_core.train.gate.add_reviewed).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

from moola_core import metrics as M
from moola_core.errors import MoolaError
from moola_core.train import runs
from moola_core.train.compare import compare_runs

SPLIT = "oof"


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
    reviewed: Callable[[list[str]], tuple | str] | None = None,
) -> dict:
    """Pick the variant to ship by `primary_metric` out of fold; write runs/selected.json.

    Returns the record written: run_id, variant, seed, metric, split, value, ci (the variant's
    pooled OOF figure), run (the shipped run's own OOF figure), calibration_split (its
    held-out figure next to the heuristic's and the linear baseline's), gate, reason,
    candidates, selected_at. `override` (a reason) with `by` (who) lets a run that failed the
    gate ship: it is recorded in `gate["override"]` of the record and of the run's metrics.
    `reviewed(run_ids)` -> (candidate Evidence, live Evidence) on reviewed windows, or a
    sentence saying why there are none, adds the live release's check to every variant's gate.
    """
    if override is not None and not override.strip():
        raise MoolaError('--override needs a reason, e.g. --override "hotfix, approved by X".')
    if primary_metric not in M.METRICS:
        raise MoolaError(
            f"unknown metric {primary_metric!r}; choose one of {', '.join(M.METRICS)}."
        )
    sign = -1.0 if primary_metric in M.LOWER_IS_BETTER else 1.0
    comparison = compare_runs(runs_dir, split=SPLIT, n_boot=n_boot)
    variants = comparison.models()
    if not variants:
        raise MoolaError(
            f"no run in {runs_dir} has out-of-fold predictions; train with `invoke train` "
            "(runs trained before the out-of-fold protocol must be trained again)."
        )
    variants.sort(key=lambda r: (-sign * r["metrics"][primary_metric]["value"], r["variant"]))
    gates = _gate_variants(runs_dir, variants, primary_metric, write, reviewed)
    passing = [v for v in variants if gates[v["variant"]]["passed"]]
    ranked = passing + [v for v in variants if not gates[v["variant"]]["passed"]]
    best = ranked[0]
    pick = min(
        range(len(best["seeds"])), key=lambda i: (best["seeds"][i] is None, best["seeds"][i] or 0)
    )
    run = runs.load_run(best["run_ids"][pick], runs_dir)
    mean_entry = best["metrics"][primary_metric]
    run_entry = run.metrics[SPLIT][primary_metric]
    held = run.metrics.get("calibration_split", {}).get(primary_metric)
    baselines = run.metrics.get("baselines", {})

    better = "higher" if sign > 0 else "lower"
    n_seeds = len(best["seeds"])
    reason = (
        f"{best['variant']} has the best out-of-fold {primary_metric} over its {n_seeds} "
        f"seed(s) {'among the variants that passed the quality gate' if passing else 'of all variants (none passed the quality gate)'}, "
        f"{M.format_metric(mean_entry)} ({better} is better; "
        f"{best['n']} windows, each predicted by a model that never saw it)"
    )
    skipped = [v["variant"] for v in variants[: variants.index(best)]]
    if skipped:
        reason += f"; {', '.join(skipped)} scored higher but failed the gate"
    if len(ranked) > 1:
        runner = ranked[1]
        reason += (
            f"; runner-up {runner['variant']} {M.format_metric(runner['metrics'][primary_metric])}"
        )
        if (
            sign * (mean_entry["ci_low"] if sign > 0 else mean_entry["ci_high"])
            <= sign * (runner["metrics"][primary_metric]["ci_high" if sign > 0 else "ci_low"])
        ):
            reason += " (the intervals overlap, so the lead is not certain)"
    reason += (
        f". Shipped: {run.run_id}, the variant's run with the smallest seed ({run.seed}; no "
        "figure picks the seed)"
    )
    if held:
        reason += f"; on the sealed calibration split it scores {M.format_metric(held)}"
        for name in ("heuristic", "linear"):
            entry = baselines.get(name, {}).get("calibration_split", {}).get(primary_metric)
            if entry:
                reason += f", the {name} {M.format_metric(entry)}"
    reason += "."

    gate = gates[best["variant"]]
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

    def figure(entry):
        return {"value": round(entry["value"], 4), "ci": _ci(entry)} if entry else None

    record = {
        "run_id": run.run_id,
        "variant": best["variant"],
        "seed": run.seed,
        "metric": primary_metric,
        "split": SPLIT,
        "value": round(mean_entry["value"], 4),
        "ci": _ci(mean_entry),
        "run": figure(run_entry),
        "calibration_split": figure(held),
        "baselines_calibration_split": {
            name: figure(baselines.get(name, {}).get("calibration_split", {}).get(primary_metric))
            for name in ("heuristic", "linear")
        },
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


def _gate_variants(runs_dir, variants, metric: str, write: bool, reviewed=None) -> dict:
    """Decide the gate of every variant (seeds pooled, Bonferroni over the variants; against
    the live release on reviewed windows when `reviewed` is given) -> {variant: gate}; stored
    in each of its runs' metrics.json."""
    from dataclasses import replace

    from moola_core.train.gate import (
        GateRules,
        add_reviewed,
        decide,
        evidence_from_runs,
        reviewed_rules,
    )

    gates = {}
    for row in variants:
        loaded = [runs.load_run(run_id, runs_dir) for run_id in row["run_ids"]]
        predictions = [json.loads((r.path / runs.PREDICTIONS).read_text()) for r in loaded]
        candidate, baselines = evidence_from_runs(row["variant"], predictions, metric, SPLIT)
        candidate = replace(candidate, seeds=tuple(row["seeds"]))
        rules = GateRules(metric=metric, variants_compared=len(variants))
        gate = decide(candidate, baselines, rules)
        if reviewed is not None:
            found = reviewed(list(row["run_ids"]))
            if not isinstance(found, str):
                mine, live = found
                mine = replace(mine, name=row["variant"], seeds=tuple(row["seeds"]))
                rules = reviewed_rules(metric, len(variants), live.name)
                found = decide(mine, {live.name: live}, rules)
            gate = add_reviewed(gate, found)
        gate["runs"] = list(row["run_ids"])
        gates[row["variant"]] = gate
        if write:
            for run in loaded:
                _store_gate(run, gate)
    return gates
