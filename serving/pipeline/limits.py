"""What a request may ask for, written once: rates, times, names, work, and the time it may take.

Every request is checked here at the boundary, before the work it implies is done: a 36 KB
request of three 3,000-sample arrays at 0.001 Hz once became 13.5 GB because it was resampled to
100 Hz before anything looked at its size. So each check works from the headers (rates, start
and end times, sample counts) and refuses with a message naming the value and the limit.
Predict, StreamPredict and the message conversions all call these functions; the numbers below
are the only copies.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from seismag.models.card import MAX_SAMPLING_RATE
from seismag.serving.errors import Cancelled, InvalidInput, Overloaded

# -- sampling rates -------------------------------------------------------------------------------

MIN_SAMPLING_RATE = 20.0
"""Hz. Broadband BH channels (20-40 Hz) are the slowest the models can read: their band (P
energy of local events, 1-20 Hz) is gone at LH (1 Hz) or VH (0.1 Hz) rates, and upsampling such
data to the card's 100 Hz only multiplies the work (x100 at 1 Hz) for a meaningless answer."""

# -- times ----------------------------------------------------------------------------------------

EARLIEST_TIME = -2_208_988_800.0
"""1900-01-01T00:00:00Z, seconds since the epoch: before the first instrumental seismograms."""
LATEST_AHEAD_SECONDS = 86_400.0
"""Data or picks stamped more than a day after the server's clock are a clock or unit error."""

# -- names ----------------------------------------------------------------------------------------

MAX_CODE_CHARS = 8
"""Network, station and location codes: at most 8 characters in FDSN Source Identifiers
(the FDSN Source Identifiers specification, v1.0), 2/5/2 in SEED 2.4."""
MAX_CHANNEL_CHARS = 16
"""Channel codes: 3 characters in SEED; FDSN Source Identifiers allow band_source_subsource."""
MAX_STATION_ID_CHARS = 3 * MAX_CODE_CHARS + 2
"""A pick's "NET.STA.LOC"."""
MAX_MODEL_NAME_CHARS = 64
SHOWN_CHARS = 32
"""Characters of an over-long client string echoed in an error (never the whole string)."""

# -- work -----------------------------------------------------------------------------------------

MIN_INTERVAL_SECONDS = 0.1
"""Smallest series_interval (Predict) and hop (StreamPredict): ten model windows per second of
data per station already cost more than the model gains from them (its windows are 30 s)."""
MAX_TRACES = 3_000
"""Traces in one Predict request (a gappy record is one trace per contiguous piece)."""
MAX_STATIONS = 1_000
"""Stations in one Predict request."""
MAX_INPUT_SAMPLES = 20_000_000
"""Samples at their own rates in one Predict request (160 MB as float64; a 64 MiB message of
float32 holds 16.8 M, compressed miniSEED may hold more)."""
MAX_CARD_SAMPLES = 6_000_000
"""Samples at the model's rate (after resampling, gaps filled) in one Predict request: e.g. 5.5
hours of 3-component 100 Hz data (48 MB as float64). Preparing a request at this limit (5.5 h of
3-component 20 Hz data, upsampled) took 0.47 s and raised the process's peak memory by 170 MB
with ObsPy's FFT resampling (copies and spectra); at twice the limit, 1.1 s and 370 MB. With the
polyphase resampler since 2026-11-29, 0.11-0.14 s and 81 MB against 0.30-0.66 s and 135 MB
with the FFT one on the same, slower machine (two alternating runs each)."""
MAX_SAMPLES_IN_FLIGHT = 4 * MAX_CARD_SAMPLES
"""Samples all Predict requests being prepared at once may hold; a request that would pass it is
RESOURCE_EXHAUSTED (retry later) unless it is the only one."""
MAX_SERIES_POINTS = 16_384
"""Points of the evolving series over all stations of one Predict request (series_interval
decides how many: a 1 h record at 1 s is 3,600)."""
MAX_WINDOWS = 4_096
"""Model windows per Predict request (~150 MB of float32 inputs at 3 x 3001); more is
RESOURCE_EXHAUSTED."""
MAX_STREAM_STATIONS = 2_000
"""Stations in one StreamPredict call (each holds ~150 KB of model window once it starts);
more stations go over more calls."""
MAX_STREAM_SAMPLES = 16_000_000
"""Samples buffered at once in one StreamPredict call (128 MB as float64), all stations."""

MAX_INTERVAL_SECONDS = MAX_INPUT_SAMPLES / MIN_SAMPLING_RATE
"""Largest series_interval and hop (11.6 days): the longest record a request may hold. A
longer interval gives the same answer (the final value alone), and a step counted in samples
must stay an integer the arrays can index."""


def shown(value: str, limit: int = SHOWN_CHARS) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters with its length."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def check_text(what: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidInput(f"{what} {shown(value)} is longer than {limit} characters")
    if not value.isprintable():
        raise InvalidInput(f"{what} {shown(value)} holds control characters")
    return value


def check_model_name(name: str) -> str:
    return check_text("model name", name, MAX_MODEL_NAME_CHARS)


def check_codes(network: str, station: str, location: str, channel: str) -> str:
    """The channel's SEED id after checking every code's length; station and channel required."""
    for what, value, limit in (
        ("network code", network, MAX_CODE_CHARS),
        ("station code", station, MAX_CODE_CHARS),
        ("location code", location, MAX_CODE_CHARS),
        ("channel code", channel, MAX_CHANNEL_CHARS),
    ):
        check_text(what, value, limit)
    sid = f"{network}.{station}.{location}.{channel}"
    if not station or not channel:
        raise InvalidInput(f"{sid}: station and channel codes are required")
    return sid


def check_station_id(value: str) -> str:
    check_text("station id", value, MAX_STATION_ID_CHARS)
    if not value:
        raise InvalidInput("a P pick needs a station id (NET.STA or NET.STA.LOC)")
    return value


def check_rate(sid: str, rate: float) -> float:
    rate = float(rate)
    if not math.isfinite(rate) or not MIN_SAMPLING_RATE <= rate <= MAX_SAMPLING_RATE:
        raise InvalidInput(
            f"{sid}: sampling rate {rate:g} Hz is outside what the models can use "
            f"({MIN_SAMPLING_RATE:g} to {MAX_SAMPLING_RATE:g} Hz)"
        )
    return rate


def latest_time() -> float:
    return time.time() + LATEST_AHEAD_SECONDS


def check_time(what: str, t: float) -> float:
    """A plausible POSIX time (finite, from 1900 to a day after now)."""
    t = float(t)
    if not math.isfinite(t) or not EARLIEST_TIME <= t <= latest_time():
        raise InvalidInput(
            f"{what}: time {t:g} s since the epoch is not plausible (from 1900-01-01 to one "
            "day after the server's clock; times are seconds since 1970-01-01 UTC)"
        )
    return t


def check_span(sid: str, start: float, npts: int, rate: float) -> None:
    """A trace's first and last sample both plausible."""
    check_time(f"{sid} start", start)
    check_time(f"{sid} end", start + max(npts - 1, 0) / rate)


def check_interval(what: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < MIN_INTERVAL_SECONDS:
        raise InvalidInput(f"{what} must be at least {MIN_INTERVAL_SECONDS:g} s, got {value:g}")
    if value > MAX_INTERVAL_SECONDS:
        raise InvalidInput(
            f"{what} must be at most {MAX_INTERVAL_SECONDS:g} s, got {value:g} (any interval "
            "longer than the record gives its final value alone)"
        )
    return value


def check_count(what: str, n: int, limit: int, advice: str) -> None:
    if n > limit:
        raise Overloaded(f"the request holds {n} {what} (limit {limit}); {advice}")


def card_samples(spans: Iterable[float], rate: float) -> int:
    """Samples at the card's ``rate`` for components spanning ``spans`` seconds."""
    return sum(math.floor(s * rate) + 1 for s in spans)


class Budget:
    """The time a request may still take: its deadline and a cancel flag set when the client
    goes away. Checked between stages (stations, series points, before the model), so work
    stops soon after nobody waits for it."""

    def __init__(self, timeout: float | None = None, cancelled: threading.Event | None = None):
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.cancelled = cancelled or threading.Event()

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self, stage: str) -> None:
        if self.cancelled.is_set():
            raise Cancelled(f"the client cancelled the request ({stage})")
        left = self.remaining()
        if left is not None and left <= 0:
            raise TimeoutError(f"deadline exceeded {stage}")


class InFlight:
    """The samples the requests being prepared hold, over the whole process: each request may
    be within its limits while sixteen of them at once are not."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, samples: int) -> Iterator[None]:
        with self._lock:
            if self.used and self.used + samples > self.limit:
                raise Overloaded(
                    f"the server is preparing {self.used} samples for other requests and this "
                    f"one needs {samples} (limit {self.limit} at once); retry shortly"
                )
            self.used += samples
        try:
            yield
        finally:
            with self._lock:
                self.used -= samples


IN_FLIGHT = InFlight(MAX_SAMPLES_IN_FLIGHT)
