"""Training/serving skew: the host's torch features equal the training features (numpy).

Thousands of windows: every 105-bar window of the pinned real-bar sample (stride 1), windows of
the synthetic market, random-walk windows, and hand-made edge cases (flat bars, gaps, one wild
bar). Values must agree to float32 precision and the warm-up mask exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moola_core.data import features as train_features
from moola_core.data.real import load_real_sample
from moola_core.data.synthetic import generate_market
from moola_core.runtime import hostfeatures
from moola_core.spec import WINDOW_LEN

ATOL = 2e-6  # float32 rounding of values in [-3, 3]; the zig-zag must agree exactly (mask)


def windows_of(bars: np.ndarray, stride: int) -> np.ndarray:
    """Every `stride`-th 105-bar window of a [n, 4] OHLC array -> [N, 105, 4]."""
    starts = range(0, len(bars) - WINDOW_LEN + 1, stride)
    return np.stack([bars[s : s + WINDOW_LEN] for s in starts])


def assert_parity(windows: np.ndarray, what: str) -> None:
    host_values, host_valid = hostfeatures.compute_features(torch.from_numpy(windows))
    host_values, host_valid = host_values.numpy(), host_valid.numpy()
    worst = 0.0
    for i, window in enumerate(windows):
        expected = train_features.compute_features(*window.T)
        assert (host_valid[i] == expected.valid).all(), f"{what} window {i}: warm-up mask differs"
        diff = float(np.abs(host_values[i] - expected.values).max())
        worst = max(worst, diff)
        assert diff <= ATOL, f"{what} window {i}: max |host - training| {diff:.2e}"
    assert worst <= ATOL


def test_constants_are_the_training_ones():
    for name in (
        "RANGE_FLOOR",
        "RANGE_EMA_SPAN",
        "ATR_PERIOD",
        "SWING_REVERSAL_ATR",
        "BARS_SINCE_SCALE",
        "MIN_WARMUP",
        "COL",
    ):
        assert getattr(hostfeatures, name) == getattr(train_features, name), name


def test_parity_on_every_window_of_the_real_sample():
    bars = load_real_sample()[["open", "high", "low", "close"]].to_numpy(np.float64)
    windows = windows_of(bars, stride=1)
    assert len(windows) > 2000
    assert_parity(windows, "real sample")


def test_parity_on_synthetic_and_random_windows():
    market = generate_market(20_000, seed=7, difficulty="default")
    synthetic = windows_of(market[["open", "high", "low", "close"]].to_numpy(np.float64), 7)
    assert_parity(synthetic, "synthetic")
    rng = np.random.default_rng(3)
    n = 600
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.003, (n, WINDOW_LEN)), axis=1))
    open_ = close * np.exp(rng.normal(0, 0.001, (n, WINDOW_LEN)))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.002, (n, WINDOW_LEN))))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.002, (n, WINDOW_LEN))))
    assert_parity(np.stack([open_, high, low, close], axis=2), "random walk")
    assert len(synthetic) + n >= 3000


def test_parity_on_edge_cases():
    flat = np.full((WINDOW_LEN, 4), 10.0)  # no range at all: the floor, never a division by 0
    gap = flat.copy()
    gap[50:] *= 1.5  # a jump: true range from the previous close
    wild = np.tile([10.0, 10.2, 9.8, 10.0], (WINDOW_LEN, 1))
    wild[30] = [10.0, 14.0, 6.0, 10.0]  # reverses both ways in one bar
    steps = np.tile([10.0, 10.0, 10.0, 10.0], (WINDOW_LEN, 1))
    steps[::10, 1] = 10.5  # ties between equal highs keep the earlier bar
    assert_parity(np.stack([flat, gap, wild, steps]), "edge case")


def test_shape_errors_and_empty_input():
    with pytest.raises(ValueError, match="expected OHLC windows"):
        hostfeatures.compute_features(torch.zeros(3, 105))
    values, valid = hostfeatures.compute_features(torch.zeros(0, WINDOW_LEN, 4))
    assert values.shape == (0, WINDOW_LEN, 11) and valid.shape == (0, WINDOW_LEN)
