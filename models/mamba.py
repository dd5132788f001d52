"""Mamba block (Gu & Dao 2023) in pure PyTorch, and U-Mamba's token-mixing wrapper.

No mamba_ssm or CUDA kernels: the scan is :func:`seismag.models.selective_scan.selective_scan`,
called from exactly one place (:meth:`Mamba.forward`) so it can later be swapped for a custom op.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seismag.models.selective_scan import IMPLS, selective_scan


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class Mamba(nn.Module):
    """One Mamba block on (B, L, d_model) -> (B, L, d_model), causal along L.

    ``scan_impl`` / ``scan_chunk`` pick the scan (see :mod:`seismag.models.selective_scan`); the
    chunk is a fixed constant, never derived from L, so nothing depends on the sequence length.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        scan_impl: str = "chunked",
        scan_chunk: int = 32,
    ) -> None:
        super().__init__()
        _positive_int("d_model", d_model)
        _positive_int("d_state", d_state)
        _positive_int("d_conv", d_conv)
        _positive_int("expand", expand)
        _positive_int("scan_chunk", scan_chunk)
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        _positive_int("dt_rank ('auto' or an int)", dt_rank)
        if not (0 < dt_min <= dt_max):
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if scan_impl not in IMPLS:
            raise ValueError(f"scan_impl must be one of {IMPLS}, got {scan_impl!r}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = d_inner = expand * d_model
        self.dt_rank = dt_rank
        self.scan_impl, self.scan_chunk = scan_impl, scan_chunk

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        # Depthwise; padded on the left in forward so output t sees inputs <= t only.
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

        # Standard Mamba init: softplus(dt bias) is log-uniform in [dt_min, dt_max], so the
        # channels start out covering fast to slow time scales, independent of sequence length.
        nn.init.uniform_(self.dt_proj.weight, -(dt_rank**-0.5), dt_rank**-0.5)
        dt = torch.exp(
            torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        )
        dt = dt.clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        # S4D-real init: A = -(1, 2, ..., d_state) for every channel.
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(d_inner))

    def forward(self, hidden: torch.Tensor, fixed_dt: float | None = None) -> torch.Tensor:
        """``fixed_dt`` replaces the learnt step by a constant: only to reproduce the design
        documents' field model (``dt = 1 / sequence length``) in an ablation."""
        if hidden.dim() != 3 or hidden.shape[-1] != self.d_model:
            raise ValueError(
                f"Mamba expects (batch, length, {self.d_model}), got {tuple(hidden.shape)}"
            )
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, d_inner, L) each
        x = F.silu(self.conv1d(F.pad(x, (self.d_conv - 1, 0))))
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2 * d_state)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt)).transpose(1, 2)  # (B, d_inner, L), > 0
        if fixed_dt is not None:
            delta = torch.full_like(delta, fixed_dt)
        A = -torch.exp(self.A_log.float())
        y = selective_scan(
            x,
            delta,
            A,
            B.transpose(1, 2),
            C.transpose(1, 2),
            self.D.float(),
            z,
            impl=self.scan_impl,
            chunk=self.scan_chunk,
        )
        return self.out_proj(y.transpose(1, 2))


class MambaLayer(nn.Module):
    """U-Mamba's layer on (B, C, L): LayerNorm, then Mamba over tokens.

    No residual around the Mamba: the reference U-Mamba magnitude models
    (QuentonYeo/magnitude_estimation) have none, and imported checkpoints must mean the same.
    Patch tokens: a sequence over the L positions with C features. Channel tokens: a sequence over
    the C channels with L features, which U-Mamba uses when a feature map has no more positions
    than channels. The choice is fixed at construction from static sizes (``dim`` is then L).
    """

    def __init__(self, dim: int, channel_token: bool = False, **mamba_kwargs) -> None:
        super().__init__()
        _positive_int("dim", dim)
        self.dim = dim
        self.channel_token = bool(channel_token)
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(d_model=dim, **mamba_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature_axis = 2 if self.channel_token else 1
        if x.dim() != 3 or x.shape[feature_axis] != self.dim:
            kind = "channel" if self.channel_token else "patch"
            raise ValueError(
                f"MambaLayer ({kind} tokens) expects dim {feature_axis} of (B, C, L) to be "
                f"{self.dim}, got {tuple(x.shape)}"
            )
        tokens = x if self.channel_token else x.transpose(1, 2)  # (B, n_tokens, features)
        out = self.mamba(self.norm(tokens))
        return out if self.channel_token else out.transpose(1, 2)
