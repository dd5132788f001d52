"""ViTMag: a vision-transformer magnitude regressor after Saad et al. (2022, MagViT).

The layout is the reference ViTMagnitudeEstimator's (QuentonYeo/magnitude_estimation): linear
conv + max-pool blocks shorten the window (3001 samples -> 32 x 75), non-overlapping patches of
``patch_size`` steps are flattened and projected to ``embed_dim`` (15 patches of 100), a learned
position embedding is added, pre-norm transformer blocks (full-width heads averaged) mix the
patches, and the flattened sequence goes through a GELU MLP [1000, 500] to one magnitude.

``transformer_mlp_dims = [200]`` is the reference's 2,720,625-parameter variant; ``[200, 100]``
is the three-layer MLP of its later revision. Every length is derived from ``in_samples`` at
construction, so the forward is static apart from the batch axis and exports to ONNX.
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


class _AttentionHead(nn.Module):
    """One full-width scaled dot-product head (the reference's SelfAttention)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.W_q = nn.Linear(dim, dim)
        self.W_k = nn.Linear(dim, dim)
        self.W_v = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, P, D) -> (B, P, D)
        scores = (self.W_q(x) @ self.W_k(x).transpose(-2, -1)) * self.scale
        return self.dropout(torch.softmax(scores, dim=-1)) @ self.W_v(x)


class _MultiHeadAttention(nn.Module):
    """The reference's multi-head self-attention: full-width heads *averaged*, then projected.

    Unlike the usual split-and-concatenate heads, each head attends over all ``dim`` features and
    the heads' outputs are averaged; kept as is so reference checkpoints mean the same thing. The
    loop runs over a fixed number of heads, so the ONNX graph stays static.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_heads = nn.ModuleList(_AttentionHead(dim, dropout) for _ in range(heads))
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.stack([head(x) for head in self.attention_heads], dim=0).mean(dim=0)
        return self.dropout(self.out_proj(y))


class _MLP(nn.Module):
    """GELU feed-forward ``dim -> hidden[0] -> ... -> dim``; layers named fc1, fc2, ... ."""

    def __init__(self, dim: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        widths = [dim, *hidden, dim]
        self.n_layers = len(widths) - 1
        for i in range(self.n_layers):
            self.add_module(f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1]))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_layers):
            x = getattr(self, f"fc{i + 1}")(x)
            if i < self.n_layers - 1:
                x = nn.functional.gelu(x)
            x = self.dropout(x)
        return x


class _EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_dims: list[int], dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.msa = _MultiHeadAttention(dim, heads, dropout)
        self.mlp = _MLP(dim, mlp_dims, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.msa(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _ConvBlock(nn.Module):
    """Conv with a linear activation (keeps amplitude information), dropout, max-pool."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, pool: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, padding=kernel // 2)
        self.dropout = nn.Dropout(dropout)
        self.pool = nn.MaxPool1d(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.dropout(self.conv(x)))


class _PatchEmbedding(nn.Module):
    """Non-overlapping patches of ``patch`` steps, flattened, projected, plus position embedding."""

    def __init__(self, channels: int, patch: int, n_patches: int, dim: int) -> None:
        super().__init__()
        self.patch, self.n_patches = patch, n_patches
        self.projection = nn.Linear(channels * patch, dim)
        self.position_embedding = nn.Parameter(torch.randn(1, n_patches, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L) -> (B, P, D)
        x = x[..., : self.n_patches * self.patch]
        # (B, C, P * S) -> (B, P, C * S): each patch is channels x its S time steps.
        x = x.unflatten(-1, (self.n_patches, self.patch)).transpose(1, 2).flatten(2)
        return self.projection(x) + self.position_embedding


class ViTMag(MagnitudeModel):
    """Conv stem, patch embedding, transformer encoders, MLP head: output (B,) or (B, n_outputs)."""

    amplitude_inputs = ("conv_blocks.0.conv.weight",)

    def __init__(
        self,
        in_channels: int = 3,
        in_samples: int = 3001,
        conv_channels: Sequence[int] = (64, 32, 32, 32),
        kernel_size: int = 3,
        pool_sizes: Sequence[int] = (2, 2, 2, 5),
        patch_size: int = 5,
        embed_dim: int = 100,
        num_heads: int = 4,
        num_transformer_blocks: int = 4,
        transformer_mlp_dims: Sequence[int] = (200,),
        final_mlp_dims: Sequence[int] = (1000, 500),
        dropout: float = 0.1,
        final_dropout: float = 0.5,
        n_outputs: int = 1,
    ) -> None:
        super().__init__(in_channels, in_samples)
        conv_channels = _check_int_list("conv_channels", conv_channels)
        pool_sizes = _check_int_list("pool_sizes", pool_sizes)
        transformer_mlp_dims = _check_int_list("transformer_mlp_dims", transformer_mlp_dims)
        final_mlp_dims = _check_int_list("final_mlp_dims", final_mlp_dims)
        if len(conv_channels) != len(pool_sizes):
            raise ValueError(
                f"conv_channels and pool_sizes must have the same length, "
                f"got {len(conv_channels)} and {len(pool_sizes)}"
            )
        for name, value in (
            ("kernel_size", kernel_size),
            ("patch_size", patch_size),
            ("embed_dim", embed_dim),
            ("num_heads", num_heads),
            ("num_transformer_blocks", num_transformer_blocks),
            ("n_outputs", n_outputs),
        ):
            _check_positive_int(name, value)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep lengths centred, got {kernel_size}")
        if embed_dim % num_heads != 0:  # the reference asserts it, although heads are full-width
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        _check_dropout("dropout", dropout)
        _check_dropout("final_dropout", final_dropout)

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
        self.n_outputs = n_outputs

        self.conv_blocks = nn.ModuleList()
        ch = self.body_channels
        for f, p in zip(conv_channels, pool_sizes, strict=True):
            self.conv_blocks.append(_ConvBlock(ch, f, kernel_size, p, dropout))
            ch = f
        self.patch_embed = _PatchEmbedding(ch, patch_size, self.num_patches, embed_dim)
        self.transformer_encoders = nn.ModuleList(
            _EncoderBlock(embed_dim, num_heads, transformer_mlp_dims, dropout)
            for _ in range(num_transformer_blocks)
        )
        head: list[nn.Module] = []
        width = self.num_patches * embed_dim
        for units in final_mlp_dims:
            head += [nn.Linear(width, units), nn.GELU(), nn.Dropout(final_dropout)]
            width = units
        self.final_mlp = nn.Sequential(*head)
        self.output = nn.Linear(width, n_outputs)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv_blocks:
            x = block(x)  # (B, C', L)
        x = self.patch_embed(x)  # (B, P, D)
        for encoder in self.transformer_encoders:
            x = encoder(x)
        out = self.output(self.final_mlp(x.flatten(1)))  # (B, n_outputs)
        return out.squeeze(-1) if self.n_outputs == 1 else out
