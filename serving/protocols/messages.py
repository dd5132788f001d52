"""Wire messages <-> the serving core: one place for every protobuf conversion."""

from __future__ import annotations

import json
import math

import numpy as np
from obspy import Trace, UTCDateTime

from seismag.serving.pipeline import ingest
from seismag.serving.pipeline.embed import StationEmbedding
from seismag.serving.pipeline.event import EventResult, EventUpdate
from seismag.serving.pipeline.limits import check_codes, check_station_id, check_time
from seismag.serving.pipeline.results import StationResult, StationUpdate
from seismag.serving.v1 import seismag_pb2 as pb


def _time_or_nan(t: UTCDateTime | None) -> tuple[float, bool]:
    return (math.nan, False) if t is None else (float(UTCDateTime(t).timestamp), True)


def _timings(ms: dict[str, float]) -> pb.Timings:
    return pb.Timings(
        preprocess_ms=float(ms.get("preprocess", 0.0)),
        queue_ms=float(ms.get("queue", 0.0)),
        compute_ms=float(ms.get("compute", 0.0)),
        total_ms=float(ms.get("total", 0.0)),
    )


def station_magnitude(r: StationResult) -> pb.StationMagnitude:
    onset, has_onset = _time_or_nan(r.onset)
    return pb.StationMagnitude(
        network=r.network,
        station=r.station,
        location=r.location,
        magnitude=float(r.magnitude),
        derivation=r.derivation,
        series=pb.MagnitudeSeries(
            start=float(UTCDateTime(r.series_start).timestamp),
            interval=float(r.series_interval),
            values=np.asarray(r.series, dtype=np.float32).tolist(),
            sigmas=(
                [] if r.sigma_series is None else np.asarray(r.sigma_series, np.float32).tolist()
            ),
        ),
        onset=onset,
        has_onset=has_onset,
        onset_source=r.onset_source,
        onset_confidence=float(r.onset_confidence),
        magnitude_sigma=float(r.magnitude_sigma) if r.has_sigma else math.nan,
        has_sigma=r.has_sigma,
        model=r.model,
        model_version=str(r.model_version),
        missing_components=list(r.missing_components),
        timings=_timings(r.timings_ms),
        warnings=list(r.warnings),
    )


def event_magnitude(e: EventResult) -> pb.EventMagnitude:
    has_sigma = bool(np.isfinite(e.final.sigma))
    return pb.EventMagnitude(
        magnitude=float(e.final.magnitude),
        magnitude_sigma=float(e.final.sigma),
        has_sigma=has_sigma,
        first_onset=float(UTCDateTime(e.first_onset).timestamp),
        stations=list(e.final.used),
        rejected=list(e.final.rejected),
        not_associated=list(e.not_associated),
        series=pb.MagnitudeSeries(
            start=float(UTCDateTime(e.series_start).timestamp),
            interval=float(e.series_interval),
            values=np.asarray(e.series, dtype=np.float32).tolist(),
            sigmas=np.asarray(e.sigma_series, np.float32).tolist() if has_sigma else [],
        ),
        station_counts=[int(c) for c in e.station_counts],
        method=e.method,
        corrections=e.corrections,
    )


def predict_response(results: list[StationResult], event: EventResult | None) -> pb.PredictResponse:
    response = pb.PredictResponse(results=[station_magnitude(r) for r in results])
    if event is not None:
        response.event.CopyFrom(event_magnitude(event))
        response.has_event = True
    return response


def event_update(e: EventUpdate) -> pb.EventUpdate:
    return pb.EventUpdate(
        event_id=e.event_id,
        time=float(UTCDateTime(e.time).timestamp),
        first_onset=float(UTCDateTime(e.first_onset).timestamp),
        magnitude=float(e.estimate.magnitude),
        magnitude_sigma=float(e.estimate.sigma),
        has_sigma=bool(np.isfinite(e.estimate.sigma)),
        stations=list(e.estimate.used),
        rejected=list(e.estimate.rejected),
    )


def stream_update(u: StationUpdate) -> pb.StreamUpdate:
    onset, has_onset = _time_or_nan(u.onset)
    return pb.StreamUpdate(
        network=u.network,
        station=u.station,
        location=u.location,
        time=float(UTCDateTime(u.time).timestamp),
        magnitude=float(u.magnitude),
        onset=onset,
        has_onset=has_onset,
        onset_source=u.onset_source,
        onset_confidence=float(u.onset_confidence),
        magnitude_sigma=float(u.magnitude_sigma),
        has_sigma=u.has_sigma,
        model=u.model,
        lag_seconds=float(u.lag_s),
        timings=_timings(u.timings_ms),
        warnings=list(u.warnings),
    )


def runtime_json(runtime) -> str:
    """How the executor runs one model (reported by ListModels/GetModel)."""
    batcher = runtime.batcher
    return json.dumps(
        {
            "backend": getattr(runtime, "backend_name", "ort"),
            "kernel": runtime.kernel,
            "workers": batcher.workers,
            "max_batch": batcher.max_batch,
            "max_queue_delay_ms": batcher.max_queue_delay_ms,
            "max_queue": batcher.max_queue,
            "micro_batch": runtime.micro_batch,
        },
        sort_keys=True,
    )


def _specs(items) -> list[pb.TensorSpec]:
    """(name, datatype, shape) triples, as the runtimes' input_specs / output_specs give them."""
    return [pb.TensorSpec(name=n, datatype=d, shape=[int(x) for x in s]) for n, d, s in items]


def model_info(runtime, default_name: str, server_config_json: str = "") -> pb.ModelInfo:
    return pb.ModelInfo(
        name=runtime.name,
        version=str(runtime.version),
        card_json=json.dumps(runtime.card.to_dict()),
        weights=str(runtime.weights),
        is_default=runtime.name == default_name,
        inputs=_specs(runtime.input_specs()),
        outputs=_specs(runtime.output_specs()),
        runtime_json=runtime_json(runtime),
        server_config_json=server_config_json,
    )


def inline_model_info(model, server_config_json: str = "") -> pb.ModelInfo:
    """A model that runs inline, outside the batcher (an ``--encoder``, the ``--field-model``),
    as ListModelsResponse.encoders and .field_models list them."""
    return pb.ModelInfo(
        name=model.name,
        version=str(model.version),
        card_json=model.card.to_json(),
        weights=str(model.weights),
        inputs=_specs(model.input_specs()),
        outputs=_specs(model.output_specs()),
        runtime_json=json.dumps(model.runtime_info(), sort_keys=True),
        server_config_json=server_config_json,
    )


def station_embedding(e: StationEmbedding) -> pb.StationEmbedding:
    values = np.ascontiguousarray(e.embedding, dtype=np.float32)
    return pb.StationEmbedding(
        network=e.network,
        station=e.station,
        location=e.location,
        window_start=float(e.window_start.timestamp),
        window_end=float(e.window_end.timestamp),
        step_seconds=e.step_seconds,
        shape=list(values.shape),
        values=values.reshape(-1).tolist(),
        missing_components=list(e.missing_components),
        warnings=list(e.warnings),
        timings=_timings(e.timings_ms),
    )


def embed_response(encoder, found: list[StationEmbedding]) -> pb.EmbedResponse:
    return pb.EmbedResponse(
        encoder=encoder.name,
        encoder_version=str(encoder.version),
        embeddings=[station_embedding(e) for e in found],
    )


def raw_trace(t: pb.RawTrace) -> Trace:
    """A checked Trace (codes, rate, times, finite samples; see ingest.trace_from_array)."""
    sid = check_codes(t.network, t.station, t.location, t.channel)
    start = check_time(f"{sid} start", t.starttime)
    return ingest.trace_from_array(
        t.network,
        t.station,
        t.location,
        t.channel,
        t.sampling_rate,
        UTCDateTime(start),
        np.asarray(t.samples, dtype=np.float32),
    )


def pick_time(p: pb.PPick) -> UTCDateTime:
    """The pick's time after checking its station id and that the time is plausible."""
    check_station_id(p.station_id)
    return UTCDateTime(check_time(f"P pick for {p.station_id}", p.time))
