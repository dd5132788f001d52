"""U-Mamba magnitude models (Ma, Li & Wang 2024, adapted to 1-D waveforms).

Both follow the reference code (QuentonYeo/magnitude_estimation, UMamba_mag and UMamba_mag_v2)
and share :class:`UMambaEncoder`: a residual stem at full resolution, then strided residual stages
with Mamba layers after some of them. ``UMambaMagV1`` adds the U-Net decoder and returns a
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
    """conv-BN-LeakyReLU, conv-BN, plus a skip (1x1 conv ``conv3`` if asked), LeakyReLU.

    As in the reference: every conv has a bias, and ``conv3`` exists whenever the reference
    builds one (first block of a stage, the stem), even where the shapes would allow identity.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, use_1x1conv: bool = False
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(in_ch, out_ch, kernel_size, stride=stride, padding=pad)
        self.norm1 = nn.BatchNorm1d(out_ch)
        self.conv2 = nn.Conv1d(out_ch, out_ch, kernel_size, padding=pad)
        self.norm2 = nn.BatchNorm1d(out_ch)
        self.act = nn.LeakyReLU(0.01)
        if not use_1x1conv and (in_ch != out_ch or stride != 1):
            raise ValueError("a block that changes shape needs use_1x1conv=True")
        self.conv3 = nn.Conv1d(in_ch, out_ch, 1, stride=stride) if use_1x1conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        skip = self.conv3(x) if self.conv3 is not None else x
        return self.act(y + skip)


def _stage(in_ch: int, out_ch: int, kernel_size: int, stride: int, n_blocks: int) -> nn.Sequential:
    """The first block changes width and strides (with a 1x1 skip conv); the rest keep the shape."""
    blocks = [BasicResBlock(in_ch, out_ch, kernel_size, stride, use_1x1conv=True)]
    blocks += [BasicResBlock(out_ch, out_ch, kernel_size) for _ in range(n_blocks - 1)]
    return nn.Sequential(*blocks)


class UMambaEncoder(nn.Module):
    """Stem + strided residual stages, a Mamba layer after the stages in ``mamba_stages``.

    Returns the stage outputs [stage 0, ..., stage n-1] (finest first; the stem's output is not a
    skip, as in the reference); sizes in ``.sizes`` (``sizes[0]`` is the input), widths in
    ``.channels``. ``mamba_layers`` holds an Identity for stages without Mamba, which keeps the
    reference's parameter names.
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

        self.channels = list(features)
        self.sizes = sizes
        self.strides = strides
        self.kernel_size = kernel_size
        self.stem = BasicResBlock(in_channels, features[0], kernel_size, use_1x1conv=True)
        self.stages = nn.ModuleList()
        self.mamba_layers = nn.ModuleList()
        self.channel_token: dict[int, bool] = {}
        prev = features[0]
        for s in range(n_stages):
            self.stages.append(_stage(prev, features[s], kernel_size, strides[s], n_blocks[s]))
            if s in mamba_stages:
                # U-Mamba: channel tokens when there are no more positions than channels.
                length = sizes[s + 1]
                channel_token = length <= features[s]
                self.channel_token[s] = channel_token
                layer: nn.Module = MambaLayer(
                    length if channel_token else features[s],
                    channel_token=channel_token,
                    d_state=d_state,
                    d_conv=d_conv,
                    expand=expand,
                    scan_impl=scan_impl,
                    scan_chunk=scan_chunk,
                )
            else:
                layer = nn.Identity()
            self.mamba_layers.append(layer)
            prev = features[s]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage, mamba in zip(self.stages, self.mamba_layers, strict=True):
            x = mamba(stage(x))
            skips.append(x)
        return skips


class UpsampleLayer(nn.Module):
    """Nearest upsampling by the encoder stride, then a 1x1 conv."""

    def __init__(self, in_ch: int, out_ch: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv1d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=float(self.scale), mode="nearest"))


class UMambaDecoder(nn.Module):
    """The reference U-Mamba decoder: n_stages - 1 up-steps; all but the last take a skip.

    Step k up-samples to the resolution of stage n - 2 - k, centre-crops (or pads) to the skip's
    length with static bounds, concatenates ``[up, skip]`` and runs residual blocks. The last
    step has no skip (the stem is not one), so the output is at stage 0's resolution x its stride.
    """

    def __init__(self, enc: UMambaEncoder, n_conv_per_stage: int | Sequence[int]) -> None:
        super().__init__()
        n = len(enc.channels)
        if n < 2:
            raise ValueError("the U-Mamba decoder needs n_stages >= 2")
        n_conv = _int_list("n_conv_per_stage_decoder", n_conv_per_stage, n - 1)
        self.upsample_layers = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.crops: list[tuple[int, int, int]] = []  # (start, pad_left, pad_right) per skip step
        length = enc.sizes[-1]
        for s in range(1, n):
            below, skip_ch = enc.channels[-s], enc.channels[-(s + 1)]
            self.upsample_layers.append(UpsampleLayer(below, skip_ch, enc.strides[-s]))
            length *= enc.strides[-s]
            with_skip = s < n - 1
            if with_skip:
                skip_len = enc.sizes[-s - 1]
                diff = length - skip_len
                if diff >= 0:
                    self.crops.append((diff // 2, 0, 0))
                else:
                    self.crops.append((0, -diff // 2, -diff - (-diff // 2)))
                length = skip_len
            in_ch = 2 * skip_ch if with_skip else skip_ch
            self.stages.append(_stage(in_ch, skip_ch, enc.kernel_size, 1, n_conv[s - 1]))
        self.out_size = length
        self.skip_sizes = [enc.sizes[-s - 1] for s in range(1, n - 1)]

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        for k, (up, stage) in enumerate(zip(self.upsample_layers, self.stages, strict=True)):
            x = up(x)
            if k < len(self.crops):
                start, left, right = self.crops[k]
                size = self.skip_sizes[k]
                x = F.pad(x, (left, right)) if left or right else x[..., start : start + size]
                x = torch.cat([x, skips[-(k + 2)]], dim=1)
            x = stage(x)
        return x


class UMambaMagV1(MagnitudeModel):
    """U-Net with Mamba layers: a magnitude per sample, (B, N) or (B, n_outputs, N).

    The reference's first U-Mamba magnitude model (QuentonYeo/magnitude_estimation, UMamba_mag
    with its decoder): the decoder's output is linearly interpolated to ``in_samples``.
    """

    amplitude_inputs = ("encoder.stem.conv1.weight", "encoder.stem.conv3.weight")

    def __init__(
        self,
        in_channels: int = 3,
        in_samples: int = 3001,
        n_conv_per_stage_decoder: int | Sequence[int] = 2,
        n_outputs: int = 1,
        **encoder_kwargs: Any,
    ) -> None:
        """``encoder_kwargs`` go to :class:`UMambaEncoder` (stages, features, Mamba options)."""
        super().__init__(in_channels, in_samples)
        _int_list("n_outputs", n_outputs, 1)
        self.n_outputs = n_outputs
        self.encoder = enc = UMambaEncoder(self.body_channels, in_samples, **encoder_kwargs)
        self.decoder = UMambaDecoder(enc, n_conv_per_stage_decoder)
        self.head = nn.Conv1d(enc.channels[0], n_outputs, 1)
        self.resize = self.decoder.out_size != in_samples  # static: fixed at construction

    def body(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.decoder(self.encoder(x)))
        if self.resize:
            y = F.interpolate(y, size=self.in_samples, mode="linear", align_corners=False)
        return y[:, 0] if self.n_outputs == 1 else y


class UMambaMagV2(MagnitudeModel):
    """U-Mamba encoder, global pooling and an MLP head: one magnitude per window, (B,)."""

    amplitude_inputs = ("encoder.stem.conv1.weight", "encoder.stem.conv3.weight")

    def __init__(
        self,
        in_channels: int = 3,
        in_samples: int = 3001,
        pooling_type: str = "avg",
        hidden_dims: Sequence[int] = (128, 64),
        dropout: float = 0.3,
        n_outputs: int = 1,
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
        _int_list("n_outputs", n_outputs, 1)
        self.n_outputs = n_outputs
        self.encoder = UMambaEncoder(self.body_channels, in_samples, **encoder_kwargs)
        self.pooling = nn.AdaptiveAvgPool1d(1) if pooling_type == "avg" else nn.AdaptiveMaxPool1d(1)
        layers: list[nn.Module] = []
        width = self.encoder.channels[-1]
        for h in hidden_dims:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.01), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, n_outputs))
        self.regression_head = nn.Sequential(*layers)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)[-1]  # (B, C_last, L_last)
        out = self.regression_head(self.pooling(features)[..., 0])  # (B, n_outputs)
        return out[:, 0] if self.n_outputs == 1 else out
