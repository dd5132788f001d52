"""Instrument correction that a live feed and a recorded request share: causal, chunk-invariant.

Frequency-domain deconvolution (ObsPy's ``remove_response``) needs the whole trace, so a stream
could only divide by the flat sensitivity and a replayed stream did not reproduce Predict. Here
the correction is a recursive (IIR) filter built from the channel's poles and zeros, as in
real-time ground-motion monitoring (Kanamori, Maechling & Hauksson 1999, "Continuous monitoring
of ground-motion parameters", BSSA 89(1)): the analog inverse of the sensor (its poles become
zeros; its zeros, reflected into the left half-plane where needed, become poles), times a
Butterworth high-pass that cancels the integrations at 0 Hz, and a low-pass where the inverse
would otherwise rise without bound, mapped to digital with the bilinear transform. The gain is
set with ObsPy's evalresp at the sensitivity frequency, so the corrected trace is ground velocity
in m/s whatever the sensor's input units (velocity, acceleration, displacement).

The filter keeps its state between chunks, so any chunking of a channel gives the same samples
as the whole record (to float rounding), and Predict and StreamPredict run the same object.
Its first state is the steady state for the first sample, so a DC offset in counts does not ring.
Amplitudes match full deconvolution within the band; phase differs (the high-pass is causal).
"""

from __future__ import annotations

import math

import numpy as np
from obspy import Inventory, Trace, UTCDateTime
from obspy.core.inventory import Response
from scipy import signal

from seismag.serving.errors import InvalidInput

HIGHPASS_HZ = 0.05
"""Corner of the causal high-pass; far below the cards' bands (their filters start near 1 Hz)."""
HIGHPASS_ORDER = 2
LOWPASS_FRACTION = 0.45
"""Low-pass corner as a fraction of the sampling rate, for inverses with more zeros than poles."""

_TWO_PI = 2.0 * math.pi
_INTEGRATIONS = {"M/S": 0, "M/SEC": 0, "M/S**2": 1, "M/S/S": 1, "M/SEC**2": 1, "M": -1}
"""Input units -> integrations from the sensor's quantity to velocity (-1: a derivative)."""


def _response(inventory: Inventory, seed_id: str, time: UTCDateTime):
    try:
        return inventory.get_response(seed_id, time)
    except Exception:
        raise InvalidInput(
            f"{seed_id}: the inventory has no response for this channel at {time}"
        ) from None


class CausalCorrection:
    """Counts -> ground velocity (m/s) for one channel; call it on consecutive chunks.

    ``source`` is the channel's ObsPy ``Response`` or an ``Inventory`` to look it up in.
    """

    def __init__(
        self, source: Inventory | Response, seed_id: str, time: UTCDateTime, rate: float
    ) -> None:
        response = source if isinstance(source, Response) else _response(source, seed_id, time)
        sens = response.instrument_sensitivity
        if sens is None or not sens.value:
            raise InvalidInput(f"{seed_id}: the inventory gives no overall sensitivity")
        units = (sens.input_units or "").upper()
        if units not in _INTEGRATIONS:
            raise InvalidInput(
                f"{seed_id}: input units {units or 'unknown'} are not ground motion "
                "(M/S, M/S**2 or M)"
            )
        try:
            paz = response.get_paz()
        except Exception:
            paz = None
        self.seed_id = seed_id
        self.rate = float(rate)
        zeros, poles = _inverse_roots(paz)
        if not all(map(np.isfinite, [*zeros, *poles])):
            raise InvalidInput(f"{seed_id}: the response's poles or zeros hold NaN or Inf")
        try:
            self.sos = _design(zeros, poles, _INTEGRATIONS[units], self.rate)
        except (ValueError, AssertionError):  # scipy's checks that the roots make a real filter
            raise InvalidInput(
                f"{seed_id}: the response's poles and zeros do not make a real filter: each "
                "complex pole or zero needs its complex conjugate"
            ) from None
        self._normalise(response, sens.frequency)
        self._zi: np.ndarray | None = None

    def _normalise(self, response, frequency: float | None) -> None:
        nyquist = self.rate / 2
        f = frequency if frequency and 5 * HIGHPASS_HZ < frequency < 0.5 * nyquist else 1.0
        _, digital = signal.sosfreqz(self.sos, worN=[f], fs=self.rate)
        try:
            sensor = response.get_evalresp_response_for_frequencies([f], output="VEL")
        except Exception as exc:
            raise InvalidInput(f"{self.seed_id}: cannot evaluate the response: {exc}") from None
        total = abs(digital[0] * sensor[0])
        if not (math.isfinite(total) and total > 0):
            raise InvalidInput(f"{self.seed_id}: the response is zero or infinite at {f:g} Hz")
        self.sos = self.sos.copy()
        self.sos[0, :3] /= total

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        x = np.asarray(chunk, dtype=np.float64)
        if x.size == 0:
            return x
        if self._zi is None:  # steady state for a constant first sample: no ringing offset
            self._zi = signal.sosfilt_zi(self.sos) * x[0]
        y, self._zi = signal.sosfilt(self.sos, x, zi=self._zi)
        return y


def _inverse_roots(paz) -> tuple[list[complex], list[complex]]:
    """Zeros and poles (rad/s) of the sensor's inverse; empty for a sensor without a PAZ stage
    (a flat response: a plain gain)."""
    if paz is None:
        return [], []
    scale = _TWO_PI if "HERTZ" in (paz.pz_transfer_function_type or "").upper() else 1.0
    if "DIGITAL" in (paz.pz_transfer_function_type or "").upper():
        raise InvalidInput("a digital (z-transform) poles-and-zeros stage is not supported")
    zeros = [complex(p) * scale for p in paz.poles]
    # Zeros in the right half-plane would be unstable poles: reflect them (same amplitude).
    poles = [complex(-abs(z.real), z.imag) * scale for z in map(complex, paz.zeros)]
    return zeros, poles


def _design(zeros, poles, integrations: int, rate: float) -> np.ndarray:
    """The analog correction with its high-pass and low-pass, as digital second-order sections."""
    at_origin = [p for p in poles if abs(p) < 1e-9]
    poles = [p for p in poles if abs(p) >= 1e-9]
    n_origin = len(at_origin) + max(integrations, 0)
    zeros = list(zeros) + [0j] * max(-integrations, 0)
    order = max(HIGHPASS_ORDER, n_origin)
    hz, hp, _ = signal.butter(order, _TWO_PI * HIGHPASS_HZ, "highpass", analog=True, output="zpk")
    # The high-pass's zeros at 0 Hz cancel the integrations (poles at 0 Hz).
    zeros += list(hz[n_origin:])
    poles += list(hp)
    excess = len(zeros) - len(poles)
    if excess > 0:
        corner = _TWO_PI * LOWPASS_FRACTION * rate
        _, lp, _ = signal.butter(excess, corner, "lowpass", analog=True, output="zpk")
        poles += list(lp)
    z, p, k = signal.bilinear_zpk(np.array(zeros), np.array(poles), 1.0, rate)
    return signal.zpk2sos(z, p, k)


def correct_trace(trace: Trace, source: Inventory | Response) -> Trace:
    """A copy of ``trace`` in m/s through a fresh :class:`CausalCorrection` (Predict's path)."""
    out = trace.copy()
    corr = CausalCorrection(source, trace.id, trace.stats.starttime, trace.stats.sampling_rate)
    out.data = corr(out.data)
    if not np.all(np.isfinite(out.data)):
        raise InvalidInput(f"{trace.id}: instrument correction produced NaN or Inf")
    return out
