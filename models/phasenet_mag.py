"""PhaseNetMag: the PhaseNet U-Net (Zhu & Beroza 2019) regressing magnitude at every sample.

The layout is the reference PhaseNetMag's (QuentonYeo/magnitude_estimation, itself SeisBench's
PhaseNet with one linear output channel): filters 8-16-32-64-128, kernel 7, stride 4,
BatchNorm + ReLU. The U-Net itself lives in :class:`UNetMagnitudeModel` so AMAG_v2 reuses it.

Strided convs pad symmetrically as SeisBench's ``Conv1dSame`` does; the decoder's skip crops are
planned once from ``in_samples`` (plain int arithmetic on static shapes), so any window of at
least ``stride ** (depth - 1)`` samples works and the graph exports to ONNX without
data-dependent control flow. At 3001 samples the plan is the reference's ``[1:-2]`` + centre crop.
"""

from __future__ import annotations

import torch
from torch import nn

from seismag.models.base import MagnitudeModel

_BN_EPS = 1e-3  # as in PhaseNet (Keras default)


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Reject bools, floats and values below ``minimum`` with a message naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def conv1d_same_padding(kernel_size: int, stride: int) -> int:
    """Symmetric padding of SeisBench's ``Conv1dSame`` for a strided conv (the reference's)."""
    return -(-(kernel_size - stride) // 2) + 1


def unet_plan(
    in_samples: int,
    depth: int,
    kernel_size: int,
    stride: int,
    padding: int | None = None,
    crop: str = "phasenet",
) -> tuple[list[int], list[tuple[int, int]]]:
    """Per-level lengths and per-decoder-step ``(start, stop)`` skip crops.

    Down: each strided conv pads ``padding`` samples on both sides (default: ``Conv1dSame``'s),
    so level ``i + 1`` has ``(L + 2 * padding - kernel) // stride + 1`` samples.
    Up, ``crop="phasenet"``: the reference PhaseNetMag drops the first sample and the last two,
    then centre-crops to the skip; ``crop="centre"`` (AMAG) centre-crops directly, rounding the
    odd sample to the right. Both are static slices.
    """
    if crop not in ("phasenet", "centre"):
        raise ValueError(f"crop must be 'phasenet' or 'centre', got {crop!r}")
    pad = conv1d_same_padding(kernel_size, stride) if padding is None else padding
    lengths = [in_samples]
    for _ in range(depth - 1):
        lengths.append((lengths[-1] + 2 * pad - kernel_size) // stride + 1)
    crops: list[tuple[int, int]] = []
    for level in reversed(range(depth - 1)):
        skip_len = lengths[level]
        up_len = (lengths[level + 1] - 1) * stride + kernel_size
        if up_len < skip_len:
            raise ValueError(
                f"kernel_size={kernel_size}, stride={stride}, padding={pad} leave the decoder "
                f"short of the skip ({up_len} < {skip_len} samples)"
            )
        if crop == "phasenet":
            start = min(1 + max(up_len - 3 - skip_len, 0) // 2, up_len - skip_len)
        else:
            start = (up_len - skip_len) // 2
        crops.append((start, start + skip_len))
    return lengths, crops


class UNetLayers:
    """PhaseNet's encoder/decoder layers, built onto an ``nn.Module`` (a mixin, so the layer
    names stay top-level attributes: ``inc``, ``in_bn``, ``down_branch``, ``up_branch``,
    ``out``). Shared by the magnitude U-Nets and the P picker (:mod:`seismag.models.picker`)."""

    def build_unet(
        self,
        first_channels: int,
        in_samples: int,
        filters_root: int,
        depth: int,
        kernel_size: int,
        stride: int,
        *,
        down_padding: int | None = None,
        down_bias: bool = True,
        crop: str = "phasenet",
        n_outputs: int = 1,
    ) -> None:
        check_positive_int("filters_root", filters_root)
        check_positive_int("depth", depth, minimum=2)
        check_positive_int("stride", stride, minimum=2)
        check_positive_int("kernel_size", kernel_size, minimum=3)
        check_positive_int("n_outputs", n_outputs)
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
        self.n_outputs = n_outputs
        pad = conv1d_same_padding(kernel_size, stride) if down_padding is None else down_padding
        self._lengths, self._crops = unet_plan(in_samples, depth, kernel_size, stride, pad, crop)

        same = kernel_size // 2
        self.inc = nn.Conv1d(first_channels, filters_root, kernel_size, padding=same)
        self.in_bn = nn.BatchNorm1d(filters_root, eps=_BN_EPS)

        self.down_branch = nn.ModuleList()
        last = filters_root
        for i in range(depth):
            filters = filters_root * 2**i
            conv_same = nn.Conv1d(last, filters, kernel_size, padding=same, bias=False)
            last = filters
            if i == depth - 1:  # deepest level: no further down-sampling
                conv_down, bn2 = None, None
            else:
                conv_down = nn.Conv1d(
                    filters, filters, kernel_size, stride, padding=pad, bias=down_bias
                )
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

        # Linear head, no activation: magnitude (and a log-sigma), or a picker's class logits.
        self.out = nn.Conv1d(last, n_outputs, 1)

    @property
    def bottleneck_channels(self) -> int:
        return self.filters_root * 2 ** (self.depth - 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C + 1, N) -> bottleneck features (B, bottleneck_channels, L) and the skips."""
        x = torch.relu(self.in_bn(self.inc(x)))
        skips = []
        for conv_same, bn1, conv_down, bn2 in self.down_branch:
            x = torch.relu(bn1(conv_same(x)))
            if conv_down is not None:
                skips.append(x)
                x = torch.relu(bn2(conv_down(x)))
        return x, skips

    def decode(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Bottleneck features and skips -> (B, N) series, or (B, n_outputs, N)."""
        for (conv_up, bn1, conv_same, bn2), skip, (start, stop) in zip(
            self.up_branch, reversed(skips), self._crops, strict=True
        ):
            x = torch.relu(bn1(conv_up(x)))
            x = x[:, :, start:stop]  # static bounds: no shape ops in the exported graph
            x = torch.relu(bn2(conv_same(torch.cat([skip, x], dim=1))))
        out = self.out(x)
        return out.squeeze(1) if self.n_outputs == 1 else out


class UNetMagnitudeModel(UNetLayers, MagnitudeModel):
    """PhaseNet's encoder/decoder with a linear 1x1 head; subclasses add a bottleneck.

    Attribute names (``inc``, ``in_bn``, ``down_branch``, ``up_branch``, ``out``) and the
    ``[conv, bn, conv, bn]`` grouping mirror the reference code (QuentonYeo/magnitude_estimation),
    which keeps its state dicts importable by a plain rename. The biases follow the reference too
    (``inc`` always has one; ``down_bias`` says whether the strided convs do), even where a
    BatchNorm follows, so parameter counts and imported checkpoints match.
    """

    amplitude_inputs = ("inc.weight",)

    def __init__(
        self,
        in_channels: int,
        in_samples: int,
        filters_root: int,
        depth: int,
        kernel_size: int,
        stride: int,
        *,
        down_padding: int | None = None,
        down_bias: bool = True,
        crop: str = "phasenet",
        n_outputs: int = 1,
    ) -> None:
        MagnitudeModel.__init__(self, in_channels, in_samples)
        self.build_unet(
            self.body_channels,
            in_samples,
            filters_root,
            depth,
            kernel_size,
            stride,
            down_padding=down_padding,
            down_bias=down_bias,
            crop=crop,
            n_outputs=n_outputs,
        )


class PhaseNetMag(UNetMagnitudeModel):
    """PhaseNet with a linear output: (B, C, N) -> magnitude (B, N)."""

    def __init__(
        self,
        in_channels: int = 3,
        in_samples: int = 3001,
        filters_root: int = 8,
        depth: int = 5,
        kernel_size: int = 7,
        stride: int = 4,
        n_outputs: int = 1,
    ) -> None:
        super().__init__(
            in_channels, in_samples, filters_root, depth, kernel_size, stride, n_outputs=n_outputs
        )

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x))
