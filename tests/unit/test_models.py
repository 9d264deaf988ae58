"""JadeModel builds from a plain dict, accepts a pre-trained 128x2 encoder and predicts spans."""

import json

import pytest
import torch

from moola_core.errors import MoolaError
from moola_core.models import BiLSTMEncoder, build_model, n_parameters, resolve_model_config

torch.set_num_threads(1)
T, F = 105, 11
TINY = {"hidden": 8, "layers": 1}


def batch(n=6, seed=0, warmup=10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, T, F, generator=g)
    valid = torch.ones(n, T, dtype=torch.bool)
    valid[:, :warmup] = False
    return x, valid


def test_encoder_shape():
    encoder = BiLSTMEncoder(n_features=F, hidden=16, layers=2, dropout=0.1)
    assert encoder(torch.zeros(3, T, F)).shape == (3, T, 32)


def test_default_model_is_about_100k_parameters():
    assert 80_000 <= n_parameters(build_model({})) <= 120_000


def test_pretrained_128x2_encoder_state_dict_loads_into_jade():
    pretrained = BiLSTMEncoder(n_features=F, hidden=128, layers=2)
    model = build_model({"hidden": 128, "layers": 2})
    model.encoder.load_state_dict(pretrained.state_dict())
    model.eval()  # no dropout between LSTM layers
    x = torch.randn(2, T, F)
    assert torch.equal(model.encoder(x), pretrained(x))


@pytest.mark.parametrize(
    "head,posenc",
    [
        ("pointer", False),
        ("pointer", True),
        ("center_length", False),
        ("crf", False),
        ("crf", True),
    ],
)
def test_predict_contract_for_every_head(head, posenc):
    torch.manual_seed(0)
    model = build_model({**TINY, "span_head": head, "position_encoding": posenc})
    x, valid = batch()
    model.train()
    first = model.predict(x, valid)
    assert model.training  # predict restores the mode it found
    second = model.predict(x, valid)
    assert set(first) == {"label", "start", "end", "class_probs", "confidence", "abstain"}
    assert first["abstain"].dtype == torch.bool and first["abstain"].shape == (6,)
    assert first["confidence"].shape == (6,) and bool((first["confidence"] <= 1).all())
    for key in ("label", "start", "end"):
        assert first[key].dtype == torch.int64 and first[key].shape == (6,)
        assert torch.equal(first[key], second[key])  # eval mode: deterministic
    assert first["class_probs"].shape == (6, 2)
    assert torch.allclose(first["class_probs"].sum(1), torch.ones(6))
    assert bool((first["start"] <= first["end"]).all())
    assert bool((first["end"] <= T - 1).all()) and bool((first["start"] >= 0).all())
    if head != "center_length":  # per-bar heads never point into the warm-up
        assert bool((first["start"] >= 10).all())
    else:  # its center is a soft-argmax over valid bars
        assert bool(((first["start"] + first["end"]) / 2 >= 9.5).all())


@pytest.mark.parametrize("head", ["pointer", "center_length", "crf"])
def test_loss_decreases_when_fitting_one_batch(head):
    torch.manual_seed(0)
    model = build_model({**TINY, "hidden": 16, "span_head": head, "dropout": 0.0})
    model.config["input_dropout"] = 0.0
    x, valid = batch(n=4)
    label = torch.tensor([0, 1, 0, 1])
    start, end = torch.tensor([20, 40, 60, 80]), torch.tensor([30, 45, 80, 100])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        total, parts = model.loss(model(x, valid), label, start, end)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
        assert set(parts) == {"class", "span"}
    assert losses[-1] < 0.5 * losses[0]


def test_config_round_trips_through_json_and_rebuilds_the_same_model():
    model = build_model({**TINY, "span_head": "crf"})
    config = json.loads(json.dumps(model.config))
    clone = build_model(config)
    clone.load_state_dict(model.state_dict())
    x, valid = batch(n=2)
    assert torch.equal(clone.predict(x, valid)["start"], model.predict(x, valid)["start"])


def test_state_dict_loads_with_weights_only(tmp_path):
    model = build_model({**TINY, "position_encoding": True})
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    build_model(model.config).load_state_dict(state)


@pytest.mark.parametrize(
    "config,words",
    [
        ({"hiden": 8}, "unknown model config key"),
        ({"span_head": "argmax"}, "unknown span_head"),
        ({"layers": 0}, "positive integer"),
        ({"position_encoding": True, "position_dim": 5}, "must be even"),
    ],
)
def test_bad_configs_raise_one_clear_sentence(config, words):
    with pytest.raises(MoolaError, match=words):
        resolve_model_config(config)


def test_models_import_nothing_but_stdlib_and_torch():
    """GPU hosts have only Python and torch: block numpy, pandas, pydantic and yaml."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "for name in ('numpy', 'pandas', 'pydantic', 'yaml'): sys.modules[name] = None\n"
        "import torch\n"
        "from moola_core.models import build_model\n"
        "for head in ('pointer', 'center_length', 'crf'):\n"
        "    model = build_model({'hidden': 4, 'layers': 1, 'span_head': head})\n"
        "    out = model.predict(torch.zeros(1, 105, 11), torch.ones(1, 105, dtype=torch.bool))\n"
        "print('ok', sorted(out))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "ok ['abstain', 'class_probs', 'confidence', 'end', 'label', 'start']" in done.stdout
