"""A training run's config: one pydantic model per YAML section; unknown keys are errors.

`configs/jade.yaml` is the documented default (the live model) and `TrainConfig()` equals it;
the variants change the `model` section (position encoding, CRF, center/length regression)
or train after the fact (`configs/jade_after.yaml`, model.live: false). The `model` section becomes the
plain dict that `moola_core.models.build_model` takes and that `model.json` stores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from moola_core.metrics import METRICS
from moola_core.models.jade import DEFAULT_CONFIG as MODEL_DEFAULTS
from moola_core.yaml_config import read_mapping, set_dotted, validate

DEFAULT_SEEDS = (17, 13, 23, 29)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Section):
    # synthetic: moola_core.data.synthetic.make_labeled_set; file: a labeled parquet in `path`
    source: Literal["synthetic", "file"] = "synthetic"
    path: str | None = None
    n_windows: int = Field(174, ge=10)
    data_seed: int = 0  # the synthetic set's seed (training seeds vary; the data does not)
    difficulty: str | float = "default"
    # pattern-free examples added to training, early stopping and calibration so that they make
    # this share of them (0: none): from separate synthetic markets of the same difficulty (one
    # seed per pool, never the labeled set's), with the difficulty's hard negatives, so the model
    # can learn and be scored on saying "no pattern" / "not under way". Synthetic data only: a
    # labeled file's default is 0
    negative_share: float = Field(0.35, ge=0.0, lt=0.9)


class SplitSection(_Section):
    # by time (moola_core.train.data): the latest `calibration_share` of the windows is sealed
    # for calibration; the rest is cut into `folds` time blocks, each scored out of fold by a
    # model trained on the others (minus an `early_stopping_share` slice it stops on). Windows
    # that share bars stay together; an embargo drops training windows near a held-out block.
    # The division does not depend on the training seed: every seed is judged on the same
    # windows.
    folds: int = Field(5, ge=2, le=20)
    calibration_share: float = Field(0.2, gt=0.0, lt=0.5)
    early_stopping_share: float = Field(0.15, gt=0.0, lt=0.5)
    embargo_minutes: float = Field(105.0, ge=0.0)


class LiveSection(_Section):
    # as-of cuts of each labeled window (moola_core.train.live): up to `before` bars before its
    # expansion began, every bar while it runs, `after` bars after its end, and the window
    # itself. Used by models with model.live: true.
    before: int = Field(12, ge=1, le=60)
    after: int = Field(4, ge=0, le=60)
    # as-of cuts of each training window per epoch (drawn afresh every epoch)
    cuts_per_window: int = Field(2, ge=1, le=16)
    # share of served bars during which an expansion is under way (the synthetic market's is
    # about 0.025): the served P(expansion under way) is shifted to this prior
    prevalence: float = Field(0.025, gt=0.0, lt=1.0)
    # the abstain threshold guarantees that abstain_recall of the expansions are answered
    # within this many bars of their first bar (conformal risk control, calibration split)
    detect_within: int = Field(5, ge=0, le=30)


class StreamSection(_Section):
    # the quality gate's stream: a synthetic market of the run's difficulty (seed 7300 +
    # data_seed, never used for anything else) the final model answers bar by bar
    # (moola_core.streams); 0 sessions: none. Labeled files have no stream.
    sessions: int = Field(40, ge=0, le=2000)


class ModelSection(_Section):
    arch: Literal["jade"] = MODEL_DEFAULTS["arch"]
    hidden: int = Field(MODEL_DEFAULTS["hidden"], ge=1)
    layers: int = Field(MODEL_DEFAULTS["layers"], ge=1)
    dropout: float = Field(MODEL_DEFAULTS["dropout"], ge=0.0, lt=1.0)
    input_dropout: float = Field(MODEL_DEFAULTS["input_dropout"], ge=0.0, lt=1.0)
    span_head: Literal["pointer", "center_length", "crf"] = MODEL_DEFAULTS["span_head"]
    position_encoding: bool = True  # the default recipe's; build_model's default is False
    position_dim: int = Field(MODEL_DEFAULTS["position_dim"], ge=2)
    huber_delta: float = Field(MODEL_DEFAULTS["huber_delta"], gt=0.0)
    class_weight: float = Field(MODEL_DEFAULTS["class_weight"], ge=0.0)
    span_weight: float | None = Field(MODEL_DEFAULTS["span_weight"], ge=0.0)
    causal: bool = MODEL_DEFAULTS["causal"]  # one-directional encoder (live use: see models.md)
    # trained and judged on as-of cuts with an under-way head (live section; see models.md)
    live: bool = True  # the default recipe (configs/jade.yaml); build_model's default is False
    # a "does this window hold a pattern?" head trained on data.negative_share's windows
    objectness: bool = MODEL_DEFAULTS["objectness"]
    object_weight: float = Field(MODEL_DEFAULTS["object_weight"], gt=0.0)


class OptimSection(_Section):
    lr: float = Field(5e-3, gt=0.0)
    weight_decay: float = Field(1e-2, ge=0.0)
    batch_size: int = Field(32, ge=1)
    max_epochs: int = Field(60, ge=1)
    patience: int = Field(10, ge=1)  # epochs without a better early-stopping metric before stopping
    grad_clip: float = Field(1.0, gt=0.0)


class TrainConfig(_Section):
    """Every knob of a supervised run; `TrainConfig()` is the documented default."""

    name: str = Field("jade", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # the variant
    seed: int = 17
    data: DataSection = DataSection()
    split: SplitSection = SplitSection()
    model: ModelSection = ModelSection()
    live: LiveSection = LiveSection()
    stream: StreamSection = StreamSection()
    optim: OptimSection = OptimSection()
    early_stopping_metric: str = "span_iou"  # on the validation split; or "loss"
    pretrained_encoder: str | None = None  # a pre-training run dir or encoder.pt
    freeze_encoder: bool = False
    # torch CPU threads while training: this small BiLSTM trains about as fast on one thread,
    # and more threads fight other work on a shared machine (null: torch's default)
    cpu_threads: int | None = Field(1, ge=1)
    # where to train: auto = the GPU when one is visible, else the CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # on a GPU, run forward passes under bf16 autocast (CPU training is always float32). Off by
    # default: on an H200 the cuDNN LSTM was slower in bf16 (3.2K vs 5.2K windows/s) and its
    # validation loss worse (docs/benchmarks/gpu_training.md)
    bf16: bool = False
    # calibration: the share of patterns (live: of expansions, within live.detect_within bars)
    # the abstain threshold keeps answered, guaranteed in expectation on held-out windows
    abstain_recall: float = Field(0.9, gt=0.0, lt=1.0)
    # how the threshold is chosen on the calibration split: "recall" by conformal risk control
    # for abstain_recall; "f1" maximises detection F1 over patterns and pattern-free windows
    # (no guarantee; needs data.negative_share > 0, not for live models)
    abstain_rule: Literal["recall", "f1"] = "recall"

    @field_validator("early_stopping_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value != "loss" and value not in METRICS:
            raise ValueError(f"must be 'loss' or one of {list(METRICS)}")
        return value

    def model_dict(self) -> dict:
        """The plain model config dict for build_model (what model.json stores)."""
        return self.model.model_dump(mode="json")

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def config_from_dict(raw: dict | None, source: str = "config") -> TrainConfig:
    """Validate a plain dict (parsed YAML); one MoolaError sentence names the first problem."""
    from moola_core.errors import MoolaError

    split = (raw or {}).get("split") if isinstance(raw, dict) else None
    old = sorted({"val_share", "test_share"} & set(split or {}))
    if old:
        raise MoolaError(
            f"{source}: split.{old[0]} is gone: a run is now judged out of fold (split.folds, "
            "default 5) and calibrated on a sealed split (split.calibration_share, default 0.2); "
            "remove split.val_share and split.test_share (docs/models.md, Training runs)."
        )
    config = validate(TrainConfig, raw, source)
    if config.data.source == "file" and "negative_share" not in config.data.model_fields_set:
        # the default's pattern-free windows come from the synthetic market: none for a file
        config = config.model_copy(
            update={"data": config.data.model_copy(update={"negative_share": 0.0})}
        )
    negatives = config.data.negative_share > 0
    if negatives and config.data.source != "synthetic":
        raise MoolaError(
            f"{source}: data.negative_share needs data.source: synthetic (pattern-free windows "
            "come from the synthetic market); set it to 0 for a labeled file."
        )
    if config.model.objectness and not negatives:
        raise MoolaError(
            f"{source}: model.objectness needs pattern-free windows to learn from; set "
            "data.negative_share (e.g. 0.35)."
        )
    if config.model.live and config.abstain_rule != "recall":
        raise MoolaError(
            f"{source}: a live model's abstain threshold is set by conformal risk control; use "
            "abstain_rule: recall."
        )
    if config.abstain_rule == "f1" and not negatives:
        raise MoolaError(
            f"{source}: abstain_rule: f1 needs pattern-free validation windows; set "
            "data.negative_share (e.g. 0.35) or use abstain_rule: recall."
        )
    # the model's own checks (e.g. position encoding needs a per-bar head) apply here too
    from moola_core.models import resolve_model_config

    resolve_model_config(config.model_dict())
    return config


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML training config (or the defaults) and apply dotted overrides like
    {"seed": 13, "optim.max_epochs": 5}."""
    raw = {} if path is None else read_mapping(path, "training config", "configs/jade.yaml")
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return config_from_dict(raw, "defaults" if path is None else str(path))


def dump_yaml(config: TrainConfig) -> str:
    """The resolved config as YAML (runs/<id>/config.yaml)."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)
