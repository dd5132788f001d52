"""Maps of ground shaking (log10 peak ground velocity) for the sparse-field benchmark (#15).

Each map is one earthquake seen on an H x W grid of sites covering ``extent_km`` x ``extent_km``
(default 200 km on 32 x 32: 6.25 km pixels). Its value at a site is

    log10 PGV = median(M, R; event physics) + event term + site term + within-event residual

in log10 m/s, one horizontal component (as ``trace_pgv_mps`` of :mod:`seismag.training.synthetic`).

* **Event**: magnitude uniform in 3-7 (Mw), epicentre uniform over the region widened by 20 %
  of its size on every side (events just outside a network are mapped too), depth 5-20 km, and
  source, path and crust drawn from a regime of :mod:`seismag.training.regimes` (stress drop or
  two-corner source, spreading with its hinges, Q(f), kappa, velocities, path duration).
* **Median**: random-vibration theory on the regime's Fourier spectrum, the stochastic method of
  Boore (2003, PAGEOPH 160:635-676, eqs. 19-20): the one-component S velocity spectrum of
  :func:`seismag.training.synthetic.velocity_spectrum` (source, spreading, Q, kappa, free
  surface, radiation and partition, as the waveform generator uses) gives the spectral moments
  m0, m2, m4; the rms velocity is sqrt(m0 / T) with T the generator's duration (1/fc plus the
  regime's path duration); the peak factor is that of Cartwright & Longuet-Higgins (1956, Proc.
  R. Soc. A 237:212). Checked against the time-domain generator (``simulate_signal``): the mean
  log10 PGV of 20 simulated records agrees within 0.05 at M 3-7, 10-200 km, in every regime.
  One addition to the point source: distances are the effective distance
  sqrt(R_hyp^2 + h^2) with the finite-fault factor h = 10^(-0.405 + 0.235 M) km of Yenier &
  Atkinson (2015, BSSA 105(4):1989-2009), so near-source PGV saturates for large events instead of
  growing as 1/R (the waveform generator, built for stations beyond 5 km, has no such term).
* **Event term**: normal, log10 sd 0.15 (other source effects than the regime's stress drop,
  which already varies between events).
* **Site term**: a Gaussian random field per map, exponential correlation exp(-h / L) with L
  uniform in 5-20 km, log10 sd 0.2 (the spatial scale of site conditions; the waveform
  generator's station terms have sd 0.15-0.25).
* **Within-event residual**: a Gaussian random field, log10 sd 0.25, correlation
  exp(-3 h / b) of Jayaram & Baker (2009, EESD 38:1687-1708) with b = 22.0 + 3.7 T km at T = 1 s
  (b = 25.7 km; they model spectral accelerations: PGV is taken as the 1 s period, the band that
  controls it). Both fields are exact on the grid (circulant embedding: Dietrich & Newsam 1997,
  SIAM J. Sci. Comput. 18(4):1088), cheap enough for tens of thousands of maps.

Values: log10 PGV in m/s. Over the training regimes (2,000 maps) they span -7.8 (M 3 at 250 km)
to 0.5 (M 7 above the source), 99.8 % of pixels in [-6.6, -0.55], median -3.2; ``ena`` spans
-6.8 to 0.4 and ``high_attenuation`` -9.0 to -0.2 (0.04 % below -8). A field card for these
maps can take ``value_low = -8`` and ``value_high = 1``.

Stations are grid points: :func:`station_observations` is :func:`seismag.training.field_data.
observe` on the maps, so coordinates follow :mod:`seismag.models.field_card` ((row, col) in
[0, 1], pixel centres); in km they are ``coords * extent_km``, the frame of ``epicentre_km``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from seismag.models.field_card import grid_coords
from seismag.training.field_data import observe
from seismag.training.regimes import Physics, draw_event_physics, regime_names
from seismag.training.synthetic import duration_s, source_shape, velocity_spectrum

# Frequencies of the spectral moments: PGV is controlled by 0.1-10 Hz; the tails are negligible.
_FREQS = np.geomspace(0.005, 50.0, 256)
# Quadrature of the Cartwright & Longuet-Higgins integral (its integrand is ~0 beyond z = 6).
_Z = np.linspace(0.0, 6.0, 241)
# Distances at which each event's median is computed, then interpolated in log-log (smooth).
_N_NODES = 64

DEFAULT_EXTENT_KM = 200.0
"""Side of the mapped square (32 pixels of 6.25 km)."""
JB09_PGV_RANGE_KM = 22.0 + 3.7 * 1.0
"""Jayaram & Baker (2009) range b (correlation exp(-3 h / b)) at T = 1 s, used for PGV."""


@dataclass(frozen=True)
class ShakingConfig:
    """The draws of :func:`make_shaking_maps`; defaults as in the module docstring."""

    magnitude_range: tuple[float, float] = (3.0, 7.0)
    depth_range_km: tuple[float, float] = (5.0, 20.0)
    epicentre_margin: float = 0.2
    """Epicentres are uniform over [-m, 1 + m] x the extent on both axes."""
    event_sd: float = 0.15
    site_sd: float = 0.2
    site_length_km: tuple[float, float] = (5.0, 20.0)
    """e-folding length L of the site field's exp(-h / L), uniform per map."""
    within_sd: float = 0.25
    within_range_km: float = JB09_PGV_RANGE_KM
    finite_fault: bool = True


@dataclass
class ShakingMaps:
    """n maps of log10 PGV (m/s) with what made them; ``event(i)`` is what a catalogue knows."""

    log_pgv: np.ndarray  # (n, H, W) float32
    median: np.ndarray  # (n, H, W) float32: the regime physics alone (no event/site/within terms)
    magnitude: np.ndarray  # (n,)
    epicentre_km: np.ndarray  # (n, 2) (row, col) km, the frame of coords * extent_km
    depth_km: np.ndarray  # (n,)
    regime: np.ndarray  # (n,) str
    stress_drop_bar: np.ndarray  # (n,)
    kappa_s: np.ndarray  # (n,)
    event_term: np.ndarray  # (n,)
    site_length_km: np.ndarray  # (n,)
    extent_km: float
    config: ShakingConfig = field(default_factory=ShakingConfig)

    def __len__(self) -> int:
        return len(self.log_pgv)

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.log_pgv.shape[1]), int(self.log_pgv.shape[2])

    def sources(self) -> np.ndarray:
        """(n, 4) float32 rows of magnitude, epicentre (row, column) in the [0, 1] frame of the
        coordinates (outside it for an event beyond the map) and depth in km: what a field
        model with the ``shakemap`` prior is told (:data:`seismag.models.ground_motion.
        SOURCE_COLUMNS`)."""
        epi = self.epicentre_km / self.extent_km
        return np.column_stack([self.magnitude, epi, self.depth_km]).astype(np.float32)

    def event(self, i: int) -> dict:
        """The catalogue entry of map ``i``: magnitude, epicentre (km), depth and the extent."""
        return {
            "magnitude": float(self.magnitude[i]),
            "epicentre_km": (float(self.epicentre_km[i, 0]), float(self.epicentre_km[i, 1])),
            "depth_km": float(self.depth_km[i]),
            "extent_km": float(self.extent_km),
        }


def finite_fault_km(magnitude: float | np.ndarray) -> np.ndarray:
    """Yenier & Atkinson (2015) finite-fault factor h = 10^(-0.405 + 0.235 M) km."""
    return 10.0 ** (-0.405 + 0.235 * np.asarray(magnitude, np.float64))


def rvt_log_pgv(
    magnitude: float,
    r_km: np.ndarray,
    *,
    stress_drop_bar: float = 100.0,
    kappa_s: float = 0.04,
    physics: Physics | None = None,
) -> np.ndarray:
    """Median log10 PGV (m/s, one horizontal component) at distances ``r_km`` by random-vibration
    theory (Boore 2003, eqs. 19-20) on the spectrum the waveform generator uses."""
    physics = physics or Physics()
    r = np.maximum(np.asarray(r_km, np.float64), 1.0)
    spec = velocity_spectrum(
        _FREQS,
        magnitude,
        r[:, None],
        stress_drop_bar=stress_drop_bar,
        kappa_s=kappa_s,
        physics=physics,
    )
    _, fc = source_shape(_FREQS[:1], magnitude, stress_drop_bar, physics)
    dur = duration_s(float(fc), r, physics)
    power = spec**2
    omega2 = (2.0 * np.pi * _FREQS) ** 2
    m0 = 2.0 * np.trapezoid(power, _FREQS, axis=1)
    m2 = 2.0 * np.trapezoid(omega2 * power, _FREQS, axis=1)
    m4 = 2.0 * np.trapezoid(omega2**2 * power, _FREQS, axis=1)
    # Zero crossings and extrema in the duration, then the expected peak over rms (CLH 1956).
    n_z = np.sqrt(m2 / m0) * dur / np.pi
    n_e = np.maximum(np.sqrt(m4 / m2) * dur / np.pi, 1.0)
    xi = np.minimum(n_z / n_e, 1.0)
    integrand = 1.0 - (1.0 - xi[:, None] * np.exp(-(_Z**2))[None, :]) ** n_e[:, None]
    peak_factor = math.sqrt(2.0) * np.trapezoid(integrand, _Z, axis=1)
    return np.log10(peak_factor * np.sqrt(m0 / dur))


def exponential_field(
    rng: np.random.Generator,
    grid: tuple[int, int],
    spacing_km: float,
    length_km: float,
    sd: float,
) -> np.ndarray:
    """One (H, W) zero-mean Gaussian field with covariance sd^2 exp(-h / length_km).

    Circulant embedding on a (2H, 2W) torus (Dietrich & Newsam 1997): the exponential covariance
    embeds with non-negative eigenvalues at these lengths (a few clipped round-off negatives), so
    the field is exact, at the cost of two FFTs.
    """
    h, w = grid
    di = np.minimum(np.arange(2 * h), 2 * h - np.arange(2 * h)) * spacing_km
    dj = np.minimum(np.arange(2 * w), 2 * w - np.arange(2 * w)) * spacing_km
    lag = np.hypot(di[:, None], dj[None, :])
    eig = np.maximum(np.fft.fft2(np.exp(-lag / length_km)).real, 0.0)
    white = rng.standard_normal((2 * h, 2 * w))
    z = np.fft.ifft2(np.sqrt(eig) * np.fft.fft2(white)).real
    return (sd * z[:h, :w]).astype(np.float64)


SHAKING_REGIMES = ("wna", "two_corner", "broad")
"""The maps' training regimes: the magnitude models' before ``wide`` joined them, kept so
that ShakeFlow's maps and figures are made again as recorded."""


def shaking_regime_names(spec: str) -> tuple[str, ...]:
    """:func:`regime_names`, where ``train`` means :data:`SHAKING_REGIMES`."""
    return SHAKING_REGIMES if spec == "train" else regime_names(spec)


def make_shaking_maps(
    n: int,
    grid: tuple[int, int] = (32, 32),
    extent_km: float = DEFAULT_EXTENT_KM,
    seed: int = 0,
    regimes: tuple[str, ...] = SHAKING_REGIMES,
    config: ShakingConfig | None = None,
) -> ShakingMaps:
    """``n`` one-event maps of log10 PGV (m/s). Map ``i`` depends only on (``seed``, ``i``) and the
    arguments, so a longer set extends a shorter one with the same seed."""
    cfg = config or ShakingConfig()
    if not regimes:
        raise ValueError("at least one regime is needed")
    h, w = grid
    spacing = extent_km / max(h, w)
    # Pixel centres in km, in the (row, col) frame of field_card.grid_coords.
    sites = grid_coords(h, w).astype(np.float64) * extent_km
    out = {
        k: np.empty(n)
        for k in (
            "magnitude",
            "depth_km",
            "stress_drop_bar",
            "kappa_s",
            "event_term",
            "site_length_km",
        )
    }
    epicentre = np.empty((n, 2))
    regime_of = np.empty(n, dtype=object)
    log_pgv = np.empty((n, h, w), np.float32)
    median = np.empty((n, h, w), np.float32)
    lo, hi = -cfg.epicentre_margin * extent_km, (1 + cfg.epicentre_margin) * extent_km
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        regime = regimes[int(rng.integers(len(regimes)))]
        drawn = draw_event_physics(rng, regime)
        mag = float(rng.uniform(*cfg.magnitude_range))
        depth = float(rng.uniform(*cfg.depth_range_km))
        epi = rng.uniform(lo, hi, size=2)
        r = np.sqrt(np.sum((sites - epi) ** 2, axis=1) + depth**2)
        if cfg.finite_fault:
            r = np.hypot(r, finite_fault_km(mag))
        nodes = np.geomspace(r.min(), r.max() * 1.0001, _N_NODES)
        at_nodes = rvt_log_pgv(
            mag,
            nodes,
            stress_drop_bar=drawn.stress_drop_bar,
            kappa_s=drawn.kappa_median_s,
            physics=drawn.physics,
        )
        med = np.interp(np.log(r), np.log(nodes), at_nodes).reshape(h, w)
        event_term = float(rng.normal(0.0, cfg.event_sd))
        length = float(rng.uniform(*cfg.site_length_km))
        site = exponential_field(rng, grid, spacing, length, cfg.site_sd)
        within = exponential_field(rng, grid, spacing, cfg.within_range_km / 3.0, cfg.within_sd)
        log_pgv[i] = med + event_term + site + within
        median[i] = med
        regime_of[i] = regime
        epicentre[i] = epi
        for key, value in (
            ("magnitude", mag),
            ("depth_km", depth),
            ("stress_drop_bar", drawn.stress_drop_bar),
            ("kappa_s", drawn.kappa_median_s),
            ("event_term", event_term),
            ("site_length_km", length),
        ):
            out[key][i] = value
    return ShakingMaps(
        log_pgv=log_pgv,
        median=median,
        epicentre_km=epicentre,
        regime=regime_of.astype(str),
        extent_km=float(extent_km),
        config=cfg,
        **out,
    )


def station_observations(
    maps: ShakingMaps | np.ndarray,
    fraction: float = 0.05,
    seed: int = 0,
    count: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stations at ``round(fraction * H * W)`` (or ``count``) random grid points of each map, as
    :func:`seismag.training.field_data.observe`: coords (F, K, 2) in [0, 1], values (F, K) in
    log10 m/s and flat pixel indices (F, K)."""
    fields = maps.log_pgv if isinstance(maps, ShakingMaps) else np.asarray(maps)
    return observe(fields, fraction, seed=seed, count=count)
