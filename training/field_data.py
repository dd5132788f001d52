"""Fields for the sparse-field reconstruction benchmark, and their sparse observations.

Families (all values in [0, 1] on an H x W grid, coordinates as :mod:`seismag.models.field_card`
defines them):

- ``benchmark``: the design documents' fields, ``sin(2 pi fx x + px) + sin(2 pi fy y + py)``
  with random frequencies (0.5-3 cycles across the field) and phases, mapped to [0, 1] by
  ``(z + 2) / 4``. Scores are quoted on these.
- ``oblique``: two or three plane waves of random direction, frequency (0.5-3.5 cycles),
  amplitude and phase, min-max scaled to [0, 1]. Another generator of the same family, never
  used for training: a check that a model learnt sinusoids, not one parameterisation.
- ``train``: the training prior, broader than both: one to three plane waves (axis-aligned,
  as ``benchmark``, in a third of the fields), frequencies 0.3-4 cycles, amplitudes 0.3-1, and
  either the sum-of-amplitudes or the min-max scaling, shrunk into a random sub-range of [0, 1]
  in a quarter of the fields.
"""

from __future__ import annotations

import numpy as np

from seismag.models.field_card import grid_coords

FAMILIES = ("benchmark", "oblique", "train")


def _plane_waves(
    rng: np.random.Generator,
    n: int,
    coords: np.ndarray,
    waves: np.ndarray,
    freq: tuple[float, float],
    axis_aligned: np.ndarray,
    amp: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of plane waves per field: (n, P) values and (n,) sums of amplitudes."""
    kmax = int(waves.max())
    f = rng.uniform(*freq, size=(n, kmax))
    angle = rng.uniform(0.0, np.pi, size=(n, kmax))
    # Axis-aligned fields: wave k runs along rows for even k, columns for odd k.
    aligned = np.where(np.arange(kmax) % 2 == 0, 0.0, np.pi / 2)
    angle = np.where(axis_aligned[:, None], aligned[None, :], angle)
    a = rng.uniform(*amp, size=(n, kmax)) * (np.arange(kmax)[None, :] < waves[:, None])
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, kmax))
    kvec = np.stack([np.cos(angle), np.sin(angle)], axis=-1) * f[..., None]  # (n, k, 2)
    arg = 2 * np.pi * np.einsum("pd,nkd->nkp", coords, kvec) + phase[..., None]
    z = np.einsum("nk,nkp->np", a, np.sin(arg))
    return z, a.sum(axis=1)


def make_fields(
    n: int, family: str = "benchmark", grid: tuple[int, int] = (32, 32), seed: int = 0
) -> np.ndarray:
    """(n, H, W) float32 fields in [0, 1]."""
    if family not in FAMILIES:
        raise ValueError(f"unknown field family {family!r}; known: {', '.join(FAMILIES)}")
    rng = np.random.default_rng(seed)
    h, w = grid
    coords = grid_coords(h, w).astype(np.float64)
    if family == "benchmark":
        z, total = _plane_waves(
            rng, n, coords, np.full(n, 2), (0.5, 3.0), np.ones(n, bool), (1.0, 1.0)
        )
        out = (z + total[:, None]) / (2 * total[:, None])
    elif family == "oblique":
        waves = rng.integers(2, 4, size=n)
        z, _ = _plane_waves(rng, n, coords, waves, (0.5, 3.5), np.zeros(n, bool), (0.3, 1.0))
        out = _minmax(z)
    else:
        waves = rng.integers(1, 4, size=n)
        aligned = rng.random(n) < 1 / 3
        waves = np.where(aligned, 2, waves)
        z, total = _plane_waves(rng, n, coords, waves, (0.3, 4.0), aligned, (0.3, 1.0))
        by_total = (z + total[:, None]) / (2 * total[:, None])
        out = np.where((rng.random(n) < 0.5)[:, None], by_total, _minmax(z))
        shrink = rng.random(n) < 0.25
        lo = rng.uniform(0.0, 0.4, size=n)
        hi = rng.uniform(0.6, 1.0, size=n)
        out = np.where(shrink[:, None], lo[:, None] + (hi - lo)[:, None] * out, out)
    return np.clip(out, 0.0, 1.0).reshape(n, h, w).astype(np.float32)


def _minmax(z: np.ndarray) -> np.ndarray:
    lo = z.min(axis=1, keepdims=True)
    hi = z.max(axis=1, keepdims=True)
    return (z - lo) / np.maximum(hi - lo, 1e-9)


def observe(
    fields: np.ndarray, fraction: float = 0.05, seed: int = 0, count: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observe ``round(fraction * H * W)`` distinct random pixels of each field (other positions
    for every field). Returns coords (F, K, 2) float32 in [0, 1], values (F, K) float32 and the
    flat pixel indices (F, K)."""
    f, h, w = fields.shape
    k = count if count is not None else max(round(fraction * h * w), 1)
    if not 1 <= k <= h * w:
        raise ValueError(f"cannot observe {k} of {h * w} pixels")
    rng = np.random.default_rng(seed)
    idx = np.argsort(rng.random((f, h * w)), axis=1)[:, :k]
    coords = grid_coords(h, w)[idx]
    values = fields.reshape(f, h * w)[np.arange(f)[:, None], idx]
    return coords.astype(np.float32), values.astype(np.float32), idx


def psnr(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-field PSNR in dB for values in [0, 1]: 20 log10(1 / RMSE) over the whole field."""
    pred = np.asarray(pred, np.float64).reshape(len(truth), -1)
    truth = np.asarray(truth, np.float64).reshape(len(truth), -1)
    rmse = np.sqrt(np.mean((pred - truth) ** 2, axis=1))
    return 20.0 * np.log10(1.0 / np.maximum(rmse, 1e-12))
