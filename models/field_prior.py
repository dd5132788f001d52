"""The classical prior a field model may refine: a Gaussian process fitted to each field, or
for shaking maps a ground-motion model with random event terms and kriging.

A GP whose kernel is fitted per field by maximum marginal likelihood (Rasmussen & Williams 2006,
ch. 5) reconstructs smooth fields from 5 % of their points far better than any interpolator and
than a network trained for minutes (docs/field.md). A card with ``prior = "gp"`` therefore gives
its network the GP's posterior mean and standard deviation at every query point and lets the flow
model the standardised residual ``(field - mean) / std``: where the GP is sure, the reconstruction
is the GP's; where it is not, the network's learnt prior of the field family decides.

``prior = "shakemap"`` is :class:`seismag.models.ground_motion.ShakingPrior`: what ShakeMap
knows (the event's magnitude, epicentre and depth, a ground-motion model fitted on training
maps, the within-event covariance) plus random event terms, so each request carries a source per
field and the card carries the fitted numbers (``prior_params``, written by training).

The same function serves the baselines (``benchmarks/field_baselines.py``,
``benchmarks/shakemap_baseline.py``), training and the served runtime, so the prior a model was
trained with is the one it gets. The GP needs scikit-learn (the ``field`` extra); torch-free.
"""

from __future__ import annotations

import warnings

import numpy as np

from seismag.models.card import CardError
from seismag.models.field_card import FieldCard
from seismag.models.ground_motion import ShakingPrior

PRIORS = ("none", "gp", "shakemap")
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
    card: FieldCard,
    coords: np.ndarray,
    values: np.ndarray,
    query: np.ndarray,
    sources: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The card's prior of every field: mean and std (F, Q) float32 in unit scale (std floored
    at :data:`STD_FLOOR`) from ``values`` (F, K) in unit scale; ``None`` for ``prior = "none"``.
    ``sources`` (F, 4): each field's source, for a card that ``needs_source``."""
    kind = card.prior
    if kind == "none":
        return None
    if kind == "gp":
        pairs = [gp_posterior(c, v, q) for c, v, q in zip(coords, values, query, strict=True)]
    elif kind == "shakemap":
        if sources is None:
            raise ValueError(f"{card.name}'s shakemap prior needs each field's source")
        prior = shaking_prior(card)
        field_values = card.from_unit(values)
        scale = 2.0 / (card.value_high - card.value_low)
        pairs = []
        for c, v, src, q in zip(coords, field_values, sources, query, strict=True):
            mean, std = prior.posterior(c, v, src, q)
            pairs.append((card.to_unit(mean), std * scale))
    else:
        raise ValueError(f"unknown field prior {kind!r}; known: {', '.join(PRIORS)}")
    mean = np.stack([m for m, _ in pairs]).astype(np.float32)
    std = np.maximum(np.stack([s for _, s in pairs]), STD_FLOOR).astype(np.float32)
    return mean, std


def shaking_prior(card: FieldCard) -> ShakingPrior:
    """The fitted :class:`ShakingPrior` a ``shakemap`` card carries (CardError without one)."""
    try:
        return ShakingPrior.from_dict(card.prior_params)
    except (KeyError, TypeError, ValueError) as exc:
        raise CardError(
            f"field model {card.name}: its shakemap prior has no fitted parameters "
            f"(prior_params; training writes them): {exc!r}"
        ) from None
