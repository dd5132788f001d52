"""A recorded stream -> one magnitude and a causal evolving series per station.

The series answers "what would a live system have said at time t?": the value at t comes from the
window that ends at t (left-padded while the record is shorter than a window) and from an onset
known by t, so truncating the record at t never changes the values up to t. :class:`StationTrack`
holds that logic once; :func:`predict` and
:class:`~seismag.serving.pipeline.stream_session.StreamSession` both drive it, which is why a
replayed stream reproduces ``predict`` exactly.

Rules (constants below):

* a value needs ``MIN_DATA_SECONDS`` of data; a series card's value also needs a P onset at least
  ``MIN_AFTER_ONSET_SECONDS`` before t (the client's pick for that station, else the onset of
  :class:`~seismag.serving.pipeline.onset.PPicker`, which is decided within that delay), and is the
  card's aggregate of the output after the onset (after the window start once the onset has left
  the window);
* evaluation times are every ``series_interval`` after the station's first sample, counted in
  samples, plus the last sample. The series starts at the first time a value exists, so it has no
  gaps; its last point is at the data end, which may follow the previous one by less than
  ``series_interval`` when the record is not a whole number of intervals long;
* missing components (``missing="zeros"``) are zero-filled and reported; the picker then uses the
  components present only.

With an inventory, ``response="causal"`` (the default, and what ``StreamSession`` runs) corrects
each trace with its causal instrument filter (:mod:`~seismag.serving.pipeline.response`), so a
replayed stream reproduces Predict. ``"full"`` deconvolves over the whole record in the frequency
domain (non-causal; for offline comparison) and ``"sensitivity"`` divides by the flat gain.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from obspy import Inventory, Stream, UTCDateTime

from seismag.models.aggregate import series_to_scalar
from seismag.models.card import ModelCard
from seismag.models.preprocess import PreprocessError, model_inputs, stream_to_array
from seismag.serving.errors import InvalidInput, Overloaded
from seismag.serving.executor.batcher import Ticket
from seismag.serving.executor.runtime import ModelRegistry, ModelRuntime
from seismag.serving.pipeline.ingest import remove_response, remove_sensitivity
from seismag.serving.pipeline.onset import PICKER_NAME, PPicker
from seismag.serving.pipeline.response import correct_trace
from seismag.serving.pipeline.results import StationResult

RESPONSE_MODES = ("causal", "full", "sensitivity")
MIN_DATA_SECONDS = 1.0
"""Less than this is mostly padding: the model would be reading the left-pad, not the data."""
MIN_AFTER_ONSET_SECONDS = 2.0
"""Aggregating a series over fewer post-P samples is dominated by the onset's transient."""
MAX_ONSET_AGE = 0.95
"""Fraction of a window after which an onset is too old: training windows hold P at 5-95% of the
window (or end 1-20 s after it), so a window whose P has slid further out is one the model never
saw. No value is produced for it; a later onset (the next event) starts values again."""
MAX_WINDOWS = 4096
"""Windows per request (~150 MB of float32 inputs at 3 x 3001); more is Overloaded."""

_AGG_WORDS = {"mean_after_onset": "mean", "median_after_onset": "median"}


def station_id(network: str, station: str, location: str) -> str:
    return f"{network}.{station}.{location}"


def find_pick(
    picks: Mapping[str, UTCDateTime] | None, network: str, station: str, location: str
) -> UTCDateTime | None:
    """A station's pick under "NET.STA.LOC" or, for any location, "NET.STA"."""
    if not picks:
        return None
    for key in (station_id(network, station, location), f"{network}.{station}"):
        if key in picks:
            return UTCDateTime(picks[key])
    return None


@dataclass
class Evaluation:
    """One due model input: the normalised window ending at sample ``index``, and its onset."""

    index: int
    """Absolute sample index of t (sample 0 = the station's first sample)."""
    time: UTCDateTime
    waveform: np.ndarray
    """(C, N) float32 model input; with ``evaluate(normalise=False)`` the raw (C, N) float64
    window, which :func:`~seismag.models.preprocess.model_inputs` turns into the same input."""
    log_amp: np.ndarray | None  # (1,) float32; None for a raw window
    onset: int | None
    """Absolute sample index of the onset used (series cards), else None."""
    onset_in_window: int
    source: str
    preprocess_ms: float = 0.0
    confidence: float = 0.0
    """The onset's confidence: the picker's, 1 for the client's pick, 0 without an onset."""


class StationTrack:
    """One station's data at the card's rate, arriving in order; decides and builds evaluations.

    ``extend`` appends samples (any chunking), ``evaluate`` gives the model input for "now" (the
    last sample) or None when no value may exist yet. Only the last ``in_samples`` are kept.
    """

    def __init__(
        self,
        card: ModelCard,
        start: UTCDateTime,
        *,
        missing: tuple[str, ...] = (),
        pick: UTCDateTime | None = None,
    ) -> None:
        self.card = card
        self.start = UTCDateTime(start)
        self.rate = card.sampling_rate
        self.missing = tuple(missing)
        present = [i for i, c in enumerate(card.component_order) if c not in self.missing]
        vertical = next((i for i in present if card.component_order[i] == "Z"), None)
        horizontal = tuple(i for i in present if i != vertical)
        if vertical is None and not horizontal:
            vertical = 0  # nothing present: the picker sees zeros and finds nothing
        self.picker = PPicker(
            self.rate, vertical=vertical, horizontal=horizontal, refractory=card.in_samples
        )
        self.pick: int | None = None
        self.n = 0
        self.set_pick(pick)
        # The window is buf[:, end - in_samples : end]: the last in_samples samples, left-padded
        # with the first sample's value while the record is shorter (exactly last_window() of
        # all the data so far). buf holds two windows, so appending moves only the new samples
        # and the window slides back to the front once per in_samples samples.
        self._buf = np.zeros((card.in_channels, 2 * card.in_samples))
        self._end = card.in_samples
        self.min_data = int(np.ceil(MIN_DATA_SECONDS * self.rate))
        self.min_after = int(np.ceil(MIN_AFTER_ONSET_SECONDS * self.rate))
        # A picked onset is decided up to picker.max_delay after it: using only onsets at least
        # that old keeps every value independent of data that came later (truncation, replay).
        self._picked_lag = max(self.min_after, self.picker.max_delay)

    def set_pick(self, pick: UTCDateTime | None) -> None:
        """Use the client's P pick from now on instead of the picker.

        The picker is only run while there is no pick (with one, its result is never read), so a
        pick cannot be withdrawn once data went by without it.
        """
        if pick is None:
            if self.pick is not None and self.picker.n != self.n:
                raise ValueError("a P pick cannot be withdrawn: the picker has not seen the data")
            self.pick = None
            return
        self.pick = round((UTCDateTime(pick) - self.start) * self.rate)

    def time_of(self, index: int) -> UTCDateTime:
        return self.start + index / self.rate

    def extend(self, chunk: np.ndarray) -> None:
        if chunk.shape[-1] == 0:
            return
        if self.pick is None:  # with a pick, the picker's answer would never be read
            self.picker.feed(chunk)
        buf, k, n = self._buf, chunk.shape[-1], self.card.in_samples
        if self.n == 0:
            buf[:, :n] = chunk[:, :1]  # edge padding, as last_window pads a short record
        if k >= n:
            buf[:, :n] = chunk[:, -n:]
            self._end = n
        else:
            if self._end + k > buf.shape[1]:
                buf[:, : n - k] = buf[:, self._end - n + k : self._end]
                self._end = n - k
            buf[:, self._end : self._end + k] = chunk
            self._end += k
        self.n += k

    @property
    def _window(self) -> np.ndarray:
        """The current (C, in_samples) window (a view)."""
        return self._buf[:, self._end - self.card.in_samples : self._end]

    def onset(self) -> tuple[int | None, str, float]:
        """The onset usable now (at least MIN_AFTER_ONSET before the last sample), its source
        and confidence."""
        if self.pick is not None:
            usable = self.pick <= self.n - 1 - self.min_after
            return (self.pick, "request", 1.0) if usable else (None, "request", 0.0)
        found = self.picker.onset_at(self.n - 1 - self._picked_lag)
        if found is None:
            return None, PICKER_NAME, 0.0
        return found.sample, PICKER_NAME, found.confidence

    def evaluate(self, *, normalise: bool = True) -> Evaluation | None:
        """The model input for the last sample, or None; ``normalise=False`` leaves the window
        raw (a copy) so that a caller can normalise many windows in one call."""
        if self.n < self.min_data:
            return None
        t0 = time.perf_counter()
        i = self.n - 1
        onset, source, confidence = None, "none", 0.0
        in_window = 0
        if self.card.output == "series" or self.pick is not None:
            onset, source, confidence = self.onset()
            if onset is None:
                if self.card.output == "series":
                    return None
                source = "none"
        if onset is not None:
            if i + 1 - onset > MAX_ONSET_AGE * self.card.in_samples:
                return None
            in_window = max(0, onset - (i + 1 - self.card.in_samples))
        window = self._window
        if normalise:
            x, log_amp = model_inputs(window, self.card)
        else:
            x, log_amp = np.array(window, dtype=np.float64), None
        ms = (time.perf_counter() - t0) * 1e3
        return Evaluation(i, self.time_of(i), x, log_amp, onset, in_window, source, ms, confidence)

    def no_value_reason(self) -> str:
        """Why ``evaluate`` gave nothing at the end of the data, for the error message."""
        seconds = self.n / self.rate
        if self.n < self.min_data:
            return f"only {seconds:.2f} s of data; at least {MIN_DATA_SECONDS:g} s is needed"
        if self.pick is not None:
            return (
                f"the P pick at {self.time_of(self.pick)} leaves less than "
                f"{MIN_AFTER_ONSET_SECONDS:g} s of data after it "
                f"(data end {self.time_of(self.n - 1)})"
            )
        picked = self.picker.onset_at(self.n - 1)
        if picked is not None:
            return (
                f"the picked P onset at {self.time_of(picked.sample)} leaves less than "
                f"{MIN_AFTER_ONSET_SECONDS:g} s of data after it"
            )
        return (
            f"no P onset: none was sent and the picker found none in {seconds:.1f} s of data "
            "(it needs 2 s of noise before P and a P clearer on Z than on the horizontals); "
            "send a P pick for this station"
        )


def output_value(card: ModelCard, row: np.ndarray, ev: Evaluation) -> float:
    """One evaluation's value from a model output row: the magnitude, or its sigma.

    Scalar cards take the value; series cards aggregate after the onset with the card's method.
    Applied to the sigma output this is exactly the evaluator's ``window_sigmas`` (the mean of the
    per-sample sigma after P), so served sigmas are the ones the calibration figures describe.
    """
    if card.output == "scalar":
        return float(np.asarray(row).reshape(-1)[0])
    return float(series_to_scalar(row, ev.onset_in_window, card.scalar_from_series))


def derivation(card: ModelCard, source: str) -> str:
    if card.output == "scalar":
        return (
            f"{card.name} output for the {card.window_seconds:g} s window ending at the data end "
            "(one magnitude per window)"
        )
    word = _AGG_WORDS.get(card.scalar_from_series or "", card.scalar_from_series)
    where = "the client's P pick" if source == "request" else "the P onset picked on the data"
    return (
        f"{word} of {card.name}'s per-sample magnitude after {where}, in the "
        f"{card.window_seconds:g} s window ending at the data end"
    )


def grid(n: int, step: int) -> list[int]:
    """Evaluation sample indices: every ``step`` samples from the first sample, plus the last."""
    points = list(range(step - 1, n, step))
    if not points or points[-1] != n - 1:
        points.append(n - 1)
    return points


def interval_samples(series_interval: float, rate: float) -> int:
    if not np.isfinite(series_interval) or series_interval <= 0:
        raise InvalidInput(f"series_interval must be a positive number, got {series_interval}")
    return max(round(series_interval * rate), 1)


def _group(stream: Stream) -> dict[tuple[str, str, str], Stream]:
    groups: dict[tuple[str, str, str], Stream] = {}
    for tr in stream:
        key = (tr.stats.network, tr.stats.station, tr.stats.location)
        groups.setdefault(key, Stream()).append(tr)
    return groups


def _check_stream(stream: Stream) -> None:
    if stream is None or len(stream) == 0:
        raise InvalidInput("the request holds no traces")
    for tr in stream:
        if tr.stats.npts == 0:
            raise InvalidInput(f"{tr.id}: trace holds no samples")
        if not np.all(np.isfinite(np.asarray(tr.data, dtype=np.float64))):
            raise InvalidInput(f"{tr.id}: contains NaN or Inf samples")


@dataclass
class _StationWork:
    key: tuple[str, str, str]
    track: StationTrack
    evals: list[Evaluation]
    preprocess_ms: float


def _prepare_station(
    key: tuple[str, str, str],
    st: Stream,
    card: ModelCard,
    step: int,
    *,
    inventory: Inventory | None,
    response: str,
    pick: UTCDateTime | None,
    missing: str,
) -> _StationWork:
    t0 = time.perf_counter()
    sid = station_id(*key)
    if inventory is not None:
        if response == "causal":
            st = Stream([correct_trace(tr, inventory) for tr in st])
        elif response == "full":
            st = remove_response(st, inventory)
        else:
            st = remove_sensitivity(st, inventory)
    try:
        arr = stream_to_array(st, card, missing=missing)
    except PreprocessError as exc:
        raise InvalidInput(f"{sid}: {exc}") from None
    track = StationTrack(card, arr.starttime, missing=arr.missing, pick=pick)
    n = arr.data.shape[1]
    if n < track.min_data:
        raise InvalidInput(
            f"{sid}: only {n / card.sampling_rate:.2f} s of data; at least "
            f"{MIN_DATA_SECONDS:g} s is needed"
        )
    evals: list[Evaluation] = []
    done = 0
    for i in grid(n, step):
        track.extend(arr.data[:, done : i + 1])
        done = i + 1
        ev = track.evaluate()
        if ev is not None:
            evals.append(ev)
    if not evals:
        raise InvalidInput(f"{sid}: no magnitude: {track.no_value_reason()}")
    return _StationWork(key, track, evals, (time.perf_counter() - t0) * 1e3)


def predict(
    registry: ModelRegistry,
    stream: Stream,
    *,
    model: str = "",
    inventory: Inventory | None = None,
    p_picks: Mapping[str, UTCDateTime] | None = None,
    series_interval: float = 1.0,
    missing: str = "zeros",
    response: str = "causal",
    timeout: float | None = None,
    started: float | None = None,
) -> list[StationResult]:
    """One :class:`StationResult` per (network, station, location) in ``stream``.

    All windows of all stations go to the model in one batched call. Raises InvalidInput naming
    the station when any station cannot give a magnitude, Overloaded beyond ``MAX_WINDOWS``.
    ``started`` (a ``time.perf_counter()`` value) is when the request arrived, so that the
    reported total includes decoding it.
    """
    t_start = time.perf_counter() if started is None else started
    runtime = registry.get(model)
    # Announce the submission now: the batcher then knows nothing else is coming when this is
    # the only request in flight, and runs it without waiting for companions.
    with runtime.expect() as ticket:
        return _predict(
            runtime,
            stream,
            inventory=inventory,
            p_picks=p_picks,
            series_interval=series_interval,
            missing=missing,
            response=response,
            timeout=timeout,
            t_start=t_start,
            ticket=ticket,
        )


def _predict(
    runtime: ModelRuntime,
    stream: Stream,
    *,
    inventory: Inventory | None,
    p_picks: Mapping[str, UTCDateTime] | None,
    series_interval: float,
    missing: str,
    response: str,
    timeout: float | None,
    t_start: float,
    ticket: Ticket,
) -> list[StationResult]:
    card = runtime.card
    if missing not in ("zeros", "error"):
        raise InvalidInput(f"missing must be 'zeros' or 'error', got {missing!r}")
    if response not in RESPONSE_MODES:
        raise InvalidInput(f"response must be one of {RESPONSE_MODES}, got {response!r}")
    step = interval_samples(series_interval, card.sampling_rate)
    _check_stream(stream)
    groups = _group(stream)
    if p_picks:
        known = {station_id(*k) for k in groups} | {f"{k[0]}.{k[1]}" for k in groups}
        unknown = sorted(set(p_picks) - known)
        if unknown:
            raise InvalidInput(
                f"P picks for {unknown} match no station in the request "
                f"(stations: {sorted(station_id(*k) for k in groups)})"
            )
    work = [
        _prepare_station(
            key,
            st,
            card,
            step,
            inventory=inventory,
            response=response,
            pick=find_pick(p_picks, *key),
            missing=missing,
        )
        for key, st in groups.items()
    ]
    n_windows = sum(len(w.evals) for w in work)
    if n_windows > MAX_WINDOWS:
        raise Overloaded(
            f"the request needs {n_windows} model windows (limit {MAX_WINDOWS}); use a larger "
            "series_interval or send less data"
        )
    waveform = np.stack([ev.waveform for w in work for ev in w.evals])
    log_amp = np.stack([ev.log_amp for w in work for ev in w.evals])
    rows, timings = runtime.infer(waveform, log_amp, timeout, ticket=ticket)
    total_ms = (time.perf_counter() - t_start) * 1e3
    results = []
    at = 0
    for w in work:
        values = np.array(
            [output_value(card, rows.magnitude[at + j], ev) for j, ev in enumerate(w.evals)],
            dtype=np.float64,
        )
        sigmas = None
        if rows.sigma is not None:
            sigmas = np.array(
                [output_value(card, rows.sigma[at + j], ev) for j, ev in enumerate(w.evals)],
                dtype=np.float64,
            )
        at += len(w.evals)
        last = w.evals[-1]
        results.append(
            StationResult(
                network=w.key[0],
                station=w.key[1],
                location=w.key[2],
                magnitude=float(values[-1]),
                derivation=derivation(card, last.source),
                series_start=w.evals[0].time,
                series_interval=step / card.sampling_rate,
                series=values,
                onset=None if last.onset is None else w.track.time_of(last.onset),
                onset_source=last.source,
                onset_confidence=last.confidence if last.onset is not None else 0.0,
                magnitude_sigma=float(sigmas[-1]) if sigmas is not None else math.nan,
                sigma_series=sigmas,
                model=runtime.name,
                model_version=runtime.version,
                missing_components=w.track.missing,
                timings_ms={
                    "preprocess": w.preprocess_ms,
                    "queue": timings["queue"],
                    "compute": timings["compute"],
                    "total": total_ms,
                },
            )
        )
    return results
