"""Moola's models: the shared BiLSTM encoder, JadeModel and its span heads. Torch + stdlib only.

The runtime on a GPU host needs only `build_model(config)` and the model's `predict(x, valid)`.
"""

from __future__ import annotations

import torch

from moola_core.errors import MoolaError
from moola_core.models.encoder import BiLSTMEncoder
from moola_core.models.jade import DEFAULT_CONFIG, SPAN_HEADS, JadeModel

__all__ = ["BiLSTMEncoder", "JadeModel", "build_model", "resolve_model_config", "n_parameters"]


def resolve_model_config(config: dict | None = None) -> dict:
    """Fill defaults into a model config dict and check it; unknown keys are errors."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise MoolaError(
            f"unknown model config key(s) {unknown}; allowed keys are {sorted(DEFAULT_CONFIG)}."
        )
    resolved = {**DEFAULT_CONFIG, **config}
    if resolved["arch"] != "jade":
        raise MoolaError(f"unknown model arch {resolved['arch']!r}; the only arch is 'jade'.")
    if resolved["span_head"] not in SPAN_HEADS:
        raise MoolaError(
            f"unknown span_head {resolved['span_head']!r}; choose one of {list(SPAN_HEADS)}."
        )
    if resolved["position_encoding"] and resolved["position_dim"] % 2:
        raise MoolaError("position_dim must be even (sine and cosine pairs); use e.g. 16.")
    for key in ("temperature", "span_temperature", "object_temperature", "object_weight"):
        value = resolved[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise MoolaError(f"model config {key} must be a positive number, got {value!r}.")
    for key in ("objectness", "live"):
        if not isinstance(resolved[key], bool):
            raise MoolaError(f"model config {key} must be true or false, got {resolved[key]!r}.")
    if resolved["live"]:
        resolved["objectness"] = True  # the under-way head is an objectness head
    for key in ("abstain_threshold", "object_bias"):
        value = resolved[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MoolaError(f"model config {key} must be a number, got {value!r}.")
    for key in ("hidden", "layers", "n_features", "window_len", "n_classes"):
        if not isinstance(resolved[key], int) or resolved[key] < 1:
            raise MoolaError(
                f"model config {key} must be a positive integer, got {resolved[key]!r}."
            )
    return resolved


def build_model(config: dict | None = None) -> JadeModel:
    """Build a model from a plain-dict config (as stored in model.json); defaults fill gaps."""
    return JadeModel(resolve_model_config(config))


def n_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
