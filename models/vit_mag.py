"""ViTMag: a vision-transformer magnitude regressor after Saad et al. (2022, MagViT).

Conv + pooling blocks shorten the window (3001 samples -> 32 x 75), non-overlapping patches of
``patch_size`` time steps are flattened and projected to ``embed_dim`` (75 -> 15 patches of 100),
a learned position embedding is added, transformer encoder blocks mix the patches, and the
flattened sequence goes through an MLP head to one magnitude per window.

Every length is derived from ``in_samples`` at construction, so the forward is static apart from
the batch axis and exports to ONNX with a dynamic batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from seismag.models.base import MagnitudeModel


def _check_int_list(name: str, values: Sequence[int], minimum: int = 1) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty list of ints >= {minimum}, got {values!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values):
        raise ValueError(f"{name} must contain only ints >= {minimum}, got {list(values)!r}")
    return list(values)


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_dropout(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


class _EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block (multi-head self-attention + GELU feed-forward).

    Written out instead of ``nn.TransformerEncoderLayer``: the latter's attention bakes the
    traced batch size into ONNX reshapes, which breaks the dynamic batch axis.
    """

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ff_dim, dim),
            nn.Dropout(dropout),
        )

    def _attention(self, x: torch.Tensor) -> torch.Tensor:  # (B, P, D) -> (B, P, D)
        # (B, P, 3 * D) -> 3 x (B, H, P, Dh), reshaped with static sizes only.
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        weights = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        y = (self.attn_drop(weights) @ v).transpose(1, 2).flatten(2)
        return self.drop(self.proj(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._attention(self.norm1(x))
        return x + self.ff(self.norm2(x))


class ViTMag(MagnitudeModel):
    """Conv stem, patch embedding, transformer encoders, MLP head: output (B,)."""

    def __init__(
        self,
        in_channels: int = 3,
        in_samples: int = 3001,
        conv_filters: Sequence[int] = (32, 32, 32, 32),
        conv_kernel: int = 3,
        pool_sizes: Sequence[int] = (2, 2, 2, 5),
        patch_size: int = 5,
        embed_dim: int = 100,
        num_heads: int = 4,
        num_layers: int = 4,
        ff_dim: int = 200,
        mlp_units: Sequence[int] = (256, 64),
        dropout: float = 0.1,
        mlp_dropout: float = 0.2,
    ) -> None:
        super().__init__(in_channels, in_samples)
        conv_filters = _check_int_list("conv_filters", conv_filters)
        pool_sizes = _check_int_list("pool_sizes", pool_sizes)
        mlp_units = _check_int_list("mlp_units", mlp_units)
        if len(conv_filters) != len(pool_sizes):
            raise ValueError(
                f"conv_filters and pool_sizes must have the same length, "
                f"got {len(conv_filters)} and {len(pool_sizes)}"
            )
        for name, value in (
            ("conv_kernel", conv_kernel),
            ("patch_size", patch_size),
            ("embed_dim", embed_dim),
            ("num_heads", num_heads),
            ("num_layers", num_layers),
            ("ff_dim", ff_dim),
        ):
            _check_positive_int(name, value)
        if conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd to keep lengths centred, got {conv_kernel}")
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        _check_dropout("dropout", dropout)
        _check_dropout("mlp_dropout", mlp_dropout)

        # Static lengths: each pooling floors; trailing steps that do not fill a patch are dropped.
        length = in_samples
        for p in pool_sizes:
            length //= p
        self.stem_samples = length
        self.num_patches = length // patch_size
        if self.num_patches < 1:
            raise ValueError(
                f"in_samples={in_samples} is too short: pooling by {pool_sizes} leaves {length} "
                f"steps, fewer than one patch of {patch_size}"
            )
        self.patch_size = patch_size

        layers: list[nn.Module] = []
        ch = self.body_channels
        for f, p in zip(conv_filters, pool_sizes, strict=True):
            layers += [
                nn.Conv1d(ch, f, conv_kernel, padding=conv_kernel // 2),
                nn.BatchNorm1d(f),
                nn.ReLU(),
                nn.MaxPool1d(p),
            ]
            ch = f
        self.stem = nn.Sequential(*layers)

        self.patch_embed = nn.Linear(ch * patch_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.encoder = nn.Sequential(
            *(_EncoderBlock(embed_dim, num_heads, ff_dim, dropout) for _ in range(num_layers))
        )
        self.norm = nn.LayerNorm(embed_dim)

        head: list[nn.Module] = []
        width = self.num_patches * embed_dim
        for units in mlp_units:
            head += [nn.Linear(width, units), nn.GELU(), nn.Dropout(mlp_dropout)]
            width = units
        self.mlp = nn.Sequential(*head)
        self.output = nn.Linear(width, 1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C', L)
        x = x[..., : self.num_patches * self.patch_size]
        # (B, C', P * S) -> (B, P, C' * S): each patch is channels x its S time steps.
        x = x.unflatten(-1, (self.num_patches, self.patch_size)).transpose(1, 2).flatten(2)
        x = self.patch_embed(x) + self.pos_embed  # (B, P, D)
        x = self.encoder(x)
        x = self.norm(x).flatten(1)  # (B, P * D)
        return self.output(self.mlp(x)).squeeze(-1)  # (B,)
