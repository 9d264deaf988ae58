"""The pre-training config: one pydantic model per section of configs/pretrain.yaml.

Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from moola_core.errors import MoolaError
from moola_core.yaml_config import read_mapping, set_dotted, validate


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    hidden: int = Field(128, ge=1)
    layers: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class MaskingSection(_Section):
    strategy: Literal["random", "block", "patch"] = "random"  # by the ablation (docs)
    ratio: float = Field(0.4, gt=0.0, lt=1.0)
    block_len: int = Field(8, ge=1)
    patch_len: int = Field(7, ge=1)
    # the reconstruction target: "std" divides each feature by its standard deviation over the
    # training windows, so every feature weighs the same in the loss (unscaled, the swing
    # distances dominated it); "none" is the raw feature values
    target_scale: Literal["none", "std"] = "std"


class DataSection(_Section):
    # synthetic: moola_core.data.synthetic.generate_market; real: the pinned real-bar sample;
    # bars: a bars file (parquet/csv) given in `bars_path`.
    source: Literal["synthetic", "real", "bars"] = "synthetic"
    bars_path: str | None = None
    n_bars: int = Field(60_000, ge=200)
    market_seed: int = 7
    difficulty: str = "default"
    stride: int = Field(5, ge=1)
    max_gap_minutes: int = Field(5, ge=1)
    # the last `val_fraction` of the calendar days are validation; or give `split_date`
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    split_date: str | None = None
    # window: features computed from each window's own 105 bars, as for labeled windows (the
    # first ~19 rows are warm-up); stream: computed once per session and sliced (faster)
    features: Literal["window", "stream"] = "window"
    jitter_std: float = Field(0.0, ge=0.0)
    max_windows: int | None = Field(None, ge=1)


class TrainSection(_Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # on a GPU, forward passes under bf16 autocast (the loss stays float32); no effect on a CPU.
    # Off by default: slower than float32 for this LSTM on an H200 (18.0K vs 26.1K windows/s,
    # docs/benchmarks/gpu_training.md)
    bf16: bool = False
    # the loop before the GPU path: masks drawn and copied every step, the loss read on the host
    # every step (a sync), no autocast. Kept to measure before/after (benchmarks/gpu_training.py)
    legacy_loop: bool = False


class PretrainConfig(_Section):
    """Every knob of a pre-training run; `PretrainConfig()` is the documented default."""

    model: ModelSection = ModelSection()
    masking: MaskingSection = MaskingSection()
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def config_from_dict(raw: dict | None, source: str = "config") -> PretrainConfig:
    """Validate a plain dict (e.g. parsed YAML); one clear MoolaError names the first problem."""
    return validate(PretrainConfig, raw, source)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> PretrainConfig:
    """Read configs/pretrain.yaml (or `path`), apply dotted `overrides` like {"train.epochs": 3}."""
    raw = {} if path is None else read_mapping(path, "pre-training config", "configs/pretrain.yaml")
    for dotted, value in (overrides or {}).items():
        if "." not in dotted:  # every knob lives in a section
            raise MoolaError(f"override {dotted!r} must look like section.key, e.g. train.epochs.")
        set_dotted(raw, dotted, value)
    return config_from_dict(raw, source=str(path or "config"))
