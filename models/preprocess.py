"""Waveform -> model input, written once; training, evaluation, export and serving all use it.

Two layers, both torch-free:

* :func:`stream_to_array` brings an ObsPy ``Stream`` of one station to the card's layout:
  overlaps merged, sampling rate converted, components put in the card's order (aliases such as
  Z12 or lowercase codes accepted), one common time span.
* :func:`normalise` turns a window (or a batch of windows) into the two model inputs: the
  waveform divided by its per-window scale, and ``log10(scale)``. Dividing by the scale alone would
  erase absolute amplitude, the main magnitude cue; the log scale gives it back as a second input.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from seismag.models.card import ModelCard

# The floor keeps log10 finite for a flat (all-zero) window; far below any real ground motion
# in m/s (the Peterson low-noise model is around 1e-10 m/s at short periods).
SCALE_FLOOR = 1e-20

MAX_RESAMPLE_DENOMINATOR = 100
"""Resampling ratios are taken as fractions with a denominator up to this (10,000 Hz -> 100 Hz
is 1/100, 128 Hz -> 100 Hz 25/32; 99.5 Hz -> 100 Hz, 200/199, takes 101/100 to 100.495 Hz and a
Lanczos step): the polyphase filter's length grows with the fraction's terms."""

DECIMATION_TAPS = 20
DECIMATION_KAISER_BETA = 8.0
"""The low-pass when decimating: 20 taps per unit of the down factor on each side, Kaiser beta 8
(scipy's default, 10 and beta 5, let energy just above the new Nyquist fold into 40-50 Hz:
EQTransformerMag read 200 Hz records 0.041 from their 100 Hz value, 0.007 with this one, on 60
unseen-regime synthetic traces; half its length, 0.2 s, is how far a stream's newest resampled
samples lack the data after them)."""

# SeisBench's convention: numbered horizontals map to N and E (1 -> N, 2 -> E).
COMPONENT_ALIASES = {"Z": "Z", "N": "N", "E": "E", "1": "N", "2": "E", "3": "Z"}


class PreprocessError(ValueError):
    """The waveform cannot be brought to the model's layout (the message says why)."""


@lru_cache(maxsize=16)
def _highpass_sos(corner_hz: float, sampling_rate: float) -> np.ndarray:
    from scipy.signal import butter

    return butter(2, corner_hz, btype="highpass", fs=sampling_rate, output="sos")


def normalise(
    window: np.ndarray,
    method: str = "peak",
    *,
    highpass_hz: float = 0.0,
    sampling_rate: float = 100.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Demean each channel, optionally high-pass, and divide by one scale shared by all channels.

    ``window`` is (..., C, N). Returns ``(x, log_amp)`` as float32, ``x`` with the same shape and
    ``log_amp`` of shape (..., 1). One scale for all channels keeps the Z/horizontal amplitude
    ratio (P vs S energy); a per-channel scale would erase it. The high-pass (2-pole Butterworth)
    is causal and runs on the window alone, so a window ending at t still uses data up to t only;
    it keeps ocean microseisms (0.1-0.5 Hz) from setting the scale of small events.
    """
    w = np.asarray(window, dtype=np.float64)
    if w.ndim < 2:
        raise PreprocessError(f"window must have shape (..., channels, samples), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise PreprocessError("window contains NaN or Inf samples")
    w = w - w.mean(axis=-1, keepdims=True)
    if highpass_hz > 0:
        from scipy.signal import sosfilt

        w = sosfilt(_highpass_sos(float(highpass_hz), float(sampling_rate)), w, axis=-1)
    if method in _REFERENCE_NORMALISATIONS:
        return _reference_normalise(w, method)
    if method == "peak":
        scale = np.abs(w).max(axis=(-2, -1))
    elif method == "std":
        scale = w.std(axis=(-2, -1))
    else:
        raise PreprocessError(f"unknown normalisation {method!r}; use 'peak' or 'std'")
    scale = np.maximum(scale, SCALE_FLOOR)
    x = (w / scale[..., None, None]).astype(np.float32)
    return x, np.log10(scale)[..., None].astype(np.float32)


_REFERENCE_NORMALISATIONS = ("std_per_channel", "std_global_taper")
_TAPER = 6  # samples cosine-tapered at each end by the reference EQTransformerMag


def _reference_normalise(w: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference code's ``annotate_batch_pre`` (QuentonYeo/magnitude_estimation), for imports.

    ``std_per_channel``: each demeaned channel divided by its own sample std (ddof 1) + 1e-10.
    ``std_global_taper``: divided by one std over all channels and samples (ddof 1) + 1e-10, then
    the first and last 6 samples cosine-tapered (EQTransformerMag). Computed in float32 as the
    reference does. ``log_amp`` is log10 of the largest scale; imported cards do not use it.
    """
    x = w.astype(np.float32)
    if method == "std_per_channel":
        scale = x.std(axis=-1, ddof=1, keepdims=True) + np.float32(1e-10)
    else:
        n = x.shape[-2] * x.shape[-1]
        flat = x.reshape(*x.shape[:-2], n)
        scale = flat.std(axis=-1, ddof=1)[..., None, None] + np.float32(1e-10)
    x = x / scale
    if method == "std_global_taper" and x.shape[-1] >= 2 * _TAPER:
        tap = (0.5 * (1 + np.cos(np.linspace(np.pi, 2 * np.pi, _TAPER)))).astype(np.float32)
        x[..., :_TAPER] *= tap
        x[..., -_TAPER:] *= tap[::-1]
    top = np.maximum(scale.max(axis=(-2, -1)), SCALE_FLOOR)
    return x.astype(np.float32), np.log10(top)[..., None].astype(np.float32)


def model_inputs(window: np.ndarray, card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """Check a (B, C, N) or (C, N) window against the card and normalise it the card's way."""
    w = np.asarray(window)
    expected = (card.in_channels, card.in_samples)
    if w.shape[-2:] != expected:
        raise PreprocessError(
            f"{card.name} needs windows of {expected[0]} components x {expected[1]} samples, "
            f"got {w.shape}"
        )
    x, log_amp = normalise(
        w, card.normalisation, highpass_hz=card.highpass_hz, sampling_rate=card.sampling_rate
    )
    if not card.use_amplitude:
        log_amp = np.zeros_like(log_amp)
    return x, log_amp


@dataclass(frozen=True)
class StationArray:
    """One station's data in the card's component order, on the card's sampling rate."""

    network: str
    station: str
    location: str
    data: np.ndarray  # (C, N) float64
    starttime: object  # obspy.UTCDateTime of sample 0
    sampling_rate: float
    components: str  # the card's component order
    missing: tuple[str, ...] = ()  # components zero-filled under missing="zeros"


def _component(channel_code: str) -> str:
    return COMPONENT_ALIASES.get(channel_code[-1:].upper(), "")


def resample_trace(tr, rate: float) -> None:
    """``tr`` (owned by the caller) at ``rate`` Hz, in place, without changing its band below
    the lower of the two Nyquist frequencies or its timing.

    A zero-phase polyphase FIR (scipy's ``resample_poly``: a Kaiser-windowed low-pass at the
    lower Nyquist, no wrap-around, so the newest samples of a stream are not mixed with its
    oldest). ObsPy's ``Trace.resample`` was used before and moved magnitudes: its Hann window
    spans the input's whole spectrum (at 40 Hz input, half the amplitude at 10 Hz is gone) and
    its pre-filter for decimation is causal (a delay). A rate whose ratio to ``rate`` is not a
    fraction with a denominator up to ``MAX_RESAMPLE_DENOMINATOR`` takes the nearest such
    fraction, then ObsPy's Lanczos interpolation for the last small step.
    """
    from scipy.signal import firwin, resample_poly

    old = float(tr.stats.sampling_rate)
    ratio = Fraction(rate / old).limit_denominator(MAX_RESAMPLE_DENOMINATOR)
    up, down = ratio.numerator, ratio.denominator
    window: object = ("kaiser", 5.0)  # scipy's own filter: enough where nothing can fold back
    if down > up:
        half = DECIMATION_TAPS * down
        window = firwin(2 * half + 1, 1.0 / down, window=("kaiser", DECIMATION_KAISER_BETA))
    tr.data = resample_poly(
        np.asarray(tr.data, dtype=np.float64), up, down, window=window, padtype="line"
    )
    reached = old * up / down
    if abs(reached - rate) <= 1e-9 * rate:
        tr.stats.sampling_rate = rate
    else:
        tr.stats.sampling_rate = reached
        tr.interpolate(rate, method="lanczos", a=20)


def stream_to_array(stream, card: ModelCard, *, missing: str = "error") -> StationArray:
    """One station's ObsPy ``Stream`` -> a (C, N) array in the card's order and sampling rate.

    Overlapping or repeated records are merged; gaps are filled by linear interpolation (a live
    feed with a short gap should still be usable). Traces are resampled to the card's rate when
    they differ. ``missing="error"`` rejects a station without all components; ``"zeros"``
    zero-fills them (the caller is told which, via ``StationArray.missing``).
    """
    if missing not in ("error", "zeros"):
        raise ValueError(f"missing must be 'error' or 'zeros', got {missing!r}")
    if len(stream) == 0:
        raise PreprocessError("the stream holds no traces")
    ids = {(tr.stats.network, tr.stats.station, tr.stats.location) for tr in stream}
    if len(ids) != 1:
        raise PreprocessError(f"stream_to_array takes one station, got {sorted(ids)}")
    for tr in stream:
        if tr.stats.sampling_rate <= 0 or not np.isfinite(tr.stats.sampling_rate):
            raise PreprocessError(f"{tr.id}: impossible sampling rate {tr.stats.sampling_rate}")
        if not np.all(np.isfinite(tr.data.astype(np.float64))):
            raise PreprocessError(f"{tr.id}: contains NaN or Inf samples")
    st = _clean_or_merged(stream)

    by_comp: dict[str, object] = {}
    for tr in st:
        comp = _component(tr.stats.channel)
        if comp and comp in card.component_order and comp not in by_comp:  # "" is in "ZNE"
            by_comp[comp] = tr
    absent = tuple(c for c in card.component_order if c not in by_comp)
    if not by_comp:
        raise PreprocessError(
            f"no usable components: channels {[tr.stats.channel for tr in st]}, "
            f"model needs {card.component_order}"
        )
    if absent and missing == "error":
        raise PreprocessError(f"missing components {''.join(absent)} (have {''.join(by_comp)})")

    rate = card.sampling_rate
    for comp, tr in list(by_comp.items()):
        if abs(tr.stats.sampling_rate - rate) > 1e-6 * rate:
            if not st.copied:  # resample_trace works in place: never on the caller's trace
                tr = by_comp[comp] = tr.copy()
            resample_trace(tr, rate)  # float64 out whatever comes in
    start = max(tr.stats.starttime for tr in by_comp.values())
    end = min(tr.stats.endtime for tr in by_comp.values())
    if end <= start:
        raise PreprocessError("the components do not overlap in time")
    n = round((end - start) * rate) + 1
    data = np.zeros((len(card.component_order), n), dtype=np.float64)
    for i, comp in enumerate(card.component_order):
        tr = by_comp.get(comp)
        if tr is None:
            continue
        offset = round((start - tr.stats.starttime) * rate)
        seg = tr.data[offset : offset + n]
        data[i, : len(seg)] = seg
    net, sta, loc = next(iter(ids))
    return StationArray(net, sta, loc, data, start, rate, card.component_order, absent)


class _Traces(list):
    """The traces stream_to_array works on; ``copied`` says whether they are its own copies."""

    copied = False


def _clean_or_merged(stream) -> _Traces:
    """The caller's traces as they are when nothing needs merging, else merged float64 copies.

    A station's record as a client sends it is one trace per component almost always. Copying
    and merging it anyway (ObsPy deep-copies every header) took more time than the model run, and
    merging a single trace is the identity, so the copy is only made when two traces share a
    component (overlaps, gaps, repeated records, or aliases such as N next to 1).
    """
    comps = [_component(tr.stats.channel) for tr in stream]
    named = [c for c in comps if c]
    if len(named) == len(set(named)):
        return _Traces(stream)
    st = stream.copy()
    for tr in st:
        tr.data = tr.data.astype(np.float64)
        # Relabel aliases to the canonical component so merge() groups them.
        comp = _component(tr.stats.channel)
        if comp:
            tr.stats.channel = tr.stats.channel[:-1] + comp
    try:
        st.merge(method=1, fill_value="interpolate")
    except Exception as exc:  # ObsPy raises plain Exception for incompatible traces
        raise PreprocessError(f"cannot merge traces: {exc}") from exc
    merged = _Traces(st)
    merged.copied = True
    return merged


def last_window(data: np.ndarray, n_samples: int) -> np.ndarray:
    """The most recent ``n_samples`` of (C, N) data, left-padded with the first value if short.

    Left padding with the edge value (rather than zeros) adds no artificial step that the model
    could read as an onset.
    """
    if data.shape[-1] >= n_samples:
        return data[..., -n_samples:]
    pad = n_samples - data.shape[-1]
    return np.pad(data, [(0, 0)] * (data.ndim - 1) + [(pad, 0)], mode="edge")


def picker_inputs(windows: np.ndarray, card) -> np.ndarray:
    """Raw (..., C, N) windows -> the picker network's input (a
    :class:`~seismag.models.picker_card.PickerCard`): the same demean, causal high-pass and one
    scale for all components as the magnitude models, without the amplitude."""
    return normalise(
        windows, card.normalisation, highpass_hz=card.highpass_hz, sampling_rate=card.sampling_rate
    )[0]
