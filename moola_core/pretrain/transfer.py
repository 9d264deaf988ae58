"""Load a pre-trained encoder into a supervised model (JadeModel's `.encoder`), frozen or not.

A mismatch is the most likely mistake (pre-trained with hidden 64, fine-tuning with 128), so
every key and shape is compared before anything is copied, and the error names both sides.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from moola_core.errors import MoolaError
from moola_core.pretrain.trainer import ENCODER_CONFIG, ENCODER_WEIGHTS


def read_encoder_state(source: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The encoder state_dict from a pre-training run directory or an encoder.pt file,
    with a short description of where it came from (for messages)."""
    path = Path(source)
    weights = path / ENCODER_WEIGHTS if path.is_dir() else path
    if not weights.is_file():
        raise MoolaError(
            f"no pre-trained encoder at {weights}; run `invoke pretrain --out DIR` first "
            "or point at a run directory that holds encoder.pt."
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, not a pickle traceback
        raise MoolaError(
            f"{weights} is not a readable encoder state_dict ({exc.__class__.__name__}); "
            "re-run pre-training or check the path."
        ) from None
    if not isinstance(state, dict):
        raise MoolaError(f"{weights} holds a {type(state).__name__}, not an encoder state_dict.")
    label = str(weights)
    shape_file = weights.parent / ENCODER_CONFIG
    if shape_file.is_file():
        shape = json.loads(shape_file.read_text())
        label += f" (hidden={shape.get('hidden')}, layers={shape.get('layers')})"
    return state, label


def _describe(encoder: nn.Module) -> str:
    hidden = getattr(encoder, "hidden", "?")
    layers = getattr(encoder, "layers", "?")
    return f"the model's encoder (hidden={hidden}, layers={layers})"


def check_compatible(
    pretrained: dict[str, torch.Tensor], encoder: nn.Module, source_label: str
) -> None:
    """Raise MoolaError naming both sides unless keys and shapes match exactly."""
    target = encoder.state_dict()
    missing = sorted(set(target) - set(pretrained))
    unexpected = sorted(set(pretrained) - set(target))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing[:3])}")
        if unexpected:
            detail.append(f"unexpected {', '.join(unexpected[:3])}")
        raise MoolaError(
            f"pre-trained encoder {source_label} does not fit {_describe(encoder)}: "
            f"{'; '.join(detail)}; pre-train and fine-tune with the same model.layers."
        )
    for key, tensor in target.items():
        if tuple(pretrained[key].shape) != tuple(tensor.shape):
            raise MoolaError(
                f"pre-trained encoder {source_label} does not fit {_describe(encoder)}: "
                f"{key} is {list(pretrained[key].shape)} in the file and {list(tensor.shape)} "
                "in the model; pre-train with the model's hidden size and features, or build "
                "the model with the encoder's."
            )


def freeze_encoder(model: nn.Module, frozen: bool = True) -> None:
    """Stop (or restart) gradient updates of `model.encoder`; build the optimiser afterwards."""
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(not frozen)


def load_pretrained_encoder(
    model: nn.Module, source: str | Path | dict, *, freeze: bool = False
) -> dict:
    """Copy a pre-trained encoder into `model.encoder` (JadeModel or anything with `.encoder`).

    `source` is a pre-training run directory, an encoder.pt file or a state_dict. With
    `freeze=True` the encoder's parameters stop requiring gradients (fine-tune the heads only).
    Returns {"source", "tensors", "frozen"}. Raises MoolaError on any key or shape mismatch.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise MoolaError(
            f"{type(model).__name__} has no `.encoder` module to load a pre-trained encoder into; "
            "build the model with moola_core.models.build_model."
        )
    if isinstance(source, dict):
        state, label = source, "(state_dict)"
    else:
        state, label = read_encoder_state(source)
    check_compatible(state, encoder, label)
    encoder.load_state_dict(state)
    freeze_encoder(model, freeze)
    return {"source": label, "tensors": len(state), "frozen": freeze}
