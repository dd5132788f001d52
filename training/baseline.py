"""A classic local magnitude (ML) on the same windows the models see: the yardstick for them.

Why a baseline at all: a learned model's MAE means little on its own. ML from a simulated
Wood-Anderson trace is what a seismic network would report, so each model is compared against it
window for window (the full window and each "k seconds after P" window).

Choices, stated once:

* **Wood-Anderson from velocity.** The WA poles and zeros (ObsPy convention: poles
  -6.283 +- 4.7124j, zeros 0, 0, gain 2080, sensitivity 1) map ground *displacement* to trace
  displacement. The traces here are velocity (m/s), so one zero is dropped: velocity -> WA trace
  in metres; x 1000 gives millimetres. No response is removed (the data already are ground
  velocity). Simulation runs without ObsPy's taper and PITSA detrend: the newest samples of a
  live window are where the peak is, and a taper would suppress them.
* **Amplitude.** Zero-to-peak: the largest |WA| on either horizontal (N or E), taken from the P
  onset to the end of the window (the pre-P part only holds noise and the start-up transient of
  the simulation).
* **Distance** from the S-P time with vp 6.1 km/s and vs 3.5 km/s (the synthetic generator's
  velocities, Boore 2003): R = (tS - tP) / (1/3.5 - 1/6.1) = 8.21 km per second. The
  picks are the catalogue picks in the metadata, the same P pick the models use as onset. When the
  window ends before S has arrived (early windows), all a live system knows is that S is later
  than the window end, so R is set to that lower bound, (t_end - tP) x 8.21 km/s. With the P
  amplitude only and R too small, ML is then low: that is the honest early-window baseline.
* **Attenuation:** Hutton & Boore (1987), ML = log10 A[mm] + 1.110 log10(R/100)
  + 0.00189 (R - 100) + 3.0, R hypocentral (what S-P gives), floored at 1 km.

No constant is tuned to the data: ML is close to Mw for M3-5 and below it for small events
(Hutton & Boore 1987 calibrated ML on California), and the evaluator reports it as it comes out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WOOD_ANDERSON = {
    "poles": [-6.283 + 4.7124j, -6.283 - 4.7124j],
    "zeros": [0j, 0j],
    "gain": 2080.0,
    "sensitivity": 1.0,
}
"""Wood-Anderson displacement response, the paz given for Hutton & Boore style ML."""

VP_KM_S = 6.1
VS_KM_S = 3.5
KM_PER_SP_SECOND = 1.0 / (1.0 / VS_KM_S - 1.0 / VP_KM_S)
MIN_DISTANCE_KM = 1.0
AMPLITUDE_FLOOR_MM = 1e-12


def _velocity_paz() -> dict:
    """The WA response for velocity input: one zero fewer (integration folded in)."""
    paz = dict(WOOD_ANDERSON)
    paz["zeros"] = list(WOOD_ANDERSON["zeros"])[1:]
    return paz


def wood_anderson_mm(velocity: np.ndarray, sampling_rate: float) -> np.ndarray:
    """Ground velocity (m/s), shape (..., N) -> Wood-Anderson trace amplitude in millimetres."""
    from obspy import Trace

    v = np.atleast_2d(np.asarray(velocity, dtype=np.float64))
    out = np.empty_like(v)
    paz = _velocity_paz()
    for i, row in enumerate(v.reshape(-1, v.shape[-1])):
        tr = Trace(data=row.copy())
        tr.stats.sampling_rate = sampling_rate
        tr.simulate(paz_simulate=paz, taper=False, pitsasim=False, zero_mean=True)
        out.reshape(-1, v.shape[-1])[i] = tr.data * 1000.0  # m -> mm
    return out.reshape(np.shape(velocity)) if np.ndim(velocity) > 1 else out[0]


def hutton_boore_ml(amplitude_mm: float | np.ndarray, distance_km: float | np.ndarray):
    """ML of Hutton & Boore (1987) from a WA zero-to-peak amplitude and hypocentral distance."""
    a = np.maximum(np.asarray(amplitude_mm, dtype=np.float64), AMPLITUDE_FLOOR_MM)
    r = np.maximum(np.asarray(distance_km, dtype=np.float64), MIN_DISTANCE_KM)
    return np.log10(a) + 1.110 * np.log10(r / 100.0) + 0.00189 * (r - 100.0) + 3.0


def distance_from_sp(sp_seconds: float) -> float:
    """Hypocentral distance (km) from the S-P time with the generator's vp/vs."""
    return max(float(sp_seconds) * KM_PER_SP_SECOND, MIN_DISTANCE_KM)


@dataclass(frozen=True)
class LocalMagnitude:
    ml: float
    amplitude_mm: float
    distance_km: float
    s_observed: bool
    """False when the window ends before S: ``distance_km`` is then a lower bound."""


def local_magnitude(
    window: np.ndarray,
    onset: int,
    s_index: float | None,
    *,
    sampling_rate: float,
    component_order: str = "ZNE",
) -> LocalMagnitude:
    """ML of one (C, N) velocity window whose P onset is sample ``onset``.

    ``s_index`` is the S pick in window samples (may lie past the window end, or be None/NaN if
    the catalogue has none); see the module docstring for what happens when S is not observed.
    """
    w = np.asarray(window, dtype=np.float64)
    n = w.shape[-1]
    horizontals = [component_order.index(c) for c in "NE" if c in component_order]
    if not horizontals:
        raise ValueError(f"ML needs a horizontal component, have {component_order!r}")
    onset = int(np.clip(onset, 0, n - 1))
    wa = wood_anderson_mm(w[horizontals], sampling_rate)
    amplitude = float(np.abs(wa[:, onset:]).max())
    elapsed = (n - onset) / sampling_rate  # seconds of data after P in this window
    s_observed = s_index is not None and np.isfinite(s_index) and s_index < n
    if s_observed:
        distance = distance_from_sp((float(s_index) - onset) / sampling_rate)
    else:
        distance = distance_from_sp(elapsed)
    ml = float(hutton_boore_ml(amplitude, distance))
    return LocalMagnitude(ml, amplitude, distance, bool(s_observed))
