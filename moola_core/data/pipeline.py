"""The data pipeline end to end: synthetic market -> features -> labeled set -> validation ->
split + leakage report. Every stage's output lands in `out_dir`; the summary says what happened.

Files written (all regenerated, deterministic in the seed):
  bars.parquet      the synthetic 1-minute stream (unlabeled; pre-training reads it)
  labeled.parquet   the labeled set in the Moola schema
  split.json        train/val/test window ids, purged ids and boundaries
  leakage.json      the leakage report of that split
  summary.json      the dict run_data_pipeline returns
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from moola_core.data.bars import check_bars, session_bounds
from moola_core.data.labeled import read_labeled, to_model_arrays, validate_labeled, write_labeled
from moola_core.data.problems import errors_only
from moola_core.data.splits import leakage_report, split_labeled
from moola_core.data.synthetic import SESSION_BARS, generate_market, make_labeled_set
from moola_core.data.windows import stream_features
from moola_core.errors import ValidationError

DEFAULT_BARS = 50 * SESSION_BARS  # 50 sessions, about ten weeks of 1-minute bars
MAX_GAP_MINUTES = 5.0
EMBARGO_MINUTES = 105.0


def run_data_pipeline(
    out_dir: str | Path = "data",
    seed: int = 0,
    n_bars: int = DEFAULT_BARS,
    n_windows: int = 174,
    difficulty: str | float = "default",
) -> dict:
    """Generate, featurize, label, validate, split and check for leaks; return a summary.

    Raises ValidationError when a stage finds an error (a generator bug, never silent).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 4)
        clock = now

    bars = check_bars(generate_market(n_bars, seed=seed, difficulty=difficulty), "synthetic bars")
    bars.to_parquet(out / "bars.parquet", index=False)
    lap("market")

    values, valid = stream_features(bars, MAX_GAP_MINUTES)
    lap("features")

    labeled = make_labeled_set(n_windows, seed=seed, difficulty=difficulty)
    labeled_path = write_labeled(labeled, out / "labeled.parquet")
    labeled = read_labeled(labeled_path)  # prove the file round-trips and validates
    problems = validate_labeled(labeled)
    arrays = to_model_arrays(labeled)
    lap("labeled")

    split = split_labeled(labeled, embargo_minutes=EMBARGO_MINUTES)
    report = leakage_report(labeled, split, embargo_minutes=EMBARGO_MINUTES)
    (out / "split.json").write_text(json.dumps(split.to_dict(), indent=2) + "\n")
    (out / "leakage.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    lap("split")
    report.raise_if_leaky()
    if errors_only(problems):  # write_labeled would have refused already; belt and braces
        raise ValidationError(f"the generated labeled set has {len(problems)} problems.", problems)

    rows = np.arange(len(arrays.start))
    summary = {
        "out_dir": str(out),
        "seed": seed,
        "difficulty": difficulty,
        "bars": {
            "path": str(out / "bars.parquet"),
            "n": int(len(bars)),
            "sessions": int(len(session_bounds(bars["timestamp"], MAX_GAP_MINUTES))),
            "first": bars["timestamp"].iloc[0].isoformat(),
            "last": bars["timestamp"].iloc[-1].isoformat(),
            "valid_feature_share": round(float(valid.mean()), 4),
            "feature_range": [float(values.min()), float(values.max())],
        },
        "labeled": {
            "path": str(labeled_path),
            "windows": int(len(labeled)),
            "labels": {k: int(v) for k, v in labeled["label"].value_counts().sort_index().items()},
            "errors": len(errors_only(problems)),
            "warnings": len(problems) - len(errors_only(problems)),
            "valid_at_expansion_start": round(float(arrays.valid[rows, arrays.start].mean()), 4),
            "mean_span_len": round(float((arrays.end - arrays.start + 1).mean()), 2),
        },
        "split": {
            "path": str(out / "split.json"),
            "train": len(split.train),
            "val": len(split.val),
            "test": len(split.test),
            "purged": len(split.purged),
            "groups": split.n_groups,
        },
        "leakage": {
            "path": str(out / "leakage.json"),
            "ok": report.ok,
            "pairs": len(report.pairs),
            "label_counts": report.label_counts,
        },
        "seconds": timings,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
