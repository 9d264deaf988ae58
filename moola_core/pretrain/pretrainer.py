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
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor,
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean Huber loss over timesteps that are masked and valid; returns (loss, n_positions).

    reconstruction, target: [B, T, F]; mask, valid: [B, T] bool; scale [F] (optional): each
    feature's error is divided by it first (standardised target). The mean is per feature value
    of the counted positions; with no counted position the loss is 0 (and still differentiable).
    """
    if scale is not None:
        reconstruction, target = reconstruction / scale, target / scale
    counted = (mask & valid).unsqueeze(-1).to(reconstruction.dtype)  # [B, T, 1]
    per_value = nn.functional.huber_loss(
        reconstruction, target, reduction="none", delta=HUBER_DELTA
    )  # [B, T, F]
    n_positions = counted.sum()
    total = (per_value * counted).sum()
    loss = total / (n_positions * reconstruction.shape[-1]).clamp(min=1.0)
    return loss, n_positions


def feature_scale(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-feature standard deviation over valid timesteps of x [N, T, F] -> [F] (>= 1e-6)."""
    rows = x[valid]  # [n_valid, F]
    if rows.shape[0] < 2:
        return torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    return rows.double().std(dim=0).clamp(min=1e-6).to(x.dtype)


def interpolate_masked(x: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The baseline a masked autoencoder must beat: every hidden timestep of x [B, T, F] is the
    linear interpolation between the nearest visible valid timesteps before and after it (the
    nearest one alone at an edge; 0 when a window has none). Returns [B, T, F]."""
    batch, length, _ = x.shape
    known = valid & ~mask  # [B, T]
    steps = torch.arange(length, device=x.device).expand(batch, length)
    before = torch.where(known, steps, torch.full_like(steps, -1)).cummax(dim=1).values
    after_rev = torch.where(known, steps, torch.full_like(steps, length)).flip(1)
    after = after_rev.cummin(dim=1).values.flip(1)  # [B, T]
    has_before, has_after = before >= 0, after < length
    b_idx = before.clamp(min=0)[:, :, None].expand_as(x)
    a_idx = after.clamp(max=length - 1)[:, :, None].expand_as(x)
    xb, xa = x.gather(1, b_idx), x.gather(1, a_idx)
    span = (after - before).clamp(min=1).to(x.dtype)
    w = ((steps - before).to(x.dtype) / span)[:, :, None]  # [B, T, 1]
    both = xb + (xa - xb) * w
    out = torch.where(
        (has_before & has_after)[:, :, None], both, torch.where(has_before[:, :, None], xb, xa)
    )
    none = ~(has_before | has_after)
    return torch.where(
        none[:, :, None], torch.zeros_like(x), torch.where(known[:, :, None], x, out)
    )
