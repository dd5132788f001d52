"""The classical prior a field model may refine: a Gaussian process fitted to each field.

A GP whose kernel is fitted per field by maximum marginal likelihood (Rasmussen & Williams 2006,
ch. 5) reconstructs smooth fields from 5 % of their points far better than any interpolator and
than a network trained for minutes (docs/field.md). A card with ``prior = "gp"`` therefore gives
its network the GP's posterior mean and standard deviation at every query point and lets the flow
model the standardised residual ``(field - mean) / std``: where the GP is sure, the reconstruction
is the GP's; where it is not, the network's learnt prior of the field family decides.

The same function serves the ``gp`` baseline (``benchmarks/field_baselines.py``), training and
the served runtime, so the prior a model was trained with is the one it gets. Needs scikit-learn
(the ``field`` extra); torch-free.
"""

from __future__ import annotations

import warnings

import numpy as np

PRIORS = ("none", "gp")
GP_RESTARTS = 3
"""Extra optimizer starts (log-uniform in the bounds) beside the kernel's initial values: the
marginal likelihood of a few points on a periodic field has several local optima."""
STD_FLOOR = 1e-3
"""Smallest prior standard deviation (unit scale): the residual is divided by it."""


def gp_kernel():
    """sigma^2 * RBF(anisotropic) + white noise. Bounds: length scales from under a pixel of a
    32-pixel grid (0.02) to twice the field (a plane), the signal variance about the normalised
    targets' unit variance, the noise from none to a tenth of it (the fields are noise-free, but
    a nugget keeps the fit well conditioned)."""
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    return ConstantKernel(1.0, (1e-2, 1e2)) * RBF(
        length_scale=(0.2, 0.2), length_scale_bounds=(0.02, 2.0)
    ) + WhiteKernel(1e-4, (1e-8, 1e-1))


def gp_posterior(
    coords: np.ndarray, values: np.ndarray, query: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The fitted GP's posterior mean and standard deviation at ``query`` (Q, 2), (Q,) each,
    from observations ``coords`` (K, 2) and ``values`` (K,)."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
    except ImportError as exc:  # the field extra
        raise ImportError(
            "the Gaussian-process prior needs scikit-learn: pip install 'seismag[field]'"
        ) from exc

    model = GaussianProcessRegressor(
        kernel=gp_kernel(), normalize_y=True, n_restarts_optimizer=GP_RESTARTS, random_state=seed
    )
    with warnings.catch_warnings():
        # A length scale or the nugget at its bound is an answer here, not a failure.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(np.asarray(coords, np.float64), np.asarray(values, np.float64))
    mean, std = model.predict(np.asarray(query, np.float64), return_std=True)
    return mean.astype(np.float32), np.asarray(std, np.float32)


def field_prior(
    kind: str, coords: np.ndarray, values: np.ndarray, query: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """The prior of every field: mean and std (F, Q) float32 (std floored at
    :data:`STD_FLOOR`), in the units of ``values`` (F, K); ``None`` for ``kind == "none"``."""
    if kind == "none":
        return None
    if kind != "gp":
        raise ValueError(f"unknown field prior {kind!r}; known: {', '.join(PRIORS)}")
    pairs = [gp_posterior(c, v, q) for c, v, q in zip(coords, values, query, strict=True)]
    mean = np.stack([m for m, _ in pairs]).astype(np.float32)
    std = np.maximum(np.stack([s for _, s in pairs]), STD_FLOOR).astype(np.float32)
    return mean, std
