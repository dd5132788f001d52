"""The flow-matching sampler for sparse-field reconstruction, torch-free.

Training (:mod:`seismag.training.field_train`, through a torch wrapper), export parity and the
served runtime all draw samples here, so a served reconstruction is the one the docs measured.

The path is the straight one of flow matching (Lipman et al. 2023): ``x_t = (1 - t) x0 + t x1``
with ``x0 ~ N(0, 1)``. The network predicts the clean field ``x1`` from ``x_t`` (the output is
bounded to [-1, 1]); the velocity is ``(x1_hat - x_t) / (1 - t)``. Euler steps at ``t_i = i / S``
then read ``x_{i+1} = x_i + (x1_hat - x_i) / (S - i)``, which lands exactly on ``x1_hat`` at the
last step.

Euler's steps shrink the draws: each moves towards a posterior mean, and with a Gaussian target
and the exact network, 10 steps end with 0.88 of its standard deviation (5: 0.77). Heun's
second-order steps (``sampler = "heun"``: a trial Euler step, then the mean of the two
velocities; the last step stays Euler, the velocity at t = 1 being undefined) end with 0.995 at
10 steps and 0.97 at 5, for 2 S - 1 network runs per draw instead of S (Karras et al. 2022,
"Elucidating the design space of diffusion-based generative models", NeurIPS, use the same
step for the same reason).

The reported mean is the network's estimate at ``t = 0``, averaged over the draws: there
``x_t`` is pure noise, so the flow-matching loss trains the network to give the posterior mean
of the field, the estimate with the smallest squared error; the mean of the draws' endpoints
carries their Monte Carlo scatter on top (``mean="draws"`` gives it, for comparison). The
standard deviation is that of the endpoints.

A model with a prior (``models/field_prior.py``) takes the prior's mean and standard deviation
at the queries as two more inputs and runs the same path on the standardised residual
``(x - mean) / std``; :func:`reconstruct` maps its draws back.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Predict = Callable[..., np.ndarray]
"""``predict(ctx_coords (N,K,2), ctx_values (N,K), query_coords (N,Q,2), x_t (N,Q), t (N,),
[prior_mean (N,Q), prior_std (N,Q)])`` -> the clean estimate (N, Q) in the space of ``x_t``, all
float32 in the network's unit scale (the residual's scale for a model with a prior)."""


SAMPLERS = ("euler", "heun")


def network_runs(sampler: str, steps: int) -> int:
    """Network evaluations per draw."""
    return steps if sampler == "euler" else 2 * steps - 1


def euler_sample(
    predict: Predict,
    ctx_coords: np.ndarray,
    ctx_values: np.ndarray,
    query_coords: np.ndarray,
    steps: int,
    rng: np.random.Generator,
    extra: tuple[np.ndarray, ...] = (),
    sampler: str = "euler",
) -> tuple[np.ndarray, np.ndarray]:
    """One sample per row and the network's estimate at t = 0: (N, Q) float32 each; Euler's
    steps, or Heun's with ``sampler="heun"``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
    n, q = query_coords.shape[:2]
    x = rng.standard_normal((n, q)).astype(np.float32)
    first = x

    def velocity(x: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        t = np.full(n, i / steps, np.float32)
        x1 = predict(ctx_coords, ctx_values, query_coords, x, t, *extra)
        return (x1 - x) * (steps / (steps - i)), x1  # per unit of t

    for i in range(steps):
        v, x1 = velocity(x, i)
        if i == 0:
            first = x1
        if sampler == "euler" or i == steps - 1:
            x = (x + v / steps).astype(np.float32)
        else:
            v_next, _ = velocity((x + v / steps).astype(np.float32), i + 1)
            x = (x + 0.5 * (v + v_next) / steps).astype(np.float32)
    return x, first


def regress(
    predict: Predict,
    ctx_coords: np.ndarray,
    ctx_values: np.ndarray,
    query_coords: np.ndarray,
    extra: tuple[np.ndarray, ...] = (),
) -> np.ndarray:
    """A regressor's single pass: x_t = 0 and t = 0."""
    n, q = query_coords.shape[:2]
    zeros = np.zeros((n, q), np.float32)
    return predict(ctx_coords, ctx_values, query_coords, zeros, np.zeros(n, np.float32), *extra)


def _through(prior: tuple[np.ndarray, np.ndarray], rows, residual: np.ndarray) -> np.ndarray:
    """A residual back to unit scale, clipped to the value range: the prior's mean is not
    bounded as the network's own output is, and the fields' values lie in the card's range."""
    return np.clip(prior[0][rows] + prior[1][rows] * residual, -1.0, 1.0).astype(np.float32)


def reconstruct(
    predict: Predict,
    objective: str,
    ctx_coords: np.ndarray,
    ctx_values: np.ndarray,
    query_coords: np.ndarray,
    samples: int,
    steps: int,
    seed: int = 0,
    max_rows: int = 64,
    prior: tuple[np.ndarray, np.ndarray] | None = None,
    mean: str = "t0",
    sampler: str = "euler",
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and per-point standard deviation over ``samples`` draws, unit scale, (F, Q) each.

    Fields are tiled ``samples`` times and run ``max_rows`` rows at a time, which bounds memory.
    A regressor gives its single estimate and a zero deviation. ``prior``: the prior's mean and
    standard deviation (F, Q) in unit scale, for a model trained with one.
    """
    f = len(ctx_coords)
    if objective == "regress":
        outs = []
        for i in range(0, f, max_rows):
            r = slice(i, i + max_rows)
            extra = () if prior is None else (prior[0][r], prior[1][r])
            y = regress(predict, ctx_coords[r], ctx_values[r], query_coords[r], extra)
            outs.append(y if prior is None else _through(prior, r, y))
        single = np.concatenate(outs)
        return single, np.zeros_like(single)
    if mean not in ("t0", "draws"):
        raise ValueError(f"mean must be t0 or draws, not {mean!r}")
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(f), samples)
    draws, firsts = [], []
    for i in range(0, len(rows), max_rows):
        r = rows[i : i + max_rows]
        extra = () if prior is None else (prior[0][r], prior[1][r])
        y, y0 = euler_sample(
            predict, ctx_coords[r], ctx_values[r], query_coords[r], steps, rng, extra, sampler
        )
        if prior is not None:
            y, y0 = _through(prior, r, y), _through(prior, r, y0)
        draws.append(y)
        firsts.append(y0)
    x = np.concatenate(draws).reshape(f, samples, -1)
    std = x.std(axis=1, ddof=1) if samples > 1 else np.zeros_like(x[:, 0])
    estimate = x if mean == "draws" else np.concatenate(firsts).reshape(f, samples, -1)
    return estimate.mean(axis=1), std
