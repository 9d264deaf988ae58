"""Supervised training runs, their comparison and the choice of the run to ship.

    train_run(config, runs_dir="runs") -> RunResult       writes runs/<run-id>/
    compare_runs(runs_dir="runs") -> Comparison           variants x seeds table
    select_run(runs_dir="runs", primary_metric=...) -> dict   writes runs/selected.json

Imports stay light here; torch loads when a function runs.
"""

from __future__ import annotations

from moola_core.train.config import DEFAULT_SEEDS, TrainConfig, load_config

__all__ = [
    "DEFAULT_SEEDS",
    "TrainConfig",
    "load_config",
    "train_run",
    "evaluate_run",
    "compare_runs",
    "select_run",
]


def train_run(config, runs_dir="runs", **kwargs):
    """Train one run (see moola_core.train.run.train_run)."""
    from moola_core.train.run import train_run as _train_run

    return _train_run(config, runs_dir, **kwargs)


def evaluate_run(run_id, runs_dir="runs", **kwargs):
    """Re-score a finished run (see moola_core.train.compare.evaluate_run)."""
    from moola_core.train.compare import evaluate_run as _evaluate_run

    return _evaluate_run(run_id, runs_dir, **kwargs)


def compare_runs(runs_dir="runs", **kwargs):
    """Variants x seeds table (see moola_core.train.compare.compare_runs)."""
    from moola_core.train.compare import compare_runs as _compare_runs

    return _compare_runs(runs_dir, **kwargs)


def select_run(runs_dir="runs", **kwargs):
    """Choose the run to ship (see moola_core.train.selection.select_run)."""
    from moola_core.train.selection import select_run as _select_run

    return _select_run(runs_dir, **kwargs)
