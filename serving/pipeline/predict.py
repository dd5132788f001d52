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

Units (:mod:`~seismag.serving.pipeline.units`): samples are counts unless ``units="m/s"``;
counts need each channel's response, from ``inventory`` (the request's StationXML) or
``server_inventory``, and are refused with MissingResponse without one. ``response="causal"``
(the default, and what ``StreamSession`` runs) corrects each trace with its causal instrument
filter (:mod:`~seismag.serving.pipeline.response`), so a replayed stream reproduces Predict.
``"full"`` deconvolves over the whole record in the frequency domain (non-causal; for offline
comparison) and ``"sensitivity"`` divides by the flat gain; both need ``inventory``.

Checks (:mod:`~seismag.serving.pipeline.limits`, :mod:`~seismag.serving.pipeline.quality`): the
work a request implies (samples after resampling, series points) is estimated from its headers
and refused before any of it is done; dead, flat and unknown components are left out and said
so in the station's ``warnings`` (a station with none left is refused), clipped ones flagged;
samples that cannot be ground velocity are refused. ``budget`` (deadline, cancel flag) is checked
between stations, every few hundred series points and before the model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from obspy import Inventory, Stream, UTCDateTime

from seismag.models.aggregate import series_to_scalar
from seismag.models.card import ModelCard
from seismag.models.encoder_card import EncoderCard
from seismag.models.preprocess import PreprocessError, StationArray, model_inputs, stream_to_array
from seismag.serving.errors import InvalidInput, Overloaded
from seismag.serving.executor.picker_runtime import PickerRuntime
from seismag.serving.executor.runtime import ModelRegistry, ModelRuntime
from seismag.serving.pipeline.ingest import check_stream, remove_response, remove_sensitivity
from seismag.serving.pipeline.limits import (
    IN_FLIGHT,
    MAX_CARD_SAMPLES,
    MAX_INPUT_SAMPLES,
    MAX_SERIES_POINTS,
    MAX_STATIONS,
    MAX_WINDOWS,
    Budget,
    check_count,
    check_interval,
    check_model_name,
    shown,
)
from seismag.serving.pipeline.onset import CombinedPicker, NetworkPicker, PPicker
from seismag.serving.pipeline.quality import check_velocity, clipped, read_by, unusable
from seismag.serving.pipeline.response import correct_trace
from seismag.serving.pipeline.results import StationResult
from seismag.serving.pipeline.units import COUNTS, Responses, StationInventory

RESPONSE_MODES = ("causal", "full", "sensitivity")
MIN_DATA_SECONDS = 1.0
"""Less than this is mostly padding: the model would be reading the left-pad, not the data."""
MIN_AFTER_ONSET_SECONDS = 2.0
"""Aggregating a series over fewer post-P samples is dominated by the onset's transient."""
MAX_ONSET_AGE = 0.95
"""Fraction of a window after which an onset is too old: training windows hold P at 5-95% of the
window (or end 1-20 s after it), so a window whose P has slid further out is one the model never
saw. No value is produced for it; a later onset (the next event) starts values again."""
CHECK_EVERY = 256
"""Series points between two looks at the request's deadline and cancel flag."""

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
    warnings: tuple[str, ...] = ()
    """What the answer for this window should be read with (StreamPredict's flat components)."""


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
        picker: PickerRuntime | None = None,
    ) -> None:
        self.card = card
        self.key: tuple[str, str, str] | None = None  # (network, station, location), for messages
        self.start = UTCDateTime(start)
        self.rate = card.sampling_rate
        self.missing = tuple(missing)
        present = [i for i, c in enumerate(card.component_order) if c not in self.missing]
        vertical = next((i for i in present if card.component_order[i] == "Z"), None)
        horizontal = tuple(i for i in present if i != vertical)
        if vertical is None and not horizontal:
            vertical = 0  # nothing present: the picker sees zeros and finds nothing
        order = card.component_order
        sta_lta = PPicker(
            self.rate, vertical=vertical, horizontal=horizontal, refractory=card.in_samples
        )
        self.picker: PPicker | CombinedPicker = sta_lta
        if (
            picker is not None
            and vertical is not None
            and set(picker.card.component_order) <= set(order)
        ):
            # The picker network beside the STA/LTA (trained with Z, and with Z only); a station
            # without Z keeps the STA/LTA alone, which can trigger on the horizontals.
            rows = [order.index(c) for c in picker.card.component_order]
            network = NetworkPicker(picker, rows=rows, refractory=card.in_samples)
            self.picker = CombinedPicker(network, sta_lta, refractory=card.in_samples)
        self.pick: int | None = None
        self.n = 0
        self.set_pick(pick)
        # The window is buf[:, end - in_samples : end]: the last in_samples samples, left-padded
        # with the first sample's value while the record is shorter (exactly last_window() of
        # all the data so far). buf holds two windows, so appending moves only the new samples
        # and the window slides back to the front once per in_samples samples.
        self._buf = np.zeros((card.in_channels, 2 * card.in_samples))
        self._end = card.in_samples
        self.min_data = min_data_samples(self.rate)
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

    def extend(self, chunk: np.ndarray, *, picker: bool = True) -> None:
        """Append samples; ``picker=False`` when the caller has fed the picker these samples
        already (ahead of the track: its onsets are decided causally, so feeding it ahead
        changes nothing that :meth:`evaluate` reads, see :func:`walk`)."""
        if chunk.shape[-1] == 0:
            return
        if self.pick is None and picker:  # with a pick, the picker's answer is never read
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
            return None, self.picker.source, 0.0
        return found.sample, found.source, found.confidence

    def evaluate(self, *, normalise: bool = True) -> Evaluation | None:
        """The model input for the last sample, or None; ``normalise=False`` leaves the window
        raw (a copy) so that a caller can normalise many windows in one call."""
        if self.n < self.min_data:
            return None
        t0 = time.perf_counter()
        i = self.n - 1
        onset, source, confidence = None, "none", 0.0
        in_window = 0
        onset, source, confidence = self.onset()
        if onset is None:
            if self.card.output == "series":
                return None
            source = "none"
        # A scalar card's model never sees the onset; a picked one is still reported (the event
        # magnitude needs every station's onset), but only the client's pick limits its age.
        uses_onset = self.card.output == "series" or self.pick is not None
        if onset is not None and uses_onset:
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
            if self.pick > self.n - 1 - self.min_after:
                return (
                    f"the P pick at {self.time_of(self.pick)} leaves less than "
                    f"{MIN_AFTER_ONSET_SECONDS:g} s of data after it "
                    f"(data end {self.time_of(self.n - 1)})"
                )
            return self._too_old("the P pick", self.pick)
        picked = self.picker.onset_at(self.n - 1)
        if picked is not None:
            if picked.sample <= self.n - 1 - self.min_after:
                return self._too_old("the picked P onset", picked.sample)
            return (
                f"the picked P onset at {self.time_of(picked.sample)} leaves less than "
                f"{MIN_AFTER_ONSET_SECONDS:g} s of data after it"
            )
        return (
            f"no P onset: none was sent and the picker found none in {seconds:.1f} s of data "
            "(it needs 2 s of noise before P and a P clearer on Z than on the horizontals); "
            "send a P pick for this station"
        )

    def _too_old(self, what: str, onset: int) -> str:
        """No evaluation time fell while ``onset`` was young enough (``MAX_ONSET_AGE``)."""
        young = MAX_ONSET_AGE * self.card.in_samples / self.rate
        return (
            f"{what} at {self.time_of(onset)} is {(self.n - 1 - onset) / self.rate:.1f} s "
            f"before the data end, and the model reads P only in the {young:.1f} s after it: "
            "no evaluation time (every series_interval, and the data end) fell in them; send a "
            "smaller series_interval or data ending sooner after P"
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


def series_slots(indices: Sequence[int], step: int) -> np.ndarray:
    """Positions in the series of evaluations at these sample indices (grid points of
    :func:`grid`), counted from the first one. Between two events a series card has no value
    (no onset, or one too old): those positions stay NaN, so value k is always at
    ``series_start + k * step`` (the last one at the data end)."""
    idx = np.asarray(indices, dtype=np.int64)
    slot = -(-(idx + 1) // step) - 1  # ceil: the off-grid last sample takes the next slot
    return slot - slot[0]


def interval_samples(series_interval: float, rate: float, what: str = "series_interval") -> int:
    return max(round(check_interval(what, series_interval) * rate), 1)


def _group(stream: Stream) -> dict[tuple[str, str, str], Stream]:
    groups: dict[tuple[str, str, str], Stream] = {}
    for tr in stream:
        key = (tr.stats.network, tr.stats.station, tr.stats.location)
        groups.setdefault(key, Stream()).append(tr)
    return groups


def _check_work(groups: dict[tuple[str, str, str], Stream], card: ModelCard, step: int) -> int:
    """Refuse a request whose work is too large, from its headers alone.

    Per component the span from its first to its last sample counts (gaps are filled), both at
    its own rate (merging) and at the card's (resampling), and per station the series points
    that ``step`` gives over its longest component.
    """
    rate = card.sampling_rate
    native = resampled = points = 0
    for st in groups.values():
        spans: dict[str, list[float]] = {}
        for tr in st:
            if read_by(card.component_order, tr.stats.channel) is None:
                continue
            s = tr.stats
            first, last = s.starttime.timestamp, s.endtime.timestamp
            span = spans.setdefault(tr.id, [first, last, s.sampling_rate])
            span[0], span[1] = min(span[0], first), max(span[1], last)
        for first, last, native_rate in spans.values():
            native += math.floor((last - first) * native_rate) + 1
            resampled += math.floor((last - first) * rate) + 1
        if spans:
            longest = max(last - first for first, last, _ in spans.values())
            points += (math.floor(longest * rate) + 1) // step + 1
    advice = "send shorter records or fewer stations, or close the gaps between traces"
    check_count("samples, gaps filled,", native, MAX_INPUT_SAMPLES, advice)
    check_count(f"samples after resampling to {rate:g} Hz", resampled, MAX_CARD_SAMPLES, advice)
    if points > MAX_SERIES_POINTS:
        raise Overloaded(
            f"the request asks for {points} series points (limit {MAX_SERIES_POINTS}) at "
            f"series_interval {step / rate:g} s; use a larger series_interval or send less data"
        )
    return native + resampled


def _channel_notes(sid: str, st: Stream, card: ModelCard) -> tuple[Stream, list[str]]:
    """The traces worth using, why others were left out, and warnings about the rest.

    Components are judged per channel on the samples as sent (counts are still counts): a dead
    or flat one carries no signal, an unknown one (EHX, BDF, ...) is not what the model reads.
    """
    usable, dropped, notes = Stream(), [], []
    by_channel: dict[str, list] = {}
    for tr in st:
        by_channel.setdefault(tr.stats.channel, []).append(tr)
    reads = f"{card.name} reads {''.join(card.component_order)} (or 1, 2, 3)"
    for channel, traces in by_channel.items():
        if read_by(card.component_order, channel) is None:
            dropped.append(f"{channel}: component {channel[-1:]!r} is not one {reads}; left out")
            continue
        data = traces[0].data if len(traces) == 1 else np.concatenate([t.data for t in traces])
        why = unusable(data)
        if why:
            dropped.append(f"{channel}: {why}; left out")
            continue
        clip = clipped(data)
        if clip:
            notes.append(f"{channel}: {clip}")
        rate = traces[0].stats.sampling_rate
        if rate < card.sampling_rate * (1 - 1e-6):
            notes.append(
                f"{channel}: {rate:g} Hz resampled to {card.sampling_rate:g} Hz: nothing above "
                f"{rate / 2:g} Hz, where the model was trained with data up to "
                f"{card.sampling_rate / 2:g} Hz"
            )
        usable.extend(traces)
    if not usable:
        raise InvalidInput(f"{sid}: no usable component: {'; '.join(dropped)}")
    return usable, dropped + notes


@dataclass
class _StationWork:
    key: tuple[str, str, str]
    track: StationTrack
    evals: list[Evaluation]
    preprocess_ms: float
    warnings: tuple[str, ...] = ()


def _to_velocity(
    st: Stream, responses: Responses, mode: str, inventory: Inventory | None
) -> Stream:
    """The station's traces in m/s: as declared, or corrected with each channel's response."""
    if responses.declared:
        for tr in st:
            check_velocity(tr.id, tr.data, declared=True)
        return st
    found = [responses.require(tr.id, tr.stats.starttime) for tr in st]
    if mode == "causal":
        out = Stream([correct_trace(tr, resp) for tr, resp in zip(st, found, strict=True)])
    elif inventory is None:
        raise InvalidInput(f"response mode {mode!r} needs the request's StationXML")
    elif mode == "full":
        out = remove_response(st, inventory)
    else:
        out = remove_sensitivity(st, inventory)
    for tr in out:
        check_velocity(tr.id, tr.data, declared=False)
    return out


def station_track(
    key: tuple[str, str, str],
    st: Stream,
    card: ModelCard,
    *,
    responses: Responses,
    inventory: Inventory | None,
    response: str,
    pick: UTCDateTime | None,
    missing: str,
    picker: PickerRuntime | None = None,
) -> tuple[StationTrack, np.ndarray, tuple[str, ...]]:
    """One station's traces -> an empty track, its (C, N) data in m/s at the card's rate, and the
    warnings about its components; what every prediction of a recorded stream starts from."""
    arr, warnings = station_array(
        key, st, card, responses=responses, inventory=inventory, response=response, missing=missing
    )
    track = StationTrack(card, arr.starttime, missing=arr.missing, pick=pick, picker=picker)
    track.key = key
    return track, arr.data, warnings


def min_data_samples(rate: float) -> int:
    """Samples in ``MIN_DATA_SECONDS``: less data than this is refused."""
    return int(np.ceil(MIN_DATA_SECONDS * rate))


def station_array(
    key: tuple[str, str, str],
    st: Stream,
    card: ModelCard | EncoderCard,
    *,
    responses: Responses,
    inventory: Inventory | None,
    response: str,
    missing: str,
) -> tuple[StationArray, tuple[str, ...]]:
    """One station's traces -> its data in m/s in the card's component order and rate, and the
    warnings about its components: the checks, units and resampling every RPC applies (Predict's
    tracks, Embed's windows). At least ``MIN_DATA_SECONDS`` of data, else InvalidInput."""
    sid = station_id(*key)
    st, warnings = _channel_notes(sid, st, card)
    st = _to_velocity(st, responses, response, inventory)
    try:
        arr = stream_to_array(st, card, missing=missing)
    except PreprocessError as exc:
        raise InvalidInput(f"{sid}: {exc}") from None
    n = arr.data.shape[1]
    if n < min_data_samples(card.sampling_rate):
        raise InvalidInput(
            f"{sid}: only {n / card.sampling_rate:.2f} s of data; at least "
            f"{MIN_DATA_SECONDS:g} s is needed"
        )
    return arr, tuple(warnings)


def walk(
    track: StationTrack,
    data: np.ndarray,
    step: int,
    *,
    budget: Budget,
    normalise: bool = True,
) -> Iterator[Evaluation]:
    """Feed ``data`` to ``track`` and yield the evaluation at every grid point that has a value
    (every ``step`` samples from the first, plus the last): the series of a recorded stream."""
    sid = station_id(*track.key) if track.key else "the station"
    # The picker is fed a window's worth of samples at a time, ahead of the track (one filter
    # call per window, not per grid point). evaluate() asks it only for onsets at least
    # max_delay old, all decided by then whatever came later, and a window holds at most two
    # onsets (the refractory period is a window), far from the KEEP_ONSETS it remembers.
    ahead = track.pick is None
    block = track.card.in_samples
    done = 0
    for j, i in enumerate(grid(data.shape[1], step)):
        if j % CHECK_EVERY == CHECK_EVERY - 1:
            budget.check(f"while computing {sid}'s series")
        if ahead:
            while track.picker.n < i + 1:
                track.picker.feed(data[:, track.picker.n : track.picker.n + block])
        track.extend(data[:, done : i + 1], picker=not ahead)
        done = i + 1
        ev = track.evaluate(normalise=normalise)
        if ev is not None:
            yield ev


def _prepare_station(
    key: tuple[str, str, str],
    st: Stream,
    card: ModelCard,
    step: int,
    *,
    responses: Responses,
    inventory: Inventory | None,
    response: str,
    pick: UTCDateTime | None,
    missing: str,
    budget: Budget,
    windows_left: int,
    picker: PickerRuntime | None,
) -> _StationWork:
    t0 = time.perf_counter()
    sid = station_id(*key)
    track, data, warnings = station_track(
        key,
        st,
        card,
        responses=responses,
        inventory=inventory,
        response=response,
        pick=pick,
        missing=missing,
        picker=picker,
    )
    evals: list[Evaluation] = []
    for ev in walk(track, data, step, budget=budget):
        evals.append(ev)
        if len(evals) > windows_left:
            raise Overloaded(
                f"the request needs more than {MAX_WINDOWS} model windows (at {sid}); use a "
                "larger series_interval or send less data"
            )
    if not evals:
        raise InvalidInput(f"{sid}: no magnitude: {track.no_value_reason()}")
    return _StationWork(key, track, evals, (time.perf_counter() - t0) * 1e3, warnings)


def predict(
    registry: ModelRegistry,
    stream: Stream,
    *,
    model: str = "",
    timeout: float | None = None,
    budget: Budget | None = None,
    **options,
) -> list[StationResult]:
    """One :class:`StationResult` per (network, station, location) in ``stream``.

    ``options`` are :func:`prepare`'s (units, inventories, picks, series interval, missing and
    response policies, ``started``, ``checked``). All windows of all stations go to the model in
    one batched call. Raises InvalidInput naming the station when any station cannot give a
    magnitude, MissingResponse for counts without a response, Overloaded beyond the limits of
    :mod:`~seismag.serving.pipeline.limits`, TimeoutError or Cancelled when ``budget`` (or
    ``timeout``) runs out.
    """
    budget = budget or Budget(timeout)
    runtime = registry.get(check_model_name(model))
    options.setdefault("picker", registry.picker)
    # Announce the submission now: the batcher then knows nothing else is coming when this is
    # the only request in flight, and runs it without waiting for companions.
    with runtime.expect() as ticket:
        prepared = prepare(runtime, stream, budget=budget, **options)
        rows, timings = runtime.infer(
            prepared.waveform, prepared.log_amp, budget.remaining(), ticket=ticket
        )
    return prepared.results(rows, timings)


@dataclass
class PreparedRequest:
    """A request's model inputs, ready for the batcher, and what turns the rows into results
    (so an asyncio caller can await the model instead of blocking a thread on it)."""

    runtime: ModelRuntime
    work: list[_StationWork]
    waveform: np.ndarray
    log_amp: np.ndarray
    step: int
    t_start: float

    def results(self, rows, timings: dict[str, float]) -> list[StationResult]:
        return _results(self.runtime, self.work, rows, timings, self.step, self.t_start)


def prepare(
    runtime: ModelRuntime,
    stream: Stream,
    *,
    units: str = COUNTS,
    inventory: Inventory | None = None,
    server_inventory: StationInventory | None = None,
    p_picks: Mapping[str, UTCDateTime] | None = None,
    series_interval: float = 1.0,
    missing: str = "zeros",
    response: str = "causal",
    budget: Budget | None = None,
    checked: bool = False,
    started: float | None = None,
    picker: PickerRuntime | None = None,
) -> PreparedRequest:
    """Everything :func:`predict` does before the model: checks, units, windows.

    ``started`` (a ``time.perf_counter()`` value) is when the request arrived, so that the
    reported total includes decoding it. ``checked``: the stream came from a reader of
    :mod:`~seismag.serving.pipeline.ingest` that has already checked its samples. ``picker``: the
    picker network for stations without a P pick (the registry's); None: the STA/LTA picker.
    """
    t_start = time.perf_counter() if started is None else started
    budget = budget or Budget()
    responses = Responses(units, inventory, server_inventory)
    card = runtime.card
    if missing not in ("zeros", "error"):
        raise InvalidInput(f"missing must be 'zeros' or 'error', got {missing!r}")
    if response not in RESPONSE_MODES:
        raise InvalidInput(f"response must be one of {RESPONSE_MODES}, got {response!r}")
    step = interval_samples(series_interval, card.sampling_rate)
    check_stream(stream, samples=not checked)  # headers always: the totals are per request
    groups = _group(stream)
    check_count("stations", len(groups), MAX_STATIONS, "split them over several requests")
    with IN_FLIGHT.hold(_check_work(groups, card, step)):
        work = _prepare(
            groups, card, step, responses, inventory, p_picks, response, missing, budget, picker
        )
    budget.check("before the model ran")
    waveform = np.stack([ev.waveform for w in work for ev in w.evals])
    log_amp = np.stack([ev.log_amp for w in work for ev in w.evals])
    return PreparedRequest(runtime, work, waveform, log_amp, step, t_start)


def _prepare(
    groups: dict[tuple[str, str, str], Stream],
    card: ModelCard,
    step: int,
    responses: Responses,
    inventory: Inventory | None,
    p_picks: Mapping[str, UTCDateTime] | None,
    response: str,
    missing: str,
    budget: Budget,
    picker: PickerRuntime | None,
) -> list[_StationWork]:
    """Every station's windows, in request order (the checks of _predict passed)."""
    if p_picks:
        known = {station_id(*k) for k in groups} | {f"{k[0]}.{k[1]}" for k in groups}
        unknown = sorted(set(p_picks) - known)
        if unknown:
            raise InvalidInput(
                f"P picks for {[shown(u) for u in unknown[:5]]} match no station in the request "
                f"(stations: {sorted(station_id(*k) for k in groups)[:5]})"
            )
    work: list[_StationWork] = []
    n_windows = 0
    for key, st in groups.items():
        budget.check("while preparing the stations")
        w = _prepare_station(
            key,
            st,
            card,
            step,
            responses=responses,
            inventory=inventory,
            response=response,
            pick=find_pick(p_picks, *key),
            missing=missing,
            budget=budget,
            windows_left=MAX_WINDOWS - n_windows,
            picker=picker,
        )
        work.append(w)
        n_windows += len(w.evals)
    return work


def _results(
    runtime: ModelRuntime,
    work: list[_StationWork],
    rows,
    timings: dict[str, float],
    step: int,
    t_start: float,
) -> list[StationResult]:
    card = runtime.card
    total_ms = (time.perf_counter() - t_start) * 1e3
    results = []
    at = 0
    for w in work:
        slots = series_slots([ev.index for ev in w.evals], step)
        values = np.full(slots[-1] + 1, np.nan)
        values[slots] = [
            output_value(card, rows.magnitude[at + j], ev) for j, ev in enumerate(w.evals)
        ]
        sigmas = None
        if rows.sigma is not None:
            sigmas = np.full(slots[-1] + 1, np.nan)
            sigmas[slots] = [
                output_value(card, rows.sigma[at + j], ev) for j, ev in enumerate(w.evals)
            ]
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
                series_end=last.time,
                onset=None if last.onset is None else w.track.time_of(last.onset),
                onset_source=last.source,
                onset_confidence=last.confidence if last.onset is not None else 0.0,
                magnitude_sigma=float(sigmas[-1]) if sigmas is not None else math.nan,
                sigma_series=sigmas,
                model=runtime.name,
                model_version=runtime.version,
                missing_components=w.track.missing,
                warnings=w.warnings,
                timings_ms={
                    "preprocess": w.preprocess_ms,
                    "queue": timings["queue"],
                    "compute": timings["compute"],
                    "total": total_ms,
                },
            )
        )
    return results
