"""Evaluation metrics for the classifier and the expansion span, with bootstrap 95% CIs.

Validation and test sets hold a few dozen windows, so every figure comes with a bootstrap
confidence interval over windows (resampled with replacement, percentile method).

Spans are inclusive bar ranges [start, end] (see moola_core.spans). Per-bar in-span precision,
recall and F1 pool bars over all windows (micro); span IoU is per window, then averaged.
Hand-computed cases live in tests/unit/test_metrics.py. numpy only.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from moola_core.spec import LABELS

HIT_TOLERANCE = 3  # bars: a boundary within +-3 bars of the truth counts as a hit

# metric name -> what it means (docs/models.md renders the same list)
METRIC_DESCRIPTIONS = {
    "accuracy": "share of windows with the right class",
    "macro_f1": "mean of the per-class F1 scores",
    **{f"f1_{name}": f"F1 of class {name}" for name in LABELS},
    "inspan_precision": "share of bars predicted in-span that are in the true span (pooled)",
    "inspan_recall": "share of true in-span bars that are predicted in-span (pooled)",
    "inspan_f1": "harmonic mean of the per-bar in-span precision and recall",
    "span_iou": "mean over windows of |pred & true| / |pred | true| (bars)",
    "iou_ge_50": "share of windows with span IoU >= 0.5",
    "iou_ge_70": "share of windows with span IoU >= 0.7",
    "start_hit3": "share of windows whose predicted start is within +-3 bars",
    "end_hit3": "share of windows whose predicted end is within +-3 bars",
    "boundary_mae": "mean absolute boundary error in bars, (|ds| + |de|) / 2 per window",
}
METRICS = tuple(METRIC_DESCRIPTIONS)
LOWER_IS_BETTER = {"boundary_mae"}


def _as_int(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


def span_iou(pred_start, pred_end, true_start, true_end) -> np.ndarray:
    """Per-window IoU of inclusive bar spans -> float [N] in [0, 1]."""
    ps, pe, ts, te = map(_as_int, (pred_start, pred_end, true_start, true_end))
    overlap = np.clip(np.minimum(pe, te) - np.maximum(ps, ts) + 1, 0, None)
    union = (pe - ps + 1) + (te - ts + 1) - overlap
    return overlap / union


def _f1(tp, fp, fn):
    # NaN when a class is neither present nor predicted: undefined, so it is left out of the
    # macro mean (as sklearn does with labels absent from both) and of the bootstrap quantiles
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.full_like(denom, np.nan, dtype=float), where=denom > 0)


def _ratio(num, den):
    return np.divide(num, den, out=np.zeros_like(den, dtype=float), where=den > 0)


def per_window(pred: Mapping, truth: Mapping, n_classes: int = len(LABELS)) -> dict:
    """Per-window quantities every metric is a function of (sums or means over windows).

    pred and truth map "label", "start", "end" to arrays [N]. Returns arrays [N] (or [N, C]).
    """
    pl, ps, pe = (_as_int(pred[k]) for k in ("label", "start", "end"))
    tl, ts, te = (_as_int(truth[k]) for k in ("label", "start", "end"))
    if not len(pl) == len(ps) == len(pe) == len(tl) == len(ts) == len(te):
        raise ValueError("predictions and truth must cover the same windows")
    classes = np.arange(n_classes)
    pred_is = pl[:, None] == classes  # [N, C]
    true_is = tl[:, None] == classes
    overlap = np.clip(np.minimum(pe, te) - np.maximum(ps, ts) + 1, 0, None)
    pred_len, true_len = pe - ps + 1, te - ts + 1
    return {
        "correct": (pl == tl).astype(float),
        "class_tp": (pred_is & true_is).astype(float),
        "class_fp": (pred_is & ~true_is).astype(float),
        "class_fn": (~pred_is & true_is).astype(float),
        "bar_tp": overlap.astype(float),
        "bar_fp": (pred_len - overlap).astype(float),
        "bar_fn": (true_len - overlap).astype(float),
        "iou": overlap / (pred_len + true_len - overlap),
        "start_hit": (np.abs(ps - ts) <= HIT_TOLERANCE).astype(float),
        "end_hit": (np.abs(pe - te) <= HIT_TOLERANCE).astype(float),
        "boundary_err": (np.abs(ps - ts) + np.abs(pe - te)) / 2.0,
    }


def _metrics_from_sums(sums: dict, n: np.ndarray | float) -> dict:
    """Metrics from per-window quantities summed over a (re)sample of n windows.

    Works on scalars or on a leading bootstrap axis ([B] / [B, C]) alike.
    """
    class_f1 = _f1(sums["class_tp"], sums["class_fp"], sums["class_fn"])  # [..., C]
    precision = _ratio(sums["bar_tp"], sums["bar_tp"] + sums["bar_fp"])
    recall = _ratio(sums["bar_tp"], sums["bar_tp"] + sums["bar_fn"])
    out = {
        "accuracy": sums["correct"] / n,
        "macro_f1": _nanmean(class_f1, axis=-1),
        **{f"f1_{name}": class_f1[..., i] for i, name in enumerate(LABELS)},
        "inspan_precision": precision,
        "inspan_recall": recall,
        "inspan_f1": _f1(sums["bar_tp"], sums["bar_fp"], sums["bar_fn"]),
        "span_iou": sums["iou"] / n,
        "iou_ge_50": sums["iou_ge_50"] / n,
        "iou_ge_70": sums["iou_ge_70"] / n,
        "start_hit3": sums["start_hit"] / n,
        "end_hit3": sums["end_hit"] / n,
        "boundary_mae": sums["boundary_err"] / n,
    }
    return out


def _with_thresholds(parts: dict) -> dict:
    parts = dict(parts)
    parts["iou_ge_50"] = (parts["iou"] >= 0.5).astype(float)
    parts["iou_ge_70"] = (parts["iou"] >= 0.7).astype(float)
    return parts


def point_metrics(pred: Mapping, truth: Mapping) -> dict[str, float]:
    """Every metric in METRICS on the whole set, without intervals."""
    parts = _with_thresholds(per_window(pred, truth))
    sums = {k: v.sum(axis=0) for k, v in parts.items()}
    values = _metrics_from_sums(sums, len(parts["iou"]))
    # a class absent from truth and predictions scores 0 rather than an undefined NaN
    return {k: float(np.nan_to_num(v, nan=0.0)) for k, v in values.items()}


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN; all-NaN slices (a class absent from a resample) stay NaN quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _boot_metrics(pred: Mapping, truth: Mapping, idx: np.ndarray) -> dict:
    """Metrics of one prediction set on every bootstrap resample idx [B, N] -> {name: [B]}."""
    parts = _with_thresholds(per_window(pred, truth))
    boot_sums = {k: v[idx].sum(axis=1) for k, v in parts.items()}  # [B] or [B, C]
    return _metrics_from_sums(boot_sums, idx.shape[1])


def _interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.nan_to_num(np.nanpercentile(boot, [tail, 100.0 - tail]), nan=0.0)
    return float(low), float(high)


def evaluate_mean(
    preds: list[Mapping], truth: Mapping, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict:
    """Metrics averaged over several prediction sets of the same windows (e.g. one per training
    seed), with a bootstrap CI over windows: every resample scores all sets on the same windows.

    Returns {"n": N, "n_sets": K, name: {"value", "ci_low", "ci_high", "per_set": [K]}}.
    """
    if not preds:
        raise ValueError("no predictions to evaluate")
    n = len(np.asarray(truth["label"]).reshape(-1))
    if n == 0:
        raise ValueError("cannot evaluate an empty set of windows")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))  # [B, N]
    points = [point_metrics(p, truth) for p in preds]
    boots = [_boot_metrics(p, truth, idx) for p in preds]
    report: dict = {"n": n, "n_sets": len(preds)}
    for name in METRICS:
        per_set = [pt[name] for pt in points]
        boot = _nanmean(np.stack([b[name] for b in boots]), axis=0)  # [B]
        low, high = _interval(boot, level)
        report[name] = {
            "value": float(np.mean(per_set)),
            "ci_low": low,
            "ci_high": high,
            "per_set": per_set,
        }
    return report


def evaluate(
    pred: Mapping, truth: Mapping, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, dict]:
    """Every metric with a bootstrap CI: {name: {"value", "ci_low", "ci_high"}} plus "n".

    Resamples windows with replacement `n_boot` times (seeded, so reports are reproducible).
    """
    report = evaluate_mean([pred], truth, n_boot=n_boot, seed=seed, level=level)
    out: dict = {"n": report["n"]}
    for name in METRICS:
        out[name] = {k: report[name][k] for k in ("value", "ci_low", "ci_high")}
    return out


def paired_difference(
    preds_a: list[Mapping],
    preds_b: list[Mapping],
    truth: Mapping,
    metric: str,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """mean(metric of A sets) - mean(metric of B sets) on the same windows, with a paired
    bootstrap CI (both scored on each resample): tighter than comparing two separate CIs."""
    n = len(np.asarray(truth["label"]).reshape(-1))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))

    def mean_over(preds):
        value = np.mean([point_metrics(p, truth)[metric] for p in preds])
        boot = _nanmean(np.stack([_boot_metrics(p, truth, idx)[metric] for p in preds]), 0)
        return value, boot

    value_a, boot_a = mean_over(preds_a)
    value_b, boot_b = mean_over(preds_b)
    low, high = _interval(boot_a - boot_b, level)
    return {"value": float(value_a - value_b), "ci_low": low, "ci_high": high}


def bootstrap_mean_ci(
    values, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Mean of per-window values [N] with a bootstrap CI: {"value", "ci_low", "ci_high"}."""
    values = np.asarray(values, dtype=float).reshape(-1)
    rng = np.random.default_rng(seed)
    boot = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(boot, [tail, 100.0 - tail])
    return {"value": float(values.mean()), "ci_low": float(low), "ci_high": float(high)}


def format_metric(entry: Mapping) -> str:
    """'0.612 [0.540, 0.680]' for one metric entry with its interval."""
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
