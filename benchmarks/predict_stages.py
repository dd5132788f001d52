"""Where one Predict's time goes: each stage of the served path alone, and the gRPC floor.

    seismag bench stages --repeats 1000

Stages, in this process and without gRPC, on the request ``seismag bench predict`` sends (30 s
3-component miniSEED in m/s, one P pick, the final magnitude only): parsing the request message,
decoding the miniSEED (``ingest.read_miniseed``), the station pipeline up to the model
(``pipeline.predict.prepare`` less the decode), the model as the event loop runs it when the
model is idle (``ModelRuntime.run_if_idle``), the station results, the event magnitude and the
response message. Round trips, against the target server, as a Python gRPC client sees them:
``Health.Check``, a Predict refused at once (no input), the same 36 KB request refused after it
was parsed (a model the server does not have), and the full Predict. The refused Predicts are the
floor that gRPC, the interceptor and the client put under any Predict. Medians in ms; stages and
round trips are separate measurements, so they need not add up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from obspy import UTCDateTime

from seismag.benchmarks.loadgen import Workload
from seismag.benchmarks.stats import median_ms
from seismag.serving.v1 import seismag_pb2 as pb
from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc

UNKNOWN_MODEL = "no-such-model"
WARMUP = 20
"""Untimed calls before each stage is timed."""


def stage_times(runtime, picker, request: pb.PredictRequest, repeats: int) -> dict[str, float]:
    """Median ms of each stage of a single-model Predict of ``request`` (see the module doc)."""
    from seismag.serving.pipeline import ingest
    from seismag.serving.pipeline.event import event_magnitude
    from seismag.serving.pipeline.predict import prepare
    from seismag.serving.protocols.messages import predict_response

    data = request.SerializeToString()
    options = dict(
        picker=picker,
        units=request.input_units,
        p_picks={p.station_id: UTCDateTime(p.time) for p in request.p_picks} or None,
        series_interval=request.series_interval,
        checked=True,
    )
    prepared = prepare(runtime, ingest.read_miniseed(request.miniseed), **options)

    def model():
        ran = runtime.run_if_idle(prepared.waveform, prepared.log_amp, runtime.expect())
        if ran is None:
            raise RuntimeError(f"{runtime.name} was not idle: stages need a model of their own")
        return ran

    ran = model()
    results = prepared.results(*ran)
    event = event_magnitude(results, None)
    t = {
        "parse request": median_ms(lambda: pb.PredictRequest.FromString(data), repeats, WARMUP),
        "decode miniSEED": median_ms(
            lambda: ingest.read_miniseed(request.miniseed), repeats, WARMUP
        ),
    }
    with_decode = median_ms(
        lambda: prepare(runtime, ingest.read_miniseed(request.miniseed), **options), repeats, WARMUP
    )
    t["station pipeline"] = with_decode - t["decode miniSEED"]
    t["model"] = median_ms(model, repeats, WARMUP)
    t["results"] = median_ms(lambda: prepared.results(*ran), repeats, WARMUP)
    t["event magnitude"] = median_ms(lambda: event_magnitude(results, None), repeats, WARMUP)
    t["response message"] = median_ms(
        lambda: predict_response(results, event).SerializeToString(), repeats, WARMUP
    )
    return t


def round_trips(address: str, request: pb.PredictRequest, repeats: int) -> dict[str, float]:
    """Median ms a Python gRPC client waits for each call (see the module doc)."""
    unknown = pb.PredictRequest()
    unknown.CopyFrom(request)
    unknown.model = UNKNOWN_MODEL
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb_grpc.MagnitudeServiceStub(channel)

        def refused(req: pb.PredictRequest, code: grpc.StatusCode) -> Callable[[], None]:
            def call() -> None:
                try:
                    stub.Predict(req, timeout=10)
                except grpc.RpcError as exc:
                    if exc.code() != code:
                        raise
                else:
                    raise RuntimeError(f"a Predict the server should refuse ({code.name}) passed")

            return call

        calls = {
            "Health.Check": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10),
            "Predict, no input (refused)": refused(
                pb.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT
            ),
            "Predict, unknown model (refused after parsing)": refused(
                unknown, grpc.StatusCode.NOT_FOUND
            ),
            "Predict": lambda: stub.Predict(request, timeout=10),
        }
        return {name: median_ms(fn, repeats, warmup=100) for name, fn in calls.items()}


def run(address: str, options, *, repeats: int = 1000, model: str = "") -> dict[str, Any]:
    """Stages on a registry built with ``options`` (a :class:`~.target.ServerOptions`), then
    the round trips to ``address``; one after the other, never at once."""
    from seismag.serving.config import DEFAULTS

    workload = Workload.rjob(model=model)
    # As `seismag serve` loads it (the backend it picks, its picker), not as a library caller.
    registry = options.load_registry(backend=DEFAULTS.backend, picker=DEFAULTS.picker)
    try:
        runtime = registry.get(model)
        stages = stage_times(runtime, registry.picker, workload.request, repeats)
        described = f"{runtime.name} on {runtime.backend_name}"
    finally:
        registry.close()
    trips = round_trips(address, workload.request, repeats)
    return {
        "workload": workload.description,
        "model": described,
        "repeats": repeats,
        "stages_ms": stages,
        "round_trips_ms": trips,
    }


def report(result: dict[str, Any]) -> str:
    lines = [f"{result['workload']}; {result['model']}; medians of {result['repeats']} calls"]
    lines.append("stages in this process (no gRPC), ms:")
    lines += [f"  {k:48s} {v:7.3f}" for k, v in result["stages_ms"].items()]
    lines.append(f"  {'sum':48s} {sum(result['stages_ms'].values()):7.3f}")
    lines.append("round trips at the client, ms:")
    lines += [f"  {k:48s} {v:7.3f}" for k, v in result["round_trips_ms"].items()]
    return "\n".join(lines)
