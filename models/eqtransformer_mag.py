"""EQTransformerMag: the EQTransformer encoder with a single magnitude decoder.

Layout after Mousavi et al. (2020): conv + max-pool encoder, residual CNN stack, BiLSTM stack, two
transformer blocks (additive self-attention + feed-forward), then one up-sampling decoder that
mirrors the encoder and emits a magnitude at every sample. The original's detection / P / S heads
are replaced by this one regression head (no output activation).

All lengths the decoder crops to are computed from ``in_samples`` at construction, so the forward
has no shape-dependent Python branches and exports to ONNX with a dynamic batch axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from seismag.models.base import MagnitudeModel


class _SameConv(nn.Conv1d):
    """Conv1d with Keras-style 'same' output length; even kernels lean right, as in Keras.

    Symmetric padding plus a static left crop avoids ONNX ``Pad`` nodes (whose TorchScript export
    uses a reversed slice that defeats constant folding).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int) -> None:
        super().__init__(in_ch, out_ch, kernel, padding=kernel // 2)
        self.crop = 2 * (kernel // 2) - (kernel - 1)  # 1 for even kernels, else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y[..., self.crop :] if self.crop else y


def _check_int_list(name: str, values: Sequence[int]) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {values!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"{name} must contain only positive ints, got {list(values)!r}")
    return list(values)


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class _Encoder(nn.Module):
    """Conv + ReLU + max-pool per level; ceil-mode pooling keeps odd lengths' last sample."""

    def __init__(self, in_ch: int, filters: list[int], kernels: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for f, k in zip(filters, kernels, strict=True):
            layers += [_SameConv(in_ch, f, k), nn.ReLU(), nn.MaxPool1d(2, ceil_mode=True)]
            in_ch = f
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _ResCNNBlock(nn.Module):
    """Pre-activation residual block (BN, ReLU, spatial dropout, conv) x 2, as in the original."""

    def __init__(self, channels: int, kernel: int, drop_rate: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Dropout1d(drop_rate),
            _SameConv(channels, channels, kernel),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Dropout1d(drop_rate),
            _SameConv(channels, channels, kernel),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class _BiLSTMBlock(nn.Module):
    """BiLSTM, dropout, then 1x1 conv + BN + ReLU folding both directions back to ``hidden``."""

    def __init__(self, in_ch: int, hidden: int, drop_rate: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_ch, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(drop_rate)
        self.proj = nn.Sequential(
            nn.Conv1d(2 * hidden, hidden, 1), nn.BatchNorm1d(hidden), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, hidden, T)
        y, _ = self.lstm(x.transpose(1, 2))
        return self.proj(self.dropout(y).transpose(1, 2))


class _AdditiveSelfAttention(nn.Module):
    """Global additive (Bahdanau-style) self-attention, the original's SeqSelfAttention."""

    def __init__(self, dim: int, units: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, units, bias=False)
        self.key = nn.Linear(dim, units, bias=True)
        # No score bias: softmax is shift-invariant, so it would get no gradient.
        self.score = nn.Linear(units, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        hidden = torch.tanh(self.query(x).unsqueeze(2) + self.key(x).unsqueeze(1))  # (B, T, T, U)
        weights = torch.softmax(self.score(hidden).squeeze(-1), dim=-1)  # (B, T, T)
        return weights @ x


class _TransformerBlock(nn.Module):
    """Attention + residual + LayerNorm, then feed-forward + residual + LayerNorm (post-norm)."""

    def __init__(self, dim: int, attention_units: int, ff_dim: int, drop_rate: float) -> None:
        super().__init__()
        self.attention = _AdditiveSelfAttention(dim, attention_units)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_dim), nn.ReLU(), nn.Dropout(drop_rate), nn.Linear(ff_dim, dim)
        )
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.ff(x))


class _Decoder(nn.Module):
    """Nearest up-sampling x2, crop to the matching encoder length, conv + ReLU, per level."""

    def __init__(
        self, in_ch: int, filters: list[int], kernels: list[int], lengths: list[int]
    ) -> None:
        super().__init__()
        self.lengths = lengths  # static target length after each up-sampling step
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.convs = nn.ModuleList()
        for f, k in zip(filters, kernels, strict=True):
            self.convs.append(_SameConv(in_ch, f, k))
            in_ch = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, length in zip(self.convs, self.lengths, strict=True):
            # Up-sampled length is 2 * ceil(length / 2) >= length: a static crop suffices.
            x = self.upsample(x)[..., :length]
            x = torch.relu(conv(x))
        return x


class EQTransformerMag(MagnitudeModel):
    """EQTransformer (Mousavi et al. 2020) with one decoder regressing magnitude per sample.

    Input (B, C + 1, N) inside :meth:`body`; output (B, N).
    """

    def __init__(
        self,
        in_channels: int = 3,
        in_samples: int = 3001,
        filters: Sequence[int] = (8, 16, 16, 32, 32, 64, 64),
        kernel_sizes: Sequence[int] = (11, 9, 7, 7, 5, 5, 3),
        res_cnn_kernels: Sequence[int] = (3, 3, 3, 3, 2, 3, 2),
        lstm_blocks: int = 3,
        lstm_hidden: int = 16,
        attention_units: int = 32,
        ff_dim: int = 128,
        output_kernel: int = 11,
        drop_rate: float = 0.1,
    ) -> None:
        super().__init__(in_channels, in_samples)
        filters = _check_int_list("filters", filters)
        kernel_sizes = _check_int_list("kernel_sizes", kernel_sizes)
        res_cnn_kernels = _check_int_list("res_cnn_kernels", res_cnn_kernels)
        if len(filters) != len(kernel_sizes):
            raise ValueError(
                f"filters and kernel_sizes must have the same length, "
                f"got {len(filters)} and {len(kernel_sizes)}"
            )
        for name, value in (
            ("lstm_blocks", lstm_blocks),
            ("lstm_hidden", lstm_hidden),
            ("attention_units", attention_units),
            ("ff_dim", ff_dim),
            ("output_kernel", output_kernel),
        ):
            _check_positive_int(name, value)
        if not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        depth = len(filters)
        if in_samples < 2**depth:
            raise ValueError(
                f"in_samples={in_samples} is too short for {depth} pooling levels; "
                f"need at least {2**depth}"
            )

        # Encoder lengths: N, ceil(N/2), ...; the decoder walks them back up.
        lengths = [in_samples]
        for _ in range(depth):
            lengths.append(-(-lengths[-1] // 2))
        self.bottleneck_samples = lengths[-1]

        self.encoder = _Encoder(self.body_channels, filters, kernel_sizes)
        self.res_cnn = nn.Sequential(
            *(_ResCNNBlock(filters[-1], k, drop_rate) for k in res_cnn_kernels)
        )
        self.bilstm = nn.Sequential(
            *(
                _BiLSTMBlock(filters[-1] if i == 0 else lstm_hidden, lstm_hidden, drop_rate)
                for i in range(lstm_blocks)
            )
        )
        self.transformers = nn.Sequential(
            *(_TransformerBlock(lstm_hidden, attention_units, ff_dim, drop_rate) for _ in range(2))
        )
        self.decoder = _Decoder(lstm_hidden, filters[::-1], kernel_sizes[::-1], lengths[-2::-1])
        self.head = _SameConv(filters[0], 1, output_kernel)
        self._init_convs()

    def _init_convs(self) -> None:
        """He-normal kernels and zero biases for the plain conv chains (encoder, decoder, head).

        PyTorch's default conv init shrinks activations ~3x per ReLU layer; over the 15 layers
        outside the residual stack the output at initialisation barely depends on the input
        (log_amp included). The residual stack keeps the default, so it starts near identity.
        """
        for part in (self.encoder, self.decoder, self.head):
            for module in part.modules():
                if isinstance(module, nn.Conv1d):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    nn.init.zeros_(module.bias)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder(x)  # (B, F, T)
        x = self.res_cnn(x)
        x = self.bilstm(x)  # (B, H, T)
        x = self.transformers(x.transpose(1, 2)).transpose(1, 2)
        x = self.decoder(x)  # (B, filters[0], N)
        return self.head(x).squeeze(1)  # (B, N)
