"""FieldFlow: conditional flow matching that reconstructs a 2-D field from sparse observations.

The design documents' model (observations as context tokens, a query token for every grid
point, cross-attention, an ODE sampler) with each of the failures they name fixed, every fix a
card switch so the ablation in docs/field.md trains the same code with one switch flipped:

- ``learn_fourier``: coordinates enter through Fourier features whose frequencies are trained
  (Tancik et al. 2020 use fixed random ones; the design documents' ``randn * 10`` never adapted).
- ``bounded``: the network predicts the clean field, squashed into the value range by tanh, and
  the sampler derives the velocity from it (``models/field_sampler.py``); an unbounded output
  let the design documents' decoder leave [0, 1].
- ``norm``: pre-LayerNorm blocks and centred values ([0, 1] -> [-1, 1]).
- Training queries (``training.query_pixels`` in the card): every step scores a random subset of
  the grid, resampled each step, never a fixed 51.
- ``query_mixer = "mamba"`` scans the query tokens in raster order with the project's selective scan
  (Gu & Dao 2023) and a step ``dt`` learnt per channel, not ``1 / sequence length``, which the
  design documents tied to the query count so training and evaluation ran different dynamics.

Query tokens attend to the context (cross-attention) and, with ``query_mixer``, to each other
(self-attention or a bidirectional Mamba scan), so samples can be spatially coherent.

``prior = "gp"``: each query token also carries a Gaussian process's posterior mean and log
standard deviation there (``models/field_prior.py``), and the network works on the standardised
residual ``(x - mean) / std`` (bounded to +-6 standard deviations), so it learns what the GP
gets wrong instead of the whole field.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seismag.models.field_card import FieldCard
from seismag.models.field_prior import PRIORS


class FourierFeatures(nn.Module):
    """[sin(2 pi x B), cos(2 pi x B)] of 2-D coordinates; B (2, F) trained when ``learn``."""

    def __init__(self, n_freq: int, scale: float, learn: bool, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        b = torch.randn(2, n_freq, generator=gen) * scale
        if learn:
            self.b = nn.Parameter(b)
        else:
            self.register_buffer("b", b)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * coords @ self.b
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def _norm(d: int, on: bool) -> nn.Module:
    return nn.LayerNorm(d) if on else nn.Identity()


class Attention(nn.Module):
    """Multi-head attention from scaled_dot_product_attention (exports to plain ONNX ops)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        n, lq, d = x.shape
        lk = ctx.shape[1]
        h = self.heads
        q = self.q(x).reshape(n, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(ctx).reshape(n, lk, 2, h, d // h).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(n, lq, d))


class MLP(nn.Module):
    def __init__(self, d: int, ratio: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, ratio * d), nn.GELU(), nn.Linear(ratio * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ContextBlock(nn.Module):
    """Self-attention among the observations."""

    def __init__(self, d: int, heads: int, ratio: int, norm: bool) -> None:
        super().__init__()
        self.n1, self.attn = _norm(d, norm), Attention(d, heads)
        self.n2, self.mlp = _norm(d, norm), MLP(d, ratio)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        h = self.n1(c)
        c = c + self.attn(h, h)
        return c + self.mlp(self.n2(c))


class BiMamba(nn.Module):
    """Bidirectional Mamba over the query tokens in raster order (the design documents' V1 mixer).

    ``seeds_dt`` reproduces the design documents' step, ``dt = 1 / (number of tokens)``, which
    changes the dynamics whenever the query count does (256 scored in training, 1,024 served)."""

    def __init__(self, d: int, seeds_dt: bool = False) -> None:
        super().__init__()
        from seismag.models.mamba import Mamba

        self.fwd = Mamba(d)
        self.bwd = Mamba(d)
        self.seeds_dt = seeds_dt

    def forward(self, x: torch.Tensor, _ctx: torch.Tensor) -> torch.Tensor:
        dt = 1.0 / x.shape[1] if self.seeds_dt else None
        return self.fwd(x, dt) + self.bwd(x.flip(1), dt).flip(1)


class QueryBlock(nn.Module):
    """Cross-attention to the observations, an optional mixer among queries, an MLP."""

    def __init__(
        self, d: int, heads: int, ratio: int, norm: bool, mixer: str, seeds_dt: bool = False
    ) -> None:
        super().__init__()
        self.nx, self.cross = _norm(d, norm), Attention(d, heads)
        self.mixer: nn.Module | None
        if mixer == "attention":
            self.mixer = Attention(d, heads)
        elif mixer == "mamba":
            self.mixer = BiMamba(d, seeds_dt)
        elif mixer == "none":
            self.mixer = None
        else:
            raise ValueError(f"query_mixer must be attention, mamba or none, not {mixer!r}")
        self.nm = _norm(d, norm)
        self.n2, self.mlp = _norm(d, norm), MLP(d, ratio)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        x = x + self.cross(self.nx(x), ctx)
        if self.mixer is not None:
            h = self.nm(x)
            x = x + self.mixer(h, h)
        return x + self.mlp(self.n2(x))


RESIDUAL_BOUND = 6.0
"""A prior model's output, in prior standard deviations, stays within +- this."""


class FieldFlow(nn.Module):
    """``forward(ctx_coords, ctx_values, query_coords, x_t, t[, prior_mean, prior_std]) -> x1``
    (the ONNX contract)."""

    def __init__(
        self,
        d_model: int = 64,
        heads: int = 4,
        context_layers: int = 2,
        query_layers: int = 3,
        mlp_ratio: int = 2,
        n_fourier: int = 32,
        fourier_scale: float = 4.0,
        learn_fourier: bool = True,
        bounded: bool = True,
        norm: bool = True,
        query_mixer: str = "none",
        seeds_dt: bool = False,
        prior: str = "none",
        objective: str = "flow",
        start_at_prior: bool = False,
    ) -> None:
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, not {prior!r}")
        self.bounded = bounded
        self.objective = objective
        self.prior = prior
        self.ff = FourierFeatures(n_fourier, fourier_scale, learn_fourier)
        self.ctx_in = nn.Linear(2 * n_fourier + 1, d_model)
        self.query_in = nn.Linear(2 * n_fourier + (3 if prior != "none" else 1), d_model)
        self.time = nn.Sequential(nn.Linear(16, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.ctx_blocks = nn.ModuleList(
            ContextBlock(d_model, heads, mlp_ratio, norm) for _ in range(context_layers)
        )
        self.ctx_norm = _norm(d_model, norm)
        self.query_blocks = nn.ModuleList(
            QueryBlock(d_model, heads, mlp_ratio, norm, query_mixer, seeds_dt)
            for _ in range(query_layers)
        )
        self.head = nn.Sequential(_norm(d_model, norm), nn.Linear(d_model, 1))
        if start_at_prior:
            if prior == "none":
                raise ValueError("start_at_prior needs a prior")
            # A residual of zero: training starts from the prior's reconstruction and leaves it
            # only where the data pay for it (a prior close to the best answer otherwise loses
            # to the random initial network's scatter).
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    @staticmethod
    def _time_features(t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), 8, device=t.device))
        arg = t[:, None] * freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)

    def forward(
        self,
        ctx_coords: torch.Tensor,
        ctx_values: torch.Tensor,
        query_coords: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        prior_mean: torch.Tensor | None = None,
        prior_std: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c = self.ctx_in(torch.cat([self.ff(ctx_coords), ctx_values[..., None]], dim=-1))
        for block in self.ctx_blocks:
            c = block(c)
        c = self.ctx_norm(c)
        if self.objective == "regress":
            # A regressor sees no noisy field: the same network, one pass.
            x_t = torch.zeros_like(x_t)
            t = torch.zeros_like(t)
        feats = [self.ff(query_coords), x_t[..., None]]
        if self.prior != "none":
            if prior_mean is None or prior_std is None:
                raise ValueError("a model with a prior needs prior_mean and prior_std")
            feats += [prior_mean[..., None], torch.log(prior_std)[..., None]]
        q = self.query_in(torch.cat(feats, dim=-1))
        q = q + self.time(self._time_features(t))[:, None, :]
        for block in self.query_blocks:
            q = block(q, c)
        out = self.head(q)[..., 0]
        if not self.bounded:
            return out
        if self.prior != "none":
            return RESIDUAL_BOUND * torch.tanh(out / RESIDUAL_BOUND)
        return torch.tanh(out)


def build_field_model(card: FieldCard) -> FieldFlow:
    return FieldFlow(objective=card.objective, **card.kwargs)


def save_field_weights(model: FieldFlow, card: FieldCard, path) -> None:
    """safetensors with the card (as trained, overrides included) in the metadata."""
    from pathlib import Path

    from safetensors.torch import save_file

    from seismag.models.field_card import FIELD_CARD_KEY

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={FIELD_CARD_KEY: card.to_json()})


def load_field_model(path) -> tuple[FieldFlow, FieldCard]:
    """The model a field weights file holds, built from the card stored in it."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from seismag.models.card import CardError
    from seismag.models.field_card import FIELD_CARD_KEY

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise CardError(f"field weights not found: {path}") from None
    except Exception as exc:  # safetensors raises its own types for corrupt headers
        raise CardError(f"{path}: not a readable safetensors file ({exc})") from exc
    if FIELD_CARD_KEY not in meta:
        raise CardError(f"{path}: no field card in the file's metadata")
    card = FieldCard.from_dict(json.loads(meta[FIELD_CARD_KEY]))
    model = build_field_model(card)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval(), card
