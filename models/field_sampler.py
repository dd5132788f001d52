"""The flow-matching sampler for sparse-field reconstruction, torch-free.

Training (:mod:`seismag.training.field_train`, through a torch wrapper), export parity and the
served runtime all draw samples here, so a served reconstruction is the one the docs measured.

The path is the straight one of flow matching (Lipman et al. 2023): ``x_t = (1 - t) x0 + t x1``
with ``x0 ~ N(0, 1)``. The network predicts the clean field ``x1`` from ``x_t`` (the output is
bounded to [-1, 1]); the velocity is ``(x1_hat - x_t) / (1 - t)``. Euler steps at ``t_i = i / S``
then read ``x_{i+1} = x_i + (x1_hat - x_i) / (S - i)``, which lands exactly on ``x1_hat`` at the
last step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Predict = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""``predict(ctx_coords (N,K,2), ctx_values (N,K), query_coords (N,Q,2), x_t (N,Q), t (N,))``
-> the clean-field estimate (N, Q), all float32 in the network's unit scale."""


def euler_sample(
    predict: Predict,
    ctx_coords: np.ndarray,
    ctx_values: np.ndarray,
    query_coords: np.ndarray,
    steps: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One sample per row: (N, Q) float32 in unit scale."""
    n, q = query_coords.shape[:2]
    x = rng.standard_normal((n, q)).astype(np.float32)
    for i in range(steps):
        t = np.full(n, i / steps, np.float32)
        x1 = predict(ctx_coords, ctx_values, query_coords, x, t)
        x = (x + (x1 - x) / (steps - i)).astype(np.float32)
    return x


def regress(
    predict: Predict, ctx_coords: np.ndarray, ctx_values: np.ndarray, query_coords: np.ndarray
) -> np.ndarray:
    """A regressor's single pass: x_t = 0 and t = 0."""
    n, q = query_coords.shape[:2]
    return predict(
        ctx_coords, ctx_values, query_coords, np.zeros((n, q), np.float32), np.zeros(n, np.float32)
    )


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
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and per-point standard deviation over ``samples`` draws, unit scale, (F, Q) each.

    Fields are tiled ``samples`` times and run ``max_rows`` rows at a time, which bounds memory.
    A regressor gives its single estimate and a zero deviation.
    """
    f = len(ctx_coords)
    if objective == "regress":
        outs = [
            regress(
                predict,
                ctx_coords[i : i + max_rows],
                ctx_values[i : i + max_rows],
                query_coords[i : i + max_rows],
            )
            for i in range(0, f, max_rows)
        ]
        mean = np.concatenate(outs)
        return mean, np.zeros_like(mean)
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(f), samples)
    draws = []
    for i in range(0, len(rows), max_rows):
        r = rows[i : i + max_rows]
        draws.append(
            euler_sample(predict, ctx_coords[r], ctx_values[r], query_coords[r], steps, rng)
        )
    x = np.concatenate(draws).reshape(f, samples, -1)
    std = x.std(axis=1, ddof=1) if samples > 1 else np.zeros_like(x[:, 0])
    return x.mean(axis=1), std
