"""One unit of an archive -> its magnitude series and per-onset magnitudes, as Predict gives them.

A unit is annotated by the station pipeline Predict uses (:func:`station_track`, :func:`walk`,
:func:`output_value`): same units and instrument correction, same onset rules, same grid, so
every value equals what a Predict of the unit's samples returns (tested). What differs is only
how the work is done: every grid point is evaluated (nothing is merged or skipped), windows are
normalised and run in batches of ``batch`` as they come (memory stays at one batch however long
the unit), the model runs in-process on the backend, and no per-request limit applies (a unit is
bounded by its day).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from obspy import Stream, UTCDateTime

from seismag.models.card import ModelCard
from seismag.models.preprocess import model_inputs
from seismag.serving.errors import InvalidInput, ServingError
from seismag.serving.executor.backend import Backend
from seismag.serving.pipeline.ingest import check_stream
from seismag.serving.pipeline.limits import Budget
from seismag.serving.pipeline.predict import (
    Evaluation,
    interval_samples,
    output_value,
    station_track,
    walk,
)
from seismag.serving.pipeline.units import COUNTS, Responses, StationInventory


@dataclass(frozen=True)
class AnnotateOptions:
    """How every unit is annotated; the same fields as a Predict request's options."""

    units: str = COUNTS
    series_interval: float = 1.0
    response: str = "causal"
    missing: str = "zeros"
    batch: int = 256
    """Windows normalised and run together."""

    def key(self, card: ModelCard) -> dict:
        """What a unit's results depend on: a re-run with another key must not mix with them."""
        return {
            "model": card.name,
            "model_version": card.version,
            "units": self.units,
            "series_interval": self.series_interval,
            "response": self.response,
            "missing": self.missing,
        }


@dataclass
class Point:
    """One evaluation without its window: what the results are built from."""

    index: int
    time: UTCDateTime
    onset: int | None
    source: str
    confidence: float
    magnitude: float
    sigma: float


@dataclass
class UnitResult:
    unit: str
    network: str
    station: str
    location: str
    start: UTCDateTime | None = None
    """Time of the unit's sample 0 (after the pipeline's checks); None without data."""
    rate: float = 0.0
    step: int = 1
    points: list[Point] = field(default_factory=list)
    grid_points: int = 0
    """Series points the unit's samples span (evaluated or without a value)."""
    warnings: tuple[str, ...] = ()
    error: str | None = None
    """Why the unit has no values (no onset in a quiet day, or a failure)."""
    failed: bool = False
    """The unit could not be annotated (unreadable, no usable component, no response, ...):
    nothing is written for it, so a re-run tries it again."""
    seconds: float = 0.0

    def onset_rows(self, model: str, version: str) -> list[dict]:
        """One row per onset: the magnitude with the most data (the last value that onset gave)."""
        rows: list[dict] = []
        last: dict[int, Point] = {}
        first: dict[int, Point] = {}
        counts: dict[int, int] = {}
        for p in self.points:
            if p.onset is None:
                continue
            first.setdefault(p.onset, p)
            last[p.onset] = p
            counts[p.onset] = counts.get(p.onset, 0) + 1
        for onset, p in sorted(last.items()):
            rows.append(
                {
                    "network": self.network,
                    "station": self.station,
                    "location": self.location,
                    "onset": str(self.start + onset / self.rate),
                    "onset_source": p.source,
                    "onset_confidence": round(p.confidence, 4),
                    "magnitude": p.magnitude,
                    "sigma": p.sigma,
                    "time": str(p.time),
                    "first_time": str(first[onset].time),
                    "values": counts[onset],
                    "model": model,
                    "model_version": version,
                    "unit": self.unit,
                }
            )
        return rows


def _run(backend: Backend, card: ModelCard, evals: list[Evaluation], out: list[Point]) -> None:
    """Normalise a batch of raw windows, run it and keep each evaluation's values."""
    x, log_amp = model_inputs(np.stack([ev.waveform for ev in evals]), card)
    rows = backend.run(x, log_amp)
    for j, ev in enumerate(evals):
        sigma = math.nan if rows.sigma is None else output_value(card, rows.sigma[j], ev)
        out.append(
            Point(
                ev.index,
                ev.time,
                ev.onset,
                ev.source,
                ev.confidence,
                output_value(card, rows.magnitude[j], ev),
                sigma,
            )
        )


def annotate_stream(
    backend: Backend,
    stream: Stream,
    options: AnnotateOptions,
    *,
    unit: str = "",
    inventory: StationInventory | None = None,
) -> UnitResult:
    """One station's samples -> its evaluated series; failures are the result's ``error``."""
    t0 = time.perf_counter()
    card = backend.card
    first = stream[0].stats if len(stream) else None
    result = UnitResult(
        unit,
        first.network if first else "",
        first.station if first else "",
        first.location if first else "",
    )
    try:
        if not len(stream):
            raise InvalidInput("no samples in the unit's time range")
        check_stream(stream, totals=False)
        key = (result.network, result.station, result.location)
        step = interval_samples(options.series_interval, card.sampling_rate)
        track, data, warnings = station_track(
            key,
            stream,
            card,
            responses=Responses(options.units, None, inventory),
            inventory=None,
            response=options.response,
            pick=None,
            missing=options.missing,
        )
        result.start, result.rate, result.step = track.start, track.rate, step
        result.warnings = warnings
        result.grid_points = -(-data.shape[1] // step)
        batch: list[Evaluation] = []
        for ev in walk(track, data, step, budget=Budget(), normalise=False):
            batch.append(ev)
            if len(batch) == options.batch:
                _run(backend, card, batch, result.points)
                batch = []
        if batch:
            _run(backend, card, batch, result.points)
        if not result.points:
            result.error = f"no magnitude: {track.no_value_reason()}"
    except ServingError as exc:  # bad data, a missing response: the unit says why, others go on
        result.error, result.failed = str(exc), True
    result.seconds = time.perf_counter() - t0
    return result


def series_traces(result: UnitResult, channel: str = "MAG") -> list[Stream]:
    """The unit's series as ObsPy traces, one per run of consecutive grid points: magnitude
    (``channel``) and, when the model has one, its standard deviation (``channel[:2] + 'S'``).

    Only points on the regular grid go in (a unit whose length is not a whole number of steps
    ends with one more value at its last sample; it is in the onset table, not in the traces).
    """
    from obspy import Trace

    step = result.step
    on_grid = [p for p in result.points if (p.index + 1) % step == 0]
    if not on_grid:
        return [Stream(), Stream()]
    idx = np.array([p.index for p in on_grid])
    breaks = np.flatnonzero(np.diff(idx) != step) + 1
    mags, sigmas = Stream(), Stream()
    for run in np.split(np.arange(len(on_grid)), breaks):
        header = {
            "network": result.network,
            "station": result.station,
            "location": result.location,
            "channel": channel,
            "starttime": on_grid[run[0]].time,
            "sampling_rate": result.rate / step,
        }
        mags.append(
            Trace(np.array([on_grid[k].magnitude for k in run], dtype=np.float32), header=header)
        )
        sig = np.array([on_grid[k].sigma for k in run], dtype=np.float32)
        if np.isfinite(sig).all():
            sigmas.append(Trace(sig, header={**header, "channel": channel[:2] + "S"}))
    return [mags, sigmas]
