"""Pre-annotations: the selected run's answer for each window (class, span, confidence).

The run is `runs/selected.json`'s unless one is named. Its model reads the 11 features the
serving path computes (moola_core.runtime.hostfeatures, bit-equal to the training features),
in batches, on the CPU. torch loads inside `preannotate` only.
"""

from __future__ import annotations

import json
from pathlib import Path

from moola_core.errors import MoolaError
from moola_core.spec import LABELS
from moola_ops.labeling.tasks import PreAnnotation

BATCH = 512


def selected_run(runs_dir: str | Path = "runs", run_id: str = "") -> str:
    """The run whose model pre-annotates: `run_id`, else runs/selected.json's."""
    if run_id:
        return run_id
    path = Path(runs_dir) / "selected.json"
    try:
        return str(json.loads(path.read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        raise MoolaError(
            f"no selected run in {path}; run `invoke select` or name one with --run"
        ) from None


def preannotate(ohlc, run_id: str, runs_dir: str | Path = "runs") -> list[PreAnnotation]:
    """One PreAnnotation per window of `ohlc` (float [n, 105, 4])."""
    import numpy as np
    import torch

    from moola_core.runtime.hostfeatures import compute_features
    from moola_core.train.runs import load_model

    model = load_model(run_id, runs_dir)
    out: list[PreAnnotation] = []
    windows = torch.from_numpy(np.ascontiguousarray(ohlc, dtype=np.float64))
    with torch.inference_mode():
        for lo in range(0, len(windows), BATCH):
            x, valid = compute_features(windows[lo : lo + BATCH])
            answer = model.predict(x, valid)
            labels = answer["label"].tolist()
            probs = answer["class_probs"].tolist()
            conf = answer["confidence"].tolist()
            for i, label in enumerate(labels):
                class_prob = float(probs[i][label])
                out.append(
                    PreAnnotation(
                        label=LABELS[label],
                        start=int(answer["start"][i]),
                        end=int(answer["end"][i]),
                        confidence=float(conf[i]),
                        class_prob=class_prob,
                        score=float(conf[i]) * class_prob,
                    )
                )
    return out
