"""The objectness head: pattern-free windows train only it, and predict() keeps its contract."""

from __future__ import annotations

import pytest
import torch

from moola_core.errors import MoolaError
from moola_core.models import build_model
from moola_core.train.calibration import calibrate

torch.set_num_threads(1)
SMALL = {"hidden": 8, "layers": 1, "objectness": True}


def _batch(n=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 105, 11, generator=gen)
    valid = torch.ones(n, 105, dtype=torch.bool)
    valid[:, :19] = False
    label = torch.randint(0, 2, (n,), generator=gen)
    start = torch.randint(30, 80, (n,), generator=gen)
    return x, valid, label, start, start + 6


def test_default_model_has_no_objectness_weights_so_old_bundles_still_load():
    plain = build_model({"hidden": 8, "layers": 1})
    assert not any(k.startswith("object_head") for k in plain.state_dict())
    with_head = build_model(SMALL)
    assert any(k.startswith("object_head") for k in with_head.state_dict())
    with pytest.raises(RuntimeError, match="object_head"):
        with_head.load_state_dict(plain.state_dict())


def test_pattern_free_windows_count_only_in_the_objectness_loss():
    torch.manual_seed(0)
    model = build_model({**SMALL, "dropout": 0.0, "input_dropout": 0.0})
    model.eval()
    x, valid, label, start, end = _batch()
    has = torch.tensor([True, False, True, True, False, True, False, True])
    out = model(x, valid)
    total, parts = model.loss(out, label, start, end, has_pattern=has)
    assert set(parts) == {"class", "span", "object"}
    # whatever a pattern-free window's label and span say, the loss is the same
    junk_label, junk_start, junk_end = label.clone(), start.clone(), end.clone()
    junk_label[~has], junk_start[~has], junk_end[~has] = 1 - label[~has], 0, 104
    again, _ = model.loss(out, junk_label, junk_start, junk_end, has_pattern=has)
    assert torch.equal(total, again)
    # class and span are the means over the windows with a pattern only
    sub = {k: v[has] for k, v in out.items()}
    _, positives_only = model.loss(sub, label[has], start[has], end[has])
    assert parts["class"] == pytest.approx(positives_only["class"])
    assert parts["span"] == pytest.approx(positives_only["span"])
    target = has.float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out["object_logit"], target)
    assert parts["object"] == pytest.approx(float(bce.detach()))
    # a batch of pattern-free windows only trains the objectness head
    none, none_parts = model.loss(out, label, start, end, has_pattern=torch.zeros(8, dtype=bool))
    assert none_parts["class"] == 0.0 and none_parts["span"] == 0.0 and none_parts["object"] > 0


def test_objectness_learns_to_tell_pattern_free_windows_apart():
    torch.manual_seed(0)
    model = build_model({**SMALL, "hidden": 16, "dropout": 0.0, "input_dropout": 0.0})
    x, valid, label, start, end = _batch(n=12, seed=1)
    has = torch.arange(12) % 3 != 0
    x[has, 40:60] += 2.0  # the windows with a pattern carry a visible burst
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        total, _ = model.loss(model(x, valid), label, start, end, has_pattern=has)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    model.config["abstain_threshold"] = 0.5
    pred = model.predict(x, valid)
    assert set(pred) == {"label", "start", "end", "class_probs", "confidence", "abstain"}
    assert torch.equal(pred["abstain"], ~has)  # abstains exactly on the pattern-free windows


def test_confidence_is_the_calibrated_objectness_probability():
    torch.manual_seed(2)
    model = build_model({**SMALL, "object_temperature": 2.0, "abstain_threshold": 0.5})
    x, valid, *_ = _batch()
    model.eval()
    logit = model(x, valid)["object_logit"]
    pred = model.predict(x, valid)
    assert torch.allclose(pred["confidence"], torch.sigmoid(logit / 2.0))
    assert torch.equal(pred["abstain"], pred["confidence"] < 0.5)


def test_calibrate_fits_the_object_temperature_on_all_windows_and_recall_on_patterns():
    torch.manual_seed(3)
    model = build_model(SMALL)
    x, valid, label, start, end = _batch(n=40, seed=5)
    has = torch.arange(40) % 4 != 0
    fitted = calibrate(model, x, valid, label, start, end, recall=0.8, has_pattern=has)
    assert model.config["object_temperature"] == fitted["object_temperature"] > 0
    assert fitted["object_nll_after"] <= fitted["object_nll_before"] + 1e-6
    answered = ~model.predict(x, valid)["abstain"]
    assert answered[has].float().mean().item() == pytest.approx(0.8, abs=0.05)


def test_bad_objectness_values_are_refused():
    with pytest.raises(MoolaError, match="objectness must be true or false"):
        build_model({"objectness": "yes"})
    with pytest.raises(MoolaError, match="object_temperature must be a positive number"):
        build_model({"objectness": True, "object_temperature": -1})
