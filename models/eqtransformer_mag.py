"""EQTransformerMag: the EQTransformer encoder with a single magnitude decoder.

Layout after Mousavi et al. (2020), as in the reference EQTransformerMag
(QuentonYeo/magnitude_estimation, built on SeisBench's EQTransformer): conv + max-pool encoder,
residual CNN stack, BiLSTM stack, two transformer blocks (additive self-attention + feed-forward),
then one up-sampling decoder that mirrors the encoder and emits a magnitude at every sample. The
original's detection / P / S heads are replaced by this one regression head (no activation).
Module and parameter names are the reference's, so its checkpoints load by name.

All lengths the decoder crops to are computed from ``in_samples`` at construction, so the forward
has no shape-dependent Python branches and exports to ONNX with a dynamic batch axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from seismag.models.base import MagnitudeModel

_BN_EPS = 1e-3  # the reference's BatchNorm eps (Keras default)


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
    """Conv + ReLU + max-pool per level; ceil-mode pooling keeps odd lengths' last sample.

    The reference pads odd lengths with -1e10 before pooling; after a ReLU that is ceil mode.
    """

    def __init__(self, in_ch: int, filters: list[int], kernels: list[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        for f, k in zip(filters, kernels, strict=True):
            self.convs.append(_SameConv(in_ch, f, k))
            in_ch = f
        self.pool = nn.MaxPool1d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = self.pool(torch.relu(conv(x)))
        return x


class _ResCNNBlock(nn.Module):
    """Pre-activation residual block (BN, ReLU, spatial dropout, conv) x 2, as in the original."""

    def __init__(self, channels: int, kernel: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm1d(channels, eps=_BN_EPS)
        self.conv1 = _SameConv(channels, channels, kernel)
        self.norm2 = nn.BatchNorm1d(channels, eps=_BN_EPS)
        self.conv2 = _SameConv(channels, channels, kernel)
        self.dropout = nn.Dropout1d(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.dropout(torch.relu(self.norm1(x))))
        y = self.conv2(self.dropout(torch.relu(self.norm2(y))))
        return x + y


class _ResCNNStack(nn.Module):
    def __init__(self, channels: int, kernels: list[int], drop_rate: float) -> None:
        super().__init__()
        self.members = nn.ModuleList(_ResCNNBlock(channels, k, drop_rate) for k in kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for member in self.members:
            x = member(x)
        return x


class _BiLSTMBlock(nn.Module):
    """BiLSTM, dropout, then 1x1 conv + BN folding both directions back to ``hidden``.

    No activation after the BatchNorm: the reference has none.
    """

    def __init__(self, in_ch: int, hidden: int, drop_rate: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_ch, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(drop_rate)
        self.conv = nn.Conv1d(2 * hidden, hidden, 1)
        self.norm = nn.BatchNorm1d(hidden, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, hidden, T)
        y, _ = self.lstm(x.transpose(1, 2))
        return self.norm(self.conv(self.dropout(y).transpose(1, 2)))


class _BiLSTMStack(nn.Module):
    def __init__(self, in_ch: int, hidden: int, blocks: int, drop_rate: float) -> None:
        super().__init__()
        self.members = nn.ModuleList(
            _BiLSTMBlock(in_ch if i == 0 else hidden, hidden, drop_rate) for i in range(blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for member in self.members:
            x = member(x)
        return x


class _AdditiveSelfAttention(nn.Module):
    """Global additive self-attention, the original's SeqSelfAttention, on (B, D, T).

    Parameters keep the original's layout (``Wx``, ``Wt``, ``bh``, ``Wa``, ``ba``) so reference
    checkpoints load by name. The normaliser is ``sum + eps`` rather than a plain softmax, exactly
    as the reference computes it; ``ba`` cancels in the max shift but is kept for that reason.
    """

    def __init__(self, dim: int, units: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.Wx = nn.Parameter(torch.empty(dim, units).uniform_(-0.02, 0.02))
        self.Wt = nn.Parameter(torch.empty(dim, units).uniform_(-0.02, 0.02))
        self.bh = nn.Parameter(torch.zeros(units))
        self.Wa = nn.Parameter(torch.empty(units, 1).uniform_(-0.02, 0.02))
        self.ba = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, T) -> (B, D, T)
        x = x.transpose(1, 2)
        q = (x @ self.Wt).unsqueeze(2)  # (B, T, 1, U)
        k = (x @ self.Wx).unsqueeze(1)  # (B, 1, T, U)
        e = (torch.tanh(q + k + self.bh) @ self.Wa + self.ba).squeeze(-1)  # (B, T, T)
        e = torch.exp(e - e.amax(dim=-1, keepdim=True))
        a = e / (e.sum(dim=-1, keepdim=True) + self.eps)
        return (a @ x).transpose(1, 2)


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B, D, T) with the reference's eps (1e-14)."""

    def __init__(self, dim: int, eps: float = 1e-14) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(dim, 1))
        self.beta = nn.Parameter(torch.zeros(dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=1, keepdim=True) + self.eps
        return (x - mean) / torch.sqrt(var) * self.gamma + self.beta


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, drop_rate: float) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, T)
        y = self.dropout(torch.relu(self.lin1(x.transpose(1, 2))))
        return self.lin2(y).transpose(1, 2)


class _TransformerBlock(nn.Module):
    """Attention + residual + LayerNorm, then feed-forward + residual + LayerNorm (post-norm)."""

    def __init__(self, dim: int, attention_units: int, ff_dim: int, drop_rate: float) -> None:
        super().__init__()
        self.attention = _AdditiveSelfAttention(dim, attention_units)
        self.norm1 = _ChannelLayerNorm(dim)
        self.ff = _FeedForward(dim, ff_dim, drop_rate)
        self.norm2 = _ChannelLayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, T)
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
            # Up-sampled length is 2 * ceil(length / 2) >= length: the reference drops the last.
            x = self.upsample(x)[..., :length]
            x = torch.relu(conv(x))
        return x


class EQTransformerMag(MagnitudeModel):
    """EQTransformer (Mousavi et al. 2020) with one decoder regressing magnitude per sample.

    Input (B, C + 1, N) inside :meth:`body`; output (B, N), or (B, n_outputs, N).
    """

    amplitude_inputs = ("encoder.convs.0.weight",)

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
        n_outputs: int = 1,
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
            ("n_outputs", n_outputs),
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
        self.n_outputs = n_outputs

        self.encoder = _Encoder(self.body_channels, filters, kernel_sizes)
        self.res_cnn_stack = _ResCNNStack(filters[-1], res_cnn_kernels, drop_rate)
        self.bi_lstm_stack = _BiLSTMStack(filters[-1], lstm_hidden, lstm_blocks, drop_rate)
        # Two transformer blocks, as in EQTransformer; named as in the reference.
        self.transformer_1 = _TransformerBlock(lstm_hidden, attention_units, ff_dim, drop_rate)
        self.transformer_2 = _TransformerBlock(lstm_hidden, attention_units, ff_dim, drop_rate)
        self.decoder_mag = _Decoder(lstm_hidden, filters[::-1], kernel_sizes[::-1], lengths[-2::-1])
        self.conv_mag = _SameConv(filters[0], n_outputs, output_kernel)
        self._init_convs()

    def _init_convs(self) -> None:
        """He-normal kernels and zero biases for the plain conv chains (encoder, decoder, head).

        PyTorch's default conv init shrinks activations ~3x per ReLU layer; over the 15 layers
        outside the residual stack the output at initialisation barely depends on the input
        (log_amp included). The residual stack keeps the default, so it starts near identity.
        """
        for part in (self.encoder, self.decoder_mag, self.conv_mag):
            for module in part.modules():
                if isinstance(module, nn.Conv1d):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    nn.init.zeros_(module.bias)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder(x)  # (B, F, T)
        x = self.res_cnn_stack(x)
        x = self.bi_lstm_stack(x)  # (B, H, T)
        x = self.transformer_2(self.transformer_1(x))
        x = self.conv_mag(self.decoder_mag(x))  # (B, n_outputs, N)
        return x.squeeze(1) if self.n_outputs == 1 else x
