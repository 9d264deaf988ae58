"""The bidirectional LSTM encoder shared by pre-training and every supervised model.

Imports only torch: it runs on GPU hosts that have just Python and torch. A pre-trained
encoder's `state_dict` loads into `JadeModel.encoder` when hidden size and layers match.
"""

from __future__ import annotations

import torch
from torch import nn


class BiLSTMEncoder(nn.Module):
    """Bidirectional LSTM over a window of bars: x [B, T, F] -> states [B, T, 2 * hidden].

    `causal=True` makes it one-directional (left to right): the state of bar t has seen bars
    0..t only, so x [B, T, F] -> [B, T, hidden] and no bar's state depends on a later bar.
    """

    def __init__(
        self,
        n_features: int = 11,
        hidden: int = 128,
        layers: int = 2,
        dropout: float = 0.0,
        causal: bool = False,
    ):
        super().__init__()
        self.n_features = n_features
        self.hidden = hidden
        self.layers = layers
        self.causal = causal
        self.out_dim = hidden if causal else 2 * hidden
        # nn.LSTM applies dropout only between stacked layers; with one layer it would warn.
        self.lstm = nn.LSTM(
            input_size=n_features,
            hidden_size=hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=not causal,
            dropout=dropout if layers > 1 else 0.0,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, F] -> [B, T, 2H] (forward and backward states concatenated per bar)
        states, _ = self.lstm(x)
        return states
