"""The pre-training loop: it learns, it checkpoints, and an interrupted run resumes exactly."""

import json
import subprocess
import sys

import pytest
import torch

from moola_core.errors import MoolaError
from moola_core.pretrain.config import config_from_dict
from moola_core.pretrain.data import PretrainWindows
from moola_core.pretrain.trainer import pretrain

torch.set_num_threads(1)

TINY = {
    "model": {"hidden": 8, "layers": 2, "dropout": 0.1},
    "masking": {"strategy": "block", "ratio": 0.4},
    "data": {"jitter_std": 0.05},
    "train": {"epochs": 3, "batch_size": 16, "lr": 0.01},
}


@pytest.fixture(scope="module")
def windows():
    g = torch.Generator().manual_seed(0)

    def smooth(n):  # smooth random walks: the neighbours predict a hidden step
        x = torch.randn(n, 105, 11, generator=g).cumsum(dim=1) * 0.1
        valid = torch.ones(n, 105, dtype=torch.bool)
        valid[:, :19] = False
        x[~valid] = 0.0
        return x, valid

    train_x, train_valid = smooth(48)
    val_x, val_valid = smooth(16)
    return PretrainWindows(train_x, train_valid, val_x, val_valid, "2024-01-01T00:00:00+00:00")


class Interrupt(Exception):
    pass


def test_the_run_writes_its_files_and_the_validation_loss_falls(tmp_path, windows):
    config = config_from_dict({**TINY, "train": {**TINY["train"], "epochs": 4}})
    result = pretrain(config, tmp_path / "run", windows=windows)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"checkpoint.pt", "encoder.pt", "encoder.json", "config.yaml"} <= files
    assert {"history.jsonl", "metrics.json"} <= files
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").open()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["windows_per_s"] > 0 and metrics["train_windows"] == 48
    assert result.world_size == 1 and len(result.weight_checksums) == 1


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, windows):
    config = config_from_dict(TINY)
    straight = pretrain(config, tmp_path / "straight", windows=windows)

    def stop_in_epoch_three(event):
        if event["event"] == "step" and event["epoch"] == 3 and event["step"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        pretrain(config, tmp_path / "broken", windows=windows, on_progress=stop_in_epoch_three)
    saved = torch.load(tmp_path / "broken" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 2  # the last finished epoch

    with pytest.raises(MoolaError, match="--resume"):
        pretrain(config, tmp_path / "broken", windows=windows)
    resumed = pretrain(config, tmp_path / "broken", windows=windows, resume=True)
    assert resumed.resumed_from_epoch == 2 and resumed.epochs == 3
    assert resumed.weight_checksums == straight.weight_checksums
    assert resumed.val_loss == straight.val_loss


def test_resuming_with_a_different_model_or_masking_is_refused(tmp_path, windows):
    config = config_from_dict({**TINY, "train": {**TINY["train"], "epochs": 1}})
    pretrain(config, tmp_path / "run", windows=windows)
    changed = config_from_dict({**TINY, "masking": {"strategy": "patch", "ratio": 0.4}})
    with pytest.raises(MoolaError, match="different masking config"):
        pretrain(changed, tmp_path / "run", windows=windows, resume=True)
    longer = config_from_dict({**TINY, "train": {**TINY["train"], "epochs": 2}})
    assert pretrain(longer, tmp_path / "run", windows=windows, resume=True).epochs == 2


def _invoke(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "invoke", "pretrain", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_invoke_pretrain_reports_json_and_resumes(tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "run"
    sets = ["--set", "model.hidden=8", "--set", "model.layers=1", "--set", "data.n_bars=1560"]
    sets += ["--set", "data.stride=20", "--set", "train.batch_size=32"]
    done = _invoke("--out", str(out), "--epochs", "1", "--json", *sets, cwd=repo)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["epochs"] == 1 and report["train_windows"] > 0
    assert "epoch 1/1" in done.stderr  # progress goes to stderr when stdout is JSON

    again = _invoke("--out", str(out), "--epochs", "1", *sets, cwd=repo)
    assert again.returncode == 1 and "pass --resume" in again.stderr
    assert "Traceback" not in again.stderr
    resumed = _invoke("--out", str(out), "--epochs", "2", "--resume", "--json", *sets, cwd=repo)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed_from_epoch"] == 1
