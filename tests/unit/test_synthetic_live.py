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
