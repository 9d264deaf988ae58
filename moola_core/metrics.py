"""Evaluation metrics for the classifier and the expansion span, with bootstrap 95% CIs.

Validation and test sets hold a few dozen windows, so every figure comes with a bootstrap
confidence interval (percentile method). What is resampled is what varies independently:
windows that share bars (an augmented copy and its source) form one *group* and are drawn
together (`truth["group"]`, when given), and when several training seeds are pooled the seeds
are resampled too, so the interval covers both the data and the training noise.

Calibration (`ece`, `brier`) is reported when the predictions carry `class_probs` [N, C].

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
    **{
        f"span_iou_{name}": f"span IoU over the windows whose true class is {name}"
        for name in LABELS
    },
}
METRICS = tuple(METRIC_DESCRIPTIONS)
CALIBRATION_DESCRIPTIONS = {
    "ece": "expected calibration error of the top class probability (10 equal-width bins)",
    "brier": "mean over windows of sum over classes of (probability - truth)^2",
}
CALIBRATION_METRICS = tuple(CALIBRATION_DESCRIPTIONS)
LOWER_IS_BETTER = {"boundary_mae", "ece", "brier"}
ECE_BINS = 10


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
        "class_iou": (overlap / (pred_len + true_len - overlap))[:, None] * true_is,  # [N, C]
        "class_n": true_is.astype(float),  # [N, C]
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
    class_iou = np.divide(
        sums["class_iou"],
        sums["class_n"],
        out=np.full_like(sums["class_n"], np.nan, dtype=float),
        where=sums["class_n"] > 0,
    )
    for i, name in enumerate(LABELS):
        out[f"span_iou_{name}"] = class_iou[..., i]
    if "conf_bins" in sums:
        gap = np.abs(sums["conf_bins"] - sums["correct_bins"]).sum(axis=-1)
        out["ece"] = gap / n
        out["brier"] = sums["brier"] / n
    return out


def calibration_parts(probs, true_label, bins: int = ECE_BINS) -> dict:
    """Per-window quantities of ECE and Brier: confidence and correctness per bin, squared
    error. probs float [N, C], true_label int [N] -> {"conf_bins", "correct_bins" [N, bins],
    "brier" [N]}."""
    probs = np.asarray(probs, dtype=float)
    true_label = _as_int(true_label)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == true_label).astype(float)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    member = np.arange(bins)[None, :] == which[:, None]  # [N, bins]
    onehot = np.arange(probs.shape[1])[None, :] == true_label[:, None]
    return {
        "conf_bins": member * confidence[:, None],
        "correct_bins": member * correct[:, None],
        "brier": ((probs - onehot) ** 2).sum(axis=1),
    }


def _with_thresholds(parts: dict) -> dict:
    parts = dict(parts)
    parts["iou_ge_50"] = (parts["iou"] >= 0.5).astype(float)
    parts["iou_ge_70"] = (parts["iou"] >= 0.7).astype(float)
    return parts


def _parts(pred: Mapping, truth: Mapping) -> dict:
    parts = _with_thresholds(per_window(pred, truth))
    if pred.get("class_probs") is not None:
        parts.update(calibration_parts(pred["class_probs"], truth["label"]))
    return parts


def point_metrics(pred: Mapping, truth: Mapping) -> dict[str, float]:
    """Every metric in METRICS (plus ece and brier when `pred` has class_probs), no intervals."""
    parts = _parts(pred, truth)
    sums = {k: v.sum(axis=0) for k, v in parts.items()}
    values = _metrics_from_sums(sums, len(parts["iou"]))
    # a class absent from truth and predictions scores 0 rather than an undefined NaN
    return {k: float(np.nan_to_num(v, nan=0.0)) for k, v in values.items()}


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN; all-NaN slices (a class absent from a resample) stay NaN quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def resample_weights(groups, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster-bootstrap weights [B, N]: draw the groups with replacement (as many as there are)
    and count how often each window's group was drawn. Windows of one group move together."""
    groups = np.asarray(groups).reshape(-1)
    _, inverse = np.unique(groups, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    drawn = rng.integers(0, n_groups, size=(n_boot, n_groups))  # [B, G]
    counts = np.zeros((n_boot, n_groups))
    np.add.at(counts, (np.arange(n_boot)[:, None], drawn), 1.0)
    return counts[:, inverse]  # [B, N]


def _groups_of(truth: Mapping, n: int) -> np.ndarray:
    group = truth.get("group") if hasattr(truth, "get") else None
    if group is None:
        return np.arange(n)
    group = np.asarray(group).reshape(-1)
    if len(group) != n:
        raise ValueError("truth['group'] must have one entry per window")
    return group


def _boot_metrics(pred: Mapping, truth: Mapping, weights: np.ndarray) -> dict:
    """Metrics of one prediction set on every weighted resample weights [B, N] -> {name: [B]}."""
    parts = _parts(pred, truth)
    boot_sums = {k: np.tensordot(weights, v, axes=(1, 0)) for k, v in parts.items()}
    return _metrics_from_sums(boot_sums, weights.sum(axis=1))


def _set_weights(k: int, n_boot: int, rng: np.random.Generator, resample: bool) -> np.ndarray:
    """How often each of k prediction sets (seeds) counts in each resample -> [B, K]."""
    if not resample or k == 1:
        return np.ones((n_boot, k))
    drawn = rng.integers(0, k, size=(n_boot, k))
    counts = np.zeros((n_boot, k))
    np.add.at(counts, (np.arange(n_boot)[:, None], drawn), 1.0)
    return counts


def _mean_over_sets(boot: np.ndarray, set_weights: np.ndarray) -> np.ndarray:
    """Weighted mean over sets of boot [K, B] with set_weights [B, K], ignoring NaN -> [B]."""
    w = set_weights.T * ~np.isnan(boot)  # [K, B]
    total = np.nansum(np.nan_to_num(boot) * w, axis=0)
    den = w.sum(axis=0)
    return np.divide(total, den, out=np.full_like(total, np.nan), where=den > 0)


def _interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    if np.all(np.isnan(boot)):
        return 0.0, 0.0
    low, high = np.nan_to_num(np.nanpercentile(boot, [tail, 100.0 - tail]), nan=0.0)
    return float(low), float(high)


def _resamples(truth, n_sets, n_boot, seed, resample_sets):
    n = len(np.asarray(truth["label"]).reshape(-1))
    if n == 0:
        raise ValueError("cannot evaluate an empty set of windows")
    rng = np.random.default_rng(seed)
    weights = resample_weights(_groups_of(truth, n), n_boot, rng)  # [B, N]
    return n, weights, _set_weights(n_sets, n_boot, rng, resample_sets)


def evaluate_mean(
    preds: list[Mapping],
    truth: Mapping,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    resample_sets: bool = True,
) -> dict:
    """Metrics averaged over several prediction sets of the same windows (e.g. one per training
    seed), with a bootstrap CI: each resample draws the windows' groups (`truth["group"]`, or
    each window alone) and, with `resample_sets`, the sets (seeds) too.

    Returns {"n": N, "n_sets": K, name: {"value", "ci_low", "ci_high", "per_set": [K]}};
    ece and brier are included when every set carries class_probs.
    """
    if not preds:
        raise ValueError("no predictions to evaluate")
    n, weights, set_w = _resamples(truth, len(preds), n_boot, seed, resample_sets)
    points = [point_metrics(p, truth) for p in preds]
    boots = [_boot_metrics(p, truth, weights) for p in preds]
    names = [m for m in (*METRICS, *CALIBRATION_METRICS) if all(m in pt for pt in points)]
    report: dict = {"n": n, "n_sets": len(preds)}
    for name in names:
        per_set = [pt[name] for pt in points]
        boot = _mean_over_sets(np.stack([b[name] for b in boots]), set_w)  # [B]
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

    Resamples windows (or their groups, `truth["group"]`) `n_boot` times, seeded, so reports
    are reproducible.
    """
    report = evaluate_mean([pred], truth, n_boot=n_boot, seed=seed, level=level)
    out: dict = {"n": report["n"]}
    for name, entry in report.items():
        if isinstance(entry, dict):
            out[name] = {k: entry[k] for k in ("value", "ci_low", "ci_high")}
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
    bootstrap CI (both scored on each resample of groups, and of the seeds of each side):
    tighter than comparing two separate CIs."""
    n = len(np.asarray(truth["label"]).reshape(-1))
    if n == 0:
        raise ValueError("cannot compare on an empty set of windows")
    rng = np.random.default_rng(seed)
    weights = resample_weights(_groups_of(truth, n), n_boot, rng)

    def mean_over(preds):
        value = np.mean([point_metrics(p, truth)[metric] for p in preds])
        set_w = _set_weights(len(preds), n_boot, rng, True)
        boot = _mean_over_sets(
            np.stack([_boot_metrics(p, truth, weights)[metric] for p in preds]), set_w
        )
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


ADAPTIVE_BINS = 15


def reliability_bins(prob, outcome, bins: int = ADAPTIVE_BINS, weights=None) -> dict:
    """A reliability diagram with adaptive (equal-count) bins: predicted probabilities [N] of
    a binary outcome [N] (bool) -> {"ece", "bins": [{"p", "rate", "n"}]}. The bin edges are
    the probabilities' quantiles, so every bin holds about N / bins predictions; the ECE is
    the count-weighted mean |mean p - observed rate| over bins (Nixon et al. 2019's adaptive
    calibration error). `weights` [N] (e.g. bootstrap counts) weigh the predictions."""
    prob = np.asarray(prob, dtype=float).reshape(-1)
    outcome = np.asarray(outcome, dtype=float).reshape(-1)
    w = np.ones(len(prob)) if weights is None else np.asarray(weights, dtype=float)
    which = adaptive_bin_index(prob, bins)
    n = np.bincount(which, weights=w, minlength=bins)
    p_sum = np.bincount(which, weights=w * prob, minlength=bins)
    y_sum = np.bincount(which, weights=w * outcome, minlength=bins)
    keep = n > 0
    p_mean = np.divide(p_sum, n, out=np.zeros(bins), where=keep)
    rate = np.divide(y_sum, n, out=np.zeros(bins), where=keep)
    total = max(float(n.sum()), 1e-12)
    ece = float((n[keep] * np.abs(p_mean[keep] - rate[keep])).sum() / total)
    return {
        "ece": ece,
        "bins": [
            {"p": float(p_mean[b]), "rate": float(rate[b]), "n": float(n[b])}
            for b in range(bins)
            if keep[b]
        ],
    }


def adaptive_bin_index(prob, bins: int = ADAPTIVE_BINS) -> np.ndarray:
    """Equal-count bin of each probability [N] -> int [N] in 0..bins-1 (ties share a bin)."""
    prob = np.asarray(prob, dtype=float).reshape(-1)
    if not len(prob):
        return np.zeros(0, dtype=np.int64)
    edges = np.quantile(prob, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, prob, side="right").astype(np.int64)


def format_metric(entry: Mapping) -> str:
    """'0.612 [0.540, 0.680]' for one metric entry with its interval."""
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
