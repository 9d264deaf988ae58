"""The pre-training entry point under torchrun: 2 gloo processes on CPU end with identical weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _torchrun(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "moola_core.pretrain",
        "--out",
        str(out),
        "--json",
        "--set",
        "model.hidden=8",
        "--set",
        "model.layers=2",
        "--set",
        "data.n_bars=2340",
        "--set",
        "data.market_seed=2",
        "--set",
        "data.stride=10",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.device=cpu",
        *extra,
    ]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_two_gloo_ranks_on_different_shards_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    done = _torchrun(out, "--epochs", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{") :])  # only rank 0 prints
    assert report["world_size"] == 2 and report["epochs"] == 2
    checksums = report["weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]

    # the file rank 0 wrote holds those weights, and they moved away from the initial ones
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    from moola_core.pretrain.pretrainer import JadePretrainer
    from moola_core.pretrain.trainer import weights_checksum

    model = JadePretrainer(hidden=8, layers=2, dropout=0.1)
    model.load_state_dict(saved["model"])
    assert weights_checksum(model) == checksums[0]
    history = [json.loads(line) for line in (out / "history.jsonl").open()]
    assert history[-1]["val_loss"] < history[0]["val_loss"] * 1.05

    # resuming under torchrun continues from the saved epoch on both ranks
    resumed = _torchrun(out, "--epochs", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = json.loads(resumed.stdout[resumed.stdout.index("{") :])
    assert report["resumed_from_epoch"] == 2 and report["epochs"] == 3
    assert report["weight_checksums"][0] == report["weight_checksums"][1]
