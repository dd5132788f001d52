"""One magnitude per event from its stations' estimates, with its uncertainty, as data arrive.

Observatories publish one magnitude per event. Each station gives a magnitude ``m_i`` and a
standard deviation ``s_i`` (the model's sigma); the event magnitude is their inverse-variance
weighted mean after station corrections, with stations rejected that disagree with the others by
more than ``REJECT_SIGMAS`` of their own sigma (one at a time, worst first, never below
``MIN_KEEP`` stations), as in the station-magnitude screening of routine practice (Bormann,
NMSOP-2, 2012, ch. 3.2).

The uncertainty does not treat stations as independent. Part of every station's error is common
to the event (source spectrum, stress drop, a regional attenuation the model did not learn), and
averaging stations does not remove it. With a share ``rho`` of each station's error variance
common to the event (standardised errors correlated by ``rho``) the variance of the weighted mean
with weights ``w_i = 1 / s_i**2`` is

    V = ((1 - rho) * k * sum(w_i) + rho * sum(sqrt(w_i))**2) / sum(w_i)**2

where ``k = max(1, chi2 / (n - 1))`` inflates the independent part when the stations scatter more
than their sigmas say (Birge ratio). With equal sigmas that is ``s**2 * (rho + (1 - rho) / n)``:
``s / sqrt(n)`` for independent stations, ``s`` when everything is shared. ``rho`` is measured on
events from the training regimes (``python -m seismag.benchmarks.event_accuracy`` prints it).
A network's own past events calibrate all of it (:class:`Calibration`, fitted by
:mod:`seismag.serving.pipeline.station_table`): a network correction (the regional offset of the
models' magnitudes), station corrections, a correction and a magnitude-scale gain of the event
magnitude by the time after its first P, ``rho``, and a scale for the sigma.

Association: a Predict carries the stations of one event. Stations without a P onset (none sent,
none picked) cannot be placed in time and are left out; so are stations whose onset lies more than
``ASSOCIATION_WINDOW_S`` after the earliest onset of the largest group of onsets, which are another
event or a false trigger. The evolving event magnitude is causal: its value at time t combines each
station's latest value at or before t, counted only from ``MIN_AFTER_ONSET_SECONDS`` after that
station's onset (when the picker has decided it and the model has seen P) and up to
``EVENT_AFTER_ONSET_SECONDS`` after it (:func:`event_values`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from obspy import UTCDateTime

from seismag.serving.pipeline.predict import MIN_AFTER_ONSET_SECONDS, station_id
from seismag.serving.pipeline.results import StationResult

SHARED_ERROR_FRACTION = 0.35
"""``rho``: share of a station's error variance common to the event. On the training regimes'
test events it was 0.25-0.41 across the six models of the first release (their per-trace
full-window errors from ``seismag evaluate``), 0.05-0.45 when fitted on 60 events by
``python -m seismag.benchmarks.event_accuracy``; 0.37-0.53 on unseen regimes (docs/events.md),
which is why a station table fitted on a network's own past events should replace it."""
REJECT_SIGMAS = 3.0
"""A station further than this many of its own sigmas from the others' mean is an outlier."""
MIN_KEEP = 2
"""Rejection never leaves fewer stations than this (with two, neither can be told wrong)."""
EVENT_AFTER_ONSET_SECONDS = 20.0
"""A station's values count for its event from windows ending at most this long after its own
onset; later ones leave its estimate as it was then. The models' station values drift as their
window slides further past P (half of the training windows end 1-20 s after P, the rest anywhere
that holds P: training/windows.py); on the unseen regimes' events every model's full-record
event MAE is 0.004-0.011 lower with this rule (docs/events.md)."""
ASSOCIATION_WINDOW_S = 60.0
"""Latest P onset after the event's first one: P travel time to ~400 km, the farthest distance
the models were trained for."""
METHOD = (
    "inverse-variance weighted mean of the station magnitudes after station corrections, stations "
    f"beyond {REJECT_SIGMAS:g} sigma rejected; sigma with a shared error fraction"
)


@dataclass(frozen=True)
class Calibration:
    """What a network's past events teach the event magnitude; the defaults change nothing but
    the shared error fraction, which then has its measured default."""

    corrections: Mapping[str, float] = field(default_factory=dict)
    """Station (NET.STA.LOC or NET.STA) -> magnitude units added to its magnitudes."""
    network_correction: float = 0.0
    """Added to the magnitudes of stations without a correction of their own."""
    shared_error_fraction: float = SHARED_ERROR_FRACTION
    sigma_scale: float = 1.0
    """The event sigma is multiplied by this where no scale by time is given (the models'
    sigmas, measured on the network's past events after the corrections, are too wide or too
    narrow there)."""
    early: tuple[tuple[float, float], ...] = ()
    """(seconds after the event's first P, magnitude units) knots, ascending: added to the event
    magnitude that early. The first seconds' estimate rests on the nearest stations' first
    seconds of P, which err in their own direction per crust (module of
    :mod:`.station_table`)."""
    early_gain: tuple[float, ...] = ()
    """The magnitude-scale gain at each ``early`` knot (none: 1 everywhere); see ``final_gain``."""
    early_sigma_scale: tuple[float, ...] = ()
    """The sigma scale at each ``early`` knot (none: ``sigma_scale`` everywhere): early event
    magnitudes err differently from final ones, and not as the station values' scale says."""
    final_sigma_scale: float | None = None
    """The sigma scale after the last ``early`` knot (None: ``sigma_scale``)."""
    final_correction: float = 0.0
    """Added to the event magnitude after the last ``early`` knot (fitted on final values)."""
    final_gain: float = 1.0
    """After the correction, the event magnitude's distance from ``magnitude_pivot`` is
    multiplied by this (and its sigma too): a network's magnitudes may run on a wider or
    narrower scale than its catalogue's, as ML does against Mw (Deichmann 2006, BSSA 96(4A))."""
    magnitude_pivot: float = 0.0
    """Magnitude about which the gains stretch (the mean of the past events')."""
    magnitude_range: tuple[float, float] | None = None
    """The past events' smallest and largest catalogue magnitudes: a gain is a straight line
    fitted there, so beyond them its shift is held at the end's value, not extrapolated (a
    network whose past events are all M 2-3 says nothing about the scale at M 6). None: no
    limit."""

    def correction(self, key: str) -> float:
        """A station's correction by NET.STA.LOC, else NET.STA, else the network's."""
        if key in self.corrections:
            return float(self.corrections[key])
        short = ".".join(key.split(".")[:2])
        return float(self.corrections.get(short, self.network_correction))

    def knot_gains(self) -> tuple[float, ...]:
        """The gain at each ``early`` knot (1 where the table has none)."""
        return self.early_gain or (1.0,) * len(self.early)

    def early_correction(self, seconds_after_first_p: float | np.ndarray) -> np.ndarray:
        """The event-level correction this many seconds after the first P: linear between the
        ``early`` knots, the first knot's before it, ``final_correction`` after the last."""
        return self._at(seconds_after_first_p, 0)

    def gain(self, seconds_after_first_p: float | np.ndarray) -> np.ndarray:
        """The magnitude-scale gain this many seconds after the first P (as
        :meth:`early_correction`, with ``early_gain`` and ``final_gain``)."""
        return self._at(seconds_after_first_p, 1)

    def sigma_scale_at(self, seconds_after_first_p: float | np.ndarray) -> np.ndarray:
        """The sigma scale this many seconds after the first P (as :meth:`early_correction`,
        with ``early_sigma_scale`` and ``final_sigma_scale``, else ``sigma_scale``)."""
        return self._at(seconds_after_first_p, 2)

    def knot_terms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Correction, gain and sigma scale at each ``early`` knot, then after the last one."""
        t = np.array([*(k for k, _ in self.early), math.inf])
        return self.early_correction(t), self.gain(t), self.sigma_scale_at(t)

    def _at(self, seconds_after_first_p, which: int) -> np.ndarray:
        t = np.asarray(seconds_after_first_p, dtype=np.float64)
        final_scale = self.sigma_scale if self.final_sigma_scale is None else self.final_sigma_scale
        final = (self.final_correction, self.final_gain, final_scale)[which]
        if not self.early:
            return np.full_like(t, final)
        knots = np.array([k for k, _ in self.early], dtype=np.float64)
        knot_values = (
            [c for _, c in self.early],
            self.knot_gains(),
            self.early_sigma_scale or [self.sigma_scale] * len(self.early),
        )
        values = np.array(knot_values[which], dtype=np.float64)
        return np.where(t <= knots[-1] + 1e-9, np.interp(t, knots, values), final)

    def calibrate(self, estimate: EventEstimate, seconds_after_first_p: float) -> EventEstimate:
        """The event-level terms: ``m -> pivot + gain * (m + correction - pivot)`` at that time
        within ``magnitude_range`` (slope 1 beyond it), the sigma times the gain and the sigma
        scale at that time."""
        c = float(self.early_correction(seconds_after_first_p))
        g = float(self.gain(seconds_after_first_p))
        p = self.magnitude_pivot
        u = estimate.magnitude + c
        inside = u
        if self.magnitude_range is not None:
            lo, hi = self.magnitude_range  # in calibrated magnitudes: back to u's scale
            inside = float(np.clip(u, p + (lo - p) / g, p + (hi - p) / g))
        return replace(
            estimate,
            magnitude=u + (g - 1.0) * (inside - p),
            sigma=estimate.sigma * float(self.sigma_scale_at(seconds_after_first_p)) * g,
        )


@dataclass(frozen=True)
class StationEstimate:
    station: str
    """NET.STA.LOC"""
    magnitude: float
    sigma: float
    """NaN when the model has no sigma output."""


@dataclass(frozen=True)
class EventEstimate:
    magnitude: float
    sigma: float
    """NaN when a station has no sigma."""
    used: tuple[str, ...]
    rejected: tuple[str, ...]


@dataclass
class EventResult:
    """The event magnitude of a Predict: the final estimate and its causal evolution."""

    final: EventEstimate
    first_onset: UTCDateTime
    series_start: UTCDateTime
    series_end: UTCDateTime
    """Time of the last series value (the latest data end; it may follow the previous value by
    less than ``series_interval``)."""
    series_interval: float
    series: np.ndarray
    sigma_series: np.ndarray
    station_counts: np.ndarray
    """Stations combined in each series value (after rejection)."""
    not_associated: tuple[str, ...]
    """Stations left out: no onset, or an onset outside the association window."""
    corrections: dict[str, float]
    """The station corrections applied (station -> magnitude units added)."""
    method: str = METHOD


def _variance(w: np.ndarray, shared: float, birge: float) -> float:
    total = w.sum()
    return float(((1.0 - shared) * birge * total + shared * np.sqrt(w).sum() ** 2) / total**2)


def combine(
    estimates: Sequence[StationEstimate], shared: float = SHARED_ERROR_FRACTION
) -> EventEstimate:
    """The event magnitude of (already corrected) station estimates; see the module docstring.

    Without sigmas (a model exported without them) the stations count equally and the event
    sigma is NaN: an uncertainty is not guessed.
    """
    if not estimates:
        raise ValueError("no station estimates to combine")
    names = [e.station for e in estimates]
    m = np.array([e.magnitude for e in estimates], dtype=np.float64)
    s = np.array([e.sigma for e in estimates], dtype=np.float64)
    has_sigma = bool(np.all(np.isfinite(s) & (s > 0)))
    w = 1.0 / s**2 if has_sigma else np.ones_like(m)
    keep = np.ones(m.size, dtype=bool)
    while keep.sum() > MIN_KEEP:
        # Each candidate is judged against the mean of the others (its own weight would pull the
        # mean towards it), in units of its sigma, or of the others' spread without sigmas.
        score = np.full(m.size, -np.inf)
        for i in np.flatnonzero(keep):
            others = keep.copy()
            others[i] = False
            mean_o = np.sum(w[others] * m[others]) / w[others].sum()
            scale = s[i] if has_sigma else max(float(np.std(m[others])), 0.1)
            score[i] = abs(m[i] - mean_o) / scale
        worst = int(np.argmax(score))
        if score[worst] <= REJECT_SIGMAS:
            break
        keep[worst] = False
    mean = float(np.sum(w[keep] * m[keep]) / w[keep].sum())
    sigma = math.nan
    if has_sigma:
        n = int(keep.sum())
        chi2 = float(np.sum(w[keep] * (m[keep] - mean) ** 2))
        birge = max(1.0, chi2 / (n - 1)) if n > 1 else 1.0
        sigma = math.sqrt(_variance(w[keep], shared, birge))
    used = tuple(n for n, k in zip(names, keep, strict=True) if k)
    rejected = tuple(n for n, k in zip(names, keep, strict=True) if not k)
    return EventEstimate(mean, sigma, used, rejected)


def event_values(after_onset: np.ndarray, finite: np.ndarray | None = None) -> np.ndarray:
    """Which of a station's values, at ``after_onset`` seconds after its own onset, count for
    its event: from ``MIN_AFTER_ONSET_SECONDS`` to ``EVENT_AFTER_ONSET_SECONDS`` (``finite``:
    those that exist). A station whose values all come later counts with its first one."""
    after = np.asarray(after_onset, dtype=np.float64)
    ok = np.ones(after.shape, bool) if finite is None else np.asarray(finite, bool)
    started = ok & (after >= MIN_AFTER_ONSET_SECONDS - 1e-9)
    usable = started & (after <= EVENT_AFTER_ONSET_SECONDS + 1e-9)
    if not usable.any() and started.any():
        usable[np.flatnonzero(started)[0]] = True
    return usable


def associate(onsets: Mapping[str, UTCDateTime | None]) -> tuple[UTCDateTime | None, list[str]]:
    """The event's first onset and its stations: the largest group of onsets that fits in
    ``ASSOCIATION_WINDOW_S`` (the earliest such group on a tie)."""
    timed = sorted((t, s) for s, t in onsets.items() if t is not None)
    best: tuple[int, int] = (0, 0)
    for i, (t0, _) in enumerate(timed):
        j = i
        while j < len(timed) and timed[j][0] - t0 <= ASSOCIATION_WINDOW_S:
            j += 1
        if j - i > best[1] - best[0]:
            best = (i, j)
    group = timed[best[0] : best[1]]
    return (group[0][0] if group else None), [s for _, s in group]


def _combine_grid(
    names: list[str], m: np.ndarray, s: np.ndarray, shared: float
) -> list[EventEstimate]:
    """:func:`combine` for every column of (stations, times) arrays (NaN: no value yet).

    Vectorised: a Predict's event series has a value per series point, and one ``combine`` call
    each cost ~25 us. Columns where a station could be rejected, or a sigma is missing, go
    through :func:`combine` itself, so the numbers are the same by construction.
    """
    have = np.isfinite(m)
    w = np.where(have, 1.0 / np.where(have, s, 1.0) ** 2, 0.0)
    mv = np.where(have, m, 0.0)
    total, wsum = w.sum(axis=0), (w * mv).sum(axis=0)
    mean = wsum / total
    n = have.sum(axis=0)
    sigma_ok = np.all(~have | (np.isfinite(s) & (s > 0)), axis=0)
    # Leave-one-out means and scores, as combine's first rejection round computes them.
    with np.errstate(divide="ignore", invalid="ignore"):
        others = (wsum - w * mv) / (total - w)
        score = np.where(have, np.abs(mv - others) / s, 0.0)
    plain = sigma_ok & ((n <= MIN_KEEP) | (score.max(axis=0) <= REJECT_SIGMAS))
    chi2 = (w * (mv - mean) ** 2).sum(axis=0)
    birge = np.where(n > 1, np.maximum(1.0, chi2 / np.maximum(n - 1, 1)), 1.0)
    var = ((1.0 - shared) * birge * total + shared * np.sqrt(w).sum(axis=0) ** 2) / total**2
    out = []
    for g in range(m.shape[1]):
        rows = np.flatnonzero(have[:, g])
        if plain[g]:
            used = tuple(names[i] for i in rows)
            out.append(EventEstimate(float(mean[g]), math.sqrt(float(var[g])), used, ()))
        else:
            out.append(combine([StationEstimate(names[i], m[i, g], s[i, g]) for i in rows], shared))
    return out


def event_magnitude(
    results: Sequence[StationResult], calibration: Calibration | None = None
) -> EventResult | None:
    """The event magnitude of a Predict's stations and its causal series; None when no station
    has an onset."""
    cal = calibration or Calibration()
    by_id = {station_id(r.network, r.station, r.location): r for r in results}
    first, members = associate({k: r.onset for k, r in by_id.items()})
    if first is None:
        return None
    not_associated = tuple(k for k in by_id if k not in members)
    applied = {k: cal.correction(k) for k in members}
    # Each station's values as (absolute time in s after `first`, value, sigma), usable ones only.
    tracks = {}
    for k in members:
        r = by_id[k]
        t = r.series_offsets() + float(UTCDateTime(r.series_start) - first)
        usable = event_values(t - float(r.onset - first), np.isfinite(r.series))
        sig = r.sigma_series if r.sigma_series is not None else np.full(len(r.series), np.nan)
        if usable.any():
            tracks[k] = (t[usable], np.asarray(r.series)[usable] + applied[k], sig[usable])
    if not tracks:
        return None
    interval = min(by_id[k].series_interval for k in tracks)
    start = min(t[0] for t, _, _ in tracks.values())
    end = max(t[-1] for t, _, _ in tracks.values())
    grid = start + np.arange(int(np.floor((end - start) / interval + 1e-9)) + 1) * interval
    if end - grid[-1] > 1e-6:
        grid = np.append(grid, end)
    # Each station's latest value at or before each grid time (NaN before its first).
    m = np.full((len(tracks), grid.size), np.nan)
    s = np.full((len(tracks), grid.size), np.nan)
    for i, (t, v, sg) in enumerate(tracks.values()):
        j = np.searchsorted(t, grid + 1e-9, side="right") - 1
        m[i] = np.where(j >= 0, v[np.maximum(j, 0)], np.nan)
        s[i] = np.where(j >= 0, sg[np.maximum(j, 0)], np.nan)
    estimates = [
        cal.calibrate(e, t)
        for e, t in zip(
            _combine_grid(list(tracks), m, s, cal.shared_error_fraction), grid, strict=True
        )
    ]
    final = estimates[-1]
    return EventResult(
        final=final,
        first_onset=first,
        series_start=first + float(grid[0]),
        series_end=first + float(grid[-1]),
        series_interval=interval,
        series=np.array([e.magnitude for e in estimates]),
        sigma_series=np.array([e.sigma for e in estimates]),
        station_counts=np.array([len(e.used) for e in estimates], dtype=np.int64),
        not_associated=not_associated,
        corrections={k: v for k, v in applied.items() if v},
    )


# -- live: events assembled from a stream's station updates ---------------------------------------

MAX_LIVE_EVENTS = 32
"""Events a stream keeps (the oldest is forgotten first)."""
EVENT_EXPIRY_S = 600.0
"""An event no station has updated for this long (in data time) is forgotten."""


@dataclass
class EventUpdate:
    event_id: str
    time: UTCDateTime
    """Data time of the newest station value in the estimate."""
    first_onset: UTCDateTime
    estimate: EventEstimate


@dataclass
class _LiveEvent:
    event_id: str
    first_onset: UTCDateTime
    last_time: UTCDateTime
    stations: dict[str, tuple[UTCDateTime, StationEstimate]]
    """Station -> (its onset, its latest corrected estimate)."""


class EventTracker:
    """Associates a stream's station updates to events and recombines an event whenever one of
    its stations reports (module docstring: the same combination as a Predict's event).

    A station belongs to the event of its current onset: within ``ASSOCIATION_WINDOW_S`` of an
    event's first onset, else it opens a new event; when its picker finds a new onset (a later
    event) it moves. With ``event_id`` every station joins that one event. Memory is bounded by
    ``MAX_LIVE_EVENTS`` and the stream's own bound on stations.
    """

    def __init__(self, *, calibration: Calibration | None = None, event_id: str = "") -> None:
        self.calibration = calibration or Calibration()
        self.fixed_id = event_id
        self.events: list[_LiveEvent] = []
        self._count = 0

    def add(self, updates) -> list[EventUpdate]:
        """Station updates (:class:`~seismag.serving.pipeline.results.StationUpdate`) in; the
        events they changed, recombined, out."""
        changed: dict[str, _LiveEvent] = {}
        for u in updates:
            if u.onset is None or u.time - u.onset < MIN_AFTER_ONSET_SECONDS - 1e-9:
                continue  # not placed in time yet, or the model has not seen P
            sid = station_id(u.network, u.station, u.location)
            onset = UTCDateTime(u.onset)
            ev = self._event_for(sid, onset)
            held = ev.stations.get(sid)
            if (
                u.time - onset > EVENT_AFTER_ONSET_SECONDS + 1e-9
                and held is not None
                and abs(held[0] - onset) <= 1e-6
            ):
                continue  # its estimate stands as it was then (event_values)
            estimate = StationEstimate(
                sid, u.magnitude + self.calibration.correction(sid), u.magnitude_sigma
            )
            ev.stations[sid] = (onset, estimate)
            ev.first_onset = min(ev.first_onset, onset)
            ev.last_time = max(ev.last_time, UTCDateTime(u.time))
            changed[ev.event_id] = ev
        out = [
            EventUpdate(
                ev.event_id,
                ev.last_time,
                ev.first_onset,
                self.calibration.calibrate(
                    combine(
                        [e for _, e in ev.stations.values()],
                        self.calibration.shared_error_fraction,
                    ),
                    ev.last_time - ev.first_onset,
                ),
            )
            for ev in changed.values()
        ]
        self._expire()
        return out

    def _event_for(self, sid: str, onset: UTCDateTime) -> _LiveEvent:
        for ev in self.events:
            held = ev.stations.get(sid)
            if held is not None and abs(held[0] - onset) > 1e-6 and not self.fixed_id:
                del ev.stations[sid]  # the station's picker moved on to another event
        if self.fixed_id:
            candidates = self.events
        else:
            candidates = [
                ev for ev in self.events if abs(onset - ev.first_onset) <= ASSOCIATION_WINDOW_S
            ]
        if candidates:
            return min(candidates, key=lambda ev: abs(onset - ev.first_onset))
        self._count += 1
        ev = _LiveEvent(self.fixed_id or f"ev{self._count}", onset, onset, {})
        self.events.append(ev)
        return ev

    def _expire(self) -> None:
        if not self.events:
            return
        newest = max(ev.last_time for ev in self.events)
        self.events = [
            ev for ev in self.events if ev.stations and newest - ev.last_time <= EVENT_EXPIRY_S
        ][-MAX_LIVE_EVENTS:]
