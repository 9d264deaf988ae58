"""Input drift: the population stability index of each of the 11 features against training.

PSI = sum over bins (a - e) * ln(a / e), bins = deciles of the training values; the features
are computed from each captured window's OHLC exactly as in training
(`moola_core.data.features`). Thresholds are in moola_ops/watch/monitor.py (MonitorPolicy) and
docs/monitoring.md.

Light at import: numpy and the feature code are imported inside the functions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from moola_core.errors import MoolaError
from moola_core.spec import FEATURE_NAMES

PSI_BINS = 10
PSI_FLOOR = 1e-4  # a bin share of zero would make ln(a / e) infinite


def reference_bins(x, valid, bins: int = PSI_BINS) -> dict[str, dict[str, list[float]]]:
    """Per feature: inner decile edges of the training values (valid bars) and each bin's share."""
    import numpy as np

    x = np.asarray(x, dtype=float)
    mask = np.asarray(valid, dtype=bool)
    out = {}
    for j, name in enumerate(FEATURE_NAMES):
        values = x[..., j][mask]
        if len(values) == 0:
            raise MoolaError("the training reference has no valid bars to compare against")
        inner = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
        share = np.bincount(np.searchsorted(inner, values, side="right"), minlength=len(inner) + 1)
        out[name] = {"edges": inner.tolist(), "share": (share / share.sum()).tolist()}
    return out


def psi(reference: dict[str, list[float]], values) -> float:
    """Population stability index of `values` against one feature's reference bins."""
    import numpy as np

    edges = np.asarray(reference["edges"], dtype=float)
    expected = np.maximum(np.asarray(reference["share"], dtype=float), PSI_FLOOR)
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    actual = np.maximum(counts / max(1, counts.sum()), PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def window_features(ohlc):
    """Features [n, 105, 11] and valid [n, 105] of captured windows, as training computes them."""
    import numpy as np

    from moola_core.data.features import compute_features

    ohlc = np.asarray(ohlc, dtype=float)
    xs = np.zeros((len(ohlc), ohlc.shape[1], len(FEATURE_NAMES)), dtype="float32")
    valid = np.zeros((len(ohlc), ohlc.shape[1]), dtype=bool)
    for i, w in enumerate(ohlc):
        f = compute_features(w[:, 0], w[:, 1], w[:, 2], w[:, 3])
        xs[i], valid[i] = f.values, f.valid
    return xs, valid


def reference_from_labeled(frame) -> dict:
    """Reference bins from a labeled DataFrame (all its windows)."""
    from moola_core.data.labeled import to_model_arrays

    arrays = to_model_arrays(frame)
    return reference_bins(arrays.x, arrays.valid)


def reference_from_run(run_id: str, runs_dir: str | os.PathLike, cache: str | os.PathLike):
    """Reference bins of a training run's train split (cached as JSON by run id)."""
    cached = Path(cache) / "reference" / f"{run_id}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    from moola_core.train.config import load_config
    from moola_core.train.data import prepare_data
    from moola_core.train.runs import CONFIG, run_dir

    path = run_dir(run_id, runs_dir)
    if not (path / CONFIG).is_file():
        raise MoolaError(
            f"run {run_id} has no {CONFIG}, so its training data is unknown; pass "
            "--reference FILE (a labeled parquet of the training data)"
        )
    data = prepare_data(load_config(path / CONFIG))
    train = data.part(data.dev)  # the windows the final model trained on
    bins = reference_bins(train["x"], train["valid"])
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(bins))
    os.replace(tmp, cached)
    return bins
