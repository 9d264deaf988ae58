"""JadePretrainer: the shared BiLSTM encoder with a mask token and a per-timestep decoder.

    x [B, T, F] --(masked rows -> mask token)--> encoder --> [B, T, 2H] --decoder--> [B, T, F]

The loss is Huber (delta 1.0) on masked AND valid timesteps only: reconstructing a visible
timestep is copying, and warm-up rows carry no signal.
"""

from __future__ import annotations

import torch
from torch import nn

from moola_core.models.encoder import BiLSTMEncoder
from moola_core.pretrain.masking import apply_mask

HUBER_DELTA = 1.0


class JadePretrainer(nn.Module):
    """Masked-autoencoder around `BiLSTMEncoder`; after training keep only `.encoder`."""

    def __init__(
        self, n_features: int = 11, hidden: int = 128, layers: int = 2, dropout: float = 0.1
    ):
        super().__init__()
        self.encoder = BiLSTMEncoder(
            n_features=n_features, hidden=hidden, layers=layers, dropout=dropout
        )
        # small random init: a zero token would look exactly like a warm-up row
        self.mask_token = nn.Parameter(0.02 * torch.randn(n_features))
        self.decoder = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, n_features)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Reconstruct x [B, T, F] from its masked copy; mask [B, T] bool, True = hidden."""
        encoder_input = apply_mask(x, mask, self.mask_token)  # [B, T, F]
        states = self.encoder(encoder_input)  # [B, T, 2H]
        return self.decoder(states)  # [B, T, F]


def masked_huber_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean Huber loss over timesteps that are masked and valid; returns (loss, n_positions).

    reconstruction, target: [B, T, F]; mask, valid: [B, T] bool. The mean is per feature value
    of the counted positions; with no counted position the loss is 0 (and still differentiable).
    """
    counted = (mask & valid).unsqueeze(-1).to(reconstruction.dtype)  # [B, T, 1]
    per_value = nn.functional.huber_loss(
        reconstruction, target, reduction="none", delta=HUBER_DELTA
    )  # [B, T, F]
    n_positions = counted.sum()
    total = (per_value * counted).sum()
    loss = total / (n_positions * reconstruction.shape[-1]).clamp(min=1.0)
    return loss, n_positions
