"""The label loop's pure parts: the labeling config, reading a reviewer's answer, verdicts,
agreement, ordering, overlap by shared bars (no Label Studio needed)."""

from __future__ import annotations

import numpy as np
import pytest

from moola_ops.labeling import tasks as T
from moola_ops.labeling import windows as W
from moola_ops.labeling.review import agreement, verdict


def test_config_has_the_controls_import_reads():
    config = T.labeling_config()
    assert T.config_matches(config)
    assert 'timeColumn="bar"' in config and "<MultiChannel>" in config
    assert 'overviewWidth="100%"' in config  # all 105 bars in view
    with_features = T.labeling_config(with_features=True)
    assert 'column="dist_to_prev_sh"' in with_features  # Label Studio reads columns lower-case
    assert not T.config_matches("<View><TimeSeries name='ts'/></View>")


def test_task_payload_carries_bars_keys_and_the_pre_annotation():
    bars = np.tile([[100.0, 101.0, 99.0, 100.5]], (105, 1))
    pre = T.PreAnnotation("retracement", 60, 70, 0.8, 0.7, 0.56)
    task = T.task_payload(
        key="b/0",
        window_id="w",
        batch="b",
        source="capture",
        reason="why",
        ohlc=bars,
        pre=pre,
        model_version="run",
    )
    assert task["data"]["ts"]["bar"] == list(range(105)) and len(task["data"]["ts"]["close"]) == 105
    (prediction,) = task["predictions"]
    assert prediction["model_version"] == "run" and prediction["score"] == 0.56
    assert T.read_answer(prediction["result"]) == T.Answer(False, "retracement", 60, 70)


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (T.prediction_result("retracement", 60, 50), "ends at bar 50 before it starts at bar 60"),
        (T.prediction_result("retracement", 90, 130), "reaches outside the bars 0-104"),
        (T.prediction_result("retracement", -3, 10), "reaches outside the bars 0-104"),
        (T.prediction_result("sideways", 10, 20), "the pattern choice is ['sideways']"),
        (T.prediction_result("retracement", 10, 20)[1:], "marks 0 expansion spans"),
        ([], "the pattern choice is missing"),
    ],
)
def test_unreadable_answers_are_one_sentence(result, message):
    with pytest.raises(T.AnswerProblem, match=message.replace("[", r"\[").replace("]", r"\]")):
        T.read_answer(result)


def test_a_dragged_span_lands_on_the_nearest_bars_and_reject_needs_no_span():
    result = T.prediction_result("consolidation", 0, 0)
    result[0]["value"].update(start=59.6, end=104.4)
    assert T.read_answer(result) == T.Answer(False, "consolidation", 60, 104)
    assert T.read_answer(T.rejection_result()) == T.Answer(rejected=True)


def test_verdicts_and_agreement():
    pre = {"label": "retracement", "start": 60, "end": 70}
    assert verdict(pre, T.Answer(False, "retracement", 60, 70)) == "accepted"
    assert verdict(pre, T.Answer(False, "retracement", 60, 72)) == "edited"
    assert verdict(pre, T.Answer(False, "consolidation", 60, 70)) == "edited"
    assert verdict(pre, T.Answer(True)) == "rejected"
    same, iou = agreement(
        T.Answer(False, "retracement", 60, 69), T.Answer(False, "retracement", 65, 74)
    )
    assert same and iou == round(5 / 15, 4)
    assert agreement(T.Answer(True), T.Answer(True)) == (True, None)
    assert agreement(T.Answer(True), T.Answer(False, "retracement", 1, 2)) == (False, None)


def test_order_puts_disagreements_first_then_lowest_score():
    cands = W.Candidates(
        np.zeros((4, 105, 4)),
        list("abcd"),
        ["capture", "disagreement", "capture", "disagreement"],
        [{}] * 4,
        [None] * 4,
        [None] * 4,
    )
    pre = [T.PreAnnotation("retracement", 1, 2, s, 1.0, s) for s in (0.2, 0.9, 0.1, 0.5)]
    assert W.order(cands, pre) == [3, 1, 2, 0]


def test_overlap_is_three_shared_bars_at_float32_precision():
    rng = np.random.default_rng(0)
    a = 100 + rng.random((1, 105, 4))
    shifted = np.concatenate([a[:, 102:], 100 + rng.random((1, 102, 4))], axis=1)  # 3 shared
    two = np.concatenate([a[:, 103:], 100 + rng.random((1, 103, 4))], axis=1)  # 2 shared
    reviewed = W.row_hashes(a.astype(np.float32).astype(np.float64)).reshape(-1)
    assert W.overlapping(np.concatenate([shifted, two]), reviewed).tolist() == [True, False]
    assert W.fingerprints(a) == W.fingerprints(a.astype(np.float32))
