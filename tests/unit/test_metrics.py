"""Every metric against a case computed by hand; bootstrap intervals behave; baselines."""

import numpy as np
import pytest

from moola_core import metrics
from moola_core.baselines import (
    LinearBaseline,
    MajorityBaseline,
    RangeExpansionHeuristic,
    longest_run,
)
from moola_core.data.features import COL

# Four windows; spans are inclusive [start, end].
TRUTH = {"label": [0, 0, 1, 1], "start": [10, 50, 0, 100], "end": [19, 59, 9, 104]}
PRED = {"label": [0, 0, 1, 0], "start": [10, 55, 20, 102], "end": [19, 64, 29, 104]}

# By hand:
#   IoU: w0 10/10 = 1; w1 55..59 = 5 of 15 = 1/3; w2 0; w3 102..104 = 3 of 5 = 0.6
#   classes: class 0 tp 2 fp 1 fn 0 -> F1 4/5; class 1 tp 1 fp 0 fn 1 -> F1 2/3
#   bars: tp 10+5+0+3 = 18, predicted 33 (fp 15), true 35 (fn 17)
#   starts off by 0, 5, 20, 2; ends off by 0, 5, 20, 0
HAND = {
    "accuracy": 3 / 4,
    "macro_f1": (4 / 5 + 2 / 3) / 2,
    "f1_consolidation": 4 / 5,
    "f1_retracement": 2 / 3,
    "inspan_precision": 18 / 33,
    "inspan_recall": 18 / 35,
    "inspan_f1": 36 / 68,
    "span_iou": (1 + 1 / 3 + 0 + 0.6) / 4,
    "iou_ge_50": 2 / 4,
    "iou_ge_70": 1 / 4,
    "start_hit3": 2 / 4,
    "end_hit3": 2 / 4,
    "boundary_mae": (0 + 5 + 20 + 1) / 4,
    "span_iou_consolidation": (1 + 1 / 3) / 2,  # windows 0 and 1 are truly consolidation
    "span_iou_retracement": (0 + 0.6) / 2,
}


def test_every_metric_matches_the_hand_computed_case():
    got = metrics.point_metrics(PRED, TRUTH)
    assert set(got) == set(metrics.METRICS) == set(HAND)
    for name, expected in HAND.items():
        assert got[name] == pytest.approx(expected), name


def test_ece_and_brier_by_hand():
    # top probabilities 0.9 (right), 0.8 (wrong), 0.6 (right), 0.55 (right); bins of 0.1:
    # [0.9]: |0.9 - 1| = 0.1; [0.8]: |0.8 - 0| = 0.8; [0.5, 0.6): |0.55 - 1| = 0.45;
    # [0.6, 0.7): |0.6 - 1| = 0.4 -> ECE = (0.1 + 0.8 + 0.45 + 0.4) / 4
    probs = [[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.45, 0.55]]
    pred = {**TRUTH, "label": [0, 0, 1, 1], "class_probs": probs}
    truth = {**TRUTH, "label": [0, 1, 1, 1]}
    got = metrics.point_metrics(pred, truth)
    assert got["ece"] == pytest.approx((0.1 + 0.8 + 0.45 + 0.4) / 4)
    brier = [0.1**2 * 2, 0.8**2 * 2, 0.4**2 * 2, 0.45**2 * 2]
    assert got["brier"] == pytest.approx(sum(brier) / 4)
    assert "ece" not in metrics.point_metrics(PRED, TRUTH)  # no probabilities, no calibration


def test_group_bootstrap_moves_windows_of_one_group_together():
    rng = np.random.default_rng(0)
    groups = np.array([0, 0, 1, 2, 2, 2])
    weights = metrics.resample_weights(groups, 500, rng)
    assert weights.shape == (500, 6)
    assert np.array_equal(weights[:, 0], weights[:, 1])
    assert np.array_equal(weights[:, 3], weights[:, 5])
    assert np.allclose(weights[:, [0, 2, 3]].sum(axis=1), 3)  # three groups drawn each time


def test_copies_in_one_group_widen_the_interval_honestly():
    # 20 windows, each duplicated: counted as 40 independent windows the CI is too narrow
    rng = np.random.default_rng(2)
    base = {"label": rng.integers(0, 2, 20), "start": rng.integers(40, 60, 20)}
    base["end"] = base["start"] + 10
    truth = {k: np.repeat(v, 2) for k, v in base.items()}
    pred = {**truth, "start": truth["start"] + np.repeat(rng.integers(-6, 7, 20), 2)}
    naive = metrics.evaluate(pred, truth, n_boot=800)["span_iou"]
    grouped = metrics.evaluate(pred, {**truth, "group": np.arange(40) // 2}, n_boot=800)
    width = lambda e: e["ci_high"] - e["ci_low"]  # noqa: E731
    assert width(grouped["span_iou"]) > 1.2 * width(naive)


def test_resampling_seeds_widens_the_interval_when_seeds_disagree():
    rng = np.random.default_rng(3)
    n = 50
    truth = {"label": rng.integers(0, 2, n), "start": np.full(n, 50), "end": np.full(n, 60)}
    good = {**truth}
    bad = {**truth, "start": np.full(n, 56)}
    fixed = metrics.evaluate_mean([good, bad], truth, n_boot=500, resample_sets=False)
    drawn = metrics.evaluate_mean([good, bad], truth, n_boot=500, resample_sets=True)
    assert fixed["span_iou"]["value"] == drawn["span_iou"]["value"]
    assert fixed["span_iou"]["ci_high"] - fixed["span_iou"]["ci_low"] < 1e-9  # windows agree
    assert drawn["span_iou"]["ci_high"] - drawn["span_iou"]["ci_low"] > 0.2  # seeds do not


def test_span_iou_of_inclusive_spans():
    iou = metrics.span_iou([0, 0, 5], [0, 9, 5], [0, 5, 6], [0, 14, 6])
    # one-bar spans that coincide: 1; [0,9] vs [5,14]: 5 of 15; adjacent one-bar spans: 0
    assert iou.tolist() == pytest.approx([1.0, 1 / 3, 0.0])


def test_evaluate_reports_value_inside_its_interval_and_is_reproducible():
    rng = np.random.default_rng(1)
    n = 40
    truth = {
        "label": rng.integers(0, 2, n),
        "start": rng.integers(0, 50, n),
        "end": rng.integers(50, 105, n),
    }
    pred = {
        "label": np.where(rng.random(n) < 0.8, truth["label"], 1 - truth["label"]),
        "start": np.clip(truth["start"] + rng.integers(-6, 7, n), 0, 49),
        "end": np.clip(truth["end"] + rng.integers(-6, 7, n), 50, 104),
    }
    report = metrics.evaluate(pred, truth, n_boot=300, seed=3)
    assert report["n"] == n
    for name in metrics.METRICS:
        entry = report[name]
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
    assert report["span_iou"]["ci_high"] - report["span_iou"]["ci_low"] > 0.01
    assert metrics.evaluate(pred, truth, n_boot=300, seed=3) == report


def test_perfect_predictions_have_a_collapsed_interval_at_the_best_value():
    report = metrics.evaluate(TRUTH, TRUTH, n_boot=200)
    for name in ("accuracy", "macro_f1", "span_iou", "inspan_f1", "start_hit3"):
        assert report[name] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert report["boundary_mae"]["value"] == 0.0


def test_interval_narrows_with_more_windows():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 500):
        values = rng.random(n)
        ci = metrics.bootstrap_mean_ci(values, n_boot=500)
        assert ci["ci_low"] <= ci["value"] <= ci["ci_high"]
        widths.append(ci["ci_high"] - ci["ci_low"])
    assert widths[1] < widths[0] / 2


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        metrics.point_metrics({"label": [0], "start": [0], "end": [1]}, TRUTH)


def test_format_metric():
    assert metrics.format_metric({"value": 0.5, "ci_low": 0.25, "ci_high": 0.75}) == (
        "0.500 [0.250, 0.750]"
    )


# -- baselines --------------------------------------------------------------------------------


def test_majority_baseline_predicts_the_majority_class_and_mean_span():
    baseline = MajorityBaseline().fit(None, None, [1, 1, 0], [10, 20, 30], [20, 30, 41])
    pred = baseline.predict(np.zeros((2, 105, 11)), np.ones((2, 105), bool))
    assert pred["label"].tolist() == [1, 1]
    assert pred["start"].tolist() == [20, 20] and pred["end"].tolist() == [30, 30]


def test_longest_run_by_hand():
    above = np.array([[0, 1, 1, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0, 0]], dtype=bool)
    score = np.array([[0] * 8, [0, 0, 0, 5, 0, 0, 0, 0]], dtype=float)
    start, end = longest_run(above, score)
    assert start.tolist() == [4, 3] and end.tolist() == [6, 3]


def test_heuristic_finds_a_planted_wide_run_and_learns_the_quiet_rule():
    rng = np.random.default_rng(0)
    n = 40
    x = np.zeros((n, 105, 11))
    x[:, :, COL["range_z"]] = rng.uniform(0.6, 1.0, (n, 105))
    label = np.arange(n) % 2
    start = rng.integers(50, 80, n)
    end = start + rng.integers(5, 15, n)
    for i in range(n):
        x[i, start[i] : end[i] + 1, COL["range_z"]] = 2.5
        if label[i] == 0:  # consolidation: quiet before the expansion
            x[i, start[i] - 20 : start[i], COL["range_z"]] = 0.3
    valid = np.ones((n, 105), bool)
    valid[:, :20] = False
    heuristic = RangeExpansionHeuristic().fit(x, valid, label, start, end)
    got = metrics.point_metrics(
        heuristic.predict(x, valid), {"label": label, "start": start, "end": end}
    )
    assert got["span_iou"] > 0.9 and got["accuracy"] == 1.0


def _planted(n: int, seed: int):
    """Windows with a bump in feature 0 over [s, e] (the span) and the class in feature 1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 105, 11)).astype(np.float32)
    label = rng.integers(0, 2, n)
    start = rng.integers(30, 80, n)
    end = start + rng.integers(5, 20, n)
    for i in range(n):
        x[i, start[i] : end[i] + 1, 0] += 2.0
        x[i, :, 1] += 0.8 * (2 * label[i] - 1)
    valid = np.ones((n, 105), bool)
    valid[:, :10] = False
    return {"x": x, "valid": valid, "label": label, "start": start, "end": end}


def test_linear_baseline_learns_a_planted_span_and_class_deterministically():
    train, val, test = _planted(80, 0), _planted(30, 1), _planted(30, 2)
    fitted = LinearBaseline().fit(
        train["x"], train["valid"], train["label"], train["start"], train["end"], val=val
    )
    pred = fitted.predict(test["x"], test["valid"])
    got = metrics.point_metrics(pred, test)
    assert got["span_iou"] > 0.6 and got["accuracy"] > 0.9
    assert np.allclose(pred["class_probs"].sum(axis=1), 1.0)
    assert (pred["start"] >= 10).all() and (pred["start"] <= pred["end"]).all()  # valid bars only
    assert sum(p.numel() for p in fitted.conv.parameters()) == 11 * 13 * 2 + 2  # 288
    again = (
        LinearBaseline()
        .fit(train["x"], train["valid"], train["label"], train["start"], train["end"], val=val)
        .predict(test["x"], test["valid"])
    )
    assert all(np.array_equal(pred[k], again[k]) for k in pred)
