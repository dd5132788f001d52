"""AMAG_v2 (MagnitudeNet): the PhaseNet U-Net with an LSTM + self-attention bottleneck.

As in the reference MagnitudeNet (QuentonYeo/magnitude_estimation, AMAG_v2): the PhaseNet
encoder/decoder with stride 2 (finer time resolution than PhaseNet's 4), Conv1d padding
``kernel // 2`` on the strided convs (no bias) and centre crops on the way up. At the bottleneck
(128 channels, 188 steps of 0.16 s for a 30 s window) a two-layer bidirectional LSTM reads the
whole window, multi-head self-attention lets every step weigh every other, and a linear
projection, dropout and BatchNorm + ReLU map back to the bottleneck channels for the decoder.

The body learns magnitude + 1 (the card's ``label_offset``); the base class's ``forward``
subtracts it, so the module's output is the magnitude.
"""

from __future__ import annotations

import torch
from torch import nn

from seismag.models.phasenet_mag import _BN_EPS, UNetMagnitudeModel, check_positive_int


class MagnitudeNet(UNetMagnitudeModel):
    """U-Net + LSTM/attention bottleneck: (B, C, N) -> magnitude (B, N)."""

    def __init__(
        self,
        in_channels: int = 3,
        in_samples: int = 3000,
        filters_root: int = 8,
        depth: int = 5,
        kernel_size: int = 7,
        stride: int = 2,
        lstm_hidden: int = 128,
        lstm_layers: int = 2,
        bidirectional: bool = True,
        num_heads: int = 4,
        dropout: float = 0.2,
        n_outputs: int = 1,
    ) -> None:
        super().__init__(
            in_channels,
            in_samples,
            filters_root,
            depth,
            kernel_size,
            stride,
            down_padding=kernel_size // 2,
            down_bias=False,
            crop="centre",
            n_outputs=n_outputs,
        )
        check_positive_int("lstm_hidden", lstm_hidden)
        check_positive_int("lstm_layers", lstm_layers)
        check_positive_int("num_heads", num_heads)
        if not isinstance(bidirectional, bool):
            raise ValueError(f"bidirectional must be a bool, got {bidirectional!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, int | float):
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        embed = lstm_hidden * (2 if bidirectional else 1)
        if embed % num_heads:
            raise ValueError(
                f"num_heads ({num_heads}) must divide the LSTM output width ({embed} = "
                f"lstm_hidden * {2 if bidirectional else 1})"
            )
        channels = self.bottleneck_channels
        self.lstm = nn.LSTM(
            channels,
            lstm_hidden,
            num_layers=lstm_layers,
            batch_first=True,
            dropout=dropout if lstm_layers > 1 else 0.0,  # between layers only, as in PyTorch
            bidirectional=bidirectional,
        )
        self.attention = nn.MultiheadAttention(embed, num_heads, dropout=dropout, batch_first=True)
        self.bottleneck_proj = nn.Linear(embed, channels)
        self.bottleneck_bn = nn.BatchNorm1d(channels, eps=_BN_EPS)
        self.dropout = nn.Dropout(dropout)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encode(x)
        x = x.transpose(1, 2)  # (B, L, C): sequence layout for LSTM and attention
        x, _ = self.lstm(x)
        x, _ = self.attention(x, x, x, need_weights=False)
        x = self.dropout(self.bottleneck_proj(x)).transpose(1, 2)
        x = torch.relu(self.bottleneck_bn(x))
        return self.decode(x, skips)
