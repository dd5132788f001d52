"""Magnitude training targets, defined once so every model and metric agrees on them."""

from __future__ import annotations

import numpy as np


def magnitude_label(
    n_samples: int, p_sample: float | None, magnitude: float, label_offset: float = 0.0
) -> np.ndarray:
    """Per-sample target of a series model: 0 before the P onset, ``magnitude + offset`` from it.

    This is the original design's definition: before the first P arrival the station has seen
    nothing of the event, so there is nothing to estimate. ``p_sample`` may fall outside the
    window: a P before the window start labels every sample, a P at or after the end (or
    ``None``/NaN: no pick) labels none. ``label_offset`` is the card's shift (AMAG trains on
    magnitude + 1 so the pre-P zero stays distinct from small magnitudes); the training target in
    the model's output units is built from this label by :func:`seismag.training.windows.target`.
    """
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    label = np.zeros(n_samples, dtype=np.float32)
    if p_sample is None or not np.isfinite(p_sample):
        return label
    start = max(0, int(np.ceil(p_sample)))
    label[start:] = magnitude + label_offset
    return label


def scalar_target(magnitude: float) -> float:
    """Target of a scalar model, and reference for a series model's scalar: the catalogue value.

    It is deliberately *not* the mean of :func:`magnitude_label` over the window: with zeros
    before P that mean is magnitude x (fraction of the window after P), so it would tie the target
    to where the window was cut rather than to the earthquake (a flaw of the original design).
    Series models are turned into a scalar by aggregating after the onset instead.
    """
    return float(magnitude)
