"""Ground-motion model, spatial covariance and the shaking-map prior built from them.

Torch-free numerics shared by the ShakeMap-style baseline (``benchmarks/shakemap_baseline.py``)
and by field models whose prior is ``"shakemap"`` (:mod:`seismag.models.field_prior`):

* :class:`GroundMotionModel`: log10 PGV of the Boore et al. (2014, Earthquake Spectra
  30(3):1057-1085) form with the Atkinson & Boore (2006, BSSA 96(6):2181-2205) hinge, fitted by
  least squares::

      log10 Y = e0 + e1 (M-6) + e2 (M-6)^2 + (c1 + c2 (M-6)) log10 R
                + c3 max(log10(R / 40 km), 0) + c4 R,      R = sqrt(R_hyp^2 + h^2)

* :class:`ExponentialCovariance`: s^2 exp(-h / L) plus a nugget, fitted to the pair-averaged
  empirical covariance of residual fields on a regular grid.
* :class:`ShakingPrior`: the GMM plus **random event terms** and kriging. ShakeMap (Worden et
  al. 2018, BSSA 108(1):205-219) lets the stations move the GMM's level only (the between-event
  residual). Here an event also draws a change of the GMM's geometric spreading and anelastic
  decay: the residual is ``f(R) . eta + w(x)``, with ``f = (1, log10 R - 1.5, (R - 100 km) /
  100 km)``, ``eta ~ N(mu, Sigma)`` (the per-map least-squares coefficients of the training
  maps' residuals: their mean and covariance) and ``w`` the within-event field. A mixed-effects
  model with random slopes (Abrahamson & Youngs 1992, BSSA 82(1):505-510, for the random event
  term; Stafford 2014, BSSA 104(2):702-719, for the crossed and nested structure): conditioning
  on the stations fits the event's own attenuation as far as the stations constrain it, and
  falls back to the GMM's where they do not. With ``Sigma = diag(tau^2, 0, 0)`` and ``mu = 0``
  it is ShakeMap's conditioning exactly.

Distances are in km; a map's coordinates ((row, column) in [0, 1]) are ``coords * extent_km``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve

HINGE_KM = 40.0
M_REF = 6.0
H_GRID_KM = tuple(float(h) for h in range(1, 31))
FIT_MAX_LAG_KM = 100.0
JITTER = 1e-9
"""Relative diagonal load: keeps Cholesky well posed when two stations nearly coincide."""
SOURCE_COLUMNS = ("magnitude", "epicentre_row", "epicentre_column", "depth_km")
"""A source row as the shaking prior takes it: the epicentre in the map's [0, 1] frame (it may lie
outside the map), the depth in km."""


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

    @classmethod
    def from_dict(cls, data: dict) -> GroundMotionModel:
        return cls(tuple(float(c) for c in data["coef"]), float(data["h_km"]), float(data["sigma"]))

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


def distances_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) distances between two sets of points (km)."""
    return np.sqrt(np.maximum(np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1), 0.0))


def hypocentral_km(points_km: np.ndarray, epicentre_km, depth_km: float) -> np.ndarray:
    epi = np.asarray(epicentre_km, np.float64)
    return np.sqrt(np.sum((points_km - epi) ** 2, axis=-1) + float(depth_km) ** 2)


def event_features(r_hyp_km: np.ndarray, h_km: float) -> np.ndarray:
    """(..., 3) regressors of the random event terms: level, spreading, anelastic decay."""
    r = np.sqrt(np.asarray(r_hyp_km, np.float64) ** 2 + h_km**2)
    return np.stack([np.ones_like(r), np.log10(r) - 1.5, (r - 100.0) / 100.0], axis=-1)


@dataclass(frozen=True)
class ShakingPrior:
    """GMM + random event terms + kriging of the within-event field (module docstring)."""

    gmm: GroundMotionModel
    term_mean: tuple[float, ...]
    """mu: the mean of the three event terms over the training maps."""
    term_cov: tuple[tuple[float, ...], ...]
    """Sigma (3 x 3)."""
    within: ExponentialCovariance
    extent_km: float

    def posterior(
        self, coords: np.ndarray, values: np.ndarray, source, query: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Conditional mean and sd (field units) at ``query`` (Q, 2) of one map, from stations at
        ``coords`` (K, 2) with ``values`` (K,) and its ``source`` (:data:`SOURCE_COLUMNS`)."""
        mag, row, col, depth = (float(x) for x in source)
        epi = np.array([row, col]) * self.extent_km
        sta = np.asarray(coords, np.float64) * self.extent_km
        tgt = np.asarray(query, np.float64) * self.extent_km
        r_s, r_t = hypocentral_km(sta, epi, depth), hypocentral_km(tgt, epi, depth)
        f_s, f_t = event_features(r_s, self.gmm.h_km), event_features(r_t, self.gmm.h_km)
        mu, sigma = np.asarray(self.term_mean), np.asarray(self.term_cov)
        resid = np.asarray(values, np.float64) - self.gmm.predict(mag, r_s) - f_s @ mu
        cov = f_s @ sigma @ f_s.T + self.within(distances_km(sta, sta))
        cov[np.diag_indices(len(sta))] += JITTER * (self.within.total + float(np.trace(sigma)))
        factor = cho_factor(cov, lower=True)
        cross = f_t @ sigma @ f_s.T + self.within(distances_km(tgt, sta))
        mean = self.gmm.predict(mag, r_t) + f_t @ mu + cross @ cho_solve(factor, resid)
        prior_var = np.einsum("qi,ij,qj->q", f_t, sigma, f_t) + self.within.total
        var = prior_var - np.sum(cross * cho_solve(factor, cross.T).T, axis=1)
        return mean, np.sqrt(np.maximum(var, 0.0))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ShakingPrior:
        return cls(
            GroundMotionModel.from_dict(data["gmm"]),
            tuple(float(x) for x in data["term_mean"]),
            tuple(tuple(float(x) for x in row) for row in data["term_cov"]),
            ExponentialCovariance(**data["within"]),
            float(data["extent_km"]),
        )


def fit_shaking_prior(
    log_pgv: np.ndarray,
    magnitude: np.ndarray,
    epicentre_km: np.ndarray,
    depth_km: np.ndarray,
    extent_km: float,
    gmm: GroundMotionModel | None = None,
) -> ShakingPrior:
    """Fit :class:`ShakingPrior` on training maps (n, H, W) of log10 PGV with their sources: the
    GMM on every pixel (or ``gmm``, already fitted on these maps), then each map's event terms
    by least squares on its GMM residuals (their mean and covariance), then the within-event
    covariance of what the terms leave."""
    from seismag.models.field_card import grid_coords

    n, h, w = log_pgv.shape
    sites = grid_coords(h, w).astype(np.float64) * extent_km
    r_hyp = np.stack([hypocentral_km(sites, epicentre_km[i], depth_km[i]) for i in range(n)])
    mag = np.broadcast_to(np.asarray(magnitude, np.float64)[:, None], r_hyp.shape)
    y = np.asarray(log_pgv, np.float64).reshape(n, -1)
    if gmm is None:
        gmm = GroundMotionModel.fit(mag.ravel(), r_hyp.ravel(), y.ravel())
    resid = y - gmm.predict(mag, r_hyp)
    terms, left = np.empty((n, 3)), np.empty_like(resid)
    for i in range(n):
        x = event_features(r_hyp[i], gmm.h_km)
        terms[i], *_ = np.linalg.lstsq(x, resid[i], rcond=None)
        left[i] = resid[i] - x @ terms[i]
    within = ExponentialCovariance.fit(left.reshape(n, h, w), extent_km / max(h, w))
    cov = np.cov(terms.T)
    return ShakingPrior(
        gmm,
        tuple(float(x) for x in terms.mean(axis=0)),
        tuple(tuple(float(x) for x in row) for row in cov),
        within,
        float(extent_km),
    )
