"""Several models' results for one station combined into one, with their spread as uncertainty.

A deep ensemble (Lakshminarayanan et al., NeurIPS 2017): the members' mean magnitude, and a
variance that adds the members' own variances (aleatoric: what each model says the data leave
open) to the variance of their means (epistemic: how much models trained differently disagree).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from obspy import UTCDateTime

from seismag.serving.pipeline.limits import Budget
from seismag.serving.pipeline.predict import predict, station_id
from seismag.serving.pipeline.results import StationResult

METHOD = (
    "per station: the members' mean magnitude; variance = mean of the members' variances + "
    "variance of their means"
)


def combine_members(values: np.ndarray, sigmas: np.ndarray | None) -> tuple[float, float]:
    """Mean and standard deviation of an ensemble's member values (NaN sigma without sigmas)."""
    mean = float(np.mean(values))
    if sigmas is None or not np.all(np.isfinite(sigmas)):
        return mean, math.nan
    return mean, math.sqrt(float(np.mean(np.square(sigmas)) + np.var(values)))


def ensemble_station(members: Sequence[StationResult], name: str) -> StationResult:
    """One station's ensemble result: series values where every member has one (each member's
    latest value at or before the time of the latest-starting member's values)."""
    if not members:
        raise ValueError("an ensemble needs members")
    ref = UTCDateTime(members[0].series_start)
    times = [float(UTCDateTime(r.series_start) - ref) + r.series_offsets() for r in members]
    base = int(np.argmax([t[0] for t in times]))  # the member whose series starts last
    grid = times[base]
    values = np.empty((len(members), grid.size))
    sigmas = np.full((len(members), grid.size), np.nan)
    for m, (r, t) in enumerate(zip(members, times, strict=True)):
        j = np.searchsorted(t, grid + 1e-9, side="right") - 1
        values[m] = np.asarray(r.series)[j]
        if r.sigma_series is not None:
            sigmas[m] = np.asarray(r.sigma_series)[j]
    has_sigma = all(r.sigma_series is not None for r in members)
    pairs = [
        combine_members(values[:, k], sigmas[:, k] if has_sigma else None) for k in range(grid.size)
    ]
    series = np.array([p[0] for p in pairs])
    sigma_series = np.array([p[1] for p in pairs]) if has_sigma else None
    with_onset = [r for r in members if r.onset is not None]
    first = with_onset[0] if with_onset else members[base]
    return replace(
        members[base],
        magnitude=float(series[-1]),
        derivation=f"mean of {', '.join(r.model for r in members)} (ensemble)",
        series=series,
        sigma_series=sigma_series,
        magnitude_sigma=float(sigma_series[-1]) if sigma_series is not None else math.nan,
        onset=first.onset,
        onset_source=first.onset_source,
        onset_confidence=first.onset_confidence,
        model=name,
        model_version="+".join(f"{r.model}:{r.model_version}" for r in members),
        warnings=tuple(dict.fromkeys(w for r in members for w in r.warnings)),
    )


def predict_ensemble(
    registry, stream, members: Sequence[str], name: str, *, budget: Budget | None = None, **options
) -> list[StationResult]:
    """:func:`~seismag.serving.pipeline.predict.predict` with every member, combined per
    station (in the request's station order). The members run one after the other under one
    budget; each refuses what it would refuse alone."""
    budget = budget or Budget()
    per_member = [predict(registry, stream, model=m, budget=budget, **options) for m in members]
    by_station: dict[str, list[StationResult]] = {}
    for results in per_member:
        for r in results:
            by_station.setdefault(station_id(r.network, r.station, r.location), []).append(r)
    return [ensemble_station(rs, name) for rs in by_station.values()]
