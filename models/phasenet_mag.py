"""PhaseNetMag: the PhaseNet U-Net (Zhu & Beroza 2019) regressing magnitude at every sample.

The layout follows SeisBench's PhaseNet (filters 8-16-32-64-128, kernel 7, stride 4,
BatchNorm + ReLU) with one linear output channel instead of the softmax over phases.
The U-Net itself lives in :class:`UNetMagnitudeModel` so AMAG_v2 reuses it unchanged.

Padding and skip crops are planned once from ``in_samples`` (plain int arithmetic on static
shapes), so any window of at least ``stride ** (depth - 1)`` samples works and the graph
exports to ONNX without data-dependent control flow. At 3001 samples the plan reproduces
SeisBench's hard-coded pads and its ``[1:-2]`` + centre crop exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seismag.models.base import MagnitudeModel

_BN_EPS = 1e-3  # as in PhaseNet (Keras default)


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Reject bools, floats and values below ``minimum`` with a message naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def unet_plan(
    in_samples: int, depth: int, kernel_size: int, stride: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Per-level down-sampling pads and per-decoder-step ``(start, stop)`` skip crops.

    Down: TF-style "same" padding, so each strided conv yields ceil(L / stride) samples.
    Up: SeisBench's rule (drop the first sample and the last two, then centre-crop to the skip),
    clamped so the crop always fits; with kernel_size > stride the transposed conv is always at
    least as long as the skip it is merged with.
    """
    lengths = [in_samples]
    pads: list[tuple[int, int]] = []
    for _ in range(depth - 1):
        n = lengths[-1]
        out = -(-n // stride)
        total = (out - 1) * stride + kernel_size - n  # in [kernel - stride, kernel - 1]
        pads.append((total // 2, total - total // 2))
        lengths.append(out)
    crops: list[tuple[int, int]] = []
    for level in reversed(range(depth - 1)):
        skip_len = lengths[level]
        up_len = (lengths[level + 1] - 1) * stride + kernel_size
        start = min(1 + max(up_len - 3 - skip_len, 0) // 2, up_len - skip_len)
        crops.append((start, start + skip_len))
    return pads, crops


class UNetMagnitudeModel(MagnitudeModel):
    """PhaseNet's encoder/decoder with a one-channel linear head; subclasses add a bottleneck.

    Attribute names (``inc``, ``in_bn``, ``down_branch``, ``up_branch``, ``out``) and the
    ``[conv, bn, conv, bn]`` grouping mirror SeisBench's PhaseNet, which keeps state dicts
    comparable. Convolutions feeding a BatchNorm carry no bias (the BatchNorm cancels it).
    """

    def __init__(
        self,
        in_channels: int,
        in_samples: int,
        filters_root: int,
        depth: int,
        kernel_size: int,
        stride: int,
    ) -> None:
        super().__init__(in_channels, in_samples)
        check_positive_int("filters_root", filters_root)
        check_positive_int("depth", depth, minimum=2)
        check_positive_int("stride", stride, minimum=2)
        check_positive_int("kernel_size", kernel_size, minimum=3)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for symmetric padding, got {kernel_size}")
        if kernel_size <= stride:
            raise ValueError(
                f"kernel_size ({kernel_size}) must exceed stride ({stride}) so the transposed "
                "convolutions cover every sample"
            )
        min_samples = stride ** (depth - 1)
        if in_samples < min_samples:
            raise ValueError(
                f"in_samples={in_samples} is too small for depth={depth}, stride={stride}: "
                f"need at least stride ** (depth - 1) = {min_samples}"
            )
        self.filters_root = filters_root
        self.depth = depth
        self.kernel_size = kernel_size
        self.stride = stride
        self._pads, self._crops = unet_plan(in_samples, depth, kernel_size, stride)

        same = kernel_size // 2
        self.inc = nn.Conv1d(
            self.body_channels, filters_root, kernel_size, padding=same, bias=False
        )
        self.in_bn = nn.BatchNorm1d(filters_root, eps=_BN_EPS)

        self.down_branch = nn.ModuleList()
        last = filters_root
        for i in range(depth):
            filters = filters_root * 2**i
            conv_same = nn.Conv1d(last, filters, kernel_size, padding=same, bias=False)
            last = filters
            if i == depth - 1:  # deepest level: no further down-sampling
                conv_down, bn2 = None, None
            else:  # padding is applied explicitly from the plan
                conv_down = nn.Conv1d(filters, filters, kernel_size, stride, bias=False)
                bn2 = nn.BatchNorm1d(filters, eps=_BN_EPS)
            group = [conv_same, nn.BatchNorm1d(filters, eps=_BN_EPS), conv_down, bn2]
            self.down_branch.append(nn.ModuleList(group))

        self.up_branch = nn.ModuleList()
        for i in range(depth - 1):
            filters = filters_root * 2 ** (depth - 2 - i)
            conv_up = nn.ConvTranspose1d(last, filters, kernel_size, stride, bias=False)
            last = filters
            conv_same = nn.Conv1d(2 * filters, filters, kernel_size, padding=same, bias=False)
            bn1 = nn.BatchNorm1d(filters, eps=_BN_EPS)
            bn2 = nn.BatchNorm1d(filters, eps=_BN_EPS)
            self.up_branch.append(nn.ModuleList([conv_up, bn1, conv_same, bn2]))

        self.out = nn.Conv1d(last, 1, 1)  # linear regression head: no activation, no softmax

    @property
    def bottleneck_channels(self) -> int:
        return self.filters_root * 2 ** (self.depth - 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C + 1, N) -> bottleneck features (B, bottleneck_channels, L) and the skips."""
        x = torch.relu(self.in_bn(self.inc(x)))
        skips = []
        for i, (conv_same, bn1, conv_down, bn2) in enumerate(self.down_branch):
            x = torch.relu(bn1(conv_same(x)))
            if conv_down is not None:
                skips.append(x)
                x = torch.relu(bn2(conv_down(F.pad(x, self._pads[i]))))
        return x, skips

    def decode(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Bottleneck features and skips -> (B, N) series."""
        for (conv_up, bn1, conv_same, bn2), skip, (start, stop) in zip(
            self.up_branch, reversed(skips), self._crops, strict=True
        ):
            x = torch.relu(bn1(conv_up(x)))
            x = x[:, :, start:stop]  # static bounds: no shape ops in the exported graph
            x = torch.relu(bn2(conv_same(torch.cat([skip, x], dim=1))))
        return self.out(x).squeeze(1)


class PhaseNetMag(UNetMagnitudeModel):
    """PhaseNet with a linear one-channel output: (B, C, N) -> magnitude (label space) (B, N)."""

    def __init__(
        self,
        in_channels: int = 3,
        in_samples: int = 3001,
        filters_root: int = 8,
        depth: int = 5,
        kernel_size: int = 7,
        stride: int = 4,
    ) -> None:
        super().__init__(in_channels, in_samples, filters_root, depth, kernel_size, stride)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x))
