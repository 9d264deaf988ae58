"""Stream evaluation (NAB-style): alarms scored against expansion windows by hand, the
summary's intervals, the paired difference, and the adaptive-bin reliability diagram."""

from __future__ import annotations

import numpy as np
import pytest

from moola_core import metrics as M
from moola_core import streams
from moola_core.spec import WINDOW_LEN


def _stream(n_bars=600, events=((200, 209), (400, 405)), session_bars=300) -> streams.Stream:
    ohlc = np.ones((n_bars, 4))
    session = np.arange(n_bars) // session_bars
    return streams.Stream(ohlc, session, np.array(events, dtype=np.int64).reshape(-1, 2))


def _alarm(stream, bars) -> np.ndarray:
    """Alarm flags for stream.bars, on at the given absolute bars."""
    on = np.zeros(len(stream.ohlc), dtype=bool)
    on[list(bars)] = True
    return on[stream.bars]


def test_alarms_are_scored_by_hand():
    stream = _stream()
    # event 1 [200, 209] (window to 214): detected at 203 (delay 3); a run 195-201 starts
    # before the onset: 195-199 is a false alarm, 200-201 lies inside the window.
    # event 2 [400, 405] (window to 410): never alarmed -> missed.
    # outside: 150-151 (one run), 160 (another), 214-216 (215-216 outside: a third run that
    # leaves the window), 350 (a fourth, in the second session)
    on = [*range(195, 202), 203, 150, 151, 160, *range(214, 217), 350]
    score = streams.score_alarms(stream, _alarm(stream, on))
    assert score.delay.tolist() == [0, -1]  # 200 was already alarmed: delay 0; then missed
    assert score.false_alarms.tolist() == [4, 1]  # sessions 0 (bars 0-299) and 1
    assert score.bars.tolist() == [300 - (WINDOW_LEN - 1), 300]  # the first 104 bars unanswered
    inside = 15 + 11  # bars in the two event windows
    assert score.quiet_bars.sum() == len(stream.bars) - inside
    assert score.quiet_alarms.sum() == 5 + 2 + 1 + 2 + 1
    assert score.event_session.tolist() == [0, 1]
    # a model that is always on: one false alarm run per stretch between windows
    always = streams.score_alarms(stream, np.ones(len(stream.bars), dtype=bool))
    assert always.delay.tolist() == [0, 0] and always.false_alarms.sum() == 3


def test_a_span_model_alarms_only_when_its_span_reaches_now():
    pred = {
        "end": np.array([104, 102, 101, 104]),
        "abstain": np.array([False, False, False, True]),
        "confidence": np.array([0.9, 0.9, 0.9, 0.9]),
    }
    assert streams.alarms(pred, live=False).tolist() == [True, True, False, False]
    assert streams.alarms(pred, live=True).tolist() == [True, True, True, False]


def test_the_summary_gives_rates_with_session_intervals_and_the_median_delay():
    stream = _stream(n_bars=1200, events=((200, 209), (500, 505), (800, 809), (1100, 1105)))
    on = [203, 500, 801, 150, 650, 660, 950]
    score = streams.score_alarms(stream, _alarm(stream, on))
    out = streams.summarize([score], n_boot=500)
    assert out["events"] == 4 and out["sessions"] == 4
    assert out["false_alarms_per_1k"]["value"] == pytest.approx(1000 * 4 / len(stream.bars))
    assert out["recall_within"]["value"] == pytest.approx(0.75)
    assert out["delay_p50"]["value"] == 1.0  # delays 3, 0, 1 and a miss (inf)
    assert out["missed_share"] == pytest.approx(0.25)
    for key in ("false_alarms_per_1k", "recall_within"):
        entry = out[key]
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    # more than half missed: the median delay is not a number, and says so as None
    lost = streams.score_alarms(stream, _alarm(stream, [203]))
    assert streams.summarize([lost], n_boot=100)["delay_p50"]["value"] is None


def test_the_paired_difference_of_a_model_with_itself_is_exactly_zero():
    stream = _stream(n_bars=1200, events=((200, 209), (500, 505), (800, 809)))
    a = streams.score_alarms(stream, _alarm(stream, [203, 150, 650]))
    b = streams.score_alarms(stream, _alarm(stream, [209, 150, 650, 660, 700]))
    same = streams.paired_difference([a], [a], "false_alarms_per_1k", n_boot=300)
    assert same == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    diff = streams.paired_difference([b], [a], "false_alarms_per_1k", n_boot=300)
    assert diff["value"] == pytest.approx(1000 * 2 / len(stream.bars))
    assert diff["ci_low"] >= 0.0  # b has every false alarm a has, and two more
    recall = streams.paired_difference([b], [a], "recall_within", n_boot=300)
    assert recall["value"] == pytest.approx(-1 / 3)  # 209 is 9 bars in: not within 5
    with pytest.raises(ValueError, match="unknown stream metric"):
        streams.paired_difference([a], [b], "precision")


def test_a_score_survives_json():
    stream = _stream()
    score = streams.score_alarms(stream, _alarm(stream, [203, 150]))
    again = streams.StreamScore.from_dict(score.to_dict())
    assert all(np.array_equal(getattr(again, k), getattr(score, k)) for k in score.to_dict())


def test_reliability_bins_hold_equal_counts_and_the_ece_by_hand():
    prob = np.array([0.1, 0.1, 0.2, 0.2, 0.8, 0.8, 0.9, 0.9])
    outcome = np.array([0, 0, 0, 1, 1, 1, 1, 0], dtype=bool)
    rel = M.reliability_bins(prob, outcome, bins=4)
    assert [b["n"] for b in rel["bins"]] == [2, 2, 2, 2]
    assert [b["rate"] for b in rel["bins"]] == [0.0, 0.5, 1.0, 0.5]
    # |0.1-0| + |0.2-0.5| + |0.8-1| + |0.9-0.5|, each bin a quarter
    assert rel["ece"] == pytest.approx((0.1 + 0.3 + 0.2 + 0.4) / 4)
    perfect = M.reliability_bins(np.full(100, 0.3), np.arange(100) < 30, bins=5)
    assert perfect["ece"] == pytest.approx(0.0, abs=1e-12)
    # weights are bootstrap counts: doubling every prediction changes nothing
    assert M.reliability_bins(prob, outcome, 4, weights=np.full(8, 2.0))["ece"] == pytest.approx(
        rel["ece"]
    )


def test_a_synthetic_stream_holds_the_markets_expansions_and_hard_negatives():
    stream = streams.synthetic_stream(6, seed=4, difficulty="hard")
    assert stream.labeled and len(stream.events) >= 1
    assert (stream.events[:, 0] <= stream.events[:, 1]).all()
    assert len(stream.hard_negatives) >= 1  # every empty slot at hard
    under = stream.under_way()
    assert under.sum() == sum(e - s + 1 for s, e in stream.events)
    bars, x, valid = next(streams.window_batches(stream, batch=16))
    assert bars[0] == WINDOW_LEN - 1 and x.shape == (16, WINDOW_LEN, 11)
    # the window of bar t is the 105 bars ending at t, its features computed on their own
    from moola_core.data.features import compute_features

    w = stream.ohlc[bars[3] - WINDOW_LEN + 1 : bars[3] + 1]
    feats = compute_features(w[:, 0], w[:, 1], w[:, 2], w[:, 3])
    assert np.array_equal(x[3], feats.values) and np.array_equal(valid[3], feats.valid)
