"""The run folder: runs/<run-id>/ {config.yaml, model.json, weights.pt, metrics.json,
history.jsonl, predictions.json, folds/fold-<k>.{pt,json}}. One place knows the file names."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from moola_core.errors import MoolaError

CONFIG = "config.yaml"
MODEL = "model.json"
WEIGHTS = "weights.pt"
METRICS = "metrics.json"
HISTORY = "history.jsonl"
PREDICTIONS = "predictions.json"
SELECTED = "selected.json"
FOLDS = "folds"  # each fold's model (weights and calibrated config): its OOF predictions

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def new_run_id(name: str, seed: int, runs_dir: Path) -> str:
    """<name>-s<seed>-<UTC time>, with a counter when two runs start in the same second."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    base = f"{name}-s{seed}-{stamp}"
    run_id, n = base, 1
    while (runs_dir / run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    return run_id


def write_json(path: Path, payload) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@dataclass(frozen=True)
class Run:
    """A finished run on disk."""

    run_id: str
    path: Path
    metrics: dict

    @property
    def variant(self) -> str:
        return self.metrics.get("variant", self.run_id)

    @property
    def seed(self):
        return self.metrics.get("seed")


def run_dir(run_id: str, runs_dir: str | Path = "runs") -> Path:
    """runs/<run_id> after checking the id and that the run finished."""
    if not RUN_ID.match(run_id or ""):
        raise MoolaError(f"{run_id!r} is not a run id; list runs with `invoke compare`.")
    path = Path(runs_dir) / run_id
    if not (path / METRICS).is_file():
        raise MoolaError(
            f"no finished run {run_id} in {runs_dir} (no {METRICS}); list runs with `invoke compare`."
        )
    return path


def load_run(run_id: str, runs_dir: str | Path = "runs") -> Run:
    """Read one finished run."""
    path = run_dir(run_id, runs_dir)
    return Run(run_id, path, json.loads((path / METRICS).read_text()))


def list_runs(runs_dir: str | Path = "runs") -> list[Run]:
    """Every finished run under runs_dir (folders with metrics.json), oldest first by id."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = []
    for path in sorted(runs_dir.iterdir()):
        metrics_file = path / METRICS
        if path.is_dir() and metrics_file.is_file():
            try:
                found.append(Run(path.name, path, json.loads(metrics_file.read_text())))
            except json.JSONDecodeError:
                continue  # a run being written or damaged; compare shows only finished ones
    return found


def load_model(run_id: str, runs_dir: str | Path = "runs"):
    """The trained model of a run (eval mode), built from model.json and weights.pt."""
    import torch

    from moola_core.models import build_model

    path = run_dir(run_id, runs_dir)
    model = build_model(json.loads((path / MODEL).read_text()))
    state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
