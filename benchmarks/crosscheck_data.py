"""A second, independently written generator of the same physics: an evaluation set only.

    python -m seismag.benchmarks.crosscheck_data --out DIR --events 300 --seed 7

The training generator (:mod:`seismag.training.synthetic`) and its regimes are what every model
learnt from and what their held-out sets are drawn from, so a score on them cannot show a model
that learnt the generator rather than the physics. This module shares none of its code (only the
dataset writer) and makes other, equally published choices at each step of the stochastic method
(Boore 2003, PAGEOPH 160:635):

* source: Brune (omega-square) or Boatwright's sharper corner (1 / sqrt(1 + (f/fc)^4)), stress
  drop log-uniform 10-250 bar; moment from Hanks & Kanamori (1979), SI units throughout;
* radiation: focal-sphere averages 0.52 (P) and 0.63 (S) (Boore & Boatwright 1984) with a
  log-normal scatter per station for the unknown mechanism;
* distance: the effective distance of a finite fault, sqrt(R_hyp^2 + h^2) with
  log10 h = -0.405 + 0.235 M (Yenier & Atkinson 2015);
* geometric spreading: one of three published shapes per event (Atkinson & Boore 1995's
  trilinear, a bilinear 1/R to 50-100 km then R^-0.5, and R^-1.3 to 70 km with a flat segment to
  140 km, Atkinson 2004); Q(f) = Q0 f^eta, Q0 100-800, eta 0.2-0.7; Q_P 1.2-2.25 Q_S;
* site: Boore & Joyner (1997)'s generic-rock amplification, a station factor (log10 sd 0.15)
  and, at half the stations, a soil resonance (1.5-3 at 1-8 Hz); kappa 0.008-0.06 s
  (Anderson & Hough 1984), two thirds of it for P;
* duration: 1/fc plus Boore & Thompson (2014)'s path duration for western North America; the
  window is a boxcar with a 10 % cosine rise and an exponential coda (a third of the duration);
* travel times: a layer over a half-space (crust 30-40 km, Vp 5.9-6.4 km/s, Vp/Vs 1.70-1.80,
  Pn 7.9-8.2 km/s): the first arrival is the direct wave or the head wave (Pn, Sn), whichever
  is first, so S-P times are not R / const;
* polarisation: incidence at the surface from the ray parameter and a near-surface velocity
  (Vp 3.0-3.8 km/s, Vs 1.6-2.2 km/s): P mostly vertical, SV partly vertical;
* noise: secondary microseisms (0.1-0.35 Hz, 0.1-2 um/s) plus a 0.5-15 Hz site and cultural
  noise (3 nm/s to 0.3 um/s), drawn per station, not Peterson's curves;
* instruments: broadband (flat, 0.02 Hz high pass) or a short-period sensor after response
  removal (four-pole 0.7 Hz high pass, 5 nm/s self-noise).

Each event is recorded at four stations (epicentral distance log-uniform 5-300 km, redrawn up to
three times while the trace is undetectable: S-window or P-window SNR under 10 dB, or P under
3 dB), 60 s at 100 Hz with P 4-15 s into the record, ground velocity in m/s, labelled with Mw.
Every trace is in the ``test`` split. Nothing here was tuned to any model's score: the choices
were written down before the first model was run on this data.

``--swap NAME`` (repeatable) replaces one of these choices by the training generator's, keeping
every other draw (``site`` adds one draw per station, so its stations' noise differs), to measure
which choices set a model's level on this set (:data:`SWAPS`).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import numpy as np
from scipy import signal as ssignal

from seismag.training.dataset import DatasetWriter

SAMPLING_RATE = 100.0
TRACE_SECONDS = 60.0
STATIONS_PER_EVENT = 4
MAGNITUDES = (1.5, 6.0)
DISTANCES_KM = (5.0, 300.0)
DEPTHS_KM = (3.0, 20.0)
DENSITY = 2700.0  # kg/m^3
MIN_SNR_DB = 10.0
MIN_P_SNR_DB = 3.0
REDRAWS = 3

SWAPS = {
    "stress": "stress drop log-uniform 1-300 bar (the training regimes' range) instead of 10-250",
    "brune": "Brune sources only, no Boatwright",
    "radiation": "S radiation 0.55 (Boore 2003) instead of 0.63",
    "resonance": "no soil resonances",
    "site": "generic rock at a quarter of the stations, none at the others (the share of the "
    "four regimes PhaseNetMag trained on that carry it) instead of at every station",
    "duration": "path duration 0.05 R (Boore 2003 WNA) instead of Boore & Thompson (2014)",
}
"""Choices ``--swap`` can replace by the training generator's."""

# Boore & Joyner (1997), generic rock (Vs30 620 m/s): frequency (Hz), amplification. The
# training regimes hold the same published table (regimes.BJ97_GENERIC_ROCK); it is written out
# again here on purpose, so that this generator imports nothing of the training generator's.
GENERIC_ROCK = np.array(
    [
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
    ]
)
# Boore & Thompson (2014), western North America: hypocentral distance (km), path duration (s);
# beyond the last point the duration grows by 0.156 s/km.
PATH_DURATION = np.array(
    [(0.0, 0.0), (7.0, 2.4), (45.0, 8.4), (125.0, 10.9), (175.0, 9.3), (270.0, 18.3)]
)
PATH_DURATION_SLOPE = 0.156


def moment_nm(mw: float) -> float:
    """Hanks & Kanamori (1979), N m."""
    return 10.0 ** (1.5 * mw + 9.05)


def corner_hz(mw: float, stress_bar: float, beta_kms: float) -> float:
    """Brune's corner frequency (Boore 2003, eq. 4, with M0 in dyne cm)."""
    return 4.906e6 * beta_kms * (stress_bar / (moment_nm(mw) * 1e7)) ** (1.0 / 3.0)


def path_duration(r_km: float) -> float:
    r, d = PATH_DURATION[:, 0], PATH_DURATION[:, 1]
    if r_km <= r[-1]:
        return float(np.interp(r_km, r, d))
    return float(d[-1] + PATH_DURATION_SLOPE * (r_km - r[-1]))


def spreading(r_km: float, shape: str, hinge_km: float) -> float:
    """Geometric spreading, 1/m (1/R below 1 km)."""
    segments = {
        "trilinear": ((70.0, -1.0), (130.0, 0.0), (math.inf, -0.5)),  # Atkinson & Boore 1995
        "steep": ((70.0, -1.3), (140.0, 0.2), (math.inf, -0.5)),  # Atkinson 2004
        "bilinear": ((hinge_km, -1.0), (math.inf, -0.5)),
    }[shape]
    r, g, start = max(r_km, 1.0), 1.0, 1.0
    for end, exponent in segments:
        g *= (min(r, end) / start) ** exponent
        if r <= end:
            break
        start = end
    return g / 1000.0  # per km -> per m


def first_arrival(d_km: float, depth_km: float, v: float, v_mantle: float, moho_km: float):
    """Travel time (s) and surface-slowness (s/km) of the first arrival: direct or head wave."""
    hyp = math.hypot(d_km, depth_km)
    t_direct = hyp / v
    t_head = d_km / v_mantle + (2 * moho_km - depth_km) * math.sqrt(1 / v**2 - 1 / v_mantle**2)
    if t_head < t_direct:
        return t_head, 1.0 / v_mantle
    return t_direct, (d_km / hyp) / v


def envelope(n: int, start: int, duration_s: float, fs: float) -> np.ndarray:
    """Boxcar of ``duration_s`` with a 10 % cosine rise and an exponential coda from ``start``."""
    t = (np.arange(n) - start) / fs
    w = np.zeros(n)
    rise = 0.1 * duration_s
    inside = (t >= 0) & (t < duration_s)
    w[inside] = 1.0
    up = (t >= 0) & (t < rise)
    w[up] = 0.5 * (1 - np.cos(np.pi * t[up] / rise))
    tail = t >= duration_s
    w[tail] = np.exp(-(t[tail] - duration_s) / (duration_s / 3.0))
    return w


def phase_series(
    rng: np.random.Generator, n: int, start: int, duration_s: float, fas, fs: float
) -> np.ndarray:
    """Windowed Gaussian noise shaped to the Fourier amplitude spectrum ``fas(f)`` (m: velocity
    spectrum), Boore (2003)'s normalisation: the noise spectrum scaled to unit mean square.

    The FFT works on a buffer 30 s longer than the record, with the window ending at the record
    end, so the coda does not wrap round to the start; and nothing is left before the onset
    (the zero-phase spectral shaping spreads a little energy both ways): a first arrival is
    the first arrival.
    """
    n_buffer = n + int(30 * fs)
    window = envelope(n_buffer, start, duration_s, fs)
    window[n:] = 0.0
    x = rng.standard_normal(n_buffer) * window
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(n_buffer, 1 / fs)
    spec /= np.sqrt(np.mean(np.abs(spec[1:]) ** 2))
    spec *= fas(f) / (1 / fs)
    spec[0] = 0.0
    series = np.fft.irfft(spec, n_buffer)[:n]
    series[:start] = 0.0
    return series


def band_noise(rng, n: int, fs: float, band: tuple[float, float], rms: float) -> np.ndarray:
    sos = ssignal.butter(2, band, "bandpass", fs=fs, output="sos")
    x = ssignal.sosfilt(sos, rng.standard_normal(n + 2000))[2000:]
    return x * (rms / x.std())


def _snr_db(x: np.ndarray, a: int, b: int, noise_end: int, fs: float) -> float:
    sos = ssignal.butter(4, (1.0, 20.0), "bandpass", fs=fs, output="sos")
    y = ssignal.sosfiltfilt(sos, x, axis=-1)
    noise = np.sqrt(np.mean(y[:, int(0.5 * fs) : noise_end] ** 2))
    sig = np.sqrt(np.mean(y[:, a:b] ** 2))
    return float(20 * np.log10(max(sig, 1e-30) / max(noise, 1e-30)))


def simulate_trace(
    rng: np.random.Generator, event: dict, d_km: float, swaps: frozenset[str] = frozenset()
) -> tuple[np.ndarray, dict]:
    """One station's 3-component velocity record (3, n) and its metadata."""
    fs, n = SAMPLING_RATE, int(TRACE_SECONDS * SAMPLING_RATE)
    e = event
    depth = e["depth_km"]
    tp, p_slow = first_arrival(d_km, depth, e["vp"], e["vp_mantle"], e["moho_km"])
    ts, s_slow = first_arrival(d_km, depth, e["vs"], e["vs_mantle"], e["moho_km"])
    p_sample = round(rng.uniform(4.0, 15.0) * fs)
    s_sample = p_sample + round((ts - tp) * fs)
    hyp = math.hypot(d_km, depth)
    r_eff = math.hypot(hyp, 10 ** (-0.405 + 0.235 * e["mw"]))
    kappa = math.exp(rng.uniform(math.log(0.008), math.log(0.06)))
    factor = 10 ** rng.normal(0.0, 0.15)
    resonance = (rng.uniform(1.0, 8.0), rng.uniform(1.5, 3.0)) if rng.random() < 0.5 else None
    if "resonance" in swaps:
        resonance = None
    rock = 1.0 if "site" not in swaps else float(rng.random() < 0.25)

    def site(f):
        a = np.interp(np.log(np.maximum(f, 1e-3)), np.log(GENERIC_ROCK[:, 0]), GENERIC_ROCK[:, 1])
        a = a**rock
        if resonance is not None:
            f0, peak = resonance
            a = a * (1 + (peak - 1) / (1 + ((f - f0) / (0.3 * f0)) ** 2))
        return a * factor

    m0 = moment_nm(e["mw"])
    path_d = 0.05 * hyp if "duration" in swaps else path_duration(hyp)

    def fas_for(wave: str):
        is_p = wave == "P"
        c_kms = e["vp"] if is_p else e["vs"]
        fc = e["fc"] * (e["p_corner"] if is_p else 1.0)
        s_rad = 0.55 if "radiation" in swaps else 0.63
        rad = (0.52 if is_p else s_rad) * 10 ** rng.normal(0.0, 0.25 if is_p else 0.12)
        q0 = e["q0"] * (e["qp_ratio"] if is_p else 1.0)
        kap = kappa * (2.0 / 3.0 if is_p else 1.0)
        c = c_kms * 1000.0
        const = rad * 2.0 * m0 / (4 * math.pi * DENSITY * c**3)  # free surface 2, m^2 s
        g = spreading(r_eff, e["spreading"], e["hinge_km"])

        def fas(f):
            fq = np.maximum(f, 0.2)
            source = (
                1 / (1 + (f / fc) ** 2)
                if e["source"] == "brune"
                else 1 / np.sqrt(1 + (f / fc) ** 4)
            )
            q = q0 * fq ** e["eta"]
            atten = np.exp(-np.pi * f * hyp / (q * c_kms)) * np.exp(-np.pi * kap * f)
            return 2 * np.pi * f * const * source * g * atten * site(f)  # velocity, m

        return fas, 1.0 / fc

    fas_p, src_p = fas_for("P")
    fas_s, src_s = fas_for("S")
    p = phase_series(rng, n, p_sample, src_p + 0.5 * path_d, fas_p, fs)
    sh = phase_series(rng, n, s_sample, src_s + path_d, fas_s, fs)
    sv = phase_series(rng, n, s_sample, src_s + path_d, fas_s, fs)
    sv_share = rng.uniform(0.2, 0.8)
    sh, sv = sh * math.sqrt(1 - sv_share), sv * math.sqrt(sv_share)
    sin_p = min(e["vp_surface"] * p_slow, 0.95)
    sin_s = min(e["vs_surface"] * s_slow, 0.95)
    cos_p, cos_s = math.sqrt(1 - sin_p**2), math.sqrt(1 - sin_s**2)
    z = p * cos_p + sv * sin_s
    radial = p * sin_p + sv * cos_s
    transverse = sh
    baz = rng.uniform(0, 2 * np.pi)
    # Radial points away from the source: from the station, opposite the back azimuth.
    north = -radial * math.cos(baz) + transverse * math.sin(baz)
    east = -radial * math.sin(baz) - transverse * math.cos(baz)
    wave = np.stack([z, north, east])
    pgv = float(np.abs(wave[1:]).max())

    micro = math.exp(rng.uniform(math.log(1e-7), math.log(2e-6)))
    local = math.exp(rng.uniform(math.log(3e-9), math.log(3e-7)))
    for i in range(3):
        wave[i] += band_noise(rng, n, fs, (0.1, 0.35), micro)
        wave[i] += band_noise(rng, n, fs, (0.5, 15.0), local * (1.3 if i else 1.0))
    short_period = rng.random() < 0.3
    if short_period:
        wave += 5e-9 * rng.standard_normal(wave.shape)
        sos = ssignal.butter(4, 0.7, "highpass", fs=fs, output="sos")
    else:
        sos = ssignal.butter(2, 0.02, "highpass", fs=fs, output="sos")
    wave = ssignal.sosfilt(sos, wave, axis=-1)
    snr_p = _snr_db(wave, p_sample, p_sample + int(2 * fs), p_sample - int(0.2 * fs), fs)
    snr_s = _snr_db(wave, s_sample, min(s_sample + int(5 * fs), n), p_sample - int(0.2 * fs), fs)
    meta = {
        "path_ep_distance_km": round(d_km, 3),
        "path_hyp_distance_km": round(hyp, 3),
        "path_back_azimuth_deg": round(math.degrees(baz), 3),
        "trace_p_arrival_sample": p_sample,
        "trace_s_arrival_sample": s_sample,
        "trace_snr_db": round(max(snr_p, snr_s), 3),
        "trace_p_snr_db": round(snr_p, 3),
        "trace_pgv_mps": pgv,
        "station_kappa_s": round(kappa, 4),
        "station_instrument": "short_period" if short_period else "broadband",
        "trace_channel": "EH" if short_period else "HH",
    }
    return wave.astype(np.float32), meta


def draw_event(rng: np.random.Generator, swaps: frozenset[str] = frozenset()) -> dict:
    mw = float(rng.uniform(*MAGNITUDES))
    vp = rng.uniform(5.9, 6.4)
    ratio = rng.uniform(1.70, 1.80)
    vp_mantle = rng.uniform(7.9, 8.2)
    stress_range = (1.0, 300.0) if "stress" in swaps else (10.0, 250.0)
    stress = math.exp(rng.uniform(*np.log(stress_range)))
    event = {
        "mw": mw,
        "depth_km": float(rng.uniform(*DEPTHS_KM)),
        "stress_bar": stress,
        "source": "brune" if rng.random() < 0.5 or "brune" in swaps else "boatwright",
        "vp": vp,
        "vs": vp / ratio,
        "vp_mantle": vp_mantle,
        "vs_mantle": vp_mantle / ratio,
        "moho_km": rng.uniform(30.0, 40.0),
        "vp_surface": rng.uniform(3.0, 3.8),
        "vs_surface": rng.uniform(1.6, 2.2),
        "spreading": ("trilinear", "bilinear", "steep")[int(rng.integers(3))],
        "hinge_km": rng.uniform(50.0, 100.0),
        "q0": math.exp(rng.uniform(math.log(100.0), math.log(800.0))),
        "eta": rng.uniform(0.2, 0.7),
        "qp_ratio": rng.uniform(1.2, 2.25),
        "p_corner": rng.uniform(1.3, 1.7),
    }
    event["fc"] = corner_hz(mw, stress, event["vs"])
    return event


def simulate_event(
    seed: int, index: int, swaps: frozenset[str] = frozenset()
) -> tuple[list[np.ndarray], list[dict]]:
    unknown = set(swaps) - set(SWAPS)
    if unknown:
        raise ValueError(f"unknown swap(s) {sorted(unknown)}; known: {sorted(SWAPS)}")
    rng = np.random.default_rng([seed, index])
    e = draw_event(rng, swaps)
    source_id = f"xc{seed}_{index:06d}"
    origin = np.datetime64("2021-01-01T00:00:00", "us") + np.timedelta64(index * 3600, "s")
    waves, metas = [], []
    for k in range(STATIONS_PER_EVENT):
        for _ in range(REDRAWS + 1):
            d = math.exp(rng.uniform(*np.log(DISTANCES_KM)))
            wave, meta = simulate_trace(rng, e, d, swaps)
            detectable = (
                meta["trace_snr_db"] >= MIN_SNR_DB and meta["trace_p_snr_db"] >= MIN_P_SNR_DB
            )
            if detectable:
                break
        else:
            continue
        tp, _ = first_arrival(d, e["depth_km"], e["vp"], e["vp_mantle"], e["moho_km"])
        start = origin + np.timedelta64(
            round((tp - meta["trace_p_arrival_sample"] / SAMPLING_RATE) * 1e6), "us"
        )
        waves.append(wave)
        metas.append(
            {
                "source_id": source_id,
                "source_origin_time": np.datetime_as_string(origin) + "Z",
                "source_magnitude": round(e["mw"], 4),
                "source_magnitude_type": "Mw",
                "source_depth_km": round(e["depth_km"], 3),
                "source_stress_drop_bar": round(e["stress_bar"], 3),
                "source_spectrum": e["source"],
                "path_spreading": e["spreading"],
                "station_network_code": "XC",
                "station_code": f"X{index % 1000:03d}{k}",
                "station_location_code": "",
                "trace_sampling_rate_hz": SAMPLING_RATE,
                "trace_start_time": np.datetime_as_string(start) + "Z",
                "split": "test",
                **meta,
            }
        )
    return waves, metas


def generate(
    out: str | Path, events: int, seed: int, command: str = "", swaps: frozenset[str] = frozenset()
) -> Path:
    """Write the set (SeisBench format) to ``out``; returns it."""
    from tqdm.auto import tqdm

    provenance = {
        "generator": "seismag.benchmarks.crosscheck_data (independent of training.synthetic)",
        "seed": seed,
        "n_events": events,
        "command": command,
        "swaps": sorted(swaps),
    }
    with DatasetWriter(out, sampling_rate=SAMPLING_RATE, provenance=provenance) as writer:
        for i in tqdm(range(events), unit="ev"):
            waves, metas = simulate_event(seed, i, swaps)
            if waves:
                writer.add_many(np.stack(waves), metas)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--swap",
        action="append",
        default=[],
        choices=sorted(SWAPS),
        help="replace this choice by the training generator's (repeatable): "
        + "; ".join(f"{k}: {v}" for k, v in SWAPS.items()),
    )
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("--events must be >= 1")
    argv = sys.argv[1:] if argv is None else argv
    command = f"python -m seismag.benchmarks.crosscheck_data {shlex.join(argv)}"
    path = generate(args.out, args.events, args.seed, command, frozenset(args.swap))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
