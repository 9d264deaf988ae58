"""Unlabeled windows for pre-training, split by date into train and validation.

Bars come from the synthetic market, the pinned real-bar sample or a bars file; the data area
cuts them into 105-bar windows (`moola_core.data.windows.unlabeled_windows`) with a stride and
without crossing gaps. Here the windows are split by time: every validation window starts on or
after the cutoff and every training window ends before it, so no bar is in both sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from moola_core.errors import MoolaError
from moola_core.pretrain.config import DataSection
from moola_core.spec import N_FEATURES, WINDOW_LEN


@dataclass
class PretrainWindows:
    """Train/val windows as torch tensors: x float32 [N, T, F], valid bool [N, T]."""

    train_x: torch.Tensor
    train_valid: torch.Tensor
    val_x: torch.Tensor
    val_valid: torch.Tensor
    cutoff: str  # ISO timestamp: val windows start at or after it

    def describe(self) -> dict:
        return {
            "train_windows": int(self.train_x.shape[0]),
            "val_windows": int(self.val_x.shape[0]),
            "cutoff": self.cutoff,
        }


def load_bars(section: DataSection) -> pd.DataFrame:
    """The bar stream named by the config's data section."""
    if section.source == "synthetic":
        from moola_core.data.synthetic import generate_market

        return generate_market(
            n_bars=section.n_bars, seed=section.market_seed, difficulty=section.difficulty
        )
    if section.source == "real":
        from moola_core.data.real import load_real_sample

        return load_real_sample()
    if not section.bars_path:
        raise MoolaError("data.source is 'bars' but data.bars_path is empty; set it to a file.")
    from moola_core.data.bars import load_bars as read_bars

    return read_bars(section.bars_path)


def date_split(
    start_ts: pd.DatetimeIndex,
    end_ts: pd.DatetimeIndex,
    val_fraction: float,
    split_date: str | None = None,
) -> tuple[np.ndarray, np.ndarray, pd.Timestamp]:
    """Indices of train windows (end < cutoff) and val windows (start >= cutoff), and the cutoff.

    The cutoff is `split_date` when given; otherwise the start of the calendar day that leaves
    about `val_fraction` of the windows for validation (or, when all windows fall on one or two
    days, the window start at that quantile). Windows straddling the cutoff are dropped.
    """
    start_ts = pd.DatetimeIndex(start_ts)
    end_ts = pd.DatetimeIndex(end_ts)
    if len(start_ts) == 0:
        raise MoolaError("the bar stream gave no 105-bar window; provide more bars or fewer gaps.")
    if split_date is not None:
        cutoff = pd.Timestamp(split_date)
        if cutoff.tzinfo is None and start_ts.tz is not None:
            cutoff = cutoff.tz_localize(start_ts.tz)
    elif val_fraction == 0.0:
        cutoff = end_ts.max() + pd.Timedelta(minutes=1)
    else:
        quantile_start = start_ts.sort_values()[int(len(start_ts) * (1.0 - val_fraction))]
        cutoff = quantile_start
        if len(start_ts.normalize().unique()) >= 3:
            # the day boundary (before or after the quantile) whose val share is nearest the ask
            day = quantile_start.normalize()
            candidates = [c for c in (day, day + pd.Timedelta(days=1)) if start_ts.min() < c]
            candidates = [c for c in candidates if (start_ts >= c).any()]
            if candidates:
                cutoff = min(candidates, key=lambda c: abs((start_ts >= c).mean() - val_fraction))
    train_idx = np.flatnonzero(end_ts < cutoff)
    val_idx = np.flatnonzero(start_ts >= cutoff) if val_fraction > 0 or split_date else np.array([])
    if len(train_idx) == 0:
        raise MoolaError(
            f"no training window ends before the split {cutoff}; use an earlier data.split_date "
            "or a smaller data.val_fraction."
        )
    return train_idx.astype(np.int64), val_idx.astype(np.int64), cutoff


def window_end_times(bars: pd.DataFrame, window_set) -> pd.DatetimeIndex:
    """End timestamp of every window: taken from the window set when it carries one, else the
    timestamp WINDOW_LEN - 1 bars after its start in the bar stream."""
    end_ts = getattr(window_set, "end_ts", None)
    if end_ts is not None:
        return pd.DatetimeIndex(end_ts)
    timestamps = pd.DatetimeIndex(bars["timestamp"])
    start_rows = timestamps.get_indexer(pd.DatetimeIndex(window_set.start_ts))
    return timestamps[np.minimum(start_rows + WINDOW_LEN - 1, len(timestamps) - 1)]


def build_windows(section: DataSection, bars: pd.DataFrame | None = None) -> PretrainWindows:
    """Cut the configured bars into windows and split them by date (see module docstring)."""
    from moola_core.data.windows import unlabeled_windows

    if bars is None:
        bars = load_bars(section)
    window_set = unlabeled_windows(
        bars, stride=section.stride, max_gap_minutes=section.max_gap_minutes
    )
    start_ts = pd.DatetimeIndex(window_set.start_ts)
    end_ts = window_end_times(bars, window_set)
    train_idx, val_idx, cutoff = date_split(
        start_ts, end_ts, section.val_fraction, section.split_date
    )
    if section.max_windows is not None and len(train_idx) > section.max_windows:
        # evenly spaced, so a quick run still sees the whole history
        keep = np.linspace(0, len(train_idx) - 1, section.max_windows).round().astype(np.int64)
        train_idx = train_idx[keep]
        val_keep = max(1, section.max_windows // 4)
        if len(val_idx) > val_keep:
            val_idx = val_idx[np.linspace(0, len(val_idx) - 1, val_keep).round().astype(np.int64)]
    if section.features == "window":
        train_x, train_valid = per_window_features(bars, window_set.start_index[train_idx])
        val_x, val_valid = per_window_features(bars, window_set.start_index[val_idx])
    else:
        x, valid = np.asarray(window_set.x), np.asarray(window_set.valid)
        train_x, train_valid = x[train_idx], valid[train_idx]
        val_x, val_valid = x[val_idx], valid[val_idx]
    return PretrainWindows(
        train_x=torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32)),
        train_valid=torch.from_numpy(np.ascontiguousarray(train_valid, dtype=bool)),
        val_x=torch.from_numpy(np.ascontiguousarray(val_x, dtype=np.float32)),
        val_valid=torch.from_numpy(np.ascontiguousarray(val_valid, dtype=bool)),
        cutoff=cutoff.isoformat(),
    )


def per_window_features(
    bars: pd.DataFrame, start_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Features of each window computed from its own 105 bars, exactly as labeled windows get
    them (moola_core.data.labeled.to_model_arrays): x float32 [N, 105, 11], valid bool [N, 105]."""
    from moola_core.data.features import compute_features

    ohlc = bars[["open", "high", "low", "close"]].to_numpy(dtype=np.float64)
    x = np.zeros((len(start_rows), WINDOW_LEN, N_FEATURES), dtype=np.float32)
    valid = np.zeros((len(start_rows), WINDOW_LEN), dtype=bool)
    for i, row in enumerate(start_rows):
        window = ohlc[row : row + WINDOW_LEN]  # [105, 4]
        features = compute_features(window[:, 0], window[:, 1], window[:, 2], window[:, 3])
        x[i], valid[i] = features.values, features.valid
    return x, valid


def jitter(x: torch.Tensor, valid: torch.Tensor, std: float, generator: torch.Generator):
    """x plus Gaussian noise of `std` on valid timesteps (warm-up rows stay 0). x [B, T, F]."""
    if std <= 0.0:
        return x
    noise = torch.randn(x.shape, generator=generator).to(x.device) * std
    return x + noise * valid.unsqueeze(-1).to(x.dtype)
