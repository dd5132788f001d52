"""ShakeMap-style reconstruction of a shaking map from stations: the baseline of issue #15 item 4.

ShakeMap (Worden et al. 2018, "Spatial and spectral interpolation of ground-motion intensity
measure observations", BSSA 108(1):205-219) combines a ground-motion model (GMM), which the
catalogue's magnitude and location drive, with the stations: the event term (the between-event
residual, "bias") is estimated from the station residuals, and the remaining within-event
residuals are interpolated by conditioning a multivariate normal with a spatial correlation model
(simple kriging). This module does the same on the maps of :mod:`seismag.training.shaking_fields`.

* **GMM**, fitted once (:func:`fit_shakemap`) by least squares on training maps (every pixel of
  every map, log10 PGV in m/s), in the form of Boore et al. (2014, "NGA-West2 equations ...",
  Earthquake Spectra 30(3):1057-1085) with a quadratic magnitude term and magnitude-dependent
  spreading, plus the hinge of Atkinson & Boore (2006, BSSA 96(6):2181-2205) where the geometric
  spreading changes::

      log10 Y = e0 + e1 (M-6) + e2 (M-6)^2 + (c1 + c2 (M-6)) log10 R
                + c3 max(log10(R / 40 km), 0) + c4 R,      R = sqrt(R_hyp^2 + h^2)

  with the pseudo-depth h chosen on a grid. Magnitude, epicentre and depth are the catalogue's
  (passed in ``event``); the GMM is not told the event's regime, stress drop or attenuation.
* **Residual statistics**, fitted on the same maps' residuals: the between-event sd tau (of the
  per-map mean residual) and an exponential covariance s^2 exp(-h / L) plus a nugget for the
  within-event residual (the pair-averaged empirical covariance of the per-map-demeaned residuals,
  binned by distance, least squares over 0 < h <= 100 km).
* **Conditioning** (:meth:`ShakeMapModel.gmm_kriging`): the residuals at the stations are a
  Gaussian vector with covariance tau^2 11' + C_W; the event term's posterior mean is
  tau^2 1' (tau^2 11' + C_W)^-1 r (Worden et al. 2018's bias with correlated within-event
  residuals) and the map is the GMM plus the conditional mean of event term plus within-event
  residual at every pixel, with its conditional sd (the partition of Engler, Worden, Thompson &
  Jaiswal 2022, BSSA). The nugget is micro-scale variance, so stations are reproduced exactly.

Variants, all ``(coords (K, 2), values (K,), grid (H, W), event) -> (mean (H, W), std | None)``:

* ``gmm_kriging``: the ShakeMap reconstruction above;
* ``gmm_event_terms``: the GMM with random event terms for its level, spreading and anelastic
  decay, then the same kriging (:class:`seismag.models.ground_motion.ShakingPrior`: the prior
  of the ``shakemap`` field models, given the same catalogue);
* ``gmm_only``: the GMM plus the event term from the stations, no spatial interpolation;
* ``gmm_median``: the GMM alone (a ShakeMap before any station reports);
* ``kriging_only``: ordinary kriging of the raw log10 PGV (no GMM, no catalogue), exponential
  covariance fitted on the training maps' per-map-demeaned values (Cressie 1993, "Statistics for
  Spatial Data", sec. 3.2);
* ``mean``: the stations' mean everywhere.

Coordinates are those of :mod:`seismag.models.field_card` ((row, col) in [0, 1], pixel centres),
in km ``coords * event["extent_km"]``, the frame of ``event["epicentre_km"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from seismag.models.field_card import grid_coords
from seismag.models.ground_motion import (
    JITTER,
    ExponentialCovariance,
    GroundMotionModel,
    ShakingPrior,
    distances_km,
    fit_shaking_prior,
    hypocentral_km,
)
from seismag.training.shaking_fields import ShakingMaps

Method = Callable[
    [np.ndarray, np.ndarray, tuple[int, int], dict], tuple[np.ndarray, np.ndarray | None]
]


def _hypocentral_km(points_km: np.ndarray, event: dict) -> np.ndarray:
    return hypocentral_km(points_km, event["epicentre_km"], event["depth_km"])


@dataclass(frozen=True)
class ShakeMapModel:
    """The fitted GMM and residual statistics, and the reconstructions that use them."""

    gmm: GroundMotionModel
    tau: float
    """Between-event sd (log10)."""
    within: ExponentialCovariance
    raw: ExponentialCovariance
    """Covariance of the raw, per-map-demeaned log10 PGV (``kriging_only``)."""
    terms: ShakingPrior
    """The GMM with random event terms (``gmm_event_terms``), fitted on the same maps."""

    # --- the variants ------------------------------------------------------------------------
    def _setup(
        self, coords: np.ndarray, values: np.ndarray, grid: tuple[int, int], event: dict
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        extent = float(event["extent_km"])
        stations = np.asarray(coords, np.float64) * extent
        targets = grid_coords(*grid).astype(np.float64) * extent
        mag = float(event["magnitude"])
        resid = np.asarray(values, np.float64) - self.gmm.predict(
            mag, _hypocentral_km(stations, event)
        )
        prior = self.gmm.predict(mag, _hypocentral_km(targets, event))
        return stations, targets, resid, prior

    def _event_system(self, stations: np.ndarray) -> tuple:
        k = len(stations)
        cov = self.tau**2 + self.within(distances_km(stations, stations))
        cov[np.diag_indices(k)] += JITTER * self.within.total
        return cho_factor(cov, lower=True)

    def gmm_kriging(
        self, coords: np.ndarray, values: np.ndarray, grid: tuple[int, int], event: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """GMM + event term + simple kriging of the within-event residuals (Worden et al. 2018)."""
        stations, targets, resid, prior = self._setup(coords, values, grid, event)
        factor = self._event_system(stations)
        cross = self.tau**2 + self.within(distances_km(targets, stations))  # (P, K)
        mean = prior + cross @ cho_solve(factor, resid)
        var = self.tau**2 + self.within.total - np.sum(cross * cho_solve(factor, cross.T).T, 1)
        return _finish(mean, grid), _finish(np.sqrt(np.maximum(var, 0.0)), grid)

    def gmm_event_terms(
        self, coords: np.ndarray, values: np.ndarray, grid: tuple[int, int], event: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """GMM + random event terms (level, spreading, anelastic decay) + simple kriging: the
        prior of the ``shakemap`` field models (:class:`ShakingPrior`), here as a method."""
        extent = float(event["extent_km"])
        epi = np.asarray(event["epicentre_km"], np.float64) / extent
        source = (float(event["magnitude"]), epi[0], epi[1], float(event["depth_km"]))
        mean, std = self.terms.posterior(coords, values, source, grid_coords(*grid))
        return _finish(mean, grid), _finish(std, grid)

    def event_term(
        self, coords: np.ndarray, values: np.ndarray, event: dict
    ) -> tuple[float, float]:
        """Posterior mean and sd of the between-event residual given the stations."""
        stations = np.asarray(coords, np.float64) * float(event["extent_km"])
        resid = np.asarray(values, np.float64) - self.gmm.predict(
            float(event["magnitude"]), _hypocentral_km(stations, event)
        )
        factor = self._event_system(stations)
        ones = np.ones(len(stations))
        solved = cho_solve(factor, ones)
        mean = self.tau**2 * float(solved @ resid)
        var = self.tau**2 - self.tau**4 * float(solved @ ones)
        return mean, float(np.sqrt(max(var, 0.0)))

    def gmm_only(
        self, coords: np.ndarray, values: np.ndarray, grid: tuple[int, int], event: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """GMM + event term, no interpolation of the within-event residuals."""
        _, targets, _, prior = self._setup(coords, values, grid, event)
        bias, bias_sd = self.event_term(coords, values, event)
        std = np.full(len(targets), np.sqrt(self.within.total + bias_sd**2))
        return _finish(prior + bias, grid), _finish(std, grid)

    def gmm_median(
        self, coords: np.ndarray, values: np.ndarray, grid: tuple[int, int], event: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """The GMM alone: what the catalogue gives before any station."""
        _, targets, _, prior = self._setup(coords, values, grid, event)
        std = np.full(len(targets), np.sqrt(self.tau**2 + self.within.total))
        return _finish(prior, grid), _finish(std, grid)

    def kriging_only(
        self, coords: np.ndarray, values: np.ndarray, grid: tuple[int, int], event: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ordinary kriging of the raw values (unknown constant mean), no GMM."""
        extent = float(event["extent_km"])
        stations = np.asarray(coords, np.float64) * extent
        targets = grid_coords(*grid).astype(np.float64) * extent
        k = len(stations)
        system = np.zeros((k + 1, k + 1))
        system[:k, :k] = self.raw(distances_km(stations, stations))
        system[np.diag_indices(k)] += JITTER * self.raw.total
        system[:k, k] = system[k, :k] = 1.0
        rhs = np.ones((k + 1, len(targets)))
        rhs[:k] = self.raw(distances_km(stations, targets))
        sol = np.linalg.solve(system, rhs)  # weights (K, P) and Lagrange multipliers (P,)
        mean = sol[:k].T @ np.asarray(values, np.float64)
        var = self.raw.total - np.sum(sol * rhs, axis=0)
        return _finish(mean, grid), _finish(np.sqrt(np.maximum(var, 0.0)), grid)

    @staticmethod
    def mean(
        coords: np.ndarray, values: np.ndarray, grid: tuple[int, int], event: dict
    ) -> tuple[np.ndarray, None]:
        """The stations' mean everywhere: the floor."""
        return _finish(np.full(grid[0] * grid[1], float(np.mean(values))), grid), None

    def methods(self) -> dict[str, Method]:
        return {
            "mean": self.mean,
            "kriging_only": self.kriging_only,
            "gmm_median": self.gmm_median,
            "gmm_only": self.gmm_only,
            "gmm_kriging": self.gmm_kriging,
            "gmm_event_terms": self.gmm_event_terms,
        }

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ShakeMapModel:
        return cls(
            GroundMotionModel.from_dict(data["gmm"]),
            float(data["tau"]),
            ExponentialCovariance(**data["within"]),
            ExponentialCovariance(**data["raw"]),
            ShakingPrior.from_dict(data["terms"]),
        )


METHODS = ("mean", "kriging_only", "gmm_median", "gmm_only", "gmm_kriging", "gmm_event_terms")


def _finish(flat: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    return np.asarray(flat, np.float64).reshape(grid).astype(np.float32)


def fit_shakemap(maps: ShakingMaps) -> ShakeMapModel:
    """Fit the GMM, tau and both covariances once, on training maps (never the evaluated ones)."""
    h, w = maps.grid
    sites = grid_coords(h, w).astype(np.float64) * maps.extent_km
    r_hyp = np.stack([_hypocentral_km(sites, maps.event(i)) for i in range(len(maps))])
    mag = np.broadcast_to(maps.magnitude[:, None], r_hyp.shape)
    y = maps.log_pgv.reshape(len(maps), -1).astype(np.float64)
    gmm = GroundMotionModel.fit(mag.ravel(), r_hyp.ravel(), y.ravel())
    resid = y - gmm.predict(mag, r_hyp)
    per_map = resid.mean(axis=1)
    spacing = maps.extent_km / max(h, w)
    within = ExponentialCovariance.fit((resid - per_map[:, None]).reshape(-1, h, w), spacing)
    raw = ExponentialCovariance.fit((y - y.mean(axis=1, keepdims=True)).reshape(-1, h, w), spacing)
    terms = fit_shaking_prior(
        maps.log_pgv, maps.magnitude, maps.epicentre_km, maps.depth_km, maps.extent_km, gmm=gmm
    )
    return ShakeMapModel(gmm, float(np.std(per_map)), within, raw, terms)
