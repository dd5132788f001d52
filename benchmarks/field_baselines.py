"""Classic reconstructions of a field from sparse point observations: the yardsticks the flow
matching model of issue #15 has to beat (:mod:`seismag.benchmarks.field_accuracy` scores them).

Every baseline is ``(coords (K, 2), values (K,), grid (H, W)) -> (mean (H, W), std (H, W) | None)``
with coordinates as :mod:`seismag.models.field_card` defines them ((row, col) in [0, 1], pixel
centres at ``(i + 0.5) / H``). Means are clipped to [0, 1], the range of the benchmark's fields.
Only the Gaussian process returns a predictive standard deviation.

- ``mean``: the observed mean everywhere (the floor any method must clear);
- ``nearest``, ``linear``, ``cubic``: :func:`scipy.interpolate.griddata` (nearest neighbour,
  piecewise linear on the Delaunay triangulation, Clough-Tocher C1 cubic; Alfeld 1984,
  "A trivariate Clough-Tocher scheme", CAGD 1), nearest outside the observations' convex hull;
- ``thin_plate``: the thin-plate spline interpolant (Duchon 1977; Wahba 1990, "Spline Models for
  Observational Data") through :class:`scipy.interpolate.RBFInterpolator`;
- ``gp``: Gaussian-process regression (kriging; Rasmussen & Williams 2006, "Gaussian Processes for
  Machine Learning", ch. 2 and 5) with scikit-learn, its kernel's hyperparameters fitted to each
  field by maximum marginal likelihood.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.interpolate import RBFInterpolator, griddata
from scipy.spatial import QhullError

from seismag.models.field_card import grid_coords
from seismag.models.field_prior import gp_posterior

Baseline = Callable[[np.ndarray, np.ndarray, tuple[int, int]], tuple[np.ndarray, np.ndarray | None]]


def _targets(grid: tuple[int, int]) -> np.ndarray:
    return grid_coords(*grid).astype(np.float64)


def _finish(flat: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    return np.clip(np.asarray(flat, np.float64), 0.0, 1.0).reshape(grid).astype(np.float32)


def mean_field(
    coords: np.ndarray, values: np.ndarray, grid: tuple[int, int]
) -> tuple[np.ndarray, None]:
    return _finish(np.full(grid[0] * grid[1], float(np.mean(values))), grid), None


def _nearest(coords: np.ndarray, values: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return griddata(coords, values, targets, method="nearest")


def nearest(
    coords: np.ndarray, values: np.ndarray, grid: tuple[int, int]
) -> tuple[np.ndarray, None]:
    pts, vals = np.asarray(coords, np.float64), np.asarray(values, np.float64)
    return _finish(_nearest(pts, vals, _targets(grid)), grid), None


def _griddata(method: str) -> Baseline:
    def interpolate(
        coords: np.ndarray, values: np.ndarray, grid: tuple[int, int]
    ) -> tuple[np.ndarray, None]:
        pts, vals = np.asarray(coords, np.float64), np.asarray(values, np.float64)
        targets = _targets(grid)
        fill = _nearest(pts, vals, targets)
        try:
            out = griddata(pts, vals, targets, method=method)
        except (QhullError, ValueError):  # fewer than 3 points, or all on one line
            return _finish(fill, grid), None
        return _finish(np.where(np.isnan(out), fill, out), grid), None

    interpolate.__name__ = method
    interpolate.__doc__ = f"scipy griddata ({method}), nearest outside the convex hull."
    return interpolate


def thin_plate(
    coords: np.ndarray, values: np.ndarray, grid: tuple[int, int]
) -> tuple[np.ndarray, None]:
    pts, vals = np.asarray(coords, np.float64), np.asarray(values, np.float64)
    try:
        out = RBFInterpolator(pts, vals, kernel="thin_plate_spline")(_targets(grid))
    except (ValueError, np.linalg.LinAlgError):  # too few points for the linear polynomial
        out = _nearest(pts, vals, _targets(grid))
    return _finish(out, grid), None


def gp(
    coords: np.ndarray, values: np.ndarray, grid: tuple[int, int], *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The GP a ``prior = "gp"`` field model refines (:mod:`seismag.models.field_prior`)."""
    mean, std = gp_posterior(coords, values, _targets(grid), seed=seed)
    return _finish(mean, grid), std.reshape(grid)


BASELINES: dict[str, Baseline] = {
    "mean": mean_field,
    "nearest": nearest,
    "linear": _griddata("linear"),
    "cubic": _griddata("cubic"),
    "thin_plate": thin_plate,
    "gp": gp,
}
