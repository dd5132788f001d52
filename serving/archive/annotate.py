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
from obspy import Stream, Trace, UTCDateTime

from seismag.models.card import ModelCard
from seismag.models.preprocess import model_inputs
from seismag.serving.config import DEFAULTS
from seismag.serving.errors import InvalidInput, ServingError
from seismag.serving.executor.backend import Backend
from seismag.serving.executor.picker_runtime import load_picker
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
    picker: str = DEFAULTS.picker
    """P onsets where none is given: as ``seismag serve --picker``."""

    def key(self, card: ModelCard) -> dict:
        """What a unit's results depend on: a re-run with another key must not mix with them."""
        return {
            "model": card.name,
            "model_version": card.version,
            "units": self.units,
            "series_interval": self.series_interval,
            "response": self.response,
            "missing": self.missing,
            "picker": self.picker,
        }


@dataclass
class Values:
    """A unit's evaluations without their windows, as columns (cheap to send between
    processes): sample index of each value's time, its onset (-1: none), magnitude, sigma."""

    index: np.ndarray  # int64
    onset: np.ndarray  # int64
    magnitude: np.ndarray  # float64
    sigma: np.ndarray  # float64 (NaN: the model has no sigma)
    confidence: np.ndarray  # float64
    source: list[str]  # per value: what found its onset (a picker, "request" or "none")

    @classmethod
    def empty(cls) -> Values:
        i, f = np.zeros(0, np.int64), np.zeros(0)
        return cls(i, i.copy(), f, f.copy(), f.copy(), [])

    def __len__(self) -> int:
        return len(self.index)


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
    values: Values = field(default_factory=Values.empty)
    grid_points: int = 0
    """Series points the unit's samples span (evaluated or without a value)."""
    warnings: tuple[str, ...] = ()
    error: str | None = None
    """Why the unit has no values (no onset in a quiet day, or a failure)."""
    failed: bool = False
    """The unit could not be annotated (unreadable, no usable component, no response, ...):
    nothing is written for it, so a re-run tries it again."""
    seconds: float = 0.0

    def time_of(self, index: int) -> UTCDateTime:
        return self.start + int(index) / self.rate

    def onset_rows(self, model: str, version: str) -> list[dict]:
        """One row per onset: the magnitude with the most data (the last value that onset gave)."""
        v = self.values
        rows: list[dict] = []
        for onset in np.unique(v.onset[v.onset >= 0]):
            at = np.flatnonzero(v.onset == onset)
            k = at[-1]
            rows.append(
                {
                    "network": self.network,
                    "station": self.station,
                    "location": self.location,
                    "onset": str(self.time_of(onset)),
                    "onset_source": v.source[k],
                    "onset_confidence": round(float(v.confidence[k]), 4),
                    "magnitude": float(v.magnitude[k]),
                    "sigma": float(v.sigma[k]),
                    "time": str(self.time_of(v.index[k])),
                    "first_time": str(self.time_of(v.index[at[0]])),
                    "values": len(at),
                    "model": model,
                    "model_version": version,
                    "unit": self.unit,
                }
            )
        return rows


def _run(backend: Backend, card: ModelCard, evals: list[Evaluation], out: list[tuple]) -> None:
    """Normalise a batch of raw windows, run it and keep each evaluation's values."""
    x, log_amp = model_inputs(np.stack([ev.waveform for ev in evals]), card)
    rows = backend.run(x, log_amp)
    for j, ev in enumerate(evals):
        sigma = math.nan if rows.sigma is None else output_value(card, rows.sigma[j], ev)
        onset = -1 if ev.onset is None else ev.onset
        mag = output_value(card, rows.magnitude[j], ev)
        out.append((ev.index, onset, mag, sigma, ev.confidence, ev.source))


def annotate_stream(
    backend: Backend,
    stream: Stream,
    options: AnnotateOptions,
    *,
    unit: str = "",
    inventory: StationInventory | None = None,
    picker_threads: int = 1,
) -> UnitResult:
    """One station's samples -> its evaluated series; failures are the result's ``error``.

    ``picker_threads``: intra-op threads of the picker network (the values do not depend on it).
    """
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
            picker=load_picker(options.picker, picker_threads),
        )
        result.start, result.rate, result.step = track.start, track.rate, step
        result.warnings = warnings
        result.grid_points = -(-data.shape[1] // step)
        batch: list[Evaluation] = []
        got: list[tuple] = []
        for ev in walk(track, data, step, budget=Budget(), normalise=False):
            batch.append(ev)
            if len(batch) == options.batch:
                _run(backend, card, batch, got)
                batch = []
        if batch:
            _run(backend, card, batch, got)
        if got:
            index, onset, mag, sigma, conf, source = zip(*got, strict=True)
            result.values = Values(
                np.array(index, np.int64), np.array(onset, np.int64), np.array(mag),
                np.array(sigma), np.array(conf), list(source),
            )  # fmt: skip
        if not got:
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
    step, v = result.step, result.values
    keep = np.flatnonzero((v.index + 1) % step == 0)
    if not len(keep):
        return [Stream(), Stream()]
    breaks = np.flatnonzero(np.diff(v.index[keep]) != step) + 1
    mags, sigmas = Stream(), Stream()
    for run in np.split(keep, breaks):
        header = {
            "network": result.network,
            "station": result.station,
            "location": result.location,
            "channel": channel,
            "starttime": result.time_of(v.index[run[0]]),
            "sampling_rate": result.rate / step,
        }
        mags.append(Trace(v.magnitude[run].astype(np.float32), header=header))
        sig = v.sigma[run].astype(np.float32)
        if np.isfinite(sig).all():
            sigmas.append(Trace(sig, header={**header, "channel": channel[:2] + "S"}))
    return [mags, sigmas]
