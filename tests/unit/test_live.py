"""Training and judging for live use: as-of cuts and their targets, the under-way head and
its loss, Platt scaling with a prior shift, and the conformal abstain threshold's guarantee."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moola_core.data import labeled, synthetic
from moola_core.models import build_model
from moola_core.train import live
from moola_core.train.calibration import calibrate_live, crc_threshold, fit_platt

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def windows():
    frame = synthetic.make_labeled_set(12, seed=3)
    arrays = labeled.to_model_arrays(frame)
    ohlc = np.stack([np.asarray(c, dtype=float) for c in frame["features"]])
    context = synthetic.labeled_set_context(12, seed=3)
    return frame, arrays, ohlc, [context[w] for w in arrays.window_id]


def test_cuts_end_now_and_say_what_a_live_system_knows(windows):
    _, a, ohlc, context = windows
    cuts = live.episode_cuts(ohlc, a.start, a.end, a.label, context=context, before=4, after=2)
    for row in range(len(cuts)):
        i, d = cuts.window[row], cuts.delay[row]
        s, e = a.start[i], a.end[i]
        assert cuts.visible[row] == (d >= 0)
        assert cuts.under_way[row] == (0 <= d <= e - s)
        assert cuts.kind[row] == (
            live.PRE if d < 0 else live.UNDER_WAY if d <= e - s else live.AFTER
        )
        if d >= 0:  # the visible span in the cut's own bars: it began 104 - d bars in
            assert cuts.start[row] == 104 - d
            assert cuts.end[row] == 104 - d + min(e - s, d)
            assert cuts.label[row] == a.label[i]
    # every window gives cuts from 4 bars before to 2 after its end (those inside the window),
    # plus the window itself
    per_window = np.bincount(cuts.window, minlength=len(a.label))
    for i, (s, e) in enumerate(zip(a.start, a.end, strict=True)):
        wanted = {d for d in range(-4, e - s + 3) if s + d <= 104} | {104 - s}
        assert per_window[i] == len(wanted)
    # the window itself (now = its last bar) equals the labeled window's model inputs
    whole = live.whole_window_rows(cuts, range(len(a.label)))
    assert np.array_equal(cuts.x[whole], a.x) and np.array_equal(cuts.valid[whole], a.valid)
    assert np.array_equal(cuts.start[whole], a.start)


def test_a_cut_before_the_window_uses_the_bars_before_it_or_is_a_masked_prefix(windows):
    _, a, ohlc, context = windows
    with_bars = live.episode_cuts(ohlc, a.start, a.end, a.label, context=context, delays=[-8])
    prefix = live.episode_cuts(ohlc, a.start, a.end, a.label, delays=[-8])
    # a window with the full 105 bars before it (the stream's first window has fewer)
    row = next(r for r in range(len(with_bars)) if len(context[with_bars.window[r]]) == 105)
    i = with_bars.window[row]
    # with the market's earlier bars the cut is a full window ending 8 bars before the onset
    assert with_bars.valid[row, -30:].all()
    expected = np.concatenate([context[i], ohlc[i]])[len(context[i]) + a.start[i] - 8 - 104 :][:105]
    from moola_core.data.features import compute_features

    feats = compute_features(*(expected[:, k] for k in range(4)))
    assert np.array_equal(with_bars.x[row], feats.values)
    # without them (a labeled file) the missing leading bars are masked out
    row = int(np.flatnonzero(prefix.window == i)[0])
    missing = 104 - (a.start[i] - 8)
    assert not prefix.valid[row, :missing].any() and (prefix.x[row, :missing] == 0).all()


def test_an_epoch_draws_one_cut_per_window_and_kind_evenly(windows):
    _, a, ohlc, context = windows
    cuts = live.episode_cuts(ohlc, a.start, a.end, a.label, context=context)
    index = live.kinds_by_window(cuts)
    rng = np.random.default_rng(0)
    full = [w for w, groups in index.items() if all(len(g) for g in groups)]
    assert full  # most windows have cuts of all three kinds (not those ending at bar 104)
    kinds = []
    for _ in range(300):
        rows = live.sample_epoch(index, range(len(a.label)), rng)
        assert sorted(cuts.window[rows].tolist()) == list(range(len(a.label)))
        kinds.extend(cuts.kind[rows][np.isin(cuts.window[rows], full)].tolist())
    shares = np.bincount(kinds, minlength=3) / len(kinds)
    assert shares == pytest.approx([1 / 3] * 3, abs=0.03)
    stop = live.early_stopping_rows(cuts, [0, 1])
    assert set(cuts.window[stop]) == {0, 1}
    assert set(cuts.delay[stop]) <= set(live.EARLY_STOPPING_DELAYS) | set(
        cuts.delay[live.whole_window_rows(cuts, [0, 1])]
    )


def test_negative_cuts_end_in_the_first_bars_of_hard_negatives():
    cuts = live.negative_cuts(12, seed=5, difficulty="hard")
    assert len(cuts) > 12 and (cuts.kind == live.NEGATIVE).all()
    assert not cuts.under_way.any() and not cuts.visible.any() and (cuts.window == -1).all()
    assert cuts.x.shape[1:] == (105, 11) and cuts.valid[:, -1].all()


def test_the_under_way_head_reads_now_and_learns_from_its_own_target():
    torch.manual_seed(0)
    model = build_model({"hidden": 8, "layers": 1, "live": True})
    assert model.config["objectness"] is True  # implied
    assert model.object_head[0].in_features == 6 * 8  # pooled (4H) and the last bar (2H)
    x, valid = torch.randn(4, 105, 11), torch.ones(4, 105, dtype=torch.bool)
    out = model(x, valid)
    label, start = torch.zeros(4, dtype=torch.long), torch.full((4,), 90)
    visible = torch.tensor([True, True, False, False])
    under_way = torch.tensor([True, False, False, False])
    _, parts = model.loss(
        out, label, start, start + 5, has_pattern=visible, object_target=under_way
    )
    target = under_way.float()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out["object_logit"], target)
    assert parts["object"] == pytest.approx(float(expected.detach()))
    # confidence is the calibrated probability: sigmoid(z / T + bias)
    model.config.update(object_temperature=2.0, object_bias=-1.5)
    conf = model.predict(x, valid)["confidence"]
    model.eval()
    z = model(x, valid)["object_logit"]
    assert torch.allclose(conf, torch.sigmoid(z / 2.0 - 1.5), atol=1e-6)


def test_the_conformal_threshold_by_hand_and_its_guarantee():
    peaks = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.6, 0.4])  # n = 9
    # recall 0.8: at most floor(0.2 * 10) - 1 = 1 window may fall below: the 2nd smallest
    assert crc_threshold(peaks, 0.8) == (0.2, True)
    assert crc_threshold(peaks, 0.7) == (0.3, True)  # floor(0.3 * 10) = 3
    assert crc_threshold(peaks, 0.95) == (0.0, False)  # 10 windows cannot promise 95%
    # over many calibration/test draws from one distribution, the miss rate stays <= 1 - recall
    rng = np.random.default_rng(0)
    misses = []
    for _ in range(3000):
        cal, new = rng.beta(2, 2, 30), rng.beta(2, 2)
        threshold, _ = crc_threshold(cal, 0.9)
        misses.append(new < threshold)
    assert np.mean(misses) <= 0.1 + 0.01  # the guarantee (plus simulation noise)
    assert np.mean(misses) >= 0.1 - 1 / 31 - 0.015  # and not much more conservative


def test_platt_scaling_recovers_a_slope_and_an_intercept():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))
    a, b, before, after = fit_platt(z, y)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-1.0, abs=0.08)
    assert after < before


def test_calibrate_live_shifts_the_prior_to_the_stream_and_sets_the_threshold(windows):
    _, a, ohlc, context = windows
    cuts = live.episode_cuts(ohlc, a.start, a.end, a.label, context=context)
    torch.manual_seed(2)
    model = build_model({"hidden": 8, "layers": 1, "live": True})
    fitted = calibrate_live(model, cuts, prevalence=0.02, recall=0.8, within=3)
    share = fitted["cuts_under_way_share"]
    assert share == pytest.approx(float(cuts.under_way.mean()), abs=1e-4)  # rounded
    # Platt's intercept moved by logit(prevalence) - logit(share of cuts under way)
    exact = float(cuts.under_way.mean())
    shift = math.log(0.02 / 0.98) - math.log(exact / (1 - exact))
    slope, intercept, _, _ = fit_platt(
        model(torch.from_numpy(cuts.x), torch.from_numpy(cuts.valid))["object_logit"].detach(),
        cuts.under_way,
    )
    assert fitted["object_bias"] == pytest.approx(intercept + shift, abs=1e-3)
    assert model.config["abstain_threshold"] == fitted["abstain_threshold"]
    # the threshold keeps >= 80% of the windows answered within 3 bars, on these windows
    conf = model.predict(torch.from_numpy(cuts.x), torch.from_numpy(cuts.valid))["confidence"]
    _, peak = live.detected_within(conf.numpy(), cuts, 3)
    assert (peak >= fitted["abstain_threshold"]).mean() >= 0.8
