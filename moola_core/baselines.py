"""Baselines every model is reported next to, fitted on the training split only.

- MajorityBaseline: the most frequent class and the mean training span, for every window.
- RangeExpansionHeuristic: the longest run of bars whose smoothed range (range_z) stays above a
  threshold is the expansion; a quiet stretch before it says consolidation, otherwise
  retracement. Its smoothing width and both thresholds are tuned on the training split by grid
  search (span IoU, then accuracy), so it is a fair, simple competitor rather than a straw man.
- LinearBaseline ("linear"): the strongest simple model. Its span is a linear pointer: one
  Conv1d over the 11 features (kernel 13, 288 parameters) gives start and end logits per bar,
  decoded as the best pair start <= end exactly like the model's pointer head; its class is a
  logistic classifier on the masked mean and max of each feature (24 parameters). Both are
  trained like the models (AdamW, early stopping on the validation split, best epoch kept).

Each has `fit(x, valid, label, start, end, val=None)` (`val`: the validation split as a dict
with the same keys, used only for early stopping) and `predict(x, valid) ->
{"label","start","end"[, "class_probs"]}` with numpy arrays (x float [N, T, F], valid bool
[N, T]). numpy only, except LinearBaseline, which imports torch when it is fitted.
"""

from __future__ import annotations

import numpy as np

from moola_core.data.features import COL
from moola_core.metrics import span_iou

RANGE = COL["range_z"]


class MajorityBaseline:
    """Predict the majority class and the mean training span (rounded, start <= end)."""

    name = "majority"

    def fit(self, x, valid, label, start, end, val=None) -> MajorityBaseline:
        counts = np.bincount(np.asarray(label), minlength=2).astype(float)
        self.label = int(counts.argmax())
        self.prior = counts / counts.sum()  # the class shares of the training split
        self.start = int(round(float(np.mean(start))))
        self.end = max(self.start, int(round(float(np.mean(end)))))
        return self

    def predict(self, x, valid) -> dict[str, np.ndarray]:
        n = len(x)
        return {
            "label": np.full(n, self.label, dtype=np.int64),
            "start": np.full(n, self.start, dtype=np.int64),
            "end": np.full(n, self.end, dtype=np.int64),
            "class_probs": np.tile(self.prior, (n, 1)),
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

    def fit(self, x, valid, label, start, end, val=None) -> RangeExpansionHeuristic:
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
        return {
            "label": np.where(quiet <= self.quiet_cut, 0, 1).astype(np.int64),
            "start": start,
            "end": end,
        }


def _pooled(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Masked mean and max of each feature over valid bars: [N, T, F] -> [N, 2F]."""
    w = valid[:, :, None].astype(np.float64)
    mean = (x * w).sum(1) / np.maximum(w.sum(1), 1.0)
    peak = np.where(valid[:, :, None], x, -np.inf).max(1)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    return np.concatenate([mean, peak], axis=1).astype(np.float32)


class LinearBaseline:
    """Linear pointer (Conv1d, kernel 13) for the span + logistic classifier for the class."""

    name = "linear"
    KERNEL = 13
    LR = 0.01
    WEIGHT_DECAY = 1e-3
    BATCH = 32
    MAX_EPOCHS = 300
    PATIENCE = 30
    SEED = 0

    def fit(self, x, valid, label, start, end, val=None) -> LinearBaseline:
        import torch

        x, valid = np.asarray(x, dtype=np.float32), np.asarray(valid, dtype=bool)
        if val is None:  # no validation split given: hold out the last fifth of training
            cut = max(1, int(round(0.8 * len(x))))
            val = {
                "x": x[cut:],
                "valid": valid[cut:],
                "label": np.asarray(label)[cut:],
                "start": np.asarray(start)[cut:],
                "end": np.asarray(end)[cut:],
            }
            x, valid = x[:cut], valid[:cut]
            label, start, end = (np.asarray(a)[:cut] for a in (label, start, end))
        pooled = _pooled(x, valid)
        self.mu = pooled.mean(0)
        self.sd = pooled.std(0) + 1e-6
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._fit_span(torch, x, valid, start, end, val)
            self._fit_class(torch, pooled, label, val)
        finally:
            torch.set_num_threads(threads)
        return self

    def _batches(self, torch, n: int, epoch: int):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.SEED + epoch))
        return [order[i : i + self.BATCH] for i in range(0, n, self.BATCH)]

    def _span_logits(self, torch, x, valid):
        xt = torch.from_numpy(np.where(valid[:, :, None], x, 0.0).astype(np.float32))
        logits = self.conv(xt.transpose(1, 2)).transpose(1, 2)  # [N, T, 2]
        return logits.masked_fill(~torch.from_numpy(valid)[:, :, None], -1e4)

    def _fit_span(self, torch, x, valid, start, end, val) -> None:
        import copy

        from torch.nn import functional as F

        torch.manual_seed(self.SEED)
        self.conv = torch.nn.Conv1d(x.shape[2], 2, self.KERNEL, padding=self.KERNEL // 2)
        opt = torch.optim.AdamW(self.conv.parameters(), lr=self.LR, weight_decay=self.WEIGHT_DECAY)
        ts, te = torch.as_tensor(np.asarray(start)), torch.as_tensor(np.asarray(end))
        best, best_state, since = -1.0, None, 0
        for epoch in range(self.MAX_EPOCHS):
            for idx in self._batches(torch, len(x), epoch):
                logits = self._span_logits(torch, x[idx.numpy()], valid[idx.numpy()])
                loss = 0.5 * (
                    F.cross_entropy(logits[..., 0], ts[idx])
                    + F.cross_entropy(logits[..., 1], te[idx])
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
            ps, pe = self._decode_span(torch, val["x"], val["valid"])
            score = float(span_iou(ps, pe, val["start"], val["end"]).mean())
            if score > best:
                best, best_state, since = score, copy.deepcopy(self.conv.state_dict()), 0
            else:
                since += 1
                if since >= self.PATIENCE:
                    break
        self.conv.load_state_dict(best_state)
        self.span_epochs = epoch + 1

    def _fit_class(self, torch, pooled, label, val) -> None:
        import copy

        from torch.nn import functional as F

        torch.manual_seed(self.SEED)
        self.logistic = torch.nn.Linear(pooled.shape[1], 2)
        opt = torch.optim.AdamW(self.logistic.parameters(), lr=self.LR, weight_decay=1e-2)
        z = torch.from_numpy((pooled - self.mu) / self.sd)
        y = torch.as_tensor(np.asarray(label, dtype=np.int64))
        vz = torch.from_numpy(
            (_pooled(np.asarray(val["x"], np.float32), val["valid"]) - self.mu) / self.sd
        )
        vy = torch.as_tensor(np.asarray(val["label"], dtype=np.int64))
        best, best_state, since = float("inf"), None, 0
        for epoch in range(self.MAX_EPOCHS):
            for idx in self._batches(torch, len(z), epoch):
                loss = F.cross_entropy(self.logistic(z[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                score = float(F.cross_entropy(self.logistic(vz), vy))  # validation log-loss
            if score < best:
                best, best_state, since = score, copy.deepcopy(self.logistic.state_dict()), 0
            else:
                since += 1
                if since >= self.PATIENCE:
                    break
        self.logistic.load_state_dict(best_state)

    def _decode_span(self, torch, x, valid):
        from torch.nn import functional as F

        from moola_core.spans import best_pair

        valid = np.asarray(valid, dtype=bool)
        with torch.no_grad():
            logits = self._span_logits(torch, np.asarray(x, dtype=np.float32), valid)
            s, e = best_pair(
                F.log_softmax(logits[..., 0], 1),
                F.log_softmax(logits[..., 1], 1),
                torch.from_numpy(valid),
            )
        return s.numpy().astype(np.int64), e.numpy().astype(np.int64)

    def predict(self, x, valid) -> dict[str, np.ndarray]:
        import torch

        x, valid = np.asarray(x, dtype=np.float32), np.asarray(valid, dtype=bool)
        start, end = self._decode_span(torch, x, valid)
        with torch.no_grad():
            z = torch.from_numpy((_pooled(x, valid) - self.mu) / self.sd)
            probs = torch.softmax(self.logistic(z), dim=1).numpy().astype(np.float64)
        return {
            "label": probs.argmax(1).astype(np.int64),
            "start": start,
            "end": end,
            "class_probs": probs,
        }


BASELINES = {
    "majority": MajorityBaseline,
    "heuristic": RangeExpansionHeuristic,
    "linear": LinearBaseline,
}


def fit_baselines(x, valid, label, start, end, val: dict | None = None) -> dict:
    """Fit every baseline on training arrays -> {name: fitted baseline}.

    `val` (dict with x, valid, label, start, end) is the validation split the trained
    baselines stop on, as the models do; without it the linear one holds out its own fifth.
    """
    return {
        name: cls().fit(x, valid, label, start, end, val=val) for name, cls in BASELINES.items()
    }
