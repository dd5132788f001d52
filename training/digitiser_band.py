"""Records from digitisers that sample below the card's rate, as a training augmentation.

Broadband channels are often recorded at 20 or 40 Hz (SEED band codes B and the like) and
short-period ones at 50 Hz. The server brings such a record to the card's 100 Hz with
:func:`seismag.models.preprocess.resample_trace`, and the band above the digitiser's anti-alias
corner is then simply absent. Models trained only on 100 Hz records read that missing band as a
lower corner frequency, that is as a larger event (+0.03 to +0.18 magnitude units at 20-50 Hz on
near-field synthetic records; ``seismag.benchmarks.sampling_rates``).

:func:`band_limit` records a 100 Hz trace as such a digitiser would (a linear-phase FIR at
``ANTI_ALIAS_SHARE`` of its rate, the usual corner of the FIR cascades of broadband digitisers,
then sampling at its rate) and brings it back to the card's rate through the server's own
resampler, so training sees exactly what serving makes of the record. The digitiser's filter is a
Kaiser-windowed FIR applied by polyphase decimation, a different route from the Butterworth
filter and FFT resampling ``seismag.benchmarks.sampling_rates`` uses to make its test records.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

DIGITISER_RATES_HZ = (20.0, 40.0, 50.0)
"""Rates drawn for band-limited training records: the common rates below 100 Hz."""
ANTI_ALIAS_SHARE = 0.4
"""The digitiser's pass band ends at this share of its sampling rate (0.8 of its Nyquist)."""
FIR_TAPS_PER_DOWN = 16
FIR_KAISER_BETA = 8.0


def band_limit(trace: np.ndarray, card_rate: float, rate: float) -> np.ndarray:
    """(C, N) ``trace`` at ``card_rate`` as recorded at ``rate`` Hz, back at ``card_rate``.

    Zero phase (the digitiser's FIR delay corrected, as dataloggers do), so the P onset keeps
    its sample; the length stays N when ``rate / card_rate`` is a simple fraction, as for every
    rate of ``DIGITISER_RATES_HZ`` at 100 Hz.
    """
    from obspy import Trace
    from scipy.signal import firwin, resample_poly

    from seismag.models.preprocess import resample_trace

    if not 0 < rate < card_rate:
        raise ValueError(f"a digitiser rate must lie below the card's {card_rate} Hz, not {rate}")
    ratio = Fraction(rate / card_rate).limit_denominator(100)
    up, down = ratio.numerator, ratio.denominator
    half = FIR_TAPS_PER_DOWN * down
    fir = firwin(
        2 * half + 1,
        ANTI_ALIAS_SHARE * rate,
        fs=card_rate * up,
        window=("kaiser", FIR_KAISER_BETA),
    )
    recorded = resample_poly(np.asarray(trace, np.float64), up, down, axis=-1, window=fir)
    n = trace.shape[-1]
    out = np.empty(trace.shape, dtype=np.float32)
    for c in range(trace.shape[0]):
        tr = Trace(recorded[c].copy(), header={"sampling_rate": rate})
        resample_trace(tr, card_rate)
        back = np.asarray(tr.data)
        m = min(n, back.size)
        out[c, :m] = back[:m]
        out[c, m:] = back[m - 1] if m else 0.0
    return out


def band_limit_some(
    traces: list[np.ndarray], card_rate: float, share: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """``traces`` with a ``share`` of them band-limited at a rate drawn from
    ``DIGITISER_RATES_HZ`` (the others returned as they are)."""
    if share <= 0:
        return traces
    picked = rng.random(len(traces)) < share
    rates = rng.choice(DIGITISER_RATES_HZ, size=len(traces))
    return [
        band_limit(t, card_rate, float(r)) if p else t
        for t, p, r in zip(traces, picked, rates, strict=True)
    ]
