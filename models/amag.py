"""AMAG_v2 (MagnitudeNet): the PhaseNet U-Net with an LSTM + self-attention bottleneck.

Encoder and decoder are PhaseNetMag's (:class:`seismag.models.phasenet_mag.UNetMagnitudeModel`).
At the bottleneck (128 channels, 12 steps of 2.56 s for a 30 s window) a bidirectional LSTM
reads the whole window in both directions, multi-head self-attention lets every step weigh
every other, and a linear projection with dropout maps back to the bottleneck channels for the
decoder. Bidirectional by default: the model sees the full window offline, so the later coda
may inform earlier samples. There is no residual around the bottleneck, as in the seed design.

Outputs are in label space (magnitude + 1 for AMAG); the offset is the card's business.
"""

from __future__ import annotations

import torch
from torch import nn

from seismag.models.phasenet_mag import UNetMagnitudeModel, check_positive_int


class MagnitudeNet(UNetMagnitudeModel):
    """U-Net + LSTM/attention bottleneck: (B, C, N) -> magnitude in label space (B, N)."""

    def __init__(
        self,
        in_channels: int = 3,
        in_samples: int = 3000,
        filters_root: int = 8,
        depth: int = 5,
        kernel_size: int = 7,
        stride: int = 4,
        lstm_hidden: int = 32,
        bidirectional: bool = True,
        num_heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_channels, in_samples, filters_root, depth, kernel_size, stride)
        check_positive_int("lstm_hidden", lstm_hidden)
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
        self.lstm = nn.LSTM(channels, lstm_hidden, batch_first=True, bidirectional=bidirectional)
        self.attention = nn.MultiheadAttention(embed, num_heads, batch_first=True)
        self.bottleneck_proj = nn.Linear(embed, channels)
        self.dropout = nn.Dropout(dropout)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encode(x)
        x = x.transpose(1, 2)  # (B, L, C): sequence layout for LSTM and attention
        x, _ = self.lstm(x)
        x, _ = self.attention(x, x, x, need_weights=False)
        x = self.dropout(self.bottleneck_proj(x)).transpose(1, 2)
        return self.decode(x, skips)
