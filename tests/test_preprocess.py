import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime, read

from seismag.models.aggregate import series_to_scalar, to_magnitude
from seismag.models.card import get_card
from seismag.models.preprocess import (
    PreprocessError,
    last_window,
    model_inputs,
    normalise,
    stream_to_array,
)


def test_normalise_keeps_amplitude_in_log_amp(rng):
    w = rng.normal(size=(2, 3, 500))
    x1, a1 = normalise(w * 1e-6)
    x2, a2 = normalise(w * 1e-3)
    np.testing.assert_allclose(x1, x2, rtol=1e-5, atol=1e-6)  # shape alone is scale-free...
    np.testing.assert_allclose(a2 - a1, 3.0, atol=1e-5)  # ...the scale lives in log_amp
    assert a1.shape == (2, 1) and x1.dtype == np.float32
    assert np.abs(x1).max() == pytest.approx(1.0)


def test_normalise_shares_one_scale_across_components(rng):
    w = rng.normal(size=(3, 400))
    w[1:] *= 0.1  # weak horizontals, as for a P wave
    x, _ = normalise(w)
    assert np.abs(x[0]).max() == pytest.approx(1.0)
    assert np.abs(x[1:]).max() < 0.2


def test_normalise_flat_and_bad_windows():
    x, amp = normalise(np.zeros((3, 100)))
    assert np.all(x == 0) and np.isfinite(amp).all()
    with pytest.raises(PreprocessError, match="NaN"):
        normalise(np.full((3, 100), np.nan))
    with pytest.raises(PreprocessError, match="unknown normalisation"):
        normalise(np.ones((3, 100)), "minmax")


def test_model_inputs_checks_the_card(rng):
    card = get_card("PhaseNetMag")
    x, amp = model_inputs(rng.normal(size=(4, 3, 3001)), card)
    assert x.shape == (4, 3, 3001) and amp.shape == (4, 1)
    with pytest.raises(PreprocessError, match="3 components x 3001 samples"):
        model_inputs(rng.normal(size=(4, 3, 3000)), card)


def test_stream_to_array_on_obspy_example():
    card = get_card("PhaseNetMag")
    st = read()  # BW.RJOB..EH[ZNE], 100 Hz, 30 s
    arr = stream_to_array(st, card)
    assert arr.data.shape == (3, 3000)
    assert arr.station == "RJOB" and arr.missing == ()
    z = st.select(component="Z")[0].data
    np.testing.assert_allclose(arr.data[0], z)


def test_stream_to_array_aliases_resampling_and_order():
    card = get_card("ViTMag")
    t0 = UTCDateTime(2020, 1, 1)
    traces = [
        Trace(
            np.full(400, float(i + 1)),
            header={"station": "X", "channel": ch, "sampling_rate": 40.0, "starttime": t0},
        )
        for i, ch in enumerate(["hh2", "HH1", "HHZ"])
    ]
    arr = stream_to_array(Stream(traces), card)
    assert arr.sampling_rate == 100.0 and arr.data.shape[1] == 1000
    # Z first, then 1 -> N, then 2 -> E
    np.testing.assert_allclose(arr.data[:, 500], [3.0, 2.0, 1.0], rtol=1e-3)  # FIR ripple


def _tones(t: np.ndarray) -> np.ndarray:
    """1.3, 5 and 9.7 Hz: the band the magnitude models read, all below 40 Hz data's Nyquist/2."""
    return (
        np.sin(2 * np.pi * 1.3 * t)
        + np.sin(2 * np.pi * 5.0 * t + 0.3)
        + 0.5 * np.sin(2 * np.pi * 9.7 * t + 1.0)
    )


@pytest.mark.parametrize("rate", [40.0, 99.5, 128.0, 200.0, 10_000.0])
def test_resampling_keeps_the_band_its_timing_and_drops_what_would_alias(rate):
    """Off-rate records reach the card's 100 Hz with their 1-10 Hz content unchanged in
    amplitude and time (ObsPy's resample halved 10 Hz at 40 Hz input and delayed decimated
    records), and with content above 50 Hz gone (here a tone at 56 Hz: scipy's default filter
    let 3.6 % of it through at 200 Hz, this one 0.07 %)."""
    card = get_card("PhaseNetMag")
    t0 = UTCDateTime(2020, 1, 1)
    t = np.arange(int(40 * rate)) / rate
    x = 1e-6 * _tones(t)
    if rate > card.sampling_rate:  # 6 Hz above the new Nyquist: it would fold to 44 Hz
        x = x + 1e-6 * np.sin(2 * np.pi * 56.0 * t)
    st = Stream(
        Trace(x.copy(), header={"station": "X", "channel": "HH" + c, "sampling_rate": rate,
                                "starttime": t0})
        for c in "ZNE"
    )  # fmt: skip
    arr = stream_to_array(st, card)
    assert arr.sampling_rate == card.sampling_rate
    got = arr.data[0]
    want = 1e-6 * _tones(np.arange(got.size) / card.sampling_rate + (arr.starttime - t0))
    inner = slice(300, -300)  # the filters' edges
    assert np.abs(got[inner] - want[inner]).max() < 0.01 * 2.5e-6


def test_stream_to_array_missing_components():
    card = get_card("ViTMag")
    st = read().select(component="Z")
    with pytest.raises(PreprocessError, match="missing components NE"):
        stream_to_array(st, card)
    arr = stream_to_array(st, card, missing="zeros")
    assert arr.missing == ("N", "E") and not arr.data[1:].any()
    unknown = read()
    for tr, code in zip(unknown, "XYW", strict=True):  # no component the model reads
        tr.stats.channel = "EH" + code
    with pytest.raises(PreprocessError, match="no usable components"):
        stream_to_array(unknown, card, missing="zeros")


def test_stream_to_array_rejects_bad_streams():
    card = get_card("ViTMag")
    with pytest.raises(PreprocessError, match="no traces"):
        stream_to_array(Stream(), card)
    st = read()
    st[0].data = st[0].data.astype(np.float64)
    st[0].data[10] = np.nan
    with pytest.raises(PreprocessError, match="NaN"):
        stream_to_array(st, card)
    two = read() + read().copy()
    for tr in two[3:]:
        tr.stats.station = "OTHER"
    with pytest.raises(PreprocessError, match="one station"):
        stream_to_array(two, card)


def test_last_window_pads_on_the_left():
    d = np.arange(10.0).reshape(1, 10)
    np.testing.assert_array_equal(last_window(d, 4), [[6, 7, 8, 9]])
    np.testing.assert_array_equal(last_window(d, 12)[0, :3], [0, 0, 0])


def test_series_aggregates_after_onset_only():
    card = get_card("PhaseNetMag")
    series = np.zeros((2, 100))
    series[:, 40:] = 4.0
    # Averaging the whole window (the original design's mistake) would give 2.4; after P it is 4.
    np.testing.assert_allclose(series_to_scalar(series, 40), [4.0, 4.0])
    np.testing.assert_allclose(to_magnitude(series, card, onset=[40, 40]), [4.0, 4.0])
    assert series.mean() == pytest.approx(2.4)
    series[1, 90:] = 100.0  # an outlier tail moves the mean, not the median
    assert series_to_scalar(series, 40, "median_after_onset")[1] == pytest.approx(4.0)
    amag = get_card("AMAG_v2")  # trained on M + 1, but its outputs are already magnitudes
    assert to_magnitude(np.full(50, 5.0), amag, onset=10) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="onset must lie inside"):
        series_to_scalar(series, 100)
    with pytest.raises(ValueError, match="unknown aggregation"):
        series_to_scalar(series, 10, "max")
    with pytest.raises(ValueError, match="P onset is needed"):
        to_magnitude(series, card)
    assert to_magnitude(np.array([3.0]), get_card("ViTMag"))[0] == 3.0


def test_highpass_is_causal_and_removes_microseisms():
    t = np.arange(3001) / 100.0
    microseism = np.sin(2 * np.pi * 0.2 * t) * 1e-5
    quake = np.zeros_like(t)
    quake[2000:] = np.sin(2 * np.pi * 5.0 * t[2000:]) * 1e-6
    w = np.stack([microseism + quake] * 3)
    _, raw_amp = normalise(w)
    _, amp = normalise(w, highpass_hz=1.0, sampling_rate=100.0)
    assert raw_amp[0] > -5.1  # the microseism sets the unfiltered scale
    assert amp[0] < -5.5  # filtered, the 5 Hz quake (1e-6) does
    # Causal: changing the data after sample 2500 does not change the output before it.
    w2 = w.copy()
    w2[:, 2500:] *= 3.0
    x_a, _ = normalise(w[..., :2500], highpass_hz=1.0)
    x_b, _ = normalise(w2[..., :2500], highpass_hz=1.0)
    np.testing.assert_array_equal(x_a, x_b)
