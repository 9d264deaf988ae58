"""Shared by the bundle, signing, runtime and bundle-task tests: a tiny real run to bundle, and
a frozen copy of the runtime code (so edits others make to the repo mid-test cannot change the
bytes of a bundle)."""

from __future__ import annotations

import json
from pathlib import Path

TINY_MODEL = {"hidden": 8, "layers": 1}
# what phase 2 writes into a run that passed the quality gate: deploy refuses a bundle whose run
# was never judged, so the fixtures' runs carry a verdict unless a test gives its own metrics
PASSED_GATE = {
    "passed": True,
    "metric": "span_iou",
    "summary": "quality gate passed (a test fixture's verdict)",
}
# a training config small enough to really train in a unit test (the training tests)
TINY_CONFIG = {
    "data.n_windows": 60,
    "model.hidden": 8,
    "model.layers": 1,
    "optim.max_epochs": 3,
    "optim.batch_size": 16,
    "split.folds": 3,
    "stream.sessions": 3,
}


def tiny_config(**overrides):
    """The default training config with TINY_CONFIG and then `overrides` applied."""
    from moola_core.train import load_config

    return load_config(overrides={**TINY_CONFIG, **overrides})


def make_tiny_run(
    runs_dir: Path,
    run_id: str = "run-1",
    *,
    seed: int = 0,
    metrics: dict | None = None,
    model_config: dict | None = None,
) -> Path:
    """A real run folder as training leaves it: a JadeModel with random weights (seeded; tiny
    unless `model_config` says otherwise), its model.json and metrics.json (default: only a
    passed gate verdict, PASSED_GATE). The deploy fixtures and the runtime/deploy benchmarks
    build their runs here too."""
    import torch

    from moola_core.models import build_model

    torch.manual_seed(seed)
    model = build_model(TINY_MODEL if model_config is None else model_config)
    run = Path(runs_dir) / run_id
    run.mkdir(parents=True)
    torch.save(model.state_dict(), run / "weights.pt")
    (run / "model.json").write_text(json.dumps(model.config))
    (run / "metrics.json").write_text(
        json.dumps({"gate": PASSED_GATE} if metrics is None else metrics)
    )
    return run


def freeze_runtime_code(dest: Path) -> Path:
    """Copy the code a bundle ships (bundle.build.collect_code) to `dest`, for `code_root=`."""
    from moola_core.bundle.build import REPO_ROOT, collect_code

    for rel, data in collect_code(REPO_ROOT).items():
        target = Path(dest) / rel.removeprefix("code/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return Path(dest)
