"""Physics regimes for the synthetic generator: published parameterisations, not one choice.

A model trained on one parameterisation of the stochastic method learns that parameterisation:
measured from outside, the first shipped weights lost a factor of 2-3 on an independent generator
of the same physics and compressed the magnitude scale on real records. So every event draws its
source, path and site physics from a *regime*, and models are scored on regimes they never saw.

Each regime is a distribution over :class:`Physics`. The named ones follow published models:

* ``wna``: western North America, Boore (2003, PAGEOPH 160:635): Q = 180 f^0.45, 1/R to 40 km
  then R^-0.5, kappa ~0.04 s, Brune source, 100 bar, duration 1/fc + 0.05 R.
* ``ena``: eastern North America, Atkinson & Boore (2006, BSSA 96:2181): Q = max(1000,
  893 f^0.32), spreading R^-1.3 to 70 km, R^+0.2 to 140 km, R^-0.5 beyond, kappa ~0.005-0.02 s,
  beta 3.7 km/s, ~140 bar; path duration of Atkinson & Boore (1995): 0.16 R to 70 km, -0.03 R
  to 130 km, 0.04 R beyond.
* ``two_corner``: the Atkinson & Silva (2000, BSSA 90:255) two-corner California source (log fa =
  2.181 - 0.496 M, log fb = 2.41 - 0.408 M, log eps = 0.605 - 0.255 M) on the Raoof et al.
  (1999) southern-California path (1/R to 40 km, R^-0.5 beyond, Q = 180 f^0.45).
* ``high_attenuation``: volcanic / sedimentary settings: Q0 40-100 with a strong frequency
  dependence (eta 0.6-0.9), kappa 0.05-0.08 s, low stress drops (1-30 bar, as for many volcanic
  and induced events), a slower crust and long durations.
* ``broad``: every parameter drawn independently over the middle of the published ranges (stress
  drop 3-300 bar, kappa 0.01-0.07 s, Q0 100-600, eta 0.2-0.8, bilinear spreading with a 30-80 km
  hinge), with Brune or two-corner sources.
* ``wide``: every parameter drawn independently over the whole published ranges: stress drop
  1-300 bar, kappa 0.005-0.08 s, Q0 40-1000 (volcanic and sedimentary basins to stable cratons),
  eta 0.2-0.9, beta 2.8-3.8 km/s, path duration 0.03-0.12 s/km; bilinear spreading (hinge 20-90
  km) or, for one event in three, trilinear with a flat or rising middle segment (the Moho
  reflections of Atkinson & Mereu 1992 and Atkinson & Boore 1995).
* ``empirical``: ``wide``'s draws plus the two empirical parts of the stochastic method that
  the regimes above leave out: the generic-rock crustal amplification of Boore & Joyner (1997;
  1.4 at 0.5 Hz, 2.1 at 2 Hz, 2.6 at 6 Hz) and the path durations of Boore & Thompson (2014,
  western North America) times a log-uniform 0.5-2 (4.5 s at 20 km and 8.4 s at 45 km, where
  Boore 2003's 0.05 R gives 1 and 2.25 s). Added after an independently written generator with
  both (:mod:`seismag.benchmarks.crosscheck_data`) found every model trained without them
  reading 0.6-0.7 magnitude units high, as they read the real STEAD records 0.4-0.7 high.
* ``site_range``: ``empirical`` with the crustal amplification scaled between none (hard rock)
  and stiff soil (see :func:`_site_range`). Added when a model trained with ``empirical`` read
  the unseen regimes, which have no crustal amplification, 0.18 low.
* ``site_kappa``: ``site_range`` with kappa following the site's Vs30 (Van Houtte, Drouet &
  Cotton 2011; see :func:`_site_kappa`), so that a record's high-frequency decay tells hard rock
  from soil as it does on real stations.

Whatever the regime, the nuisances a real network adds are drawn the same way (see
:func:`draw_instrument` and :mod:`seismag.training.synthetic`): broadband, short-period
and accelerometer stations (the latter two with their self-noise and band limits after response
removal), frequency-dependent site amplification, P/S ratio and radiation scatter, clipping,
gaps, and P from 2 s into the record with S possibly outside it.

``TRAIN_REGIMES`` and ``HELD_OUT_REGIMES`` are the split the shipped weights use (weights trained
before ``empirical`` or ``site_range`` existed say on which regimes in docs/evaluation.md).
The training regimes include ``wide``, so each single parameter of ``ena`` and ``high_attenuation``
lies inside a training range, but not their combinations: the ENA trilinear duration, its Q floor
and high stress drop with low kappa, the slow, strongly attenuating volcanic crust with low stress
drops. Scores on them measure physics the models never saw as a whole. ``broad``-only training
(the weights shipped before ``wide``) left them outside every range at both ends: that measured
extrapolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

INF = math.inf


@dataclass(frozen=True)
class Physics:
    """Source, path and crust of one event; the defaults are Boore (2003) WNA."""

    beta_kms: float = 3.5
    alpha_kms: float = 6.1
    rho_gcc: float = 2.8
    radiation: float = 0.55
    source: str = "brune"
    """``brune`` (omega-square, one corner) or ``two_corner`` (Atkinson & Silva 2000)."""
    spreading: tuple[tuple[float, float], ...] = ((40.0, -1.0), (INF, -0.5))
    """(up-to distance km, exponent) segments of a continuous piecewise power law in R."""
    q0: float = 180.0
    q_eta: float = 0.45
    q_min: float = 0.0
    """Q(f) = max(q_min, q0 f^q_eta)."""
    duration_path: tuple[tuple[float, float], ...] = ((INF, 0.05),)
    """(up-to distance km, seconds per km) segments of the path duration (continuous)."""
    crust_amplification: tuple[tuple[float, float], ...] = ()
    """(frequency Hz, amplification) points of the crustal amplification from the source depth
    to the surface, interpolated in log-log (flat beyond the ends); empty: none."""
    p_corner_ratio: float = 1.5
    p_level: float = 1.0
    """P spectral level relative to (beta/alpha)^3 of the S level (radiation, partitioning)."""


WNA = Physics()


def piecewise_power(r_km: np.ndarray, segments: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Continuous piecewise power law: R^e1 up to R1, then R1^e1 (R/R1)^e2 up to R2, ..."""
    r = np.maximum(np.asarray(r_km, dtype=np.float64), 1.0)
    out = np.ones_like(r)
    lo = 1.0
    for hi, exponent in segments:
        seg = np.clip(r, lo, hi) / lo
        out = out * seg**exponent
        if hi == INF:
            break
        lo = hi
    return out


def piecewise_linear(r_km: np.ndarray, segments: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Continuous piecewise-linear function of R from 0: slope s1 up to R1, s2 up to R2, ..."""
    r = np.maximum(np.asarray(r_km, dtype=np.float64), 0.0)
    out = np.zeros_like(r)
    lo = 0.0
    for hi, slope in segments:
        out = out + slope * (np.clip(r, lo, hi) - lo)
        if hi == INF:
            break
        lo = hi
    return np.maximum(out, 0.0)


@dataclass(frozen=True)
class EventPhysics:
    """What one event draws from its regime: the crust and path, its stress drop, kappa scale."""

    physics: Physics
    stress_drop_bar: float
    kappa_median_s: float
    """Station kappas of this event are this times each station's own log-normal factor."""


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _common(rng: np.random.Generator) -> dict:
    """Scatter in every regime: P/S level, P corner ratio, radiation (Boore 2003 uses averages)."""
    return {
        "p_corner_ratio": float(rng.uniform(1.2, 1.8)),
        "p_level": _log_uniform(rng, 0.5, 2.0),
        "radiation": float(0.55 * 10 ** rng.normal(0.0, 0.1)),
    }


def _wna(rng: np.random.Generator) -> EventPhysics:
    return EventPhysics(
        replace(WNA, **_common(rng)),
        stress_drop_bar=float(100.0 * 10 ** np.clip(rng.normal(0, 0.3), -1, 1)),
        kappa_median_s=0.04,
    )


def _ena(rng: np.random.Generator) -> EventPhysics:
    physics = Physics(
        beta_kms=3.7,
        alpha_kms=6.4,
        spreading=((70.0, -1.3), (140.0, 0.2), (INF, -0.5)),
        q0=893.0,
        q_eta=0.32,
        q_min=1000.0,
        duration_path=((70.0, 0.16), (130.0, -0.03), (INF, 0.04)),
        **_common(rng),
    )
    return EventPhysics(
        physics,
        stress_drop_bar=float(140.0 * 10 ** np.clip(rng.normal(0, 0.25), -1, 1)),
        kappa_median_s=_log_uniform(rng, 0.005, 0.02),
    )


def _two_corner(rng: np.random.Generator) -> EventPhysics:
    # The two-corner spectrum fixes its corners by magnitude: stress drop is not used.
    return EventPhysics(
        replace(WNA, source="two_corner", **_common(rng)),
        stress_drop_bar=100.0,
        kappa_median_s=float(rng.uniform(0.03, 0.05)),
    )


def _high_attenuation(rng: np.random.Generator) -> EventPhysics:
    physics = Physics(
        beta_kms=float(rng.uniform(2.8, 3.2)),
        alpha_kms=float(rng.uniform(4.8, 5.6)),
        rho_gcc=2.5,
        spreading=((float(rng.uniform(20.0, 30.0)), -1.0), (INF, -0.5)),
        q0=float(rng.uniform(40.0, 100.0)),
        q_eta=float(rng.uniform(0.6, 0.9)),
        duration_path=((INF, float(rng.uniform(0.08, 0.12))),),
        **_common(rng),
    )
    return EventPhysics(
        physics,
        stress_drop_bar=_log_uniform(rng, 1.0, 30.0),
        kappa_median_s=float(rng.uniform(0.05, 0.08)),
    )


def _broad(rng: np.random.Generator) -> EventPhysics:
    hinge = float(rng.uniform(30.0, 80.0))
    vs = float(rng.uniform(3.3, 3.7))
    physics = Physics(
        beta_kms=vs,
        alpha_kms=vs * float(rng.uniform(1.68, 1.82)),
        source="brune" if rng.random() < 0.75 else "two_corner",
        spreading=((hinge, float(rng.uniform(-1.2, -0.9))), (INF, float(rng.uniform(-0.7, -0.3)))),
        q0=_log_uniform(rng, 100.0, 600.0),
        q_eta=float(rng.uniform(0.2, 0.8)),
        duration_path=((INF, float(rng.uniform(0.03, 0.08))),),
        **_common(rng),
    )
    return EventPhysics(
        physics,
        stress_drop_bar=_log_uniform(rng, 3.0, 300.0),
        kappa_median_s=float(rng.uniform(0.01, 0.07)),
    )


def _wide(rng: np.random.Generator) -> EventPhysics:
    vs = float(rng.uniform(2.8, 3.8))
    near = (float(rng.uniform(20.0, 90.0)), float(rng.uniform(-1.3, -0.9)))
    if rng.random() < 1 / 3:  # trilinear: Moho-reflected energy flattens the decay at 70-140 km
        middle = (near[0] + float(rng.uniform(40.0, 80.0)), float(rng.uniform(-0.3, 0.2)))
        spreading: tuple[tuple[float, float], ...] = (near, middle, (INF, -0.5))
    else:
        spreading = (near, (INF, float(rng.uniform(-0.7, -0.3))))
    physics = Physics(
        beta_kms=vs,
        alpha_kms=vs * float(rng.uniform(1.68, 1.82)),
        rho_gcc=float(rng.uniform(2.5, 2.8)),
        source="brune" if rng.random() < 0.75 else "two_corner",
        spreading=spreading,
        q0=_log_uniform(rng, 40.0, 1000.0),
        q_eta=float(rng.uniform(0.2, 0.9)),
        duration_path=((INF, float(rng.uniform(0.03, 0.12))),),
        **_common(rng),
    )
    return EventPhysics(
        physics,
        stress_drop_bar=_log_uniform(rng, 1.0, 300.0),
        kappa_median_s=_log_uniform(rng, 0.005, 0.08),
    )


# Boore & Thompson (2014, BSSA 104:2541), western North America: the path duration as
# (up-to hypocentral distance km, seconds per km) segments of 0, 2.4, 8.4, 10.9, 9.3, 18.3 s at
# 0, 7, 45, 125, 175, 270 km and 0.156 s/km beyond.
BT14_PATH_DURATION = (
    (7.0, 2.4 / 7.0),
    (45.0, 6.0 / 38.0),
    (125.0, 2.5 / 80.0),
    (175.0, -1.6 / 50.0),
    (270.0, 9.0 / 95.0),
    (INF, 0.156),
)
# Boore & Joyner (1997, BSSA 87:327), generic rock (Vs30 620 m/s): (frequency Hz, amplification).
BJ97_GENERIC_ROCK = (
    (0.01, 1.00),
    (0.09, 1.10),
    (0.16, 1.18),
    (0.51, 1.42),
    (0.84, 1.58),
    (1.25, 1.74),
    (2.26, 2.06),
    (3.17, 2.25),
    (6.05, 2.58),
    (16.6, 3.13),
    (61.2, 4.00),
)


def _empirical(rng: np.random.Generator) -> EventPhysics:
    """``wide``'s draws plus the two empirical parts of the stochastic method the other regimes
    leave out: Boore & Joyner (1997)'s generic-rock crustal amplification and Boore & Thompson
    (2014)'s path durations, scaled by a log-uniform factor 0.5-2 (their scatter)."""
    drawn = _wide(rng)
    scale = _log_uniform(rng, 0.5, 2.0)
    durations = tuple((r, slope * scale) for r, slope in BT14_PATH_DURATION)
    physics = replace(drawn.physics, duration_path=durations, crust_amplification=BJ97_GENERIC_ROCK)
    return replace(drawn, physics=physics)


SITE_U_RANGE = (0.0, 1.4)
"""Sites of ``site_range`` and ``site_kappa``: hard rock (0) to about Vs30 300 m/s (1.4), as
multiples of the logarithm of generic rock's amplification."""


def _site_range(rng: np.random.Generator) -> EventPhysics:
    """``empirical`` with the crust between hard rock and stiff soil instead of generic rock:
    the logarithm of Boore & Joyner (1997)'s generic-rock amplification times u ~ U(0, 1.4).

    Quarter-wavelength amplification (Boore & Joyner 1997) grows with the logarithm of the
    velocity contrast between source and surface; generic rock (Vs30 620 m/s under a 3.5 km/s
    source) is ln(3.5 / 0.62) = 1.73 of it, so u = 0 is a surface as fast as the source (the ENA
    hard rock of Atkinson & Boore 2006) and u = 1.4 about Vs30 300 m/s. An approximation: the
    table's shape is kept and only its logarithm scaled. A site's amplification and an event's
    size scale the same spectrum: a model that only ever saw generic rock reads hard-rock records
    low and soil records high."""
    drawn = _empirical(rng)
    return _at_site(drawn, float(rng.uniform(*SITE_U_RANGE)))


def _at_site(drawn: EventPhysics, u: float) -> EventPhysics:
    """``drawn`` with the generic-rock amplification's logarithm scaled by ``u``."""
    table = tuple((f, float(a**u)) for f, a in BJ97_GENERIC_ROCK)
    return replace(drawn, physics=replace(drawn.physics, crust_amplification=table))


# Quarter-wavelength amplification grows with ln(source velocity / Vs30); generic rock
# (Vs30 620 m/s under 3.5 km/s) is u = 1 (see _site_range).
_SOURCE_VS_MS = 3500.0
_GENERIC_ROCK_LOG_CONTRAST = math.log(_SOURCE_VS_MS / 620.0)


def site_vs30(u: float) -> float:
    """Vs30 (m/s) of a ``site_range`` surface whose log amplification is u times generic rock's."""
    return _SOURCE_VS_MS * math.exp(-u * _GENERIC_ROCK_LOG_CONTRAST)


def site_kappa0(vs30_ms: float) -> float:
    """Site kappa (s) from Vs30: ln kappa0 = 3.490 - 1.062 ln Vs30, the KiK-net and NGA
    correlation of Van Houtte, Drouet & Cotton (2011, BSSA 101:2926). It gives 0.035 s at
    generic rock (Boore & Joyner 1997's kappa for it) and 0.006 s at 3,500 m/s (Atkinson &
    Boore 2006 use 0.005 s for hard rock)."""
    return math.exp(3.490 - 1.062 * math.log(vs30_ms))


def _site_kappa(rng: np.random.Generator) -> EventPhysics:
    """``site_range`` with kappa following the site: soft surfaces both amplify and attenuate.

    In ``site_range`` kappa is drawn independently of the amplification, so nothing in a
    record tells a hard-rock station from a soil one and a model can only read every station at
    the average site of its training data; measured, the models trained on it read the hard-rock
    ``ena`` regime 0.4-0.5 low. Real sites pair the two (Van Houtte et al. 2011): the same
    shallow low-velocity layers that amplify also absorb high frequencies. Here the event's
    kappa median is :func:`site_kappa0` of the site's Vs30 times a log-normal scatter (log10 sd
    0.15; stations add their own factor, log10 sd 0.12)."""
    u = float(rng.uniform(*SITE_U_RANGE))
    drawn = _at_site(_empirical(rng), u)
    kappa = site_kappa0(site_vs30(u)) * 10 ** float(rng.normal(0.0, 0.15))
    return replace(drawn, kappa_median_s=float(np.clip(kappa, 0.004, 0.1)))


REGIMES = {
    "wna": _wna,
    "ena": _ena,
    "two_corner": _two_corner,
    "high_attenuation": _high_attenuation,
    "broad": _broad,
    "wide": _wide,
    "empirical": _empirical,
    "site_range": _site_range,
    "site_kappa": _site_kappa,
}
TRAIN_REGIMES = ("wna", "two_corner", "wide", "empirical", "site_range")
HELD_OUT_REGIMES = ("ena", "high_attenuation")


def regime_names(spec: str) -> tuple[str, ...]:
    """'train', 'held-out', 'all' or comma-separated regime names -> regime names."""
    groups = {"train": TRAIN_REGIMES, "held-out": HELD_OUT_REGIMES, "all": tuple(REGIMES)}
    if spec in groups:
        return groups[spec]
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in REGIMES]
    if unknown or not names:
        raise ValueError(
            f"unknown regime(s) {', '.join(unknown) or spec!r}; known: {', '.join(REGIMES)}, "
            "or train, held-out, all"
        )
    return names


def draw_event_physics(rng: np.random.Generator, regime: str) -> EventPhysics:
    try:
        return REGIMES[regime](rng)
    except KeyError:
        raise ValueError(f"unknown regime {regime!r}; known: {', '.join(REGIMES)}") from None


# --- instruments ------------------------------------------------------------------------------
INSTRUMENTS = ("broadband", "short_period", "accelerometer")
INSTRUMENT_SHARES = (0.6, 0.25, 0.15)
CHANNEL_CODES = {"broadband": "HH", "short_period": "EH", "accelerometer": "HN"}


@dataclass(frozen=True)
class Instrument:
    """What a station's sensor does to a velocity record after its response is removed.

    * ``highpass_hz``: the low-frequency limit of the corrected record (the pre-filter of a
      response removal; for an accelerometer, the high-pass of the integration to velocity);
    * ``self_noise_db``: the sensor/digitiser noise as a flat acceleration PSD in dB re
      1 (m/s^2)^2/Hz (accelerometers about -140 to -125 dB, geophone systems lower); None for a
      broadband sensor, whose self-noise lies below the site noise;
    * ``clip_mps``: the velocity at which the record saturates (digitiser full scale).
    """

    kind: str
    highpass_hz: float
    self_noise_db: float | None
    clip_mps: float


def draw_instrument(rng: np.random.Generator) -> Instrument:
    kind = INSTRUMENTS[int(rng.choice(len(INSTRUMENTS), p=INSTRUMENT_SHARES))]
    if kind == "broadband":
        return Instrument(kind, float(rng.uniform(0.02, 0.1)), None, _log_uniform(rng, 0.01, 0.03))
    if kind == "short_period":
        # A 1-2 Hz geophone corrected to velocity: usable down to ~0.5-1 Hz, clips near 1 cm/s.
        return Instrument(
            kind,
            float(rng.uniform(0.5, 1.0)),
            float(rng.uniform(-165.0, -150.0)),
            _log_uniform(rng, 0.003, 0.02),
        )
    # Strong-motion sensors saturate at 2-4 g: never within these magnitudes and distances.
    return Instrument(kind, float(rng.uniform(0.1, 0.5)), float(rng.uniform(-140.0, -125.0)), INF)
