"""seismag.v1.MagnitudeService on the asyncio server: wire messages <-> the station pipeline.

Predict's preprocessing (decoding, response removal, resampling, the picker) is CPU work in
NumPy/ObsPy and waits on the batcher, so it runs in the server's work threads; the event loop only
converts messages. The work carries a :class:`~seismag.serving.pipeline.limits.Budget`: its
deadline is the client's, and its cancel flag is set when the call is cancelled (the client went
away, or the server stopped after its grace period), so the thread stops at its next check
instead of finishing an answer nobody reads. StreamPredict runs on the loop (see
:mod:`.stream_rpc`). No model logic here.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING

from obspy import Stream

from seismag.serving.errors import InvalidInput
from seismag.serving.pipeline import ingest
from seismag.serving.pipeline.limits import (
    MAX_STATIONS,
    MAX_TRACES,
    Budget,
    check_count,
    check_model_name,
)
from seismag.serving.pipeline.predict import predict
from seismag.serving.protocols import stream_rpc
from seismag.serving.protocols.messages import model_info, pick_time, raw_trace, station_magnitude
from seismag.serving.protocols.rpc import check_deadline, rpc
from seismag.serving.v1 import seismag_pb2 as pb
from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from seismag.serving.protocols.server import SeismagServer


class MagnitudeServicer(pb_grpc.MagnitudeServiceServicer):
    def __init__(self, server: SeismagServer) -> None:
        self._server = server
        self._registry = server.registry

    def _predict(
        self, request: pb.PredictRequest, budget: Budget, started: float
    ) -> pb.PredictResponse:
        """The blocking part of Predict (a work thread)."""
        budget.check("before it started")
        kind = request.WhichOneof("input")
        if kind == "miniseed":
            stream = ingest.read_miniseed(request.miniseed)
        elif kind == "raw":
            traces = request.raw.traces
            check_count("traces", len(traces), MAX_TRACES, "send fewer stations or fewer gaps")
            stream = Stream([raw_trace(t) for t in traces])
        else:
            raise InvalidInput("the request has no input: set `miniseed` or `raw`")
        check_count("P picks", len(request.p_picks), MAX_STATIONS, "send one per station")
        picks = {p.station_id: pick_time(p) for p in request.p_picks}
        inventory = ingest.read_stationxml(request.stationxml) if request.stationxml else None
        budget.check("after decoding")
        results = predict(
            self._registry,
            stream,
            model=request.model,
            units=request.input_units,
            inventory=inventory,
            server_inventory=self._server.inventory,
            p_picks=picks or None,
            series_interval=request.series_interval or self._server.config.series_interval,
            started=started,
            budget=budget,
            checked=True,
        )
        return pb.PredictResponse(results=[station_magnitude(r) for r in results])

    @rpc
    async def Predict(self, request, context):
        started = time.perf_counter()
        self._server.require_ready()
        check_model_name(request.model)
        budget = Budget(await check_deadline(context))
        work = functools.partial(self._predict, request, budget, started)
        future = asyncio.get_running_loop().run_in_executor(self._server.work, work)
        try:
            return await future
        except asyncio.CancelledError:
            budget.cancelled.set()  # nobody waits for the answer: stop at the next check
            raise

    @rpc
    async def ListModels(self, request, context):
        reg, config = self._registry, self._server.config.public_json()
        return pb.ListModelsResponse(
            models=[model_info(reg.get(n), reg.default_name, config) for n in reg.names()],
            default_model=reg.default_name,
            server_config_json=config,
        )

    @rpc
    async def GetModel(self, request, context):
        reg = self._registry
        return model_info(
            reg.get(check_model_name(request.name)),
            reg.default_name,
            self._server.config.public_json(),
        )

    @rpc
    async def StreamPredict(self, request_iterator, context):
        self._server.require_ready()
        async for message in stream_rpc.serve_stream(self._server, context):
            yield message
