"""The synthetic windows for live-use evaluation: pattern-free windows in detection sets (their
share is part of the difficulty knob) and as-of cuts at a delay after the expansion began."""

from __future__ import annotations

import numpy as np
import pytest

from moola_core.data import synthetic
from moola_core.errors import MoolaError


def test_no_pattern_share_follows_the_difficulty_knob():
    shares = [synthetic.Difficulty.of(d).no_pattern_share for d in ("easy", "default", "hard")]
    assert shares == pytest.approx([0.2, 0.35, 0.5])


def test_detection_set_mixes_pattern_free_windows_with_exact_spans():
    det = synthetic.make_detection_set(90, seed=3, no_pattern_share=0.4)
    assert det.x.shape == (90, 105, 11) and det.valid.shape == (90, 105)
    share = 1 - det.has_pattern.mean()
    assert 0.25 < share < 0.55
    none = ~det.has_pattern
    assert (det.start[none] == -1).all() and (det.label[none] == -1).all()
    assert (det.start[~none] >= synthetic.SPAN_MIN_START).all()
    assert (det.start[~none] <= det.end[~none]).all() and (det.end[~none] <= 104).all()
    again = synthetic.make_detection_set(90, seed=3, no_pattern_share=0.4)
    assert np.array_equal(again.x, det.x) and again.window_id == det.window_id
    with pytest.raises(MoolaError, match="no-pattern share"):
        synthetic.make_detection_set(10, no_pattern_share=1.0)


def test_as_of_cuts_end_d_bars_after_the_expansion_began():
    before = synthetic.make_asof_set(12, seed=4, delay=-5)
    assert not before.has_pattern.any() and (before.start == -1).all()
    at = synthetic.make_asof_set(12, seed=4, delay=0)
    assert at.has_pattern.all() and (at.start == 104).all() and (at.end == 104).all()
    later = synthetic.make_asof_set(12, seed=4, delay=6)
    assert (later.start == 98).all() and (later.end <= 104).all() and (later.end >= 98).all()
    # the same episodes in every cut: the window is the stream shifted by the delay
    assert len(before.x) == len(at.x) == len(later.x) == 12


def _wide_run_share(x, valid) -> float:
    """Share of windows with three wide bars in a row (range_z > 1.5): what a decoy or a
    failed breakout adds and a quiet stretch has not."""
    from moola_core.data.features import COL

    wide = np.where(valid, x[:, :, COL["range_z"]], 0.0) > 1.5
    return float((wide[:, :-2] & wide[:, 1:-1] & wide[:, 2:]).any(axis=1).mean())


def test_pattern_free_windows_carry_the_difficultys_hard_negatives():
    shares = {
        d: _wide_run_share(*synthetic.make_pattern_free_windows(240, seed=5, difficulty=d))
        for d in ("easy", "default", "hard")
    }
    # none at easy, half the slots at default, every slot at hard
    assert shares["easy"] < shares["default"] < shares["hard"]
    assert shares["hard"] > 1.8 * shares["easy"]
    default = synthetic.make_pattern_free_windows(60, seed=5, difficulty="default")
    hard = synthetic.make_pattern_free_windows(60, seed=5, difficulty="hard")
    assert not np.array_equal(default[0], hard[0])


def test_hard_negatives_fill_empty_slots_only_and_plant_no_expansion():
    hard = synthetic.simulate_market(12, seed=3, difficulty="hard", episode_labels=[None] * 36)
    assert hard.episodes.empty
    assert len(hard.hard_negatives) == 36  # every empty slot at hard
    assert set(hard.hard_negatives["kind"]) == set(synthetic.HARD_NEGATIVE_KINDS)
    inside = hard.hard_negatives
    assert (inside["first"] >= inside["window_start"]).all()
    assert (inside["last"] < inside["window_start"] + synthetic.WINDOW_LEN).all()
    easy = synthetic.simulate_market(12, seed=3, difficulty="easy", episode_labels=[None] * 36)
    assert easy.hard_negatives.empty
    # an episode's slot never gets one, and adding them changed no episode's bars
    mixed = synthetic.simulate_market(4, seed=3, difficulty="hard")
    taken = set(mixed.episodes["window_start"])
    assert taken.isdisjoint(set(mixed.hard_negatives["window_start"]))
