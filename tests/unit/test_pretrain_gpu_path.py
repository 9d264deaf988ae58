"""Pre-training's standardised target, the interpolation baseline, the sync-free loop (same
results as the old loop on a CPU) and the GPU benchmark script at tiny size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moola_core.pretrain.config import config_from_dict
from moola_core.pretrain.data import PretrainWindows
from moola_core.pretrain.pretrainer import feature_scale, interpolate_masked, masked_huber_loss
from moola_core.pretrain.trainer import pretrain

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]


def test_interpolation_by_hand():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])[:, :, None]  # [1, 6, 1]
    mask = torch.tensor([[False, True, True, False, False, True]])
    valid = torch.ones(1, 6, dtype=torch.bool)
    out = interpolate_masked(x, mask, valid)[0, :, 0]
    # bars 1, 2 lie between visible bars 0 and 3: 1 and 2; bar 5 has only bar 4 before it: 4
    assert out.tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0, 4.0])
    valid[0, 0] = False  # a warm-up bar is never a neighbour: bars 1, 2 copy bar 3
    assert interpolate_masked(x, mask, valid)[0, 1:3, 0].tolist() == pytest.approx([3.0, 3.0])


def test_the_standardised_loss_weighs_every_feature_alike():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 20, 2, generator=gen)
    x[..., 1] *= 1000.0  # a feature on a far larger scale (like the swing distances)
    valid = torch.ones(8, 20, dtype=torch.bool)
    mask = torch.rand(8, 20, generator=gen) < 0.5
    scale = feature_scale(x, valid)
    assert scale[1] / scale[0] == pytest.approx(1000.0, rel=0.3)
    error = torch.zeros_like(x)
    error[..., 0] = 0.5 * scale[0]
    raw, _ = masked_huber_loss(x + error, x, mask, valid)
    scaled, _ = masked_huber_loss(x + error, x, mask, valid, scale)
    big = torch.zeros_like(x)
    big[..., 1] = 0.5 * scale[1]
    scaled_big, _ = masked_huber_loss(x + big, x, mask, valid, scale)
    assert scaled == pytest.approx(float(scaled_big), rel=1e-5)  # same error in std units
    raw_big, _ = masked_huber_loss(x + big, x, mask, valid)
    assert raw_big > 100 * raw  # unscaled, the large feature dominates


def _windows():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 105, 11, generator=g).cumsum(dim=1) * 0.1
    valid = torch.ones(40, 105, dtype=torch.bool)
    valid[:, :19] = False
    x[~valid] = 0.0
    return PretrainWindows(x[:32], valid[:32], x[32:], valid[32:], "n/a")


def test_the_new_loop_gives_the_old_loops_result_on_a_cpu_and_reports_interpolation(tmp_path):
    base = {"model": {"hidden": 8, "layers": 1}, "train": {"epochs": 2, "batch_size": 8}}
    results = {}
    for legacy in (True, False):
        config = config_from_dict({**base, "train": {**base["train"], "legacy_loop": legacy}})
        results[legacy] = pretrain(config, tmp_path / str(legacy), windows=_windows())
    old, new = results[True], results[False]
    assert old.weight_checksums == new.weight_checksums  # the same masks, the same updates
    assert new.legacy_loop is False and old.legacy_loop is True and new.bf16 is False
    assert new.interpolation_val_loss is not None and new.interpolation_val_loss > 0
    metrics = json.loads((tmp_path / "False" / "metrics.json").read_text())
    assert metrics["interpolation_val_loss"] == new.interpolation_val_loss
    assert metrics["target_scale"] == "std"
    history = [json.loads(line) for line in (tmp_path / "False" / "history.jsonl").open()]
    assert all(h["interpolation_val_loss"] == new.interpolation_val_loss for h in history)


def test_gpu_benchmark_runs_tiny_on_a_cpu(tmp_path):
    md = tmp_path / "gpu.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_training.py"),
            "--tiny",
            "--device",
            "cpu",
            "--modes",
            "legacy,fast_fp32",
            "--md",
            str(md),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary["pretrain"]) == {"legacy", "fast_fp32"}
    assert summary["pretrain"]["legacy"]["val_loss"] == summary["pretrain"]["fast_fp32"]["val_loss"]
    assert summary["supervised"]["fp32"]["windows_per_s"] > 0
    assert "cpu" in summary["supervised"]["parity"]
    assert summary["speedup_fast_fp32_wall"] > 0
    assert "| legacy |" in md.read_text()
