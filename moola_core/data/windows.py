"""105-bar windows over a bar stream, for pre-training: features once, windows as views.

Features are computed once per gap-free run of bars (a session), so no indicator reaches across
a session gap, and every window lies inside one run. Windows are strided views of the per-bar
feature array; when the stream is one run the result is a view (no copy), otherwise the window
starts are irregular and numpy must gather them (a copy of N x 105 x 11 float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from moola_core.data.bars import check_bars, session_bounds
from moola_core.data.features import compute_features
from moola_core.errors import MoolaError
from moola_core.spec import N_FEATURES, WINDOW_LEN

MAX_GATHER_BYTES = 4 << 30  # refuse to copy more windows than this; a larger stride fits


@dataclass(frozen=True)
class WindowSet:
    """Unlabeled windows: x float32 [N, 105, 11], valid bool [N, 105], times of first/last bar."""

    x: np.ndarray
    valid: np.ndarray
    start_ts: pd.DatetimeIndex
    end_ts: pd.DatetimeIndex
    start_index: np.ndarray  # int64 [N]: row of each window's first bar in the bars frame

    def __len__(self) -> int:
        return len(self.start_index)


def stream_features(bars: pd.DataFrame, max_gap_minutes: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-bar features over a stream, restarted after every gap: float32 [n, 11], bool [n]."""
    n = len(bars)
    values = np.zeros((n, N_FEATURES), dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    ohlc = bars[["open", "high", "low", "close"]].to_numpy(dtype=np.float64)
    for a, b in session_bounds(bars["timestamp"], max_gap_minutes):
        feats = compute_features(ohlc[a:b, 0], ohlc[a:b, 1], ohlc[a:b, 2], ohlc[a:b, 3])
        values[a:b] = feats.values
        valid[a:b] = feats.valid
    return values, valid


def window_starts(bounds: np.ndarray, stride: int) -> np.ndarray:
    """First rows of all 105-bar windows with `stride` that fit inside one run of bars."""
    starts = [np.arange(a, b - WINDOW_LEN + 1, stride) for a, b in bounds if b - a >= WINDOW_LEN]
    return np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, dtype=np.int64)


def unlabeled_windows(
    bars: pd.DataFrame, stride: int = 1, max_gap_minutes: float = 5.0
) -> WindowSet:
    """All 105-bar windows (every `stride` bars) that never cross a gap > max_gap_minutes.

    The bars are validated first (ValidationError lists any problem). x and valid are views of
    one per-bar feature array when the stream has no gap, a gathered copy otherwise.
    """
    if stride < 1:
        raise MoolaError(f"stride must be at least 1, got {stride}.")
    if max_gap_minutes < 1:
        raise MoolaError(
            f"max_gap_minutes must be at least 1 (bars are 1 minute apart), got {max_gap_minutes}."
        )
    bars = check_bars(bars)
    bounds = session_bounds(bars["timestamp"], max_gap_minutes)
    starts = window_starts(bounds, stride)
    values, valid = stream_features(bars, max_gap_minutes)
    ts = pd.DatetimeIndex(bars["timestamp"])
    if len(starts) == 0:
        empty = np.zeros((0, WINDOW_LEN, N_FEATURES), dtype=np.float32)
        return WindowSet(empty, np.zeros((0, WINDOW_LEN), bool), ts[:0], ts[:0], starts)
    # [n - 104, 11, 105] -> [n - 104, 105, 11]: every possible window, no copy
    all_x = np.lib.stride_tricks.sliding_window_view(values, WINDOW_LEN, axis=0).transpose(0, 2, 1)
    all_valid = np.lib.stride_tricks.sliding_window_view(valid, WINDOW_LEN)
    first = int(starts[0])
    if np.array_equal(starts, first + stride * np.arange(len(starts))):
        pick = slice(first, first + stride * (len(starts) - 1) + 1, stride)  # a view
    else:
        pick = starts  # irregular (gaps): numpy gathers a copy
        need = len(starts) * WINDOW_LEN * (N_FEATURES * 4 + 1)
        if need > MAX_GATHER_BYTES:
            fit = -(-need * stride // MAX_GATHER_BYTES)
            raise MoolaError(
                f"{len(starts):,} windows across gaps need {need / 2**30:.1f} GiB as a copy; "
                f"use a stride of at least {fit} (or fewer bars)."
            )
    return WindowSet(
        x=all_x[pick],
        valid=all_valid[pick],
        start_ts=ts[starts],
        end_ts=ts[starts + WINDOW_LEN - 1],
        start_index=starts,
    )
