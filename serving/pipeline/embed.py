"""A recorded stream -> one encoder embedding per station: the Embed RPC's pipeline.

Each station goes through the same checks, units and resampling as Predict
(:func:`~seismag.serving.pipeline.predict.station_array`: dead, flat and unknown components left
out and said, counts corrected with their response or refused, the request's work estimated
from its headers first); its **latest window** (the last ``in_samples`` samples at the
encoder's rate, left-padded with the first sample when the record is shorter, as Predict pads)
is normalised the encoder card's way and embedded. One window per station, not one per step
of a series: an embedding already describes every ``step_seconds`` of its window, and a client
that wants other windows sends the data that ends where it wants.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from obspy import Inventory, Stream, UTCDateTime

from seismag.models.preprocess import last_window
from seismag.serving.executor.encoder_runtime import EncoderRuntime
from seismag.serving.pipeline.ingest import check_stream
from seismag.serving.pipeline.limits import IN_FLIGHT, MAX_STATIONS, Budget, check_count
from seismag.serving.pipeline.predict import _check_work, _group, station_array
from seismag.serving.pipeline.units import COUNTS, Responses, StationInventory


@dataclass
class StationEmbedding:
    network: str
    station: str
    location: str
    embedding: np.ndarray
    """(T, D) float32: step t describes the window around ``window_start + t * step_seconds``."""
    window_start: UTCDateTime
    window_end: UTCDateTime
    """Time of the window's last sample: the station's data end."""
    step_seconds: float
    encoder: str
    encoder_version: str
    missing_components: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)
    """'preprocess', 'queue' (always 0: encoders run inline), 'compute', 'total'."""


def embed(
    encoder: EncoderRuntime,
    stream: Stream,
    *,
    units: str = COUNTS,
    inventory: Inventory | None = None,
    server_inventory: StationInventory | None = None,
    budget: Budget | None = None,
    checked: bool = False,
    started: float | None = None,
) -> list[StationEmbedding]:
    """One :class:`StationEmbedding` per (network, station, location) in ``stream``, in request
    order. Raises what Predict's preparation raises (InvalidInput naming the station,
    MissingResponse, Overloaded, TimeoutError / Cancelled from ``budget``)."""
    t_start = time.perf_counter() if started is None else started
    budget = budget or Budget()
    card = encoder.card
    responses = Responses(units, inventory, server_inventory)
    check_stream(stream, samples=not checked)
    groups = _group(stream)
    check_count("stations", len(groups), MAX_STATIONS, "split them over several requests")
    rate, n = card.sampling_rate, card.in_samples
    windows, stations = [], []
    # One window per station: a series step of a window's length keeps the point count at one.
    with IN_FLIGHT.hold(_check_work(groups, card, n)):
        for key, st in groups.items():
            budget.check("while preparing the stations")
            t0 = time.perf_counter()
            arr, warnings = station_array(
                key, st, card, responses=responses, inventory=inventory, response="causal",
                missing="zeros",
            )  # fmt: skip
            have = arr.data.shape[1]
            end = arr.starttime + (have - 1) / rate
            if have < n:
                warnings += (
                    f"{have / rate:.2f} s of data for {card.name}'s {n / rate:g} s window: "
                    f"left-padded with the first sample by {(n - have) / rate:.2f} s (the steps "
                    "before the data start describe the padding)",
                )
            windows.append(last_window(arr.data, n))
            stations.append((key, arr, end, warnings, (time.perf_counter() - t0) * 1e3))
    budget.check("before the encoder ran")
    t0 = time.perf_counter()
    embeddings = encoder.embed(np.stack(windows), budget.check)
    compute_ms = (time.perf_counter() - t0) * 1e3
    total_ms = (time.perf_counter() - t_start) * 1e3
    return [
        StationEmbedding(
            network=key[0],
            station=key[1],
            location=key[2],
            embedding=embeddings[i],
            window_start=end - (n - 1) / rate,
            window_end=end,
            step_seconds=card.step_seconds,
            encoder=encoder.name,
            encoder_version=str(encoder.version),
            missing_components=arr.missing,
            warnings=warnings,
            timings_ms={"preprocess": ms, "queue": 0.0, "compute": compute_ms, "total": total_ms},
        )
        for i, (key, arr, end, warnings, ms) in enumerate(stations)
    ]
