"""The synthetic market: determinism, calendar and gaps, realism checks, planted spans and the
difficulty knob (a range-only heuristic does worse as difficulty rises, and below 0.5 IoU at
the default)."""

import numpy as np
import pytest

from moola_core.data.bars import session_bounds, validate_bars
from moola_core.data.features import COL
from moola_core.data.labeled import to_model_arrays, validate_labeled
from moola_core.data.synthetic import (
    SESSION_BARS,
    SPAN_MIN_START,
    Difficulty,
    generate_market,
    make_labeled_set,
    simulate_market,
)
from moola_core.errors import MoolaError
from moola_core.spec import LABELS, WINDOW_LEN


def test_market_is_deterministic_valid_and_has_sessions():
    a = generate_market(2000, seed=11)
    b = generate_market(2000, seed=11)
    assert a.equals(b)
    assert not a.equals(generate_market(2000, seed=12))
    assert len(a) == 2000 and not validate_bars(a)
    bounds = session_bounds(a["timestamp"], max_gap_minutes=5)
    assert (bounds[:-1, 1] - bounds[:-1, 0] == SESSION_BARS).all()
    assert a["timestamp"].dt.day_of_week.max() <= 4  # weekdays only


def test_market_shows_clustering_and_intraday_seasonality():
    bars = generate_market(60 * SESSION_BARS, seed=3)
    ret = np.diff(np.log(bars["close"].to_numpy()))
    absret = np.abs(ret - ret.mean())
    # volatility clustering: |returns| are autocorrelated at lag 1..10
    lagged = [np.corrcoef(absret[:-k], absret[k:])[0, 1] for k in (1, 5, 10)]
    assert min(lagged) > 0.05
    # U-shape: the first and last half hour are wider than midday
    rng = ((bars["high"] - bars["low"]) / bars["close"]).to_numpy()
    minute = np.arange(len(bars)) % SESSION_BARS
    edges = rng[(minute < 30) | (minute >= SESSION_BARS - 30)].mean()
    midday = rng[(minute > 165) & (minute < 225)].mean()
    assert edges > 1.2 * midday


def test_labeled_set_matches_the_schema_and_is_deterministic():
    df = make_labeled_set(seed=9)
    assert len(df) == 174
    assert set(df["label"]) == set(LABELS)
    assert not [p for p in validate_labeled(df) if p.severity == "error"]
    assert (df["expansion_start"] >= SPAN_MIN_START - 10).all()
    assert (df["expansion_end"] <= WINDOW_LEN - 1).all()
    again = make_labeled_set(seed=9)
    assert all(np.array_equal(a, b) for a, b in zip(df["features"], again["features"], strict=True))
    other = make_labeled_set(seed=10)
    assert not np.array_equal(df["features"].iloc[0], other["features"].iloc[0])


def test_planted_spans_are_exact_in_the_stream():
    labels = ["consolidation", "retracement"] * 6
    market = simulate_market(4, seed=2, difficulty="default", episode_labels=labels)
    log_close = np.log(market.bars["close"].to_numpy())
    span_moves, other_moves = [], []
    for ep in market.episodes.itertuples():
        length = ep.expansion_end - ep.expansion_start + 1
        span_moves.append(abs(log_close[ep.expansion_end] - log_close[ep.expansion_start - 1]))
        # the same number of bars at the start of the window, far from the episode
        w = ep.window_start
        other_moves.append(abs(log_close[w + length] - log_close[w]))
    assert len(market.episodes) == 12
    # an expansion is a directional run: its net move dwarfs an ordinary stretch's
    assert np.mean(span_moves) > 2.0 * np.mean(other_moves)


def _range_run_iou(difficulty: str) -> float:
    """IoU of 'the longest run of range_z > 1.2' with the true span."""
    arrays = to_model_arrays(make_labeled_set(120, seed=21, difficulty=difficulty))
    ious = []
    for x, valid, s, e in zip(arrays.x, arrays.valid, arrays.start, arrays.end, strict=True):
        wide = (x[:, COL["range_z"]] > 1.2) & valid
        best, run_start = (0, 0, 0), None
        for t, w in enumerate(list(wide) + [False]):
            if w and run_start is None:
                run_start = t
            if not w and run_start is not None:
                if t - run_start > best[0]:
                    best = (t - run_start, run_start, t - 1)
                run_start = None
        _, ps, pe = best
        inter = max(0, min(pe, e) - max(ps, s) + 1)
        ious.append(inter / ((pe - ps + 1) + (e - s + 1) - inter))
    return float(np.mean(ious))


def test_difficulty_knob_moves_a_range_only_heuristic():
    easy, default, hard = (_range_run_iou(d) for d in ("easy", "default", "hard"))
    assert easy > default > hard
    assert default < 0.5  # range alone does not solve the default set


def test_difficulty_values():
    assert Difficulty.of("default") == Difficulty.of(0.5)
    assert Difficulty.of("easy").decoy_prob == 0.0 and Difficulty.of("hard").decoy_prob == 1.0
    with pytest.raises(MoolaError, match="unknown difficulty"):
        Difficulty.of("brutal")
    with pytest.raises(MoolaError, match="out of range"):
        Difficulty.of(1.5)
