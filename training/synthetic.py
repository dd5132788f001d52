"""Realistic synthetic 3-component velocity seismograms with a known magnitude.

Why synthetic data: it lets the training, export and serving stages be exercised end to end, and
checked against a magnitude that is known exactly, without downloading a catalogue. Why *realistic*:
a model trained on toy sinusoids learns nothing about the cue that matters (absolute amplitude
against distance and noise), so the generator follows the stochastic method of Boore (2003,
PAGEOPH 160:635):

* source: Brune omega-square spectrum, M0 = 10^(1.5 Mw + 16.05) dyne cm, corner frequency from a
  stress drop drawn log-normally per event (median 100 bar), so equal magnitudes differ in
  frequency content as real ones do;
* path: geometric spreading 1/R to 40 km and R^-0.5 beyond, anelastic Q(f) = 180 f^0.45;
* site: kappa (median 0.04 s) and a log-normal amplitude term, fixed per station; in the
  ``empirical`` and ``site_range`` regimes also a crustal amplification (Boore & Joyner 1997);
* time series: Saragoni-Hart windowed Gaussian noise, FFT, normalised to unit mean power,
  multiplied by the target Fourier spectrum, inverse FFT;
* P and S: P at R / 6.1 km/s with (beta/alpha)^3 of the S level and 1.5x the corner frequency,
  polarised mostly on Z; S at R / 3.5 km/s as independent SV and SH series rotated to N/E by the
  back-azimuth, with a smaller part of SV on Z;
* noise: coloured Gaussian noise whose PSD lies between Peterson's NLNM and NHNM at a per-station
  level, so detectability, not only amplitude, depends on magnitude and distance.

Units: Boore's constant with M0 in dyne cm, rho in g/cm^3, beta in km/s and R in km gives a
displacement Fourier spectrum in cm s (the 1e-20 factor); it is converted to m s and multiplied by
2 pi f, so every waveform is ground velocity in m/s, the unit the model cards expect.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.fft as sfft
from scipy import signal as ssignal

from seismag.training.dataset import DatasetWriter
from seismag.training.regimes import (
    CHANNEL_CODES,
    REGIMES,
    WNA,
    Instrument,
    Physics,
    draw_event_physics,
    draw_instrument,
    piecewise_linear,
    piecewise_power,
)

# --- Boore (2003) western North America parameters -------------------------------------------
# Velocities, density, radiation, spreading (1/R to 40 km, R^-0.5 beyond), Q = 180 f^0.45 and the
# path duration 0.05 R are the defaults of regimes.Physics (WNA), which every spectrum takes.
BETA_KMS = WNA.beta_kms  # shear-wave velocity at the source
ALPHA_KMS = WNA.alpha_kms  # P-wave velocity (tP = R / 6.1)
PARTITION = 1.0 / math.sqrt(2.0)  # share of S energy on one horizontal component
FREE_SURFACE = 2.0
# Saragoni-Hart window shape (eps, eta) and t_eta = 2 x duration.
_SH_EPS, _SH_ETA, _SH_TETA_FACTOR = 0.2, 0.05, 2.0
_SH_B = -_SH_EPS * math.log(_SH_ETA) / (1 + _SH_EPS * (math.log(_SH_EPS) - 1))
_SH_C = _SH_B / _SH_EPS
_SH_LOG_A = _SH_B * (1 - math.log(_SH_EPS))  # log of (e / eps)^b


@dataclass(frozen=True)
class SyntheticConfig:
    """The knobs of the generator; defaults are Boore's WNA values plus the spreads named here."""

    magnitude_range: tuple[float, float] = (0.5, 6.5)
    gr_tilt: float = 0.1
    """Mild Gutenberg-Richter tilt: density ~ 10^(-gr_tilt M). 0.1 gives 4x more M0.5 than M6.5,
    far flatter than nature's b ~ 1, so large events stay well represented for training."""
    distance_range_km: tuple[float, float] = (5.0, 300.0)
    depth_range_km: tuple[float, float] = (2.0, 20.0)
    stress_drop_bar: float = 100.0
    stress_drop_sigma_log10: float = 0.3
    kappa_s: float = 0.04
    kappa_sigma_log10: float = 0.12
    site_sigma_log10: float = 0.15
    """Station amplification (log-normal, median 1): site terms of real networks."""
    noise_level_beta: tuple[float, float] = (2.0, 3.5)
    """Station noise position between NLNM (0) and NHNM (1), Beta-distributed (mean ~0.36)."""
    noise_jitter_db: float = 2.0
    """Per-trace noise variation around the station's level (time of day, weather)."""
    n_stations: int = 200
    """Size of the station pool; a station keeps its noise level, kappa and site term."""
    snr_min_db: float = 3.0
    """Traces whose band-passed SNR (see ``trace_snr``) is below this are rejected and redrawn."""
    max_redraws: int = 3
    distance_cap_log10: tuple[float, float] = (1.3, 0.55)
    """(a, b): epicentral distances are drawn up to 10^(a + b M) km (see ``max_epicentral_km``)."""
    p_window_s: tuple[float, float] = (5.0, 35.0)
    """P lands uniformly in this span after the trace start, shortened so S fits with 5 s spare."""
    regimes: tuple[str, ...] = ()
    """Physics regimes (:mod:`seismag.training.regimes`) each event draws one of, uniformly. Empty:
    the fixed Boore (2003) WNA physics of the first datasets, with broadband stations only and
    nothing else below (kept so that old datasets can be made again bit for bit). With regimes,
    stations also get instruments, frequency-dependent site terms, clipping and gaps."""
    s_in_trace: bool = True
    """Keep S inside the trace (limits distance by ``p_window_s``). False lets S fall after the
    record end, as on short records and for distant stations."""
    gap_probability: float = 0.0
    """Share of traces with one zero-filled gap of 0.2-5 s (a telemetry drop merged with 0)."""
    site_amplification_sigma_log10: float = 0.0
    """Spread of a station's high-frequency amplification over its low-frequency level (soil:
    amplification above a resonance f0 of 0.5-8 Hz); 0 = frequency-independent site terms."""


def regime_config(regimes: tuple[str, ...], **overrides) -> SyntheticConfig:
    """The generator as the shipped weights are trained and scored: physics drawn from
    ``regimes``, every station with an instrument, P from 2 s into the record, S possibly after
    its end, M up to 7, 3 % of traces with a gap, soil-like site terms."""
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown or not regimes:
        raise ValueError(f"unknown regime(s) {unknown}; known: {', '.join(REGIMES)}")
    settings = {
        "regimes": tuple(regimes),
        "magnitude_range": (0.5, 7.0),
        "p_window_s": (2.0, 40.0),
        "s_in_trace": False,
        "gap_probability": 0.03,
        "site_amplification_sigma_log10": 0.2,
        **overrides,
    }
    return SyntheticConfig(**settings)


# --- source, path, site -----------------------------------------------------------------------
def seismic_moment(magnitude: np.ndarray | float) -> np.ndarray:
    """M0 in dyne cm (Hanks & Kanamori as used by Boore 2003)."""
    return 10.0 ** (1.5 * np.asarray(magnitude, dtype=np.float64) + 16.05)


def corner_frequency(
    magnitude: np.ndarray | float,
    stress_drop_bar: np.ndarray | float = 100.0,
    beta_kms: float = BETA_KMS,
) -> np.ndarray:
    """Brune S corner frequency in Hz: 4.906e6 beta (dsigma / M0)^(1/3)."""
    m0 = seismic_moment(magnitude)
    return 4.906e6 * beta_kms * (np.asarray(stress_drop_bar, dtype=np.float64) / m0) ** (1 / 3)


def two_corner_parameters(magnitude: float) -> tuple[float, float, float]:
    """(fa, fb, eps) of the Atkinson & Silva (2000) California source."""
    fa = 10 ** (2.181 - 0.496 * magnitude)
    fb = 10 ** (2.41 - 0.408 * magnitude)
    eps = min(10 ** (0.605 - 0.255 * magnitude), 1.0)
    return fa, fb, eps


def source_shape(
    f: np.ndarray,
    magnitude: float,
    stress_drop_bar: np.ndarray | float,
    physics: Physics,
    corner_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The source's displacement shape (1 at f = 0) and its duration-defining corner in Hz."""
    if physics.source == "two_corner":
        fa, fb, eps = two_corner_parameters(magnitude)
        fa, fb = fa * corner_scale, fb * corner_scale
        shape = (1 - eps) / (1 + (f / fa) ** 2) + eps / (1 + (f / fb) ** 2)
        # Half the inverse of the lower corner: the two-corner source is shorter than a Brune
        # source with fa as its corner.
        return shape, np.asarray(2.0 * fa)
    if physics.source != "brune":
        raise ValueError(f"unknown source model {physics.source!r}")
    fc = corner_frequency(magnitude, stress_drop_bar, physics.beta_kms) * corner_scale
    return 1.0 / (1.0 + (f / fc) ** 2), fc


def geometric_spreading(r_km: np.ndarray | float, physics: Physics = WNA) -> np.ndarray:
    """Z(R): by default 1/R up to 40 km, then R^-0.5 (surface-wave-like decay of the Lg coda)."""
    return piecewise_power(r_km, physics.spreading)


def quality_factor(f: np.ndarray, physics: Physics = WNA) -> np.ndarray:
    q = physics.q0 * np.asarray(f, dtype=np.float64) ** physics.q_eta
    return np.maximum(q, physics.q_min)


def duration_s(
    fc: np.ndarray | float, r_km: np.ndarray | float, physics: Physics = WNA
) -> np.ndarray:
    """Source duration 1/fc plus the path duration (Boore 2003 WNA: 0.05 R)."""
    return 1.0 / np.asarray(fc) + piecewise_linear(r_km, physics.duration_path)


def velocity_spectrum(
    f: np.ndarray,
    magnitude: np.ndarray | float,
    r_km: np.ndarray | float,
    *,
    stress_drop_bar: np.ndarray | float = 100.0,
    kappa_s: np.ndarray | float = 0.04,
    wave: str = "S",
    physics: Physics = WNA,
) -> np.ndarray:
    """Fourier amplitude of ground velocity on one component, in m/s * s (= m).

    Arguments broadcast (e.g. ``f`` of shape (F,), the others (K, 1)). For ``wave="P"`` the level
    is scaled by ``physics.p_level`` (beta/alpha)^3 (the 1/(rho v^3) source term), the corners by
    ``physics.p_corner_ratio`` and the travel time in the Q term uses alpha.
    """
    f = np.asarray(f, dtype=np.float64)
    level = (
        physics.radiation
        * PARTITION
        * FREE_SURFACE
        / (4 * math.pi * physics.rho_gcc * physics.beta_kms**3)
        * 1e-20
        * seismic_moment(magnitude)
    )
    speed, corner_scale = physics.beta_kms, 1.0
    if wave == "P":
        corner_scale = physics.p_corner_ratio
        level = level * physics.p_level * (physics.beta_kms / physics.alpha_kms) ** 3
        speed = physics.alpha_kms
    elif wave != "S":
        raise ValueError(f"wave must be 'P' or 'S', got {wave!r}")
    shape, _ = source_shape(f, float(magnitude), stress_drop_bar, physics, corner_scale)
    r = np.asarray(r_km, dtype=np.float64)
    fpos = np.maximum(f, 1e-6)  # Q(0) = 0; the 2 pi f factor zeroes DC anyway
    displacement_cm_s = (
        level
        * shape
        * geometric_spreading(r, physics)
        * np.exp(-np.pi * fpos * r / (quality_factor(fpos, physics) * speed))
        * np.exp(-np.pi * np.asarray(kappa_s) * f)
    )
    if physics.crust_amplification:
        displacement_cm_s = displacement_cm_s * crust_amplification(fpos, physics)
    return 2.0 * np.pi * f * displacement_cm_s * 0.01


def crust_amplification(f: np.ndarray, physics: Physics) -> np.ndarray:
    """The regime's crustal amplification table at ``f`` (log-log interpolation, flat beyond its
    ends); only called for a regime that has one."""
    table = np.asarray(physics.crust_amplification)
    logf = np.log(np.maximum(np.asarray(f, dtype=np.float64), 1e-6))
    return np.exp(np.interp(logf, np.log(table[:, 0]), np.log(table[:, 1])))


def site_amplification(f: np.ndarray, high: np.ndarray, f0: np.ndarray) -> np.ndarray:
    """Amplification rising from 1 below ``f0`` to ``high`` above it (a soft layer's response)."""
    x = (np.asarray(f) / np.asarray(f0)) ** 2
    return 1.0 + (np.asarray(high) - 1.0) * x / (1.0 + x)


# --- time series --------------------------------------------------------------------------------
def saragoni_hart(t: np.ndarray, duration: np.ndarray | float) -> np.ndarray:
    """Saragoni-Hart envelope (eps 0.2, eta 0.05, t_eta = 2 x duration), 0 for t <= 0.

    It rises as t^1.25 to 1 at eps t_eta and decays exponentially: the build-up and coda of a
    real record, instead of a boxcar whose onset would be an unnaturally sharp cue.
    """
    x = np.asarray(t) / (_SH_TETA_FACTOR * np.asarray(duration, dtype=np.asarray(t).dtype))
    positive = x > 0
    safe = np.where(positive, x, 1.0)
    w = np.exp(_SH_LOG_A + _SH_B * np.log(safe) - _SH_C * safe)
    w *= positive
    return w


def stochastic_series(
    rng: np.random.Generator,
    spectrum: np.ndarray,
    onset: np.ndarray,
    duration: np.ndarray,
    n_buffer: int,
    dt: float,
) -> np.ndarray:
    """Boore's recipe for rows of (spectrum (K, n_buffer//2+1) in m, onset sample, duration s).

    Windowed white noise -> FFT -> unit mean power -> times the spectrum / dt (a DFT approximates
    the continuous Fourier transform divided by dt) -> inverse FFT. The result is then made
    causal: the zero-phase multiplication smears a little energy ahead of the onset, which would
    put signal before the labelled P. The buffer is longer than the trace so that coda cut at the
    buffer end wraps around only into the (zeroed) pre-onset part.
    """
    k = spectrum.shape[0]
    # float32 for the white noise and its envelope: half the cost, and the shape of a random
    # envelope needs no more precision; the spectral scaling below is done in float64.
    t_rel = np.arange(n_buffer, dtype=np.float32)[None, :] - onset[:, None].astype(np.float32)
    t_rel *= np.float32(dt)
    noise = rng.standard_normal((k, n_buffer), dtype=np.float32)
    noise *= saragoni_hart(t_rel, duration[:, None])
    spec = sfft.rfft(noise, axis=-1).astype(np.complex128)
    power = np.mean(spec.real**2 + spec.imag**2, axis=-1, keepdims=True)
    spec *= spectrum / (np.sqrt(np.maximum(power, 1e-300)) * dt)
    series = sfft.irfft(spec, n_buffer, axis=-1)
    series *= t_rel >= 0
    return series


# --- noise ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _peterson_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log10(period) ascending, NLNM dB, NHNM dB on one grid (ObsPy lists periods descending)."""
    from obspy.signal.spectral_estimation import get_nhnm, get_nlnm

    lp, ld = get_nlnm()
    hp, hd = get_nhnm()
    grid = np.log10(np.sort(np.union1d(lp, hp)))
    low = np.interp(grid, np.log10(lp[::-1]), ld[::-1])
    high = np.interp(grid, np.log10(hp[::-1]), hd[::-1])
    return grid, low, high


def peterson_acceleration_db(f: np.ndarray, level: np.ndarray | float) -> np.ndarray:
    """Acceleration PSD in dB re 1 (m/s^2)^2/Hz at ``level`` between NLNM (0) and NHNM (1).

    Interpolation is linear in dB, the way noise percentiles are usually quoted. Outside the
    models' 0.1-1e5 s the edge values are held (above 10 Hz: flat acceleration).
    """
    grid, low, high = _peterson_tables()
    lp = np.log10(1.0 / np.maximum(np.asarray(f, dtype=np.float64), 1e-9))
    lo = np.interp(lp, grid, low)
    hi = np.interp(lp, grid, high)
    u = np.asarray(level, dtype=np.float64)
    return lo + u * (hi - lo)


def peterson_velocity_psd(f: np.ndarray, level: np.ndarray | float) -> np.ndarray:
    """One-sided velocity PSD in (m/s)^2/Hz: the acceleration PSD divided by (2 pi f)^2."""
    f = np.asarray(f, dtype=np.float64)
    acc = 10.0 ** (peterson_acceleration_db(f, level) / 10.0)
    return acc / np.maximum(2 * np.pi * f, 1e-9) ** 2


def peterson_noise(
    rng: np.random.Generator,
    level: np.ndarray,
    n_samples: int,
    sampling_rate: float,
    n_components: int = 3,
) -> np.ndarray:
    """Gaussian velocity noise (K, n_components, n_samples) in m/s with a Peterson-level PSD."""
    level = np.atleast_1d(np.asarray(level, dtype=np.float64))
    f = sfft.rfftfreq(n_samples, 1.0 / sampling_rate)
    return psd_noise(rng, peterson_velocity_psd(f, level[:, None]), n_samples, sampling_rate)


def psd_noise(
    rng: np.random.Generator,
    psd: np.ndarray,
    n_samples: int,
    sampling_rate: float,
    n_components: int = 3,
) -> np.ndarray:
    """Gaussian noise (K, n_components, n_samples) with one-sided PSD ``psd`` (K, n//2+1).

    Built in the frequency domain: complex Gaussian coefficients with E|X_k|^2 = N times
    sqrt(PSD / (2 dt)) have the requested one-sided PSD after the inverse FFT; DC is zero.
    """
    dt = 1.0 / sampling_rate
    amp = np.sqrt(np.asarray(psd, dtype=np.float64) / (2 * dt))
    amp[:, 0] = 0.0
    shape = (amp.shape[0], n_components, amp.shape[1])
    coeff = np.empty(shape, dtype=np.complex64)
    coeff.real = rng.standard_normal(shape, dtype=np.float32)
    coeff.imag = rng.standard_normal(shape, dtype=np.float32)
    coeff *= np.float32(math.sqrt(n_samples / 2))
    if n_samples % 2 == 0:  # the Nyquist bin of a real series is real
        coeff[..., -1] = coeff[..., -1].real * math.sqrt(2)
    return sfft.irfft(coeff * amp[:, None, :], n_samples, axis=-1)


def instrument_noise(
    rng: np.random.Generator, self_noise_db: np.ndarray, n_samples: int, sampling_rate: float
) -> np.ndarray:
    """Sensor self-noise as velocity (K, 3, n): a flat acceleration PSD integrated once."""
    f = sfft.rfftfreq(n_samples, 1.0 / sampling_rate)
    acc = 10.0 ** (np.asarray(self_noise_db, dtype=np.float64)[:, None] / 10.0)
    return psd_noise(rng, acc / np.maximum(2 * np.pi * f, 1e-3) ** 2, n_samples, sampling_rate)


# --- SNR ------------------------------------------------------------------------------------------
SNR_BAND_HZ = (1.0, 20.0)
SNR_SIGNAL_S = 10.0
SNR_GAP_S = 0.1
SNR_SKIP_S = 1.0


@functools.lru_cache(maxsize=8)
def _snr_filter(sampling_rate: float) -> np.ndarray:
    high = min(SNR_BAND_HZ[1], 0.45 * sampling_rate)
    return ssignal.butter(4, (SNR_BAND_HZ[0], high), "bandpass", fs=sampling_rate, output="sos")


def trace_snr(
    waveforms: np.ndarray, p_sample: np.ndarray, s_sample: np.ndarray, sampling_rate: float
) -> np.ndarray:
    """SNR in dB: RMS of the 3-component vector in [S, S + 10 s] over RMS in [1 s, P - 0.1 s].

    Where S is not in the trace (within its last second) the signal window starts at P.

    Both after a causal 4th-order 1-20 Hz Butterworth band-pass. The band keeps the comparison
    about the event: broadband velocity noise is dominated by microseisms (0.1-0.5 Hz) that every
    magnitude pipeline filters out, and which would otherwise mark clear local M1 events as
    invisible. The filter is causal because a zero-phase one rings ahead of a strong P onset and
    caps the SNR of large events near 50 dB; its start-up state assumes the first sample held
    forever, and the first second is skipped anyway.
    """
    sos = _snr_filter(sampling_rate)
    zi = ssignal.sosfilt_zi(sos)[:, None, None, :] * waveforms[None, :, :, :1]
    x, _ = ssignal.sosfilt(sos, waveforms, axis=-1, zi=zi)
    n = x.shape[-1]
    skip = round(SNR_SKIP_S * sampling_rate)
    gap = round(SNR_GAP_S * sampling_rate)
    length = round(SNR_SIGNAL_S * sampling_rate)
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        noise = x[i, :, skip : max(int(p_sample[i]) - gap, skip + 10)]
        first = int(s_sample[i]) if s_sample[i] < n - skip else int(p_sample[i])
        sig = x[i, :, first : min(first + length, n)]
        out[i] = 10 * np.log10(np.mean(sig**2) / max(np.mean(noise**2), 1e-300))
    return out


# --- one event ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StationPool:
    """Fixed per-station properties: what stays the same when a station records many events."""

    noise_level: np.ndarray
    kappa_s: np.ndarray
    site_factor: np.ndarray
    site_high: np.ndarray | None = None
    """High-frequency over low-frequency amplification (see ``site_amplification``)."""
    site_f0: np.ndarray | None = None
    instruments: tuple[Instrument, ...] | None = None

    def code(self, i: int) -> str:
        return f"S{i:04d}"


@functools.lru_cache(maxsize=4)
def station_pool(seed: int, config: SyntheticConfig) -> StationPool:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, 0)))
    n = config.n_stations
    noise_level = rng.beta(*config.noise_level_beta, size=n)
    kappa = config.kappa_s * 10 ** rng.normal(0, config.kappa_sigma_log10, n)
    site = 10 ** rng.normal(0, config.site_sigma_log10, n)
    if not config.regimes:  # the first datasets' stations, bit for bit
        return StationPool(noise_level, np.clip(kappa, 0.01, 0.1), site)
    # With regimes, kappa here is the station's factor on its event's regime median (a rock
    # station is rock under every event): the ratio to the configured median.
    return StationPool(
        noise_level,
        kappa / config.kappa_s,
        site,
        site_high=10 ** np.abs(rng.normal(0, config.site_amplification_sigma_log10, n)),
        site_f0=np.exp(rng.uniform(math.log(0.5), math.log(8.0), n)),
        instruments=tuple(draw_instrument(rng) for _ in range(n)),
    )


def event_rng(seed: int, event_index: int) -> np.random.Generator:
    """Each event draws from its own child stream, so events can be made in any order or
    process and the dataset is still bit-identical for a seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, event_index)))


def sample_magnitude(rng: np.random.Generator, config: SyntheticConfig, size=None) -> np.ndarray:
    """Truncated exponential (tilted Gutenberg-Richter) on ``config.magnitude_range``."""
    m1, m2 = config.magnitude_range
    b = config.gr_tilt
    u = rng.random(size)
    if b <= 0:
        return m1 + u * (m2 - m1)
    return m1 - np.log10(1 - u * (1 - 10 ** (-b * (m2 - m1)))) / b


def max_epicentral_km(magnitude: float, config: SyntheticConfig) -> float:
    """Distance cap before synthesis, 10^(a + b M) km (M1: 70 km, M2: 250 km, M3+: 300 km).

    It only saves work: a M1 is not synthesised 300 km away to be rejected. With the default
    noise levels it lies where roughly three quarters of stations already fall below the SNR
    threshold, so near the detection limit the noise, not this cap, decides what is kept.
    """
    lo, hi = config.distance_range_km
    a, b = config.distance_cap_log10
    return float(np.clip(10 ** (a + b * magnitude), 2 * lo, hi))


@dataclass
class EventRecords:
    """The traces of one event that passed selection, and their metadata rows."""

    waveforms: np.ndarray  # (K, 3, N) float32, ZNE, m/s
    metadata: list[dict]
    candidates: int  # traces synthesised, kept or not


def _draw_candidates(
    rng: np.random.Generator,
    k: int,
    magnitude: float,
    depth: float,
    config: SyntheticConfig,
    trace_seconds: float,
    used: set[int],
    physics: Physics = WNA,
) -> dict[str, np.ndarray]:
    lo = config.distance_range_km[0]
    slowness_sp = 1 / physics.beta_kms - 1 / physics.alpha_kms
    hi = max_epicentral_km(magnitude, config)
    if config.s_in_trace:
        # S must fit: (tS - tP) = 0.1218 R must leave p_window_s[0] + 5 s in the trace.
        r_fit = (trace_seconds - config.p_window_s[0] - 5.0) / slowness_sp
        hi = min(hi, math.sqrt(max(r_fit**2 - depth**2, 0.0)))
    hi = max(hi, lo * 1.01)
    epi = np.exp(rng.uniform(math.log(lo), math.log(hi), k))  # log-uniform: many near stations
    hyp = np.sqrt(epi**2 + depth**2)
    sp = hyp * slowness_sp
    p_lo, p_hi = config.p_window_s
    room = trace_seconds - (sp if config.s_in_trace else 0.0) - 5.0
    p_hi = np.maximum(np.minimum(p_hi, room), p_lo)
    p_time = p_lo + rng.random(k) * (p_hi - p_lo)
    return {
        # No station twice in one event (a real network records each event once per station).
        "station": rng.choice(np.setdiff1d(np.arange(config.n_stations), list(used)), k, False),
        "epi": epi,
        "hyp": hyp,
        "baz": rng.uniform(0.0, 360.0, k),
        "p_time": p_time,
        "sp": sp,
        "p_incidence": rng.uniform(10.0, 35.0, k),  # degrees from vertical
        "sv_share": rng.uniform(20.0, 70.0, k),  # degrees: SV vs SH split of the S energy
        "s_on_z": rng.uniform(0.2, 0.6, k),
        "noise_jitter": rng.normal(0.0, config.noise_jitter_db, k),
    }


def simulate_signal(
    rng: np.random.Generator,
    magnitude: float,
    hyp_km: np.ndarray,
    p_sample: np.ndarray,
    s_sample: np.ndarray,
    *,
    n_samples: int,
    sampling_rate: float,
    stress_drop_bar: float = 100.0,
    kappa_s: np.ndarray | float = 0.04,
    site_factor: np.ndarray | float = 1.0,
    back_azimuth_deg: np.ndarray | float = 0.0,
    p_incidence_deg: np.ndarray | float = 20.0,
    sv_share_deg: np.ndarray | float = 45.0,
    s_on_z: np.ndarray | float = 0.4,
    physics: Physics = WNA,
    site_high: np.ndarray | float = 1.0,
    site_f0: np.ndarray | float = 1.0,
) -> np.ndarray:
    """Noise-free ZNE velocity (K, 3, n_samples) in m/s of one event at K stations.

    ``site_factor`` scales all frequencies; ``site_high`` (> 1) amplifies those above ``site_f0``.
    """
    hyp = np.atleast_1d(np.asarray(hyp_km, dtype=np.float64))
    k = hyp.size

    def col(v) -> np.ndarray:
        return np.broadcast_to(np.asarray(v, dtype=np.float64), (k,))[:, None]

    dt = 1.0 / sampling_rate
    # Coda cut at the buffer end wraps to its start; 10 s of spare keeps it out of the trace.
    n_buffer = sfft.next_fast_len(n_samples + round(10 * sampling_rate), real=True)
    f = sfft.rfftfreq(n_buffer, dt)
    kw = {"stress_drop_bar": stress_drop_bar, "kappa_s": col(kappa_s), "physics": physics}
    site = col(site_factor)
    if np.any(np.asarray(site_high) != 1.0):
        site = site * site_amplification(f, col(site_high), col(site_f0))
    spec_s = velocity_spectrum(f, magnitude, hyp[:, None], wave="S", **kw) * site
    spec_p = velocity_spectrum(f, magnitude, hyp[:, None], wave="P", **kw) * site
    _, fc = source_shape(f[:1], magnitude, stress_drop_bar, physics)
    fc = float(fc)
    dur_s = duration_s(fc, hyp, physics)
    dur_p = duration_s(physics.p_corner_ratio * fc, hyp, physics)
    # One P series, two independent S series (SV, SH), all in one batch of FFTs.
    series = stochastic_series(
        rng,
        np.concatenate([spec_p, spec_s, spec_s]),
        np.concatenate([p_sample, s_sample, s_sample]).astype(np.float64),
        np.concatenate([dur_p, dur_s, dur_s]),
        n_buffer,
        dt,
    )[:, :n_samples]
    p, sv, sh = series[:k], series[k : 2 * k], series[2 * k :]
    inc, share = np.radians(col(p_incidence_deg)), np.radians(col(sv_share_deg))
    # Boore's level is per horizontal component; sqrt(2) x (cos, sin) keeps the total S
    # horizontal energy at 2 x that level whatever the SV/SH split.
    radial = np.sin(inc) * p + math.sqrt(2) * np.cos(share) * sv
    transverse = math.sqrt(2) * np.sin(share) * sh
    vertical = np.cos(inc) * p + col(s_on_z) * math.sqrt(2) * np.cos(share) * sv
    baz = np.radians(col(back_azimuth_deg))
    # Radial points away from the source (azimuth baz + 180); inverse of ObsPy's rotate_ne_rt.
    north = -radial * np.cos(baz) + transverse * np.sin(baz)
    east = -radial * np.sin(baz) - transverse * np.cos(baz)
    return np.stack([vertical, north, east], axis=1)


def simulate_event(
    seed: int,
    event_index: int,
    config: SyntheticConfig,
    *,
    stations_per_event: tuple[int, int] = (3, 8),
    trace_seconds: float = 60.0,
    sampling_rate: float = 100.0,
) -> EventRecords:
    """One event at 3-8 stations; traces under ``config.snr_min_db`` are redrawn (new station and
    distance) up to ``config.max_redraws`` times, then dropped, so an event may keep fewer."""
    rng = event_rng(seed, event_index)
    pool = station_pool(seed, config)
    n = round(trace_seconds * sampling_rate)
    mag = float(sample_magnitude(rng, config))
    depth = float(rng.uniform(*config.depth_range_km))
    stress = float(
        config.stress_drop_bar * 10 ** np.clip(rng.normal(0, config.stress_drop_sigma_log10), -2, 2)
    )
    origin = np.datetime64("2020-01-01T00:00:00", "us") + np.timedelta64(
        int((event_index * 3600 + rng.uniform(0, 3000)) * 1e6), "us"
    )
    source_id = f"syn{seed}_{event_index:07d}"
    wanted = int(rng.integers(stations_per_event[0], stations_per_event[1] + 1))
    regime, physics = "", WNA
    if config.regimes:
        regime = config.regimes[int(rng.integers(len(config.regimes)))]
        drawn = draw_event_physics(rng, regime)
        physics, stress = drawn.physics, drawn.stress_drop_bar

    kept_wave: list[np.ndarray] = []
    kept_meta: list[dict] = []
    candidates = 0
    used: set[int] = set()
    for _ in range(config.max_redraws + 1):
        k = wanted - len(kept_wave)
        if k <= 0:
            break
        c = _draw_candidates(rng, k, mag, depth, config, trace_seconds, used, physics)
        candidates += k
        st = c["station"]
        used.update(int(s) for s in st)
        p_sample = np.round(c["p_time"] * sampling_rate).astype(np.int64)
        s_sample = p_sample + np.round(c["sp"] * sampling_rate).astype(np.int64)
        kappa = pool.kappa_s[st]
        site: dict = {}
        if config.regimes:
            kappa = np.clip(kappa * drawn.kappa_median_s, 0.003, 0.12)
            site = {"site_high": pool.site_high[st], "site_f0": pool.site_f0[st]}
        sig = simulate_signal(
            rng,
            mag,
            c["hyp"],
            p_sample,
            s_sample,
            n_samples=n,
            sampling_rate=sampling_rate,
            stress_drop_bar=stress,
            kappa_s=kappa,
            site_factor=pool.site_factor[st],
            back_azimuth_deg=c["baz"],
            p_incidence_deg=c["p_incidence"],
            sv_share_deg=c["sv_share"],
            s_on_z=c["s_on_z"],
            physics=physics,
            **site,
        )
        # The dB jitter as a step in level, using the NLNM-NHNM gap at 1 Hz (~50 dB).
        span = peterson_acceleration_db(1.0, 1.0) - peterson_acceleration_db(1.0, 0.0)
        level = np.clip(pool.noise_level[st] + c["noise_jitter"] / span, 0.0, 1.0)
        wave = sig + peterson_noise(rng, level, n, sampling_rate)
        instruments = [pool.instruments[int(j)] for j in st] if pool.instruments else None
        record = {"clipped": np.zeros(k, bool), "gap_s": np.zeros(k)}
        if instruments is not None:
            wave, record = _record(rng, wave, instruments, sampling_rate, config.gap_probability)
        snr = trace_snr(wave, p_sample, s_sample, sampling_rate)
        pgv = np.abs(sig[:, 1:]).max(axis=(1, 2))
        for i in np.flatnonzero(snr >= config.snr_min_db):
            start = origin + np.timedelta64(
                round(float(c["hyp"][i] / physics.alpha_kms - p_sample[i] / sampling_rate) * 1e6),
                "us",
            )
            extra = {}
            if instruments is not None:
                extra = {
                    "source_regime": regime,
                    "station_instrument": instruments[i].kind,
                    "trace_clipped": bool(record["clipped"][i]),
                    "trace_gap_s": round(float(record["gap_s"][i]), 3),
                }
            kept_wave.append(wave[i].astype(np.float32))
            kept_meta.append(
                {
                    "source_id": source_id,
                    "source_origin_time": np.datetime_as_string(origin) + "Z",
                    "source_magnitude": round(mag, 4),
                    "source_magnitude_type": "Mw",
                    "source_depth_km": round(depth, 3),
                    "source_stress_drop_bar": round(stress, 3),
                    "path_ep_distance_km": round(float(c["epi"][i]), 3),
                    "path_hyp_distance_km": round(float(c["hyp"][i]), 3),
                    "path_back_azimuth_deg": round(float(c["baz"][i]), 3),
                    "trace_p_arrival_sample": int(p_sample[i]),
                    "trace_s_arrival_sample": int(s_sample[i]),
                    "trace_snr_db": round(float(snr[i]), 3),
                    "trace_pgv_mps": float(pgv[i]),
                    "trace_noise_level": round(float(level[i]), 4),
                    "station_network_code": "SY",
                    "station_code": pool.code(int(st[i])),
                    "station_location_code": "",
                    "station_kappa_s": round(float(kappa[i]), 4),
                    "station_site_factor": round(float(pool.site_factor[st[i]]), 4),
                    "trace_channel": CHANNEL_CODES[instruments[i].kind] if instruments else "HH",
                    "trace_sampling_rate_hz": sampling_rate,
                    "trace_start_time": np.datetime_as_string(start) + "Z",
                    **extra,
                }
            )
    waves = np.stack(kept_wave) if kept_wave else np.zeros((0, 3, n), np.float32)
    return EventRecords(waves, kept_meta, candidates)


def _record(
    rng: np.random.Generator,
    wave: np.ndarray,
    instruments: list[Instrument],
    sampling_rate: float,
    gap_probability: float,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """What each station's sensor and telemetry make of ground velocity + site noise (K, 3, n):
    sensor self-noise, the band limit of the corrected record, saturation, a zero-filled gap."""
    k, _, n = wave.shape
    db = np.array(
        [ins.self_noise_db if ins.self_noise_db is not None else -400.0 for ins in instruments]
    )
    wave = wave + instrument_noise(rng, db, n, sampling_rate)
    clipped = np.zeros(k, bool)
    gap_s = np.zeros(k)
    for i, ins in enumerate(instruments):
        sos = ssignal.butter(2, ins.highpass_hz, "highpass", fs=sampling_rate, output="sos")
        wave[i] = ssignal.sosfilt(sos, wave[i], axis=-1)
        if np.isfinite(ins.clip_mps) and np.abs(wave[i]).max() > ins.clip_mps:
            clipped[i] = True
            np.clip(wave[i], -ins.clip_mps, ins.clip_mps, out=wave[i])
        if rng.random() < gap_probability:
            length = int(rng.uniform(0.2, 5.0) * sampling_rate)
            first = int(rng.integers(0, max(n - length, 1)))
            wave[i, :, first : first + length] = 0.0
            gap_s[i] = length / sampling_rate
    return wave, {"clipped": clipped, "gap_s": gap_s}


# --- the dataset ----------------------------------------------------------------------------------
def _event_task(args: tuple) -> EventRecords:
    seed, index, config, kwargs = args
    return simulate_event(seed, index, config, **kwargs)


def iter_events(
    n_events: int,
    *,
    seed: int = 0,
    config: SyntheticConfig | None = None,
    workers: int = 1,
    **kwargs,
) -> Iterator[EventRecords]:
    """Events in index order, made in ``workers`` processes; the output does not depend on it."""
    config = config or SyntheticConfig()
    tasks = ((seed, i, config, kwargs) for i in range(n_events))
    if workers <= 1:
        yield from map(_event_task, tasks)
        return
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_event_task, tasks, chunksize=8)


def generate_dataset(
    out_dir: str | os.PathLike,
    n_events: int,
    *,
    stations_per_event: tuple[int, int] = (3, 8),
    seed: int = 0,
    trace_seconds: float = 60.0,
    sampling_rate: float = 100.0,
    progress: bool = True,
    workers: int = 1,
    storage: str = "bucket",
    config: SyntheticConfig | None = None,
) -> Path:
    """Write a SeisBench-format synthetic dataset (``metadata.csv`` + ``waveforms.hdf5``).

    Deterministic for ``seed`` (whatever ``workers``: events are made in ``workers`` forked
    processes and written in index order). Splits are assigned by event, 70/10/20. ``storage`` is
    ``"bucket"`` (fast, SeisBench's packed layout) or ``"trace"`` (one HDF5 dataset per trace).
    Traces are float32 ZNE velocity in m/s; the metadata also records the SNR, the noise-free
    horizontal PGV, the stress drop and the station terms, for analysis. The configuration and
    seed are stored as attributes of an HDF5 group ``provenance`` (SeisBench ignores it) so a
    dataset says how it was made. Returns ``out_dir``.
    """
    from tqdm.auto import tqdm

    config = config or SyntheticConfig()
    kwargs = {
        "stations_per_event": tuple(stations_per_event),
        "trace_seconds": trace_seconds,
        "sampling_rate": sampling_rate,
    }
    out = Path(out_dir)
    events = iter_events(n_events, seed=seed, config=config, workers=workers, **kwargs)
    provenance = {
        **{k: str(v) for k, v in asdict(config).items()},
        "seed": seed,
        "n_events": n_events,
        "stations_per_event": str(tuple(stations_per_event)),
        "generator": "seismag.training.synthetic (Boore 2003 stochastic method)",
    }
    with DatasetWriter(
        out, sampling_rate=sampling_rate, storage=storage, provenance=provenance, split_seed=seed
    ) as writer:
        bar = tqdm(events, total=n_events, disable=not progress, unit="ev")
        for rec in bar:
            writer.add_many(rec.waveforms, rec.metadata)
            bar.set_postfix(traces=writer.n_traces, refresh=False)
    return out
