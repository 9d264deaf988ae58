"""Baselines every model is reported next to, fitted on the training split only.

- MajorityBaseline: the most frequent class and the mean training span, for every window.
- RangeExpansionHeuristic: the longest run of bars whose smoothed range (range_z) stays above a
  threshold is the expansion; a quiet stretch before it says consolidation, otherwise
  retracement. Its smoothing width and both thresholds are tuned on the training split by grid
  search (span IoU, then accuracy), so it is a fair, simple competitor rather than a straw man.

Each has `fit(x, valid, label, start, end)` and `predict(x, valid) -> {"label","start","end"}`
with numpy arrays (x float [N, T, F], valid bool [N, T]). numpy only.
"""

from __future__ import annotations

import numpy as np

from moola_core.data.features import COL
from moola_core.metrics import span_iou

RANGE = COL["range_z"]


class MajorityBaseline:
    """Predict the majority class and the mean training span (rounded, start <= end)."""

    name = "majority"

    def fit(self, x, valid, label, start, end) -> MajorityBaseline:
        self.label = int(np.bincount(np.asarray(label)).argmax())
        self.start = int(round(float(np.mean(start))))
        self.end = max(self.start, int(round(float(np.mean(end)))))
        return self

    def predict(self, x, valid) -> dict[str, np.ndarray]:
        n = len(x)
        return {
            "label": np.full(n, self.label, dtype=np.int64),
            "start": np.full(n, self.start, dtype=np.int64),
            "end": np.full(n, self.end, dtype=np.int64),
        }


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Centered moving average along bars: [N, T] -> [N, T] (edges use the bars available)."""
    if width <= 1:
        return values
    kernel = np.ones(width)
    padded_sum = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="same"), 1, values)
    counts = np.convolve(np.ones(values.shape[1]), kernel, mode="same")
    return padded_sum / counts


def longest_run(above: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of bool [N, T], the longest run of True -> (start, end) inclusive [N].

    Rows without any True bar fall back to the single bar with the highest score.
    """
    n, length = above.shape
    starts = np.empty(n, dtype=np.int64)
    ends = np.empty(n, dtype=np.int64)
    for i in range(n):
        padded = np.concatenate([[False], above[i], [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))  # alternating run starts and ends (exclusive)
        if len(edges) == 0:
            starts[i] = ends[i] = int(np.argmax(score[i]))
            continue
        run_starts, run_ends = edges[0::2], edges[1::2]
        k = int(np.argmax(run_ends - run_starts))  # the first of the longest runs
        starts[i], ends[i] = run_starts[k], run_ends[k] - 1
    return starts, ends


class RangeExpansionHeuristic:
    """The longest run of range expansion, with a 'quiet before' rule for the class."""

    name = "heuristic"
    WIDTHS = (1, 3, 5)
    THRESHOLDS = tuple(np.round(np.arange(0.8, 2.01, 0.1), 2))
    LOOKBACK = 20  # bars before the span that decide "quiet" (consolidation)

    def _spans(self, x, valid, width: float, threshold: float):
        range_z = np.where(valid, x[:, :, RANGE], 0.0)  # [N, T]
        smooth = np.where(valid, _smooth(range_z, width), -np.inf)
        return longest_run(smooth >= threshold, smooth)

    def _quietness(self, x, valid, start) -> np.ndarray:
        """Mean range_z over the LOOKBACK valid bars before each span start -> [N]."""
        out = np.empty(len(x))
        for i, s in enumerate(start):
            lo = max(0, int(s) - self.LOOKBACK)
            bars = x[i, lo : int(s), RANGE][valid[i, lo : int(s)]]
            out[i] = bars.mean() if len(bars) else 1.0
        return out

    def fit(self, x, valid, label, start, end) -> RangeExpansionHeuristic:
        x, valid = np.asarray(x), np.asarray(valid)
        best = (-1.0, 1, 1.0)
        for width in self.WIDTHS:
            for threshold in self.THRESHOLDS:
                ps, pe = self._spans(x, valid, width, float(threshold))
                iou = float(span_iou(ps, pe, start, end).mean())
                if iou > best[0]:
                    best = (iou, width, float(threshold))
        _, self.width, self.threshold = best
        # class rule on the heuristic's own spans: quiet before -> consolidation (label 0)
        ps, _ = self._spans(x, valid, self.width, self.threshold)
        quiet = self._quietness(x, valid, ps)
        candidates = np.unique(np.round(quiet, 3))
        accuracies = [np.mean(np.where(quiet <= c, 0, 1) == label) for c in candidates]
        self.quiet_cut = float(candidates[int(np.argmax(accuracies))])
        return self

    def predict(self, x, valid) -> dict[str, np.ndarray]:
        x, valid = np.asarray(x), np.asarray(valid)
        start, end = self._spans(x, valid, self.width, self.threshold)
        quiet = self._quietness(x, valid, start)
        return {"label": np.where(quiet <= self.quiet_cut, 0, 1).astype(np.int64), "start": start,
                "end": end}  # fmt: skip


BASELINES = {"majority": MajorityBaseline, "heuristic": RangeExpansionHeuristic}


def fit_baselines(x, valid, label, start, end) -> dict:
    """Fit every baseline on training arrays -> {name: fitted baseline}."""
    return {name: cls().fit(x, valid, label, start, end) for name, cls in BASELINES.items()}
