"""Training with pattern-free windows (data.negative_share): the objectness head learns from
them, the abstain threshold is chosen with them, and the run reports detection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moola_core.errors import MoolaError
from moola_core.models import build_model
from moola_core.train import train_run
from moola_core.train.calibration import f1_threshold
from moola_core.train.data import negatives_fingerprint, prepare_data
from tests.unit.tiny_runs import tiny_config as tiny

torch.set_num_threads(1)


def test_negatives_are_added_to_every_split_in_the_asked_share():
    config = tiny(**{"data.negative_share": 0.4})
    data = prepare_data(config)
    plain = prepare_data(tiny())
    for split in ("train", "val", "test"):
        n_pos = len(getattr(data, split))
        n_neg = len(data.negatives[split]["x"])
        assert n_neg / (n_pos + n_neg) == pytest.approx(0.4, abs=0.05)
        assert data.negatives[split]["x"].shape[1:] == (105, 11)
    # the splits' pattern-free windows are not copies of each other
    assert not np.array_equal(data.negatives["val"]["x"][0], data.negatives["test"]["x"][0])
    # the labeled windows (and their id, which compare/select pool by) are unchanged; the
    # pattern-free windows have their own id
    assert np.array_equal(data.train, plain.train) and plain.negatives is None
    assert data.fingerprint == plain.fingerprint
    assert negatives_fingerprint(data.negatives).startswith("sha256:")
    assert negatives_fingerprint(None) is None


@pytest.mark.parametrize(
    "overrides,words",
    [
        ({"model.objectness": True}, "model.objectness needs pattern-free windows"),
        ({"abstain_rule": "f1"}, "abstain_rule: f1 needs pattern-free validation windows"),
        (
            {"data.negative_share": 0.3, "data.source": "file", "data.path": "x.parquet"},
            "data.negative_share needs data.source: synthetic",
        ),
        ({"data.negative_share": 0.95}, "negative_share"),
    ],
)
def test_inconsistent_negative_settings_are_one_clear_sentence(overrides, words):
    with pytest.raises(MoolaError, match=words):
        tiny(**overrides)


def test_the_f1_threshold_matches_a_brute_force_search():
    gen = np.random.default_rng(0)
    confidence = np.round(gen.random(50), 2)  # ties on purpose
    has = gen.random(50) < 0.6
    best, best_t = -1.0, None
    for t in sorted(set(confidence)):
        answered = confidence >= t
        f1 = 2 * (answered & has).sum() / (answered.sum() + has.sum())
        if f1 > best:
            best, best_t = f1, t
    assert f1_threshold(confidence, has) == pytest.approx(best_t)


def test_an_objectness_run_trains_on_negatives_and_reports_detection(tmp_path):
    config = tiny(
        **{
            "data.negative_share": 0.35,
            "model.objectness": True,
            "abstain_rule": "f1",
        }
    )
    result = train_run(config, tmp_path, progress="none", n_boot=10)
    metrics = result.metrics
    for split in ("val", "test"):
        det = metrics["detection"][split]
        assert det["n_pattern_free"] > 0 and det["n_patterns"] == metrics["n_windows"][split]
        assert 0.0 <= det["precision"] <= 1.0 and 0.0 <= det["recall"] <= 1.0
    assert metrics["negatives"]["trained_on"] is True and metrics["negatives"]["share"] == 0.35
    cal = metrics["calibration"]
    assert cal["abstain_rule"] == "f1" and cal["object_temperature"] > 0
    model_config = json.loads((result.path / "model.json").read_text())
    assert model_config["objectness"] is True
    assert model_config["object_temperature"] == cal["object_temperature"]
    # the run's files rebuild the model, and predict() keeps the serving contract
    model = build_model(model_config)
    model.load_state_dict(torch.load(result.path / "weights.pt", weights_only=True))
    x, valid = torch.zeros(2, 105, 11), torch.ones(2, 105, dtype=torch.bool)
    assert set(model.predict(x, valid)) == {
        "label",
        "start",
        "end",
        "class_probs",
        "confidence",
        "abstain",
    }
    predictions = json.loads((result.path / "predictions.json").read_text())
    assert len(predictions["negatives"]["test"]["abstain"]) == det["n_pattern_free"]


def test_without_negatives_a_run_reports_no_detection(tmp_path):
    result = train_run(tiny(**{"optim.max_epochs": 1}), tmp_path, progress="none", n_boot=10)
    assert result.metrics["detection"] is None and result.metrics["negatives"] is None
    assert result.metrics["calibration"]["abstain_rule"] == "recall"


def test_invoke_train_says_how_well_an_objectness_run_says_no_pattern(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[2]
    raw = yaml.safe_load((repo / "configs" / "jade_objectness.yaml").read_text())
    raw["data"]["n_windows"] = 60
    raw["model"].update(hidden=8, layers=1)
    raw["optim"].update(max_epochs=2, batch_size=16)
    config = tmp_path / "jade_objectness.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "train",
            "--config",
            str(config),
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "saying 'no pattern' on test (" in done.stdout
    assert "pattern-free): precision" in done.stdout
