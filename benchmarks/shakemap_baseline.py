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
from seismag.training.shaking_fields import ShakingMaps

Method = Callable[
    [np.ndarray, np.ndarray, tuple[int, int], dict], tuple[np.ndarray, np.ndarray | None]
]
HINGE_KM = 40.0
M_REF = 6.0
H_GRID_KM = tuple(float(h) for h in range(1, 31))
FIT_MAX_LAG_KM = 100.0
_JITTER = 1e-9  # relative: keeps Cholesky well posed when two stations nearly coincide


@dataclass(frozen=True)
class GroundMotionModel:
    """log10 PGV (m/s) of the form in the module docstring; ``coef`` = (e0, e1, e2, c1, c2, c3,
    c4)."""

    coef: tuple[float, ...]
    h_km: float
    sigma: float
    """Total sd of the training residuals (log10)."""

    @staticmethod
    def features(magnitude: np.ndarray, r_hyp_km: np.ndarray, h_km: float) -> np.ndarray:
        m = np.asarray(magnitude, np.float64) - M_REF
        r = np.sqrt(np.asarray(r_hyp_km, np.float64) ** 2 + h_km**2)
        m = np.broadcast_to(m, r.shape)
        lr = np.log10(r)
        return np.stack(
            [
                np.ones_like(r),
                m,
                m**2,
                lr,
                m * lr,
                np.maximum(lr - np.log10(HINGE_KM), 0.0),
                r,
            ],
            axis=-1,
        )

    def predict(self, magnitude: float | np.ndarray, r_hyp_km: np.ndarray) -> np.ndarray:
        return self.features(magnitude, r_hyp_km, self.h_km) @ np.asarray(self.coef)

    @classmethod
    def fit(
        cls, magnitude: np.ndarray, r_hyp_km: np.ndarray, log_pgv: np.ndarray
    ) -> GroundMotionModel:
        """Least squares for each h of ``H_GRID_KM``; the h with the smallest residual wins."""
        best = None
        y = np.asarray(log_pgv, np.float64)
        for h in H_GRID_KM:
            x = cls.features(magnitude, r_hyp_km, h)
            coef, *_ = np.linalg.lstsq(x, y, rcond=None)
            sse = float(np.sum((y - x @ coef) ** 2))
            if best is None or sse < best[0]:
                best = (sse, h, coef)
        sse, h, coef = best
        return cls(tuple(float(c) for c in coef), h, float(np.sqrt(sse / len(y))))


@dataclass(frozen=True)
class ExponentialCovariance:
    """C(h) = sd^2 exp(-h / length_km) for h > 0, sd^2 + nugget at h = 0 (log10 units)."""

    sd: float
    length_km: float
    nugget: float = 0.0

    def __call__(self, h_km: np.ndarray) -> np.ndarray:
        h = np.asarray(h_km, np.float64)
        return self.sd**2 * np.exp(-h / self.length_km) + self.nugget * (h < 1e-6)

    @property
    def total(self) -> float:
        return self.sd**2 + self.nugget

    @classmethod
    def fit(cls, fields: np.ndarray, spacing_km: float) -> ExponentialCovariance:
        """Fit to the pair-averaged covariance of zero-mean (n, H, W) fields on a regular grid."""
        lags, cov, pairs = empirical_covariance(fields, spacing_km)
        c0 = float(cov[0])
        use = (lags > 0) & (lags <= FIT_MAX_LAG_KM)
        h, c, wt = lags[use], cov[use], pairs[use]
        best = None
        for length in np.geomspace(1.0, 500.0, 400):
            basis = np.exp(-h / length)
            s2 = float(np.sum(wt * basis * c) / np.sum(wt * basis**2))
            s2 = min(max(s2, 0.0), c0)
            err = float(np.sum(wt * (c - s2 * basis) ** 2))
            if best is None or err < best[0]:
                best = (err, s2, float(length))
        _, s2, length = best
        return cls(float(np.sqrt(s2)), length, max(c0 - s2, 0.0))


def empirical_covariance(
    fields: np.ndarray, spacing_km: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct lags in km, covariance at each, pair counts) of zero-mean (n, H, W) fields:
    every pixel pair of every field, through zero-padded FFT autocorrelations."""
    f = np.asarray(fields, np.float64)
    n, h, w = f.shape
    shape = (2 * h, 2 * w)
    spec = np.fft.rfft2(f, s=shape)
    auto = np.fft.irfft2(np.sum(spec * spec.conj(), axis=0), s=shape)
    ones = np.fft.rfft2(np.ones((h, w)), s=shape)
    count = np.fft.irfft2(ones * ones.conj(), s=shape) * n
    di = np.minimum(np.arange(2 * h), 2 * h - np.arange(2 * h))
    dj = np.minimum(np.arange(2 * w), 2 * w - np.arange(2 * w))
    lag = np.round(np.hypot(di[:, None], dj[None, :]) * spacing_km, 6)
    valid = count > 0.5
    lags, inverse = np.unique(lag[valid], return_inverse=True)
    sums = np.bincount(inverse, weights=auto[valid])
    pairs = np.bincount(inverse, weights=count[valid])
    return lags, sums / pairs, pairs


def _distances_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1), 0.0))


def _hypocentral_km(points_km: np.ndarray, event: dict) -> np.ndarray:
    epi = np.asarray(event["epicentre_km"], np.float64)
    return np.sqrt(np.sum((points_km - epi) ** 2, axis=-1) + float(event["depth_km"]) ** 2)


@dataclass(frozen=True)
class ShakeMapModel:
    """The fitted GMM and residual statistics, and the reconstructions that use them."""

    gmm: GroundMotionModel
    tau: float
    """Between-event sd (log10)."""
    within: ExponentialCovariance
    raw: ExponentialCovariance
    """Covariance of the raw, per-map-demeaned log10 PGV (``kriging_only``)."""

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
        cov = self.tau**2 + self.within(_distances_km(stations, stations))
        cov[np.diag_indices(k)] += _JITTER * self.within.total
        return cho_factor(cov, lower=True)

    def gmm_kriging(
        self, coords: np.ndarray, values: np.ndarray, grid: tuple[int, int], event: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """GMM + event term + simple kriging of the within-event residuals (Worden et al. 2018)."""
        stations, targets, resid, prior = self._setup(coords, values, grid, event)
        factor = self._event_system(stations)
        cross = self.tau**2 + self.within(_distances_km(targets, stations))  # (P, K)
        mean = prior + cross @ cho_solve(factor, resid)
        var = self.tau**2 + self.within.total - np.sum(cross * cho_solve(factor, cross.T).T, 1)
        return _finish(mean, grid), _finish(np.sqrt(np.maximum(var, 0.0)), grid)

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
        system[:k, :k] = self.raw(_distances_km(stations, stations))
        system[np.diag_indices(k)] += _JITTER * self.raw.total
        system[:k, k] = system[k, :k] = 1.0
        rhs = np.ones((k + 1, len(targets)))
        rhs[:k] = self.raw(_distances_km(stations, targets))
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
        }

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ShakeMapModel:
        gmm = data["gmm"]
        return cls(
            GroundMotionModel(tuple(gmm["coef"]), gmm["h_km"], gmm["sigma"]),
            float(data["tau"]),
            ExponentialCovariance(**data["within"]),
            ExponentialCovariance(**data["raw"]),
        )


METHODS = ("mean", "kriging_only", "gmm_median", "gmm_only", "gmm_kriging")


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
    return ShakeMapModel(gmm, float(np.std(per_map)), within, raw)
