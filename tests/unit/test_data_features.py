"""The 11 features: causality, price-scale invariance, bounds, warm-up mask, determinism, and the
zig-zag on a hand-built path."""

import numpy as np
import pytest

from moola_core.data.features import (
    BOUNDS,
    COL,
    MIN_WARMUP,
    atr,
    compute_features,
    ema,
    zigzag,
)
from moola_core.data.synthetic import generate_market
from moola_core.spec import FEATURE_NAMES, N_FEATURES


def random_bars(n: int, seed: int = 0):
    """A plain random-walk OHLC path (independent of the synthetic generator)."""
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    open_ = np.concatenate(([50.0], close[:-1])) * np.exp(rng.normal(0, 0.0005, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.001, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.001, n)))
    return open_, high, low, close


@pytest.fixture(scope="module")
def market():
    bars = generate_market(3000, seed=7)
    return tuple(bars[c].to_numpy() for c in ("open", "high", "low", "close"))


def test_shapes_dtypes_and_names(market):
    feats = compute_features(*market)
    assert feats.values.shape == (3000, N_FEATURES) and feats.values.dtype == np.float32
    assert feats.valid.shape == (3000,) and feats.valid.dtype == bool
    assert list(COL) == list(FEATURE_NAMES)


@pytest.mark.parametrize("cut", [30, 200, 1499, 2998])
def test_changing_future_bars_changes_no_past_feature(market, cut):
    before = compute_features(*market)
    rng = np.random.default_rng(cut)
    o, h, lo, c = (a.copy() for a in market)
    # replace every bar after `cut` with a wild but valid path
    k = len(c) - cut - 1
    c[cut + 1 :] *= np.exp(rng.normal(0, 0.02, k))
    o[cut + 1 :] = c[cut + 1 :] * np.exp(rng.normal(0, 0.01, k))
    h[cut + 1 :] = np.maximum(o[cut + 1 :], c[cut + 1 :]) * 1.01
    lo[cut + 1 :] = np.minimum(o[cut + 1 :], c[cut + 1 :]) * 0.99
    after = compute_features(o, h, lo, c)
    assert not np.array_equal(before.values[cut + 1 :], after.values[cut + 1 :])
    np.testing.assert_array_equal(before.values[: cut + 1], after.values[: cut + 1])
    np.testing.assert_array_equal(before.valid[: cut + 1], after.valid[: cut + 1])


def test_prefix_gives_the_same_features(market):
    full = compute_features(*market)
    prefix = compute_features(*(a[:777] for a in market))
    np.testing.assert_allclose(prefix.values, full.values[:777], atol=1e-6)
    np.testing.assert_array_equal(prefix.valid, full.valid[:777])


@pytest.mark.parametrize("scale", [0.013, 7.0, 2500.0])
def test_price_scale_invariance(scale):
    bars = random_bars(1500, seed=3)
    base = compute_features(*bars)
    scaled = compute_features(*(a * scale for a in bars))
    np.testing.assert_array_equal(base.valid, scaled.valid)
    np.testing.assert_allclose(scaled.values, base.values, atol=2e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_valid_value_lies_within_its_bounds(seed):
    feats = compute_features(*random_bars(4000, seed))
    vals = feats.values[feats.valid]
    assert np.isfinite(feats.values).all()
    for name, (lo, hi) in BOUNDS.items():
        column = vals[:, COL[name]]
        assert column.min() >= lo and column.max() <= hi, name
    # the clip bounds are reached but the features are not degenerate
    assert np.unique(vals[:, COL["body_pct"]]).size > 1000


def test_warm_up_rows_are_masked_and_zero():
    feats = compute_features(*random_bars(500, seed=5))
    assert not feats.valid[:MIN_WARMUP].any()
    assert feats.valid[200:].all()
    assert (feats.values[~feats.valid] == 0).all()


def test_flat_and_tiny_series_stay_finite():
    flat = np.full(60, 10.0)
    feats = compute_features(flat, flat, flat, flat)
    assert np.isfinite(feats.values).all()
    assert not feats.valid.any()  # no swing can be confirmed on a flat line
    one = compute_features([1.0], [1.1], [0.9], [1.05])
    assert one.values.shape == (1, N_FEATURES) and not one.valid.any()
    empty = compute_features([], [], [], [])
    assert empty.values.shape == (0, N_FEATURES)


def test_deterministic(market):
    a = compute_features(*market)
    b = compute_features(*market)
    assert a.values.tobytes() == b.values.tobytes()
    assert np.array_equal(a.valid, b.valid)


def hand_path(wick: float = 0.0):
    """Up 10 bars, down 10, up 10; bodies of 1.0 plus `wick` above and below each bar."""
    close = np.concatenate([np.arange(1, 11), np.arange(9, -1, -1), np.arange(1, 11)]) + 100.0
    open_ = np.concatenate(([100.0], close[:-1]))
    return open_, np.maximum(open_, close) + wick, np.minimum(open_, close) - wick, close


def test_candle_features_by_hand():
    # every bar: body 1, wicks 0.5 each side, range 2
    feats = compute_features(*hand_path(wick=0.5))
    up, down = feats.values[25], feats.values[19]
    assert feats.valid[25] and feats.valid[19]
    expected_up = {
        "open_norm": 0.25,
        "close_norm": 0.75,
        "body_pct": 0.5,
        "upper_wick_pct": 0.25,
        "lower_wick_pct": 0.25,
        "range_z": 1.0,
    }
    for name, value in expected_up.items():
        assert up[COL[name]] == pytest.approx(value, abs=1e-6), name
    assert down[COL["body_pct"]] == pytest.approx(-0.5, abs=1e-6)
    assert down[COL["open_norm"]] == pytest.approx(0.75, abs=1e-6)
    # down bar in a down leg and up bar in an up leg both push the proxy positive
    assert up[COL["expansion_proxy"]] == pytest.approx(0.5, abs=1e-6)
    assert down[COL["expansion_proxy"]] == pytest.approx(0.5, abs=1e-6)


def test_ema_matches_the_recurrence():
    x = np.random.default_rng(0).normal(size=300)
    ref = np.empty_like(x)
    ref[0] = x[0]
    alpha = 2 / 21
    for t in range(1, len(x)):
        ref[t] = alpha * x[t] + (1 - alpha) * ref[t - 1]
    np.testing.assert_allclose(ema(x, 20), ref, atol=1e-12)


def test_atr_is_the_mean_true_range_of_ten_bars():
    o, h, lo, c = random_bars(50, seed=9)
    tr = [h[0] - lo[0]] + [
        max(h[t] - lo[t], abs(h[t] - c[t - 1]), abs(lo[t] - c[t - 1])) for t in range(1, 50)
    ]
    got = atr(h, lo, c)
    for t in range(9, 50):
        assert got[t] == pytest.approx(np.mean(tr[t - 9 : t + 1]), rel=1e-12)


def test_zigzag_confirms_swings_on_a_hand_built_path():
    # each bar moves 1.0 and has range 1.0, so ATR = 1 and a swing needs a 1.2 reversal
    open_, high, low, close = hand_path()
    atr_values = np.maximum(atr(high, low, close), 1e-6)
    swings = zigzag(high, low, close, atr_values)
    # the high of 110 at bar 9 is confirmed as a swing high once the close is 2 below it
    t_sh = int(np.argmax(swings.sh_index >= 0))
    assert swings.sh_index[t_sh] == 9 and swings.sh_price[t_sh] == 110.0
    assert t_sh == 11  # close 108 at bar 11 is the first >= 1.2 ATR below 110
    # the low of 100 at bar 19 is confirmed as the swing low when the close gets back to 102
    t_sl = int(np.argmax(swings.sl_index == 19))
    assert swings.sl_price[t_sl] == 100.0 and t_sl == 21
    assert swings.leg_dir[12] == -1 and swings.leg_dir[25] == 1
    feats = compute_features(open_, high, low, close)
    assert feats.valid[19] and not feats.valid[18]  # EMA warm-up ends at 19
    row = feats.values[25]
    assert row[COL["bars_since_SH_norm"]] == pytest.approx((25 - 9) / 105, abs=1e-6)
    assert row[COL["bars_since_SL_norm"]] == pytest.approx((25 - 19) / 105, abs=1e-6)
    assert row[COL["expansion_proxy"]] > 0  # up leg, up bar


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_bar_by_bar_reference(seed):
    from moola_core.data.reference import reference_features

    bars = generate_market(2500, seed=seed, difficulty="hard")
    ohlc = [bars[c].to_numpy() for c in ("open", "high", "low", "close")]
    ref_values, ref_valid = reference_features(*(a.tolist() for a in ohlc))
    feats = compute_features(*ohlc)
    np.testing.assert_array_equal(feats.valid, ref_valid)
    np.testing.assert_allclose(feats.values, ref_values, atol=1e-6)
    random = random_bars(2500, seed)
    ref_values, ref_valid = reference_features(*(a.tolist() for a in random))
    feats = compute_features(*random)
    np.testing.assert_array_equal(feats.valid, ref_valid)
    np.testing.assert_allclose(feats.values, ref_values, atol=1e-6)


def test_swing_loop_chunking_changes_nothing(market, monkeypatch):
    import moola_core.data.features as features

    whole = compute_features(*market)
    monkeypatch.setattr(features, "ZIGZAG_CHUNK", 7)  # state carried across 429 chunks
    chunked = compute_features(*market)
    assert whole.values.tobytes() == chunked.values.tobytes()
