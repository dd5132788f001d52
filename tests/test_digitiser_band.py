"""The digitiser-band training augmentation: what a 20-50 Hz digitiser keeps, it keeps in
amplitude and timing; what it cannot record is gone; and the server's resampler brings it back."""

from __future__ import annotations

import numpy as np
import pytest

from seismag.training.digitiser_band import (
    ANTI_ALIAS_SHARE,
    DIGITISER_RATES_HZ,
    band_limit,
    band_limit_some,
)

RATE = 100.0
N = 6000


def _tone(freq: float) -> np.ndarray:
    t = np.arange(N) / RATE
    x = np.sin(2 * np.pi * freq * t)
    return np.stack([x, 0.5 * x, -x]).astype(np.float32)


def _amplitude_and_phase(x: np.ndarray, freq: float) -> tuple[float, float]:
    """The tone's amplitude and phase over the middle of the record (no edges)."""
    t = np.arange(N) / RATE
    mid = slice(N // 4, 3 * N // 4)
    z = 2 * np.mean(x[mid] * np.exp(-2j * np.pi * freq * t[mid]))
    return float(abs(z)), float(np.angle(z))


@pytest.mark.parametrize("rate", DIGITISER_RATES_HZ)
def test_the_pass_band_keeps_amplitude_and_timing(rate):
    freq = 0.8 * ANTI_ALIAS_SHARE * rate  # inside the pass band, near its edge
    x = _tone(freq)
    y = band_limit(x, RATE, rate)
    assert y.shape == x.shape and y.dtype == np.float32
    for c in range(3):
        a0, p0 = _amplitude_and_phase(x[c], freq)
        a1, p1 = _amplitude_and_phase(y[c], freq)
        assert a1 == pytest.approx(a0, rel=0.01)
        # zero phase: a delay of even one sample (10 ms) would shift the phase by 2 pi f 0.01
        assert abs(np.angle(np.exp(1j * (p1 - p0)))) < 0.2 * 2 * np.pi * freq / RATE


@pytest.mark.parametrize("rate", DIGITISER_RATES_HZ)
def test_what_the_digitiser_cannot_record_is_gone(rate):
    freq = 0.55 * rate  # above its Nyquist: removed, not folded back
    y = band_limit(_tone(freq), RATE, rate)
    folded = rate - freq
    mid = slice(N // 4, 3 * N // 4)
    assert np.abs(y[:, mid]).max() < 1e-3
    assert _amplitude_and_phase(y[0], folded)[0] < 1e-3


def test_an_onset_keeps_its_sample():
    """A step-like P onset: the band-limited record rises around the same sample."""
    x = np.zeros((3, N), np.float32)
    onset = 2000
    rng = np.random.default_rng(0)
    x[:, onset:] = rng.normal(size=(3, N - onset)) * np.exp(-np.arange(N - onset) / 300.0)
    for rate in DIGITISER_RATES_HZ:
        y = band_limit(x, RATE, rate)
        energy = np.cumsum(y[0].astype(np.float64) ** 2)
        half = np.searchsorted(energy, 0.01 * energy[-1])
        assert abs(half - onset) <= 10  # within 0.1 s


def test_a_share_of_a_batch_and_bad_rates():
    traces = [_tone(3.0) for _ in range(200)]
    rng = np.random.default_rng(1)
    assert band_limit_some(traces, RATE, 0.0, rng) is traces
    out = band_limit_some(traces, RATE, 0.3, np.random.default_rng(1))
    changed = sum(o is not t for o, t in zip(out, traces, strict=True))
    assert 40 <= changed <= 80
    again = band_limit_some(traces, RATE, 0.3, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(out, again, strict=True))
    for bad in (0.0, 100.0, 250.0):
        with pytest.raises(ValueError, match="below the card"):
            band_limit(traces[0], RATE, bad)
