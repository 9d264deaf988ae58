"""Compare finished runs: one row per variant (its seeds pooled) next to the baselines.

On the out-of-fold predictions ("oof", what selection and the gate read) or on the sealed
calibration split ("calibration_split", the final models' own held-out check). A variant's
figure is the mean over its seeds; its 95% CI comes from a bootstrap that resamples the
windows' overlap groups and the seeds; the per-seed values are in `per_set`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moola_core import metrics as M
from moola_core.errors import MoolaError
from moola_core.train import runs

SPLITS = ("oof", "calibration_split")
DEFAULT_COLUMNS = (
    "span_iou",
    "iou_ge_50",
    "start_hit3",
    "end_hit3",
    "boundary_mae",
    "inspan_f1",
    "accuracy",
    "macro_f1",
)


@dataclass
class Comparison:
    """Rows of variants and baselines scored on one split ("oof" or "calibration_split")."""

    split: str
    rows: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # run ids without usable predictions

    def models(self) -> list[dict]:
        return [r for r in self.rows if r["kind"] == "model"]

    def baseline(self, name: str, group: str | None = None) -> dict | None:
        for row in self.rows:
            same_group = group is None or row["group"] == group
            if row["kind"] == "baseline" and row["variant"] == name and same_group:
                return row
        return None

    def to_dict(self) -> dict:
        return {"split": self.split, "rows": self.rows, "skipped": self.skipped}

    def markdown(self, columns=DEFAULT_COLUMNS) -> str:
        """A Markdown table: variant, seeds, then `mean [95% CI]` per metric."""
        head = ["variant", "seeds", "windows", *columns]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows:
            seeds = ",".join(str(s) for s in row["seeds"]) if row["kind"] == "model" else "-"
            cells = [row["variant"], seeds, str(row["n"])]
            cells += [
                M.format_metric(row["metrics"][c]) if c in row["metrics"] else "-" for c in columns
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _metric_entries(report: dict) -> dict:
    """The metric entries of an evaluate_mean report (METRICS, plus ece/brier when present)."""
    return {k: v for k, v in report.items() if isinstance(v, dict)}


def _load_predictions(run: runs.Run) -> dict | None:
    path = run.path / runs.PREDICTIONS
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _group_label(variant: str, fingerprints: set[str], fingerprint: str) -> str:
    # runs of one variant trained on different data are never pooled; the label says so
    return variant if len(fingerprints) == 1 else f"{variant}@{fingerprint[7:15]}"


def compare_runs(
    runs_dir: str | Path = "runs",
    split: str = "oof",
    n_boot: int = 1000,
    run_ids: list[str] | None = None,
) -> Comparison:
    """Score every finished run (or `run_ids`) on `split`, grouped into variants x seeds.

    Baseline rows (majority, heuristic, linear) are added once per data set, from the
    baselines fitted beside the runs. Rows are sorted best span IoU first.
    """
    if split not in SPLITS:
        raise MoolaError(f"split {split!r} is not one of {', '.join(SPLITS)}; pick one of them.")
    found = runs.list_runs(runs_dir)
    if run_ids is not None:
        wanted = set(run_ids)
        found = [r for r in found if r.run_id in wanted]
    if not found:
        raise MoolaError(f"no finished runs in {runs_dir}; train one with `invoke train`.")

    comparison = Comparison(split)
    groups: dict[tuple, list] = {}
    for run in found:
        predictions = _load_predictions(run)
        if not predictions or split not in predictions:
            comparison.skipped.append(run.run_id)
            continue
        windows = tuple(predictions[split]["window_id"])
        key = (run.variant, run.metrics.get("dataset_fingerprint", "unknown"), windows)
        groups.setdefault(key, []).append((run, predictions))

    variant_prints: dict[str, set[str]] = {}
    for variant, fingerprint, _ in groups:
        variant_prints.setdefault(variant, set()).add(fingerprint)
    several_datasets = len({fingerprint for _, fingerprint, _ in groups}) > 1
    baselines_done: set[tuple] = set()
    for (variant, fingerprint, windows), members in groups.items():
        members.sort(key=lambda m: (m[0].seed is None, m[0].seed or 0, m[0].run_id))
        truth = members[0][1][split]["truth"]
        label = _group_label(variant, variant_prints[variant], fingerprint)
        report = M.evaluate_mean([m[1][split] for m in members], truth, n_boot=n_boot)
        comparison.rows.append(
            {
                "kind": "model",
                "variant": label,
                "group": fingerprint,
                "seeds": [m[0].seed for m in members],
                "run_ids": [m[0].run_id for m in members],
                "n": report["n"],
                "metrics": _metric_entries(report),
            }
        )
        if (fingerprint, windows) in baselines_done:
            continue
        baselines_done.add((fingerprint, windows))
        for name, by_split in members[0][1].get("baselines", {}).items():
            report = M.evaluate_mean([by_split[split]], truth, n_boot=n_boot)
            comparison.rows.append(
                {
                    "kind": "baseline",
                    "variant": f"{name}@{fingerprint[7:15]}" if several_datasets else name,
                    "group": fingerprint,
                    "seeds": [],
                    "run_ids": [members[0][0].run_id],
                    "n": report["n"],
                    "metrics": _metric_entries(report),
                }
            )
    comparison.rows.sort(key=lambda r: (-r["metrics"]["span_iou"]["value"], r["variant"]))
    return comparison


def evaluate_run(run_id: str, runs_dir: str | Path = "runs", n_boot: int = 1000) -> dict:
    """Rebuild a run's data from its config, reload its fold models and final model and score
    the out-of-fold and calibration-split predictions again.

    Returns {"run_id", "oof", "calibration_split", "baselines", "matches_recorded"}: the last
    is True when the fresh figures equal metrics.json (the run reproduces from its files).
    """
    import torch

    from moola_core.models import build_model
    from moola_core.train.config import load_config
    from moola_core.train.data import prepare_data
    from moola_core.train.loop import predict_arrays

    run = runs.load_run(run_id, runs_dir)
    config = load_config(run.path / runs.CONFIG)
    data = prepare_data(config)
    # the baselines as recorded (re-fitting them per fold would take longer than the check)
    out: dict = {
        "run_id": run_id,
        "variant": run.variant,
        "seed": run.seed,
        "baselines": run.metrics.get("baselines", {}),
    }
    oof_parts = []
    for k, fold in enumerate(data.folds):
        stem = run.path / runs.FOLDS / f"fold-{k + 1}"
        if not stem.with_suffix(".pt").is_file():
            raise MoolaError(
                f"{run_id} has no {stem.name}.pt: it was trained before out-of-fold runs; "
                "train it again."
            )
        model = build_model(json.loads(stem.with_suffix(".json").read_text()))
        model.load_state_dict(torch.load(stem.with_suffix(".pt"), weights_only=True))
        part = data.part(fold.held)
        oof_parts.append(predict_arrays(model.eval(), part["x"], part["valid"]))
    order = data.oof_order
    oof = {key: np.concatenate([p[key] for p in oof_parts]) for key in oof_parts[0]}
    out["oof"] = M.evaluate(oof, data.truth(order), n_boot=n_boot)
    final = runs.load_model(run_id, runs_dir)
    cal = data.part(data.calibration)
    out["calibration_split"] = M.evaluate(
        predict_arrays(final, cal["x"], cal["valid"]), data.truth(data.calibration), n_boot=n_boot
    )
    recorded = run.metrics
    out["matches_recorded"] = bool(
        data.fingerprint == recorded.get("dataset_fingerprint")
        and all(
            np.isclose(out[s][m]["value"], recorded[s][m]["value"])
            for s in SPLITS
            for m in M.METRICS
            if m in recorded.get(s, {})  # a run recorded before a metric existed
        )
    )
    return out
