"""Live magnitudes from a packet feed: per-station buffers, hop-based evaluation, coalescing.

Design (why it reproduces :func:`~seismag.serving.pipeline.predict.predict`):

* Each channel is buffered at its native rate as a float64 numpy array on its own sample grid
  (NaN = not received yet). Packets may come in any order and overlap; the first value received
  for a sample wins. A hole is waited for until the channel has ``GAP_WAIT_SECONDS`` of data
  beyond it, then filled by linear interpolation, as ``stream_to_array`` does.
* A station starts once all the card's components hold ``START_WAIT_SECONDS`` of data (so a
  reordered early packet is not lost), or once one of them spans
  ``card.window_seconds`` without the others (the rest are then zero-filled and reported missing
  in the session's ``missing`` map; they are ignored if they show up later), or at ``finish()``.
  Its sample 0 is then the latest first sample of its components, as in ``stream_to_array``.
* Samples are moved, in order, into a :class:`~seismag.serving.pipeline.predict.StationTrack` at the
  card's rate, the object ``predict`` uses. Channels at the card's rate are copied sample for
  sample (so a replay gives bit-identical windows); other rates go through ``stream_to_array`` on
  the new span plus ``RESAMPLE_CONTEXT_SECONDS`` of context, which is close but not identical to
  resampling the whole record.
* Evaluation is driven by DATA time: every ``hop`` seconds of samples after sample 0 (the same
  grid as ``predict(series_interval=hop)``), so a replay at any speed evaluates the same windows,
  and ``finish()`` adds the last sample as ``predict`` does.
* Coalescing (default): at most one window per station is in the model; a window that falls due
  meanwhile waits in one slot, and a newer one replaces it. Under load a station therefore skips
  points rather than falling behind; every value delivered still equals ``predict``'s value at
  that time. The one window never skipped is a station's last to count for its event
  (:func:`~seismag.serving.pipeline.event.event_values`), so live events end as Predict's do.
  ``coalesce=False`` submits every window (bounded by the model's queue).
* Units as in Predict (:mod:`~seismag.serving.pipeline.units`): counts (the default) go through
  each channel's causal instrument correction, in sample order as the data become contiguous,
  the filter Predict runs over the whole record (:mod:`~seismag.serving.pipeline.response`), so a
  replay reproduces Predict with StationXML too; a channel without a response ends the call with
  MissingResponse at its first packet. Declared m/s is used as sent, after a plausibility check.
* Bounds (:mod:`~seismag.serving.pipeline.limits`): codes, rates and times are checked per
  packet; a packet that would stretch its channel's buffer beyond ``max_buffer_seconds`` (a
  time jump, a packet from long ago) is refused before anything is allocated, naming its time;
  the samples buffered over all stations and the stations per call are bounded.
* A component whose samples have not changed over a window (dead, flat) is reported in that
  update's ``warnings``; when every component of the window is flat no update is made: a model
  shown nothing still answers with a magnitude. Channels of unknown components are ignored and
  reported the same way.
* Cost: :meth:`StreamSession.add_raw` takes a raw chunk without building an ObsPy Trace (same
  checks, same numbers as ``add``), an in-order packet is one append, and due windows go to the
  model raw (:meth:`~seismag.serving.executor.runtime.ModelRuntime.submit_raw`) so that the
  windows of one batch are normalised in one vectorised call in the batcher's worker.

Results: ``on_update(update)`` if given (called in the model's worker thread; keep it short),
otherwise a queue read with :meth:`StreamSession.updates` (blocking iterator, ends after
``finish()`` has delivered everything, or at ``close()``) or :meth:`StreamSession.next_update`.
An asyncio reader passes ``on_ready``, called (from any thread) whenever something new is queued,
and reads with ``next_updates(timeout=0)`` when woken, so no thread waits per stream.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from obspy import Inventory, Stream, Trace, UTCDateTime

from seismag.models.preprocess import PreprocessError, stream_to_array
from seismag.serving.errors import InvalidInput, NotReady, Overloaded, ServingError
from seismag.serving.executor.runtime import ModelRegistry, ModelRows
from seismag.serving.pipeline.event import EVENT_AFTER_ONSET_SECONDS
from seismag.serving.pipeline.ingest import checked_samples
from seismag.serving.pipeline.limits import (
    MAX_STREAM_SAMPLES,
    MAX_STREAM_STATIONS,
    check_codes,
    check_model_name,
    check_rate,
    check_span,
    check_station_id,
    check_time,
)
from seismag.serving.pipeline.predict import (
    Evaluation,
    StationTrack,
    find_pick,
    interval_samples,
    output_value,
    station_id,
)
from seismag.serving.pipeline.quality import check_velocity, read_by
from seismag.serving.pipeline.response import CausalCorrection
from seismag.serving.pipeline.results import StationUpdate
from seismag.serving.pipeline.units import COUNTS, Responses, StationInventory

GAP_WAIT_SECONDS = 10.0
"""How long a hole may wait for a late packet before it is interpolated (SeedLink reordering is
well under this)."""
START_WAIT_SECONDS = 5.0
"""Data each component must hold before a station starts (its sample 0 is then fixed), so that a
reordered packet from before the first one received still counts."""
RESAMPLE_CONTEXT_SECONDS = 2.0
"""Samples before a new span that off-rate channels keep for the resampler's edge."""
MAX_UPDATES_WAITING = 20_000
"""Unread updates in the queue (20 s of 1,000 stations at 1 s hops, ~1 KB each); past this the
consumer is not keeping up and add() refuses."""
MAX_IGNORED_CHANNELS = 8
"""Unknown channels remembered per station for its warnings."""

_END = object()


class _Channel:
    """One channel's samples on its own grid.

    Positions are integers relative to the first packet's start (``anchor``): accumulating float
    start times over hours of packets would drift by whole samples.
    """

    __slots__ = (
        "anchor",
        "buf",
        "changed",
        "code",
        "corrected",
        "correction",
        "holes",
        "last",
        "offset",
        "rate",
    )

    def __init__(
        self, code: str, rate: float, t0: float, correction: CausalCorrection | None = None
    ) -> None:
        self.code = code
        self.rate = rate
        self.anchor = t0
        self.offset = 0  # grid index of buf[0] relative to the anchor
        self.buf = np.zeros(0)
        self.holes = False  # buf may hold NaN (not received yet); False: it certainly does not
        self.correction = correction
        """Instrument correction, applied in sample order as the data becomes contiguous."""
        self.corrected: int | None = None  # grid index (from the anchor) corrected so far
        self.changed: int | None = None
        """Grid index (from the anchor) of the last sample that differed from the one before it,
        as sent (before the correction); None while every sample so far is the same."""
        self.last: float | None = None  # the last sample as sent, for the next packet's test

    def correct_until(self, end: int) -> None:
        """Run the instrument correction over ``buf[:end]`` (contiguous) not yet corrected."""
        if self.correction is None:
            return
        if self.corrected is None:
            self.corrected = self.offset  # the channel's first sample: where Predict starts
        start = self.corrected - self.offset
        if end > start:
            out = self.correction(self.buf[start:end])
            check_velocity(self.correction.seed_id, out, declared=False)
            self.buf[start:end] = out
            self.corrected = self.offset + end

    @property
    def t0(self) -> float:
        """POSIX time of ``buf[0]``."""
        return self.anchor + self.offset / self.rate

    def index(self, t: float) -> int:
        return round((t - self.anchor) * self.rate) - self.offset

    def note_changes(self, off: int, data: np.ndarray) -> None:
        """Track where the samples last changed (``off``: buffer index of ``data[0]``). Exact for
        packets in order; a reordered packet is judged on its own samples."""
        moved = np.flatnonzero(data[1:] != data[:-1])
        at = None
        if moved.size:
            at = off + int(moved[-1]) + 1
        elif self.last is not None and data[0] != self.last:
            at = off
        if at is not None and (self.changed is None or self.offset + at > self.changed):
            self.changed = self.offset + at
        if off + data.size >= self.buf.size:
            self.last = float(data[-1])

    def flat_since(self, t: float) -> bool:
        """No sample changed from time ``t`` on (as far as received)."""
        return self.changed is None or self.anchor + self.changed / self.rate < t

    def span_after_write(self, start: float, size: int) -> tuple[int, int]:
        """Buffer indices [lo, hi) the buffer would cover once a packet is written."""
        off = self.index(start)
        return min(off, 0), max(off + size, self.buf.size)

    def write(self, start: float, data: np.ndarray, floor: float | None) -> None:
        off = self.index(start)
        if floor is not None:  # samples before what was already consumed are too late
            skip = max(self.index(floor) - off, 0)
            data, off = data[skip:], off + skip
        if data.size == 0:
            return
        self.note_changes(off, data)
        if off == self.buf.size:  # the usual case: the next packet, right after the last one
            self.buf = np.concatenate([self.buf, data])  # a copy: never the caller's array
            return
        self.holes = True
        if off < 0:
            self.buf = np.concatenate([np.full(-off, np.nan), self.buf])
            self.offset += off
            off = 0
        end = off + data.size
        if end > self.buf.size:
            self.buf = np.concatenate([self.buf, np.full(end - self.buf.size, np.nan)])
        seg = self.buf[off:end]
        empty = np.isnan(seg)
        seg[empty] = data[empty]

    def contiguous_end(self, start: int, *, fill_all: bool) -> int:
        """First index >= start without data, after interpolating holes that waited enough."""
        buf = self.buf
        if not self.holes:
            return buf.size
        while True:
            holes = np.flatnonzero(np.isnan(buf[start:]))
            if holes.size == 0:
                if not np.isnan(buf[:start]).any():
                    self.holes = False
                return buf.size
            h = start + int(holes[0])
            after = np.flatnonzero(~np.isnan(buf[h:]))
            if after.size == 0 or h == 0:
                return h
            resume = h + int(after[0])
            last_valid = buf.size - 1 - int(np.flatnonzero(~np.isnan(buf[::-1]))[0])
            if not fill_all and (last_valid - h) / self.rate < GAP_WAIT_SECONDS:
                return h
            buf[h:resume] = np.interp(np.arange(h, resume), [h - 1, resume], buf[[h - 1, resume]])
            start = resume

    def span_seconds(self) -> float:
        return self.buf.size / self.rate

    def drop_before(self, index: int) -> None:
        if index > 0:
            index = min(index, self.buf.size)
            self.buf = self.buf[index:]
            self.offset += index


@dataclass
class _Station:
    key: tuple[str, str, str]
    channels: dict[str, _Channel] = field(default_factory=dict)
    track: StationTrack | None = None
    next_eval: int = 0
    last_eval: int = -1
    inflight: int = 0
    slot: Evaluation | None = None
    submitted: int = 0
    delivered: int = 0
    held: dict[int, StationUpdate] = field(default_factory=dict)
    """Updates back before an earlier window of the station (batches finish out of order when
    every window is evaluated): delivered once those are, so a station's updates stay in order."""
    notes: list[str] = field(default_factory=list)
    """Warnings every update of this station carries (ignored channels, upsampled ones)."""

    @property
    def sid(self) -> str:
        return station_id(*self.key)


@dataclass
class SessionStats:
    stations: int = 0
    packets: int = 0
    late_samples: int = 0
    evaluations: int = 0
    submitted: int = 0
    coalesced: int = 0
    updates: int = 0
    dropped_updates: int = 0
    flat_windows: int = 0
    """Windows not run because every component was flat over them."""


class StreamSession:
    """One client's live stream: ``add()`` packets, read :class:`StationUpdate` objects.

    Thread model: one thread calls ``add``/``set_pick``/``finish``/``close`` (the gRPC reader),
    another reads ``updates()``; model results arrive on the batcher's worker thread.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        model: str = "",
        hop: float = 1.0,
        units: str = COUNTS,
        inventory: Inventory | None = None,
        server_inventory: StationInventory | None = None,
        max_pending: int = MAX_STREAM_STATIONS,
        on_update: Callable[[StationUpdate], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        coalesce: bool = True,
        max_buffer_seconds: float = 300.0,
    ) -> None:
        self.runtime = registry.get(check_model_name(model))
        self.picker = registry.picker
        self.card = self.runtime.card
        self.step = interval_samples(hop, self.card.sampling_rate, "hop_seconds")
        self.hop = self.step / self.card.sampling_rate
        self.responses = Responses(units, inventory, server_inventory)
        self.max_pending = max_pending
        self.on_update = on_update
        self.on_ready = on_ready
        self.coalesce = coalesce
        self.max_buffer_seconds = max(max_buffer_seconds, 2 * self.card.window_seconds + 30.0)
        self.stats = SessionStats()
        self.missing: dict[str, tuple[str, ...]] = {}
        """Station id -> components zero-filled for it (set when the station starts)."""
        self._stations: dict[tuple[str, str, str], _Station] = {}
        self._buffered = 0  # samples in all channel buffers
        self._picks: dict[str, UTCDateTime] = {}
        self._lock = threading.RLock()
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._finishing = False
        self._ended = False
        self._error: BaseException | None = None
        self._held: BaseException | None = None  # met while draining a batch; raised next

    # -- input ----------------------------------------------------------------------------

    def set_pick(self, station_key: str, time: UTCDateTime) -> None:
        """A client's P pick for "NET.STA.LOC" (or "NET.STA"): used instead of the picker."""
        check_station_id(station_key)
        time = UTCDateTime(check_time(f"P pick for {station_key}", UTCDateTime(time).timestamp))
        with self._lock:
            if station_key not in self._picks and len(self._picks) >= self.max_pending:
                raise Overloaded(f"this stream already holds {len(self._picks)} P picks")
            self._picks[station_key] = time
            for st in self._stations.values():
                if st.track is not None:
                    pick = find_pick(self._picks, *st.key)
                    if pick is not None:
                        st.track.set_pick(pick)

    def add(self, stream: Stream | Trace) -> None:
        """Ingest packets (any stations, any order); evaluates whatever fell due.

        Raises InvalidInput for bad packets, Overloaded when too many stations, a stalled
        station's backlog or unread updates exceed the bounds, NotReady after close/finish.
        """
        traces = [stream] if isinstance(stream, Trace) else list(stream)
        with self._lock:
            self._admit()
            touched: dict[tuple[str, str, str], _Station] = {}
            for tr in traces:
                st = self._ingest(tr)
                if st is not None:
                    touched[st.key] = st
            self.stats.packets += len(traces)
            for st in touched.values():
                self._advance(st, final=False)

    def _admit(self) -> None:
        """Refuse new packets once closed, or once updates were dropped for a slow reader."""
        self._check_open()
        if self.stats.dropped_updates:
            raise Overloaded(
                f"{self.stats.dropped_updates} updates were dropped: the client is not "
                "reading them fast enough"
            )

    def add_raw(
        self,
        network: str,
        station: str,
        location: str,
        channel: str,
        sampling_rate: float,
        starttime: float,
        samples,
    ) -> None:
        """One raw-sample packet (StreamPredict's ``raw_chunk``) without building an ObsPy Trace.

        The same checks and the same result as ``add(ingest.trace_from_array(...))`` (samples are
        taken as float32, the start time on UTCDateTime's nanosecond grid), at a fraction of the
        cost.
        """
        self.add_raw_many([(network, station, location, channel, sampling_rate, starttime,
                            samples)])  # fmt: skip

    def add_raw_many(self, chunks: list[tuple]) -> None:
        """Several raw chunks (``add_raw``'s arguments each) as one packet: all are buffered
        before any station is advanced, as ``add`` does with a Stream, so the components of one
        message start a station together however long they are. A bad chunk raises
        InvalidInput naming its position; the chunks before it are kept."""
        touched: dict[tuple[str, str, str], _Station] = {}
        with self._lock:
            self._admit()
            try:
                for i, chunk in enumerate(chunks):
                    try:
                        st = self._ingest_raw(*chunk)
                    except InvalidInput as exc:
                        if len(chunks) == 1:
                            raise
                        raise InvalidInput(f"chunk {i}: {exc}") from None
                    self.stats.packets += 1
                    if st is not None:
                        touched[st.key] = st
            finally:
                for st in touched.values():
                    self._advance(st, final=False)

    def _ingest_raw(
        self, network, station, location, channel, sampling_rate, starttime, samples
    ) -> _Station | None:
        sid, rate, data = checked_samples(
            network, station, location, channel, sampling_rate, samples, dtype=np.float32
        )
        check_span(sid, starttime, data.size, rate)
        start = round(float(starttime) * 1e9) / 1e9  # UTCDateTime(t).timestamp, exactly
        return self._ingest_values(network, station, location, channel, rate, start, data)

    def _ingest(self, tr: Trace) -> _Station | None:
        s = tr.stats
        sid = check_codes(s.network, s.station, s.location, s.channel)
        rate = check_rate(sid, s.sampling_rate)
        data = np.asarray(tr.data, dtype=np.float64)
        start = float(s.starttime.timestamp)
        check_span(sid, start, data.size, rate)
        if not np.isfinite(data).all():
            raise InvalidInput(f"{sid}: contains NaN or Inf samples")
        return self._ingest_values(s.network, s.station, s.location, s.channel, rate, start, data)

    def _new_station(self, key: tuple[str, str, str]) -> _Station:
        if len(self._stations) >= self.max_pending:
            raise Overloaded(
                f"this stream already tracks {len(self._stations)} stations "
                f"(limit {self.max_pending}); {station_id(*key)} refused: open another stream"
            )
        st = self._stations[key] = _Station(key)
        self.stats.stations = len(self._stations)
        return st

    def _note(self, st: _Station, note: str) -> None:
        if note not in st.notes and len(st.notes) < MAX_IGNORED_CHANNELS:
            st.notes.append(note)

    def _ingest_values(
        self,
        network: str,
        station: str,
        location: str,
        channel: str,
        rate: float,
        start: float,
        data: np.ndarray,
    ) -> _Station | None:
        """Write one checked packet (codes, rate, times, finite samples) into its channel."""
        key = (network, station, location)
        tid = f"{network}.{station}.{location}.{channel}"
        comp = read_by(self.card.component_order, channel)
        st = self._stations.get(key)
        if comp is None:
            # Not a component this model reads (EHX, pressure, strain, ...): said in updates.
            st = st or self._new_station(key)
            reads = "".join(self.card.component_order)
            note = f"{channel}: component {channel[-1:]!r} is not one {self.card.name} reads"
            self._note(st, f"{note} ({reads} or 1, 2, 3); ignored")
            return None
        if data.size == 0:
            return None
        if self.responses.declared:
            check_velocity(tid, data, declared=True)
        st = st or self._new_station(key)
        ch = st.channels.get(comp)
        if ch is None:
            if st.track is not None:
                return st  # started without this component: it stays zero-filled
            correction = None
            if not self.responses.declared:
                t0 = UTCDateTime(start)
                response = self.responses.require(tid, t0)
                correction = CausalCorrection(response, tid, t0, rate)
            ch = st.channels[comp] = _Channel(channel, rate, start, correction)
            if rate < self.card.sampling_rate * (1 - 1e-6):
                self._note(st, f"{channel}: {rate:g} Hz resampled to {self.card.sampling_rate:g} "
                           f"Hz: nothing above {rate / 2:g} Hz")  # fmt: skip
        elif ch.code != channel:
            return st  # a second channel for the same component (e.g. BHZ next to HHZ)
        elif abs(ch.rate - rate) > 1e-6 * rate:
            raise InvalidInput(
                f"{tid}: sampling rate changed from {ch.rate} to {rate} Hz within the stream"
            )
        floor = None
        if st.track is not None:
            floor = st.track.start.timestamp + st.track.n / self.card.sampling_rate
            before = ch.index(floor) - ch.index(start)
            if before > 0:
                self.stats.late_samples += min(before, data.size)
                if before >= data.size:
                    return st  # all of it already consumed: too late
        self._check_extent(st, ch, tid, start, data.size, floor)
        size = ch.buf.size
        ch.write(start, data, floor)
        self._buffered += ch.buf.size - size
        return st

    def _check_extent(
        self, st: _Station, ch: _Channel, tid: str, start: float, size: int, floor: float | None
    ) -> None:
        """Refuse, before anything is allocated, a packet that would stretch its channel's buffer
        beyond ``max_buffer_seconds``: a time jump (InvalidInput naming the packet's time) or data
        piling up behind a stalled component (Overloaded), or the call's samples beyond
        ``MAX_STREAM_SAMPLES``."""
        limit, rate = self.max_buffer_seconds, ch.rate
        when = UTCDateTime(start)
        if size / rate > limit:
            raise InvalidInput(
                f"{tid}: a packet of {size / rate:.6g} s starting at {when} is longer than the "
                f"{limit:.0f} s a stream buffers per channel; send shorter packets"
            )
        off = ch.index(start)
        first, end = ch.t0, ch.t0 + ch.buf.size / rate
        jump = None
        if (off - ch.buf.size) / rate > limit:
            jump = f"{start - end:.6g} s after the end of this channel's data ({UTCDateTime(end)})"
        elif -off / rate > limit and floor is None:
            jump = (
                f"{first - start:.6g} s before the start of this channel's buffered data "
                f"({UTCDateTime(first)})"
            )
        if jump:
            raise InvalidInput(
                f"{tid}: a packet starting at {when} lies {jump}: a gap or time jump over "
                f"{limit:.0f} s cannot be buffered (start a new stream for a new time range)"
            )
        lo, hi = ch.span_after_write(start, size)
        if floor is not None:
            lo = max(lo, min(ch.index(floor), 0))
        if (hi - lo) / rate > limit:
            raise Overloaded(
                f"{st.sid}: {ch.code} would hold {(hi - lo) / rate:.0f} s of data not yet used "
                f"(limit {limit:.0f} s) with the packet at {when}: another component of this "
                "station stalled"
            )
        grow = (hi - lo) - ch.buf.size
        if self._buffered + grow > MAX_STREAM_SAMPLES:
            raise Overloaded(
                f"{tid}: this stream would buffer more than {MAX_STREAM_SAMPLES} samples over "
                f"its {len(self._stations)} stations (one or more components stalled)"
            )

    # -- assembly and evaluation ----------------------------------------------------------

    def _start(self, st: _Station, final: bool) -> bool:
        if st.track is not None:
            return True
        have = [c for c in self.card.component_order if c in st.channels]
        if not have:
            return False
        # Out-of-order packets from before the first one received must still be able to
        # land: start only once every component holds START_WAIT_SECONDS.
        spans = [ch.span_seconds() for ch in st.channels.values()]
        complete = len(have) == self.card.in_channels and min(spans) >= START_WAIT_SECONDS
        settled = max(ch.span_seconds() for ch in st.channels.values()) >= self.card.window_seconds
        if not (complete or settled or final):
            return False
        first = max(ch.t0 for ch in st.channels.values())
        missing = tuple(c for c in self.card.component_order if c not in st.channels)
        st.track = StationTrack(
            self.card,
            UTCDateTime(first),
            missing=missing,
            pick=find_pick(self._picks, *st.key),
            picker=self.picker,
        )
        st.next_eval = self.step - 1
        self.missing[st.sid] = missing
        return True

    def _available(self, st: _Station, final: bool) -> int:
        """How many new card-rate samples all present components can supply now."""
        track = st.track
        rate = self.card.sampling_rate
        t_next = track.start.timestamp + track.n / rate
        avail = None
        for ch in st.channels.values():
            i = max(ch.index(t_next), 0)
            end = ch.contiguous_end(i, fill_all=final)
            ch.correct_until(end)
            if end <= i:
                return 0
            # Samples of the card's grid up to this channel's last contiguous sample; the
            # tolerance absorbs float time error (well under 1e-3 sample), not real offsets.
            t_end = ch.t0 + (end - 1) / ch.rate
            k = int(np.floor((t_end - t_next) * rate + 1e-3)) + 1
            avail = k if avail is None else min(avail, k)
        return max(avail or 0, 0)

    def _take(self, st: _Station, k: int) -> np.ndarray:
        """The next ``k`` card-rate samples (C, k) in card order; consumes them from the buffers."""
        track = st.track
        rate = self.card.sampling_rate
        t_next = track.start.timestamp + track.n / rate
        out = np.zeros((self.card.in_channels, k))
        off_rate = [c for c, ch in st.channels.items() if abs(ch.rate - rate) > 1e-6 * rate]
        resampled = self._resample(st, off_rate, t_next, k) if off_rate else {}
        for row, comp in enumerate(self.card.component_order):
            ch = st.channels.get(comp)
            if ch is None:
                continue
            if comp in resampled:
                out[row] = resampled[comp]
                continue
            i = ch.index(t_next)
            out[row] = ch.buf[i : i + k]
        t_done = t_next + k / rate
        for ch in st.channels.values():
            # Keep the last consumed sample: it is the left end of any hole's interpolation.
            keep = RESAMPLE_CONTEXT_SECONDS if ch.rate != rate else 0.0
            size = ch.buf.size
            ch.drop_before(ch.index(t_done - keep) - 1)
            self._buffered -= size - ch.buf.size
        return out

    def _resample(
        self, st: _Station, comps: list[str], t_next: float, k: int
    ) -> dict[str, np.ndarray]:
        rate = self.card.sampling_rate
        traces = []
        for comp in comps:
            ch = st.channels[comp]
            i0 = max(ch.index(t_next - RESAMPLE_CONTEXT_SECONDS), 0)
            i1 = min(ch.index(t_next + (k - 1) / rate) + 1, ch.buf.size)
            seg = ch.buf[i0:i1]
            header = {"network": st.key[0], "station": st.key[1], "location": st.key[2]}
            header |= {"channel": ch.code, "sampling_rate": ch.rate}
            header["starttime"] = UTCDateTime(ch.t0 + i0 / ch.rate)
            traces.append(Trace(np.nan_to_num(seg), header=header))
        try:
            arr = stream_to_array(Stream(traces), self.card, missing="zeros")
        except PreprocessError as exc:
            raise InvalidInput(f"{st.sid}: {exc}") from None
        out = {}
        for comp in comps:
            row = arr.data[self.card.component_order.index(comp)]
            i = round((t_next - arr.starttime.timestamp) * rate)
            seg = row[max(i, 0) : max(i, 0) + k]
            out[comp] = np.pad(seg, (0, k - seg.size), mode="edge") if seg.size else np.zeros(k)
        return out

    def _advance(self, st: _Station, final: bool) -> None:
        """Move available samples into the track, evaluating at every grid point crossed."""
        if not self._start(st, final):
            return
        track = st.track
        while True:
            k = self._available(st, final)
            if k <= 0:
                break
            to_grid = st.next_eval - track.n + 1
            take = min(k, to_grid)
            track.extend(self._take(st, take))
            if track.n - 1 == st.next_eval:
                self._due(st)
                st.next_eval += self.step
        if final and track.n > 0 and st.last_eval < track.n - 1:
            self._due(st)

    def _warnings(self, st: _Station) -> tuple[str, ...] | None:
        """The notes for the window ending now; None when every component present is flat over
        it (no update: the model would answer a magnitude for nothing)."""
        track = st.track
        since = track.start.timestamp + max(track.n - self.card.in_samples, 0) / track.rate
        notes, live = [], 0
        for ch in st.channels.values():
            if ch.flat_since(since):
                what = (
                    "dead (every sample 0)" if ch.last == 0 else f"flat (every sample {ch.last:g})"
                )
                notes.append(f"{ch.code}: {what} over this window")
            else:
                live += 1
        if not live:
            return None
        if track.missing:
            notes.append(f"{''.join(track.missing)}: missing, zero-filled")
        return (*notes, *st.notes)

    def _due(self, st: _Station) -> None:
        st.last_eval = st.track.n - 1
        warnings = self._warnings(st)
        if warnings is None:
            self.stats.flat_windows += 1
            return
        ev = st.track.evaluate(normalise=False)  # normalised with its batch, in the worker
        if ev is None:
            return
        ev.warnings = warnings
        self.stats.evaluations += 1
        if self.coalesce and st.inflight:
            if st.slot is not None:
                if self._last_for_event(st.slot, ev):
                    self._submit(st, st.slot)  # the value its event keeps: never dropped
                else:
                    self.stats.coalesced += 1
            st.slot = ev
            return
        self._submit(st, ev)

    def _last_for_event(self, held: Evaluation, new: Evaluation) -> bool:
        """Whether ``held`` is its station's last window to count for the event (up to
        ``EVENT_AFTER_ONSET_SECONDS`` after the onset) and ``new`` is past that: the event keeps
        ``held``'s value for good, so coalescing must not replace it (a replay's events then end
        as Predict's do, however fast the packets come)."""
        if held.onset is None or new.onset != held.onset:
            return False
        limit = EVENT_AFTER_ONSET_SECONDS * self.card.sampling_rate + 1e-6
        return held.index - held.onset <= limit < new.index - new.onset

    def _submit(self, st: _Station, ev: Evaluation) -> None:
        # No Future per window: the batcher hands back all of a batch's rows in one on_rows call.
        tag = (st, ev, time.perf_counter(), st.submitted)
        self.runtime.submit_raw(ev.waveform[None], owner=self, tag=tag)
        st.submitted += 1
        st.inflight += 1
        self.stats.submitted += 1

    @property
    def closed(self) -> bool:
        """True after ``close()`` (the batcher then drops this session's queued windows)."""
        return self._closed

    def on_rows(self, results: list[tuple[object, ModelRows, dict[str, float]]]) -> None:
        """Model results of one batch (the batcher's worker thread): updates, queued windows."""
        now, wall = time.perf_counter(), time.time()
        ready: list[tuple[_Station, int, StationUpdate | None, Exception | None]] = []
        for (st, ev, t_due, seq), rows, timings in results:  # outside the lock: computation
            try:
                update = self._update(st, ev, rows, timings, t_due, now, wall)
                ready.append((st, seq, update, None))
            except Exception as exc:
                ready.append((st, seq, None, exc))
        with self._lock:
            if self._closed:
                return
            for st, _, _, exc in ready:
                st.inflight -= 1
                if exc is not None:
                    self._fail(exc)
                    continue
                self.stats.updates += 1
                if st.slot is not None:
                    nxt, st.slot = st.slot, None
                    self._submit(st, nxt)
            for st, seq, update, _ in ready:
                if update is not None:
                    st.held[seq] = update
                    while st.delivered in st.held:
                        self._deliver(st.held.pop(st.delivered))
                        st.delivered += 1
            self._maybe_end()

    def on_error(self, tags: list[object], exc: BaseException) -> None:
        """The model failed for these windows: the session fails with that error."""
        with self._lock:
            for st, *_ in tags:
                st.inflight -= 1
            if self._closed:
                return
            self._fail(exc)
            self._maybe_end()

    def _update(self, st, ev, rows: ModelRows, timings, t_due: float, now: float, wall: float):
        track = st.track
        sigma = math.nan if rows.sigma is None else output_value(self.card, rows.sigma[0], ev)
        return StationUpdate(
            network=st.key[0],
            station=st.key[1],
            location=st.key[2],
            time=ev.time,
            magnitude=output_value(self.card, rows.magnitude[0], ev),
            magnitude_sigma=sigma,
            onset=None if ev.onset is None else track.time_of(ev.onset),
            onset_source=ev.source,
            onset_confidence=ev.confidence if ev.onset is not None else 0.0,
            warnings=ev.warnings,
            model=self.runtime.name,
            lag_s=wall - ev.time.timestamp,
            timings_ms={
                "preprocess": ev.preprocess_ms + timings.get("prepare", 0.0),
                "queue": timings["queue"],
                "compute": timings["compute"],
                "total": (now - t_due) * 1e3 + ev.preprocess_ms,
            },
        )

    def _deliver(self, update: StationUpdate) -> None:
        if self.on_update is not None:
            self.on_update(update)  # in order: called under the session lock
        elif self._queue.qsize() >= MAX_UPDATES_WAITING:
            self.stats.dropped_updates += 1
        else:
            self._put(update)

    def _put(self, item: object) -> None:
        self._queue.put(item)
        if self.on_ready is not None:
            self.on_ready()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            self._put(exc)

    def backlog(self) -> int:
        """Windows in the model plus updates not yet read: what a caller's flow control bounds
        when every window is evaluated (``coalesce=False``)."""
        with self._lock:
            waiting = sum(st.inflight + len(st.held) for st in self._stations.values())
        return waiting + self._queue.qsize()

    def _pending(self) -> bool:
        return any(st.inflight or st.slot is not None for st in self._stations.values())

    def _maybe_end(self) -> None:
        if self._finishing and not self._ended and not self._pending():
            self._ended = True
            self._put(_END)

    def _check_open(self) -> None:
        if self._closed:
            raise NotReady("the stream session is closed")
        if self._finishing:
            raise NotReady("the stream session is finishing; no more packets")

    # -- output and lifecycle ---------------------------------------------------------------

    def finish(self) -> None:
        """No more packets: evaluate what is left (the data end included), then end updates()."""
        with self._lock:
            if self._closed or self._finishing:
                return
            self._finishing = True
            for st in self._stations.values():
                try:
                    self._advance(st, final=True)
                except ServingError as exc:
                    self._fail(exc)
            self._maybe_end()

    def next_update(self, timeout: float | None = None) -> StationUpdate | None:
        """The next update; None on timeout or once the session has ended (see ``done``).

        Raises the error that broke the session (e.g. a model failure) once, in order.
        """
        if self._held is not None:
            exc, self._held = self._held, None
            raise exc
        if self.done:
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _END:
            self._queue.put(_END)  # keep the end visible to every later call
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def next_updates(self, timeout: float | None = None, limit: int = 256) -> list[StationUpdate]:
        """The next update and, without waiting, up to ``limit - 1`` more that are ready; [] on
        timeout or at the end. Under load this sends many updates per message, idle it adds no
        delay. An error met after the first update is raised by the next call."""
        first = self.next_update(timeout)
        if first is None:
            return []
        out = [first]
        while len(out) < limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                self._queue.put(_END)
                break
            if isinstance(item, BaseException):
                self._held = item
                break
            out.append(item)
        return out

    @property
    def done(self) -> bool:
        """The iterator has nothing more to give: ended or closed, and the queue drained."""
        if self._closed:
            return True
        if not self._ended or self._held is not None:
            return False
        with self._queue.mutex:
            return all(x is _END for x in self._queue.queue)

    def updates(self, poll: float = 0.5) -> Iterator[StationUpdate]:
        """Blocking iterator over updates; ends after ``finish()``'s last update or ``close()``."""
        while not self.done:
            update = self.next_update(timeout=poll)
            if update is not None:
                yield update

    def close(self) -> None:
        """Drop all state at once: cancel queued windows, free buffers, end the iterator."""
        with self._lock:
            if self._closed:
                return
            self._closed = True  # the batcher drops this session's queued windows unrun
            self._stations.clear()
            self._buffered = 0
            self._picks.clear()
            self._put(_END)

    @property
    def n_stations(self) -> int:
        return len(self._stations)

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
