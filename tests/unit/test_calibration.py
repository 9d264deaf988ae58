"""Temperature scaling, the abstain threshold in predict, and the causal encoder."""

from __future__ import annotations

import math

import pytest
import torch

from moola_core.models import build_model
from moola_core.train.calibration import calibrate, fit_temperature

torch.set_num_threads(1)
SMALL = {"hidden": 8, "layers": 1}


def test_fit_temperature_recovers_an_overconfident_scale():
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 2, generator=gen) * 1.5
    labels = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=gen).squeeze(1)
    shown = true_logits * 3.0  # a model three times too sure of itself
    temperature, before, after = fit_temperature(
        lambda t: torch.nn.functional.cross_entropy(shown / t, labels)
    )
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert after < before


def _inputs(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 105, 11, generator=gen), torch.ones(n, 105, dtype=torch.bool)


def test_predict_applies_the_temperature_and_the_abstain_threshold():
    torch.manual_seed(0)
    base = build_model(SMALL)
    x, valid = _inputs()
    plain = base.predict(x, valid)
    assert plain["abstain"].dtype == torch.bool and not plain["abstain"].any()  # threshold 0
    assert set(plain) >= {"label", "start", "end", "class_probs", "confidence", "abstain"}

    hot = build_model({**SMALL, "temperature": 4.0, "abstain_threshold": 1.01})
    hot.load_state_dict(base.state_dict())
    out = hot.predict(x, valid)
    assert torch.equal(out["label"], plain["label"]) and torch.equal(out["start"], plain["start"])
    # softer probabilities, same decision
    assert (out["class_probs"].max(1).values <= plain["class_probs"].max(1).values + 1e-6).all()
    assert out["abstain"].all()  # a probability is never above 1.01


def test_calibrate_fits_on_validation_and_keeps_the_recall_target():
    torch.manual_seed(1)
    model = build_model(SMALL)
    x, valid = _inputs(40, seed=3)
    gen = torch.Generator().manual_seed(4)
    label = torch.randint(0, 2, (40,), generator=gen)
    start = torch.randint(30, 80, (40,), generator=gen)
    end = start + 5
    fitted = calibrate(model, x, valid, label, start, end, recall=0.8)
    assert model.config["temperature"] == fitted["temperature"] > 0
    assert fitted["class_nll_after"] <= fitted["class_nll_before"] + 1e-6
    assert fitted["span_nll_after"] <= fitted["span_nll_before"] + 1e-6
    answered = 1.0 - model.predict(x, valid)["abstain"].float().mean().item()
    assert answered == pytest.approx(0.8, abs=0.05)
    # the fitted config rebuilds the same model (the bundle ships model.json)
    rebuilt = build_model(model.config)
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.predict(x, valid)["abstain"], model.predict(x, valid)["abstain"])


def test_bad_calibration_values_are_refused():
    from moola_core.errors import MoolaError

    with pytest.raises(MoolaError, match="temperature must be a positive number"):
        build_model({"temperature": 0})
    with pytest.raises(MoolaError, match="abstain_threshold must be a number"):
        build_model({"abstain_threshold": "high"})


def test_the_causal_encoder_never_looks_ahead():
    torch.manual_seed(0)
    model = build_model({**SMALL, "causal": True}).eval()
    x, valid = _inputs(2)
    later = x.clone()
    later[:, 60:] += 5.0  # change only bars 60..104
    with torch.no_grad():
        a, b = model.encoder(x), model.encoder(later)
    assert a.shape[-1] == 8  # one direction: hidden, not 2 * hidden
    assert torch.allclose(a[:, :60], b[:, :60]) and not torch.allclose(a[:, 60:], b[:, 60:])
    bidirectional = build_model(SMALL).eval()
    with torch.no_grad():
        c, d = bidirectional.encoder(x), bidirectional.encoder(later)
    assert not torch.allclose(c[:, :60], d[:, :60])  # the default one does look ahead
    assert math.isfinite(float(model.predict(x, valid)["confidence"].sum()))
