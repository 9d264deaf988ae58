"""Training with pattern-free windows (data.negative_share): an after-the-fact objectness head
learns from them, the abstain threshold is chosen with them, and the run reports detection;
a live model learns "not under way" from negative as-of cuts."""

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
from tests.unit.tiny_runs import tiny_config

torch.set_num_threads(1)
AFTER = {"model.live": False}  # the after-the-fact model (configs/jade_after.yaml)


def tiny(**overrides):
    return tiny_config(**{**AFTER, **overrides})


def test_negatives_come_in_pools_of_the_asked_share():
    config = tiny(**{"data.negative_share": 0.4})
    data = prepare_data(config)
    plain = prepare_data(tiny(**{"data.negative_share": 0.0}))
    train = data.negatives("train", live=False)
    calibration = data.negatives("calibration", live=False)
    assert len(train["x"]) / (len(data.dev) + len(train["x"])) == pytest.approx(0.4, abs=0.05)
    n_cal = len(calibration["x"])
    assert n_cal / (len(data.calibration) + n_cal) == pytest.approx(0.4, abs=0.08)
    assert train["x"].shape[1:] == (105, 11)
    # the pools' pattern-free windows are not copies of each other
    assert not np.array_equal(train["x"][0], calibration["x"][0])
    # the labeled windows (and their id, which compare/select pool by) are unchanged; the
    # pattern-free windows have their own id
    assert np.array_equal(data.dev, plain.dev) and plain.negatives("train", live=False) is None
    assert data.fingerprint == plain.fingerprint
    assert negatives_fingerprint(data).startswith("sha256:")
    assert negatives_fingerprint(plain) is None
    # a live model's negatives are as-of cuts: windows ending in hard negatives and ordinary bars
    cuts = data.negatives("train", live=True)
    assert len(cuts) and not cuts.under_way.any() and not cuts.visible.any()


@pytest.mark.parametrize(
    "overrides,words",
    [
        (
            {"model.objectness": True, "data.negative_share": 0.0},
            "model.objectness needs pattern-free windows",
        ),
        (
            {"abstain_rule": "f1", "data.negative_share": 0.0},
            "abstain_rule: f1 needs pattern-free validation windows",
        ),
        ({"abstain_rule": "f1", "model.live": True}, "a live model's abstain threshold"),
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
    det = metrics["detection"]["calibration_split"]
    assert det["n_pattern_free"] > 0
    assert det["n_patterns"] == metrics["n_windows"]["calibration_split"]
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


def test_without_negatives_a_run_reports_no_detection(tmp_path):
    config = tiny(**{"optim.max_epochs": 1, "data.negative_share": 0.0})
    result = train_run(config, tmp_path, progress="none", n_boot=10)
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
    raw["split"]["folds"] = 3
    raw["stream"] = {"sessions": 2}
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
    assert "saying 'no pattern' on the calibration split (" in done.stdout
    assert "pattern-free): precision" in done.stdout
