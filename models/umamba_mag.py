"""U-Mamba magnitude models (Ma, Li & Wang 2024, adapted to 1-D waveforms; seed 001).

Both share :class:`UMambaEncoder`: a residual stem at full resolution, then strided residual
stages with Mamba layers after some of them. ``UMambaMagV1`` adds a U-Net decoder and returns a
magnitude per sample (B, N); ``UMambaMagV2`` pools the deepest features and regresses one magnitude
per window (B,). Every size is fixed at construction from ``in_samples``, so the ONNX graph has
only the batch dimension dynamic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seismag.models.base import MagnitudeModel
from seismag.models.mamba import MambaLayer


def _int_list(name: str, value: object, length: int) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value] * length
    if (
        not isinstance(value, Sequence)
        or len(value) != length
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise ValueError(f"{name} must be {length} positive ints, got {value!r}")
    return list(value)


class BasicResBlock(nn.Module):
    """conv-BN-LeakyReLU, conv-BN, plus a skip (1x1 conv when the shape changes), LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        pad = kernel_size // 2
        # No conv bias before BN: it would be cancelled and receive no gradient.
        self.conv1 = nn.Conv1d(in_ch, out_ch, kernel_size, stride=stride, padding=pad, bias=False)
        self.norm1 = nn.BatchNorm1d(out_ch)
        self.conv2 = nn.Conv1d(out_ch, out_ch, kernel_size, padding=pad, bias=False)
        self.norm2 = nn.BatchNorm1d(out_ch)
        self.act = nn.LeakyReLU(0.01)
        self.skip = (
            nn.Conv1d(in_ch, out_ch, 1, stride=stride)
            if in_ch != out_ch or stride != 1
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.skip(x))


def _stage(in_ch: int, out_ch: int, kernel_size: int, stride: int, n_blocks: int) -> nn.Sequential:
    """The first block changes width and strides; the rest keep the shape."""
    blocks = [BasicResBlock(in_ch, out_ch, kernel_size, stride)]
    blocks += [BasicResBlock(out_ch, out_ch, kernel_size) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


class UMambaEncoder(nn.Module):
    """Stem + strided residual stages, Mamba after the stages in ``mamba_stages``.

    Returns the skips [stem, stage 0, ..., stage n-1] (finest first); sizes in ``.sizes``,
    widths in ``.channels``.
    """

    def __init__(
        self,
        in_channels: int,
        in_samples: int,
        n_stages: int = 4,
        features_per_stage: Sequence[int] = (8, 16, 32, 64),
        kernel_size: int = 7,
        strides: int | Sequence[int] = 2,
        n_blocks_per_stage: int | Sequence[int] = 2,
        mamba_stages: Sequence[int] = (1, 3),
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        scan_impl: str = "chunked",
        scan_chunk: int = 32,
    ) -> None:
        super().__init__()
        if not isinstance(n_stages, int) or isinstance(n_stages, bool) or n_stages < 1:
            raise ValueError(f"n_stages must be a positive int, got {n_stages!r}")
        features = _int_list("features_per_stage", features_per_stage, n_stages)
        strides = _int_list("strides", strides, n_stages)
        n_blocks = _int_list("n_blocks_per_stage", n_blocks_per_stage, n_stages)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        if not isinstance(mamba_stages, Sequence) or isinstance(mamba_stages, str):
            raise ValueError(f"mamba_stages must be a list of stage indices, got {mamba_stages!r}")
        bad = [s for s in mamba_stages if not isinstance(s, int) or not 0 <= s < n_stages]
        if bad or len(set(mamba_stages)) != len(mamba_stages):
            raise ValueError(
                f"mamba_stages must be distinct stage indices in [0, {n_stages}), got "
                f"{mamba_stages!r}"
            )
        # Static feature-map sizes: a padded odd-kernel conv with stride s gives ceil(L / s).
        sizes = [in_samples]
        for s in strides:
            sizes.append(-(-sizes[-1] // s))

        self.channels = [features[0], *features]
        self.sizes = sizes
        self.strides = strides
        self.kernel_size = kernel_size
        self.stem = BasicResBlock(in_channels, features[0], kernel_size)
        self.stages = nn.ModuleList()
        self.mamba = nn.ModuleDict()
        self.channel_token: dict[int, bool] = {}
        prev = features[0]
        for s in range(n_stages):
            self.stages.append(_stage(prev, features[s], kernel_size, strides[s], n_blocks[s]))
            if s in mamba_stages:
                # U-Mamba: channel tokens when there are no more positions than channels.
                length = sizes[s + 1]
                channel_token = length <= features[s]
                self.channel_token[s] = channel_token
                self.mamba[str(s)] = MambaLayer(
                    length if channel_token else features[s],
                    channel_token=channel_token,
                    d_state=d_state,
                    d_conv=d_conv,
                    expand=expand,
                    scan_impl=scan_impl,
                    scan_chunk=scan_chunk,
                )
            prev = features[s]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = [x]
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if str(s) in self.mamba:
                x = self.mamba[str(s)](x)
            skips.append(x)
        return skips


class UpsampleLayer(nn.Module):
    """Nearest upsampling by the encoder stride, cropped to the skip's size, then a 1x1 conv."""

    def __init__(self, in_ch: int, out_ch: int, scale: int, out_size: int) -> None:
        super().__init__()
        self.scale, self.out_size = scale, out_size
        self.conv = nn.Conv1d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=float(self.scale), mode="nearest")
        return self.conv(x[..., : self.out_size])


class UMambaMagV1(MagnitudeModel):
    """U-Net with Mamba layers: a magnitude per sample, (B, N)."""

    def __init__(
        self,
        in_channels: int = 3,
        in_samples: int = 3001,
        n_conv_per_stage_decoder: int | Sequence[int] = 2,
        **encoder_kwargs: Any,
    ) -> None:
        """``encoder_kwargs`` go to :class:`UMambaEncoder` (stages, features, Mamba options)."""
        super().__init__(in_channels, in_samples)
        self.encoder = enc = UMambaEncoder(self.body_channels, in_samples, **encoder_kwargs)
        n_stages = len(enc.stages)
        n_dec = _int_list("n_conv_per_stage_decoder", n_conv_per_stage_decoder, n_stages)
        # Decoder step k goes from skip level n_stages - k to level n_stages - k - 1 (0 = stem).
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for k in range(n_stages):
            below, level = n_stages - k, n_stages - k - 1
            ch = enc.channels[level]
            self.upsample.append(
                UpsampleLayer(enc.channels[below], ch, enc.strides[below - 1], enc.sizes[level])
            )
            self.decoder.append(_stage(2 * ch, ch, enc.kernel_size, 1, n_dec[k]))
        self.head = nn.Conv1d(enc.channels[0], 1, 1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.encoder(x)
        y = skips[-1]
        for k, (up, stage) in enumerate(zip(self.upsample, self.decoder, strict=True)):
            y = stage(torch.cat([up(y), skips[-k - 2]], dim=1))
        return self.head(y)[:, 0]  # the stem level is full resolution: exactly in_samples


class UMambaMagV2(MagnitudeModel):
    """U-Mamba encoder, global pooling and an MLP head: one magnitude per window, (B,)."""

    def __init__(
        self,
        in_channels: int = 3,
        in_samples: int = 3001,
        pooling_type: str = "avg",
        hidden_dims: Sequence[int] = (128, 64),
        dropout: float = 0.3,
        **encoder_kwargs: Any,
    ) -> None:
        """``encoder_kwargs`` go to :class:`UMambaEncoder` (stages, features, Mamba options)."""
        super().__init__(in_channels, in_samples)
        if pooling_type not in ("avg", "max"):
            raise ValueError(f"pooling_type must be 'avg' or 'max', got {pooling_type!r}")
        if not isinstance(hidden_dims, Sequence) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden_dims
        ):
            raise ValueError(f"hidden_dims must be a list of positive ints, got {hidden_dims!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.encoder = UMambaEncoder(self.body_channels, in_samples, **encoder_kwargs)
        self.pooling = nn.AdaptiveAvgPool1d(1) if pooling_type == "avg" else nn.AdaptiveMaxPool1d(1)
        layers: list[nn.Module] = []
        width = self.encoder.channels[-1]
        for h in hidden_dims:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.01), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)[-1]  # (B, C_last, L_last)
        return self.head(self.pooling(features)[..., 0])[:, 0]
