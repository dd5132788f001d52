"""A network's calibration of the event magnitude, learnt from its past events.

The models' magnitudes carry a regional offset where the crust differs from what they were
trained on (on the unseen synthetic regimes of docs/events.md, -0.16 in one and +0.11 in the other
over the full record): a regional magnitude scale is calibrated on the network's own events, as
local-magnitude distance corrections are (Hutton & Boore 1987). Fitted on past events:

* the **network correction**: minus the mean over events of each event's mean residual (station
  magnitude minus catalogue), shrunk towards zero by ``PRIOR_EVENTS`` pseudo-events at zero;
* **station corrections** (a site amplification the model did not see, a wrong gain): the network
  correction plus minus the station's mean residual left after it, shrunk the same way, for
  stations with at least ``MIN_STATION_EVENTS`` events; the others get the network correction;
* the **event-level terms by time after the first P**, from rows with ``seconds_after_first_p``
  (a station's latest value that many seconds after the event's first P, written only where the
  station counted then, as :func:`.event.event_values` counts it), and from the final values
  the event counts: at each such time, the event magnitudes of those values
  (:func:`.event.combine` of the corrected values, each station's term fitted without the
  event) are regressed on the catalogue magnitude, ``residual = a + b * (M - pivot)``, with
  ``pivot`` the past events' mean magnitude; ``a`` and ``b`` are shrunk the same way and
  inverted into a correction ``-a`` and a gain ``1 / (1 + b)``, so that the calibrated
  magnitude ``pivot + gain * (m - a - pivot)`` is unbiased at every magnitude (times with
  fewer than ``MIN_KNOT_EVENTS`` events are left out; with fewer than ``MIN_SLOPE_EVENTS`` the
  gain is 1). Early estimates are not final ones with
  more noise. They rest on the nearest stations' first seconds of P, and how those err depends
  on the crust: on the unseen regimes of docs/events.md a station's value 3 s after its P sat
  0.05 below its final value near the source and 0.4 below at the farthest stations in one
  crust, 0.25 above near the source in the other; and an early estimate of a large event is
  low (the first seconds do not yet show how large it grows), so early gains come out above 1
  and final ones near 1. A correction by the station's own time after P would be dominated by
  the many far stations and correct the nearest ones the wrong way; the event's own early
  estimates measure what is published. The gain trades accuracy for the absence of a
  magnitude-dependent bias where the estimate is noisy (docs/events.md);
* the **shared error fraction** (``rho`` of :mod:`.event`) from the residuals left after the
  corrections, and a **sigma scale** (the root mean square of residual / sigma), each residual
  taken against a station correction fitted without its event: residuals a correction has already
  absorbed would make the next events look more certain than they are. The scale multiplies every
  published event sigma, early ones too, and early values err more than final ones (on the unseen
  regimes of docs/events.md a scale from final values alone narrowed the 3 s band to 60 % of
  events within one sigma): the series rows, calibrated by the terms of their time, join the
  scale's residuals. The other corrections and ``rho`` use the final values only;
* a **sigma scale by time**, where the event-level terms are fitted: the root mean square of the
  calibrated event errors there in units of the event sigma (over n - 2 events), shrunk in log
  towards the station values' scale, then averaged in log with the neighbouring times' scales
  (``SMOOTH_KNOTS``). The station values' scale misjudges the event band when errors are shared
  unlike ``rho`` says or the Birge ratio has already widened it; on the development events of
  docs/events.md early bands were too narrow and 10-20 s ones too wide. A knot's own scale rests
  on a network's few past events (40 per network there) and dipped at one time where its
  neighbours did not, which is sampling noise, not physics.

The table is a small TOML file, read by ``seismag serve --station-table`` and written by
``seismag station-table PREDICTIONS.csv``::

    model = "PhaseNetMag"
    events = 250
    network_correction = -0.08
    shared_error_fraction = 0.33
    sigma_scale = 0.85
    early_seconds = [3.0, 5.0, 10.0, 20.0]
    early_correction = [0.14, 0.09, 0.05, 0.03]
    early_gain = [1.07, 1.03, 1.02, 1.0]
    early_sigma_scale = [0.95, 0.9, 0.8, 0.8]
    final_correction = 0.01
    final_gain = 0.97
    final_sigma_scale = 0.85
    magnitude_pivot = 3.4
    magnitude_range = [1.8, 6.1]

    [corrections]
    "SY.S0166." = 0.12
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
from obspy import UTCDateTime

from seismag.serving.pipeline.event import (
    SHARED_ERROR_FRACTION,
    Calibration,
    EventEstimate,
    StationEstimate,
    associate,
    combine,
    event_values,
)

PRIOR_EVENTS = 3.0
"""Shrinkage: a term fitted on n events gets n / (n + PRIOR_EVENTS) of its mean residual."""
MIN_STATION_EVENTS = 3
"""Events a station needs for a correction of its own (with fewer, its term is mostly noise)."""
MIN_KNOT_EVENTS = 3
"""Events a time after the first P needs for an event-level correction of its own."""
MIN_SLOPE_EVENTS = 10
"""Events a time needs for a magnitude-scale gain (with fewer, a slope is mostly noise)."""
SLOPE_RANGE = (-0.5, 1.0)
"""Slope of the event residual on the catalogue magnitude kept within this: gains 0.5 to 2."""
GAIN_RANGE = (0.5, 2.0)
"""Gains a table may hold (what ``SLOPE_RANGE`` allows the fit)."""
SIGMA_SCALE_RANGE = (0.1, 10.0)
"""Sigma scales a table may hold."""
SMOOTH_KNOTS = 1
"""A sigma scale by time is the geometric mean of the scales fitted at its own knot and this many
knots on each side (the final values' scale stays its own). On the development events of
docs/events.md it lifted the 10 s band, where one knot had dipped, and moved no other time by
more than a point."""
MAX_CORRECTION = 2.0
"""Magnitude units; a larger correction is a wrong table, not a calibration."""
COLUMNS = ("source_id", "station_id", "magnitude", "catalogue_magnitude")
"""Required columns of the predictions CSV. Optional: ``sigma`` (without it the sigma scale is
not fitted) and ``seconds_after_first_p`` (empty for a station's final magnitude; a number for
its latest value that many seconds after the event's first P, for the event-level terms by
time and the sigma scale)."""
SERIES_COLUMN = "seconds_after_first_p"
SERIES_KNOTS = (2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 45.0)
"""Seconds after the event's first P at which :func:`prediction_rows` samples the stations'
series (the knots of the event-level terms)."""


@dataclass(frozen=True)
class PastStation:
    """One station's answer for a past event, as :func:`prediction_rows` reads it."""

    station: str
    """NET.STA.LOC"""
    magnitude: float
    sigma: float
    onset: UTCDateTime | None
    series_start: UTCDateTime
    offsets: np.ndarray
    """Seconds after ``series_start`` of the series values (where a value's time is not known
    exactly, a time never earlier; relative times keep the knots exact, absolute POSIX seconds
    would round them)."""
    series: np.ndarray
    sigmas: np.ndarray | None


@dataclass(frozen=True)
class StationTable(Calibration):
    model: str = ""
    events: int = 0

    @classmethod
    def read(cls, path: str | Path) -> StationTable:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"station table {path}: {exc}") from None
        corrections = raw.get("corrections", {})
        if not isinstance(corrections, dict):
            raise ValueError(
                f"station table {path}: [corrections] must be a table of STATION_ID = number"
            )
        events = raw.get("events", 0)
        if not isinstance(events, int) or isinstance(events, bool) or events < 0:
            raise ValueError(f"station table {path}: events must be a count, got {events!r}")
        network = raw.get("network_correction", 0.0)
        rho = raw.get("shared_error_fraction", SHARED_ERROR_FRACTION)
        scale = raw.get("sigma_scale", 1.0)
        bad = [k for k, v in corrections.items() if not _finite(v) or abs(v) > MAX_CORRECTION]
        if bad or not _finite(network) or abs(network) > MAX_CORRECTION:
            raise ValueError(
                f"station table {path}: corrections must be numbers within +-{MAX_CORRECTION:g} "
                f"magnitude units (bad: {bad[:5] or ['network_correction']})"
            )
        if not _finite(rho) or not 0.0 <= rho <= 1.0:
            raise ValueError(
                f"station table {path}: shared_error_fraction must be within [0, 1], got {rho!r}"
            )
        if not _scale_ok(scale):
            raise ValueError(
                f"station table {path}: sigma_scale must be within [{SIGMA_SCALE_RANGE[0]:g}, "
                f"{SIGMA_SCALE_RANGE[1]:g}], got {scale!r}"
            )
        early, gains = _early(raw, path)
        scales = raw.get("early_sigma_scale", [])
        final_scale = raw.get("final_sigma_scale", scale)
        if not (
            isinstance(scales, list)
            and len(scales) in (0, len(early))
            and all(_scale_ok(v) for v in (*scales, final_scale))
        ):
            raise ValueError(
                f"station table {path}: early_sigma_scale (one per early_seconds; optional) and "
                f"final_sigma_scale must be within [{SIGMA_SCALE_RANGE[0]:g}, "
                f"{SIGMA_SCALE_RANGE[1]:g}], got {scales!r}, {final_scale!r}"
            )
        span = raw.get("magnitude_range")
        if span is not None and not (
            isinstance(span, list)
            and len(span) == 2
            and all(_finite(v) and -3 <= v <= 10 for v in span)
            and span[0] <= span[1]
        ):
            raise ValueError(
                f"station table {path}: magnitude_range must be [smallest, largest] past "
                f"magnitude, got {span!r}"
            )
        final_c, final_g, pivot = (
            raw.get(k, d)
            for k, d in (("final_correction", 0.0), ("final_gain", 1.0), ("magnitude_pivot", 0.0))
        )
        if not (
            _finite(final_c)
            and abs(final_c) <= MAX_CORRECTION
            and _gain_ok(final_g)
            and _finite(pivot)
            and -3 <= pivot <= 10
        ):
            raise ValueError(
                f"station table {path}: final_correction must be within +-{MAX_CORRECTION:g}, "
                f"final_gain within [{GAIN_RANGE[0]:g}, {GAIN_RANGE[1]:g}] and magnitude_pivot a "
                f"magnitude, got {final_c!r}, {final_g!r}, {pivot!r}"
            )
        if "magnitude_pivot" not in raw and any(g != 1.0 for g in (*gains, final_g)):
            raise ValueError(
                f"station table {path}: gains other than 1 need the magnitude_pivot they "
                "stretch about"
            )
        return cls(
            corrections={str(k): float(v) for k, v in corrections.items()},
            network_correction=float(network),
            shared_error_fraction=float(rho),
            sigma_scale=float(scale),
            early=early,
            early_gain=gains,
            early_sigma_scale=tuple(float(v) for v in scales),
            final_sigma_scale=float(final_scale),
            final_correction=float(final_c),
            final_gain=float(final_g),
            magnitude_pivot=float(pivot),
            magnitude_range=None if span is None else (float(span[0]), float(span[1])),
            model=str(raw.get("model", "")),
            events=events,
        )

    def describe_event_terms(self) -> str:
        """The event-level terms in one line: correction, gain and sigma scale at each knot and
        after."""
        where = [f"at {t:g} s" for t, _ in self.early] + ["after"]
        cells = [
            f"{c:+.2f} x{g:.2f} sd x{s:.2f} {w}"
            for c, g, s, w in zip(*self.knot_terms(), where, strict=True)
        ]
        span = self.magnitude_range
        within = f", within M {span[0]:.1f}-{span[1]:.1f}" if span is not None else ""
        return f"{', '.join(cells)} (gains about M {self.magnitude_pivot:.2f}{within})"

    def write(self, path: str | Path) -> None:
        gains = self.knot_gains()
        scales = self.knot_terms()[2]
        lines = [
            "# seismag station table: corrections are added to the station magnitudes;",
            "# the early_* and final_* terms act on the event magnitude",
            f"model = {json.dumps(self.model)}",
            f"events = {self.events}",
            f"network_correction = {self.network_correction:.4f}",
            f"shared_error_fraction = {self.shared_error_fraction:.4f}",
            f"sigma_scale = {self.sigma_scale:.4f}",
            f"early_seconds = [{', '.join(f'{t:g}' for t, _ in self.early)}]",
            f"early_correction = [{', '.join(f'{c:.4f}' for _, c in self.early)}]",
            f"early_gain = [{', '.join(f'{g:.4f}' for g in gains)}]",
            f"early_sigma_scale = [{', '.join(f'{v:.4f}' for v in scales[:-1])}]",
            f"final_correction = {self.final_correction:.4f}",
            f"final_gain = {self.final_gain:.4f}",
            f"final_sigma_scale = {scales[-1]:.4f}",
            f"magnitude_pivot = {self.magnitude_pivot:.4f}",
            *(
                [f"magnitude_range = [{', '.join(f'{v:.4f}' for v in self.magnitude_range)}]"]
                if self.magnitude_range is not None
                else []
            ),
            "",
            "[corrections]",
        ]
        lines += [f"{json.dumps(k)} = {v:.4f}" for k, v in sorted(self.corrections.items())]
        Path(path).write_text("\n".join(lines) + "\n")


def _finite(v) -> bool:
    # TOML's true is a Python int: a correction of `true` is a typo, not 1 magnitude unit.
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _scale_ok(v) -> bool:
    return _finite(v) and SIGMA_SCALE_RANGE[0] <= v <= SIGMA_SCALE_RANGE[1]


def _gain_ok(g) -> bool:
    return _finite(g) and GAIN_RANGE[0] <= g <= GAIN_RANGE[1]


def _early(raw: dict, path) -> tuple[tuple[tuple[float, float], ...], tuple[float, ...]]:
    seconds, values = raw.get("early_seconds", []), raw.get("early_correction", [])
    gains = raw.get("early_gain", [1.0] * len(seconds) if isinstance(seconds, list) else [])
    ok = (
        isinstance(seconds, list)
        and isinstance(values, list)
        and isinstance(gains, list)
        and len(seconds) == len(values) == len(gains)
        and all(_finite(t) and t >= 0 for t in seconds)
        and all(b > a for a, b in pairwise(seconds))
        and all(_finite(c) and abs(c) <= MAX_CORRECTION for c in values)
        and all(_gain_ok(g) for g in gains)
    )
    if not ok:
        raise ValueError(
            f"station table {path}: early_seconds (ascending, >= 0), early_correction (within "
            f"+-{MAX_CORRECTION:g}) and early_gain (within [{GAIN_RANGE[0]:g}, "
            f"{GAIN_RANGE[1]:g}]; optional) must be lists of numbers of one length"
        )
    early = tuple((float(t), float(c)) for t, c in zip(seconds, values, strict=True))
    return early, tuple(float(g) for g in gains)


def fit(rows: list[dict[str, str]], model: str = "") -> StationTable:
    """The calibration of past events' per-station predictions (module docstring)."""
    if not rows:
        raise ValueError("no predictions to fit a station table from")
    missing = [c for c in COLUMNS if c not in rows[0]]
    if missing:
        raise ValueError(f"the predictions CSV lacks the columns {missing} (needs {COLUMNS})")
    if "seconds_after_p" in rows[0]:
        raise ValueError(
            f"the predictions CSV has a seconds_after_p column: series values are now timed from "
            f"the event's first P, in a {SERIES_COLUMN} column"
        )
    records = []  # final values: (event, station, residual, sigma)
    series = []  # earlier values: (event, station, residual, sigma, seconds after the first P)
    catalogue: dict[str, float] = {}
    for line, r in enumerate(rows, start=2):  # line 1 is the CSV header
        after = (r.get(SERIES_COLUMN) or "").strip()
        try:
            m, cat = float(r["magnitude"]), float(r["catalogue_magnitude"])
            sigma = float(r.get("sigma") or "nan")
            seconds = float(after) if after else 0.0
            if not (math.isfinite(seconds) and seconds >= 0):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(
                f"line {line}: magnitude, catalogue_magnitude and sigma must be numbers and "
                f"{SERIES_COLUMN} empty or a time >= 0, got {r.get('magnitude')!r}, "
                f"{r.get('catalogue_magnitude')!r}, {r.get('sigma')!r}, {after!r}"
            ) from None
        if math.isfinite(m) and math.isfinite(cat):
            row = (r["source_id"], r["station_id"], m - cat, sigma)
            catalogue[r["source_id"]] = cat
            if after:
                series.append((*row, seconds))
            else:
                records.append(row)
    if not records:
        raise ValueError("no finite final magnitudes to fit a station table from")
    by_event: dict[str, list[float]] = defaultdict(list)
    for event, _, res, _ in records:
        by_event[event].append(res)
    means = [np.mean(v) for v in by_event.values()]
    network = -float(np.sum(means)) / (len(means) + PRIOR_EVENTS)
    by_station: dict[str, list[float]] = defaultdict(list)
    for _, station, res, _ in records:
        by_station[station].append(res + network)
    corrections = {
        s: network - float(np.sum(v)) / (len(v) + PRIOR_EVENTS)
        for s, v in by_station.items()
        if len(v) >= MIN_STATION_EVENTS
    }
    final = {(event, station): res for event, station, res, _ in records}

    def left_out(event: str, station: str, res: float) -> float:
        """The residual after the corrections, the station's term fitted without this event."""
        if station not in corrections:
            return res + network
        v = by_station[station]
        own = final[event, station] + network
        return res + network - (float(np.sum(v)) - own) / (len(v) - 1 + PRIOR_EVENTS)

    series = [row for row in series if row[:2] in final]  # a series needs its station's end
    # Every value once: (event, station, left-out residual, sigma, time after the first P or
    # None for a final value), read by rho, the event-level terms and the sigma scale.
    left = [(e, s, left_out(e, s, r), sg, None) for e, s, r, sg in records] + [
        (e, s, left_out(e, s, r), sg, round(t, 3)) for e, s, r, sg, t in series
    ]
    by_event_left: dict[str, list[float]] = defaultdict(list)
    for event, _, res, _, seconds in left:
        if seconds is None:
            by_event_left[event].append(res)
    rho = shared_fraction([np.array(v) for v in by_event_left.values()])
    event_magnitudes = [catalogue[e] for e in by_event]
    pivot = float(np.mean(event_magnitudes))
    by_time = _event_residuals(left, rho)
    terms = _fit_event_terms(by_time, catalogue, pivot)
    standardised = []
    for event, _, res, sigma, seconds in left:
        c, g = terms.get(seconds, (0.0, 1.0))
        # The calibrated event-level error of this one value, in units of its calibrated sigma.
        err = _calibrated_error(res, catalogue[event] - pivot, c, g)
        standardised.append(err / (g * sigma) if sigma > 0 else math.nan)
    z = np.array(standardised)
    scale = float(np.sqrt(np.mean(z**2))) if np.all(np.isfinite(z)) else 1.0
    scales = _fit_sigma_scales(by_time, catalogue, pivot, terms, scale)
    knots = sorted(t for t in terms if t is not None)
    final_c, final_g = terms.get(None, (0.0, 1.0))
    return StationTable(
        corrections=corrections,
        network_correction=network,
        shared_error_fraction=rho,
        sigma_scale=scale,
        early=tuple((t, terms[t][0]) for t in knots),
        early_gain=tuple(terms[t][1] for t in knots),
        early_sigma_scale=tuple(scales.get(t, scale) for t in knots),
        final_sigma_scale=scales.get(None, scale),
        final_correction=final_c,
        final_gain=final_g,
        magnitude_pivot=pivot,
        magnitude_range=(min(event_magnitudes), max(event_magnitudes)),
        model=model,
        events=len(by_event),
    )


def _event_residuals(rows: list, rho: float) -> dict[float | None, dict[str, EventEstimate]]:
    """Per time after the first P (None: the final values), each event's residual as the event
    magnitude combines it (:func:`.event.combine` of its stations' residuals then; the same
    for magnitudes and for their residuals against one catalogue value)."""
    by_time: dict[float | None, dict[str, list[StationEstimate]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for event, station, res, sigma, seconds in rows:
        by_time[seconds][event].append(StationEstimate(station, res, sigma))
    return {t: {e: combine(v, rho) for e, v in events.items()} for t, events in by_time.items()}


def _fit_event_terms(
    by_time: dict[float | None, dict[str, EventEstimate]], catalogue: dict[str, float], pivot: float
) -> dict:
    """Per time after the first P (None: the final values), the (correction, gain) of the event
    magnitude: the event residuals then (:func:`_event_residuals`) regressed
    on the catalogue magnitude, ``residual = a + b * (M - pivot)``, both terms shrunk, and
    inverted: correction ``-a``, gain ``1 / (1 + b)``. Times with fewer than
    ``MIN_KNOT_EVENTS`` events are left out; with fewer than ``MIN_SLOPE_EVENTS`` the gain
    is 1."""
    terms = {}
    for t, events in by_time.items():
        n = len(events)
        if n < MIN_KNOT_EVENTS:
            continue
        r = np.array([est.magnitude for est in events.values()])
        x = np.array([catalogue[e] - pivot for e in events])
        b = 0.0
        if n >= MIN_SLOPE_EVENTS and np.ptp(x) > 0:
            b = float(np.cov(x, r, bias=True)[0, 1] / np.var(x))
        a = float(np.mean(r) - b * np.mean(x))
        shrink = n / (n + PRIOR_EVENTS)
        b = float(np.clip(b * shrink, *SLOPE_RANGE))
        terms[t] = (-a * shrink, 1.0 / (1.0 + b))
    return terms


def _calibrated_error(residual: float, above_pivot: float, correction: float, gain: float) -> float:
    """The error of a value ``residual`` off a catalogue magnitude ``above_pivot`` above the
    pivot, once the correction and gain are applied (:meth:`.event.Calibration.calibrate`)."""
    return (gain - 1.0) * above_pivot + gain * (residual + correction)


def _fit_sigma_scales(
    by_time: dict[float | None, dict[str, EventEstimate]],
    catalogue: dict[str, float],
    pivot: float,
    terms: dict,
    scale: float,
) -> dict:
    """Per time with event-level terms, the scale of the event sigma: the root mean square of
    the calibrated event errors in units of their sigma (over n - 2: the correction and gain
    were fitted on these events), shrunk in log towards ``scale`` (the station values') by
    n / (n + PRIOR_EVENTS), then averaged in log over ``SMOOTH_KNOTS`` neighbouring times on
    each side. Times with fewer than ``MIN_SLOPE_EVENTS`` events keep ``scale``."""
    out = {}
    for t, (c, g) in terms.items():
        z = np.array(
            [
                _calibrated_error(est.magnitude, catalogue[e] - pivot, c, g) / (g * est.sigma)
                for e, est in by_time[t].items()
                if est.sigma > 0
            ]
        )
        n = z.size
        if n < MIN_SLOPE_EVENTS:
            continue
        w = n / (n + PRIOR_EVENTS)
        log_scale = w * 0.5 * math.log(float(np.sum(z**2)) / (n - 2)) + (1 - w) * math.log(scale)
        out[t] = float(np.clip(math.exp(log_scale), *SIGMA_SCALE_RANGE))
    knots = sorted(t for t in out if t is not None)
    logs = np.log([out[t] for t in knots])
    for i, t in enumerate(knots):
        out[t] = float(np.exp(logs[max(0, i - SMOOTH_KNOTS) : i + SMOOTH_KNOTS + 1].mean()))
    return out


def prediction_rows(
    source_id: str, catalogue_magnitude: float, stations: list[PastStation]
) -> list[dict[str, str]]:
    """The predictions CSV rows of one past event: each station's final magnitude (the last
    value its event counts, :func:`.event.event_values`, where it has a series), and its latest
    value at each of ``SERIES_KNOTS`` after the event's first P where it counted then."""
    first, members = associate({s.station: s.onset for s in stations})
    rows = []
    for s in stations:
        values = [("", s.magnitude, s.sigma)]
        if first is not None and s.station in members and s.sigmas is not None:
            t = np.asarray(s.offsets, dtype=np.float64) + float(s.series_start - first)
            usable = event_values(t - float(s.onset - first), np.isfinite(s.series))
            t, m, sg = t[usable], np.asarray(s.series)[usable], np.asarray(s.sigmas)[usable]
            if t.size:  # the final value the event counts
                values[0] = ("", m[-1], sg[-1])
            for knot in SERIES_KNOTS:
                k = int(np.searchsorted(t, knot + 1e-9, side="right")) - 1
                if k >= 0:
                    values.append((f"{knot:g}", m[k], sg[k]))
        rows += [
            {
                "source_id": source_id,
                "station_id": s.station,
                "magnitude": str(value),
                "catalogue_magnitude": str(catalogue_magnitude),
                "sigma": str(sigma),
                SERIES_COLUMN: seconds,
            }
            for seconds, value, sigma in values
        ]
    return rows


def write_predictions(path: str | Path, rows: list[dict[str, str]]) -> None:
    """Appends rows to a predictions CSV (the header first when the file is new or empty)."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*COLUMNS, "sigma", SERIES_COLUMN])
        if new:
            writer.writeheader()
        writer.writerows(rows)


def shared_fraction(residuals_by_event: list[np.ndarray]) -> float:
    """Share of the residual variance common to an event: 1 - (within-event variance, with the
    n / (n - 1) correction) / (total variance), over events with two or more stations."""
    multi = [r for r in residuals_by_event if r.size > 1]
    if not multi:
        return SHARED_ERROR_FRACTION
    within = np.concatenate([(r - r.mean()) ** 2 * r.size / (r.size - 1) for r in multi])
    total = np.concatenate(multi)
    var = float(np.var(total))
    return float(np.clip(1.0 - within.mean() / var, 0.0, 1.0)) if var > 0 else 0.0


def read_predictions(path: str | Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
