"""seismag.v1.MagnitudeService on the asyncio server: wire messages <-> the station pipeline.

Predict's preprocessing (decoding, response removal, resampling, the picker) is CPU work in
NumPy/ObsPy. A small request (a few model windows, no StationXML: the usual real-time query) is
prepared on the event loop, which then awaits the batcher's future: one thread hand-off each way
instead of three. Anything larger is prepared in the server's work threads, so the loop never
stalls on a long record. The work carries a :class:`~seismag.serving.pipeline.limits.Budget`:
its deadline is the client's, and its cancel flag is set when the call is cancelled (the client
went away, or the server stopped after its grace period), so a work thread stops at its next
check instead of finishing an answer nobody reads. StreamPredict runs on the loop (see
:mod:`.stream_rpc`); Embed (an encoder, ``--encoder``) runs wholly in a work thread. No model
logic here.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from typing import TYPE_CHECKING

from obspy import Stream

from seismag.serving.errors import InvalidInput
from seismag.serving.pipeline import ingest
from seismag.serving.pipeline.embed import embed
from seismag.serving.pipeline.ensemble import METHOD as ENSEMBLE_METHOD
from seismag.serving.pipeline.ensemble import predict_ensemble
from seismag.serving.pipeline.event import event_magnitude
from seismag.serving.pipeline.limits import (
    MAX_STATIONS,
    MAX_TRACES,
    Budget,
    check_count,
    check_model_name,
)
from seismag.serving.pipeline.predict import PreparedRequest, find_pick, prepare
from seismag.serving.protocols import stream_rpc
from seismag.serving.protocols.loop_policy import LoopModelPolicy
from seismag.serving.protocols.messages import (
    embed_response,
    inline_model_info,
    model_info,
    pick_time,
    predict_response,
    raw_trace,
)
from seismag.serving.protocols.rpc import check_deadline, rpc
from seismag.serving.v1 import seismag_pb2 as pb
from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from seismag.serving.protocols.server import SeismagServer

LOOP_MAX_BYTES = 128 * 1024
"""Payloads up to this size are decoded on the event loop (a 30 s 3-component record: ~40 KB)."""
LOOP_MAX_WINDOWS = 8
"""Requests needing at most this many model windows are also prepared on the loop (~0.1 ms
each), unless a station without a pick would run the picker network; more (a long record, a 1 s
series) go to a work thread."""
LOOP_MAX_MODEL_MS = 2.0
"""A request prepared on the loop that finds its model idle runs it there (no thread hand-offs)
when the model's warm-up time for its windows is at most this; slower models go to the batcher,
so the loop is never held longer than a few small requests' preparation."""


class MagnitudeServicer(pb_grpc.MagnitudeServiceServicer):
    def __init__(self, server: SeismagServer) -> None:
        self._server = server
        self._registry = server.registry
        self._loop_policy = LoopModelPolicy()

    @staticmethod
    def _small(request: pb.PredictRequest) -> bool:
        """Cheap enough to decode on the loop (see ``LOOP_MAX_BYTES``)."""
        if request.stationxml:
            return False
        kind = request.WhichOneof("input")
        if kind == "miniseed":
            return len(request.miniseed) <= LOOP_MAX_BYTES
        if kind == "raw":
            return sum(len(t.samples) for t in request.raw.traces) * 4 <= LOOP_MAX_BYTES
        return True  # no input: refused at once

    def _needs_picker_network(self, decoded) -> bool:
        """Whether a station without a pick would run the picker network (milliseconds per
        record: never on the event loop)."""
        if self._registry.picker is None:
            return False
        stream, picks, _ = decoded
        keys = {(tr.stats.network, tr.stats.station, tr.stats.location) for tr in stream}
        return any(find_pick(picks, *key) is None for key in keys)

    def _interval(self, request: pb.PredictRequest) -> float:
        return request.series_interval or self._server.config.series_interval

    def _decode(self, request: pb.PredictRequest, budget: Budget):
        """The request's stream, picks and StationXML, checked."""
        budget.check("before it started")
        stream = _stream(request)
        check_count("P picks", len(request.p_picks), MAX_STATIONS, "send one per station")
        picks = {p.station_id: pick_time(p) for p in request.p_picks}
        inventory = ingest.read_stationxml(request.stationxml) if request.stationxml else None
        budget.check("after decoding")
        return stream, picks, inventory

    def _prepare(
        self, request: pb.PredictRequest, decoded, runtime, budget: Budget, started: float
    ) -> PreparedRequest:
        stream, picks, inventory = decoded or self._decode(request, budget)
        return prepare(runtime, stream, **self._options(request, picks, inventory, budget, started))

    def _prepare_and_run(
        self,
        request,
        decoded,
        runtime,
        budget: Budget,
        started: float,
        ticket,
        on_loop: bool,
        model_on_loop: bool,
    ):
        """The request's windows, and their model output when the model was idle and ran them
        in this thread, else None: they go to the batcher. On the loop only when the policy
        allows it and the model is fast enough (``LOOP_MAX_MODEL_MS``); a work thread may."""
        prepared = self._prepare(request, decoded, runtime, budget, started)
        if on_loop and not model_on_loop:
            return prepared, None
        budget.check("before the model")
        ran = runtime.run_if_idle(
            prepared.waveform,
            prepared.log_amp,
            ticket,
            max_ms=LOOP_MAX_MODEL_MS if on_loop else None,
        )
        return prepared, ran

    def _options(self, request, picks, inventory, budget: Budget, started: float) -> dict:
        """The pipeline's options for a decoded Predict (one place for Predict and ensembles)."""
        return dict(
            picker=self._registry.picker,
            units=request.input_units,
            inventory=inventory,
            server_inventory=self._server.inventory,
            p_picks=picks or None,
            series_interval=self._interval(request),
            started=started,
            budget=budget,
            checked=True,
        )

    def _event(self, results):
        return event_magnitude(results, self._server.station_table)

    def _predict_ensemble(self, request, members, budget: Budget, started: float):
        """An ensemble's Predict (in a work thread): every member, then the per-station mean."""
        stream, picks, inventory = self._decode(request, budget)
        options = self._options(request, picks, inventory, budget, started)
        return predict_ensemble(self._registry, stream, members, request.model, **options)

    @rpc
    async def Predict(self, request, context):
        started = time.perf_counter()
        self._server.require_ready()
        members = self._server.ensembles.get(request.model)
        if members is not None:
            budget = Budget(await check_deadline(context))
            work = functools.partial(self._predict_ensemble, request, members, budget, started)
            try:
                results = await asyncio.get_running_loop().run_in_executor(self._server.work, work)
            except asyncio.CancelledError:
                budget.cancelled.set()
                raise
            return predict_response(results, self._event(results))
        runtime = self._registry.get(check_model_name(request.model))
        budget = Budget(await check_deadline(context))
        model_on_loop = self._loop_policy.start()
        try:
            return await self._predict(request, runtime, budget, started, model_on_loop)
        finally:
            self._loop_policy.end()

    async def _predict(self, request, runtime, budget: Budget, started: float, model_on_loop: bool):
        """A single model's Predict; ``model_on_loop``: see :mod:`.loop_policy`."""
        loop = asyncio.get_running_loop()
        # Announce the submission now: the batcher then knows nothing else is coming when this
        # is the only request in flight, and runs it without waiting for companions.
        ticket = runtime.expect()
        try:
            decoded = self._decode(request, budget) if self._small(request) else None
            on_loop = (
                decoded is not None
                and _windows(decoded[0], self._interval(request)) <= LOOP_MAX_WINDOWS
                and not self._needs_picker_network(decoded)
            )
            work = functools.partial(
                self._prepare_and_run,
                request,
                decoded,
                runtime,
                budget,
                started,
                ticket,
                on_loop,
                model_on_loop,
            )
            if on_loop:
                prepared, ran = work()
            else:
                prepared, ran = await loop.run_in_executor(self._server.work, work)
            if ran is None:
                future = runtime.submit(prepared.waveform, prepared.log_amp, ticket=ticket)
        except BaseException:
            ticket.release()
            budget.cancelled.set()  # nobody waits for the answer: a work thread stops
            raise
        if ran is None:
            try:
                ran = await asyncio.wait_for(asyncio.wrap_future(future), budget.remaining())
            except (TimeoutError, asyncio.CancelledError) as exc:
                future.cancel()  # still queued: it will not spend model time
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise TimeoutError(
                    f"{runtime.name}: deadline exceeded waiting for the model"
                ) from None
        results = prepared.results(*ran)
        return predict_response(results, self._event(results))

    def _ensemble_info(self, name: str, config: str) -> pb.ModelInfo:
        members = self._server.ensembles[name]
        return pb.ModelInfo(
            name=name,
            version="+".join(f"{m}:{self._registry.get(m).version}" for m in members),
            card_json=json.dumps({"ensemble": list(members), "combination": ENSEMBLE_METHOD}),
            server_config_json=config,
        )

    @rpc
    async def ListModels(self, request, context):
        reg, config = self._registry, self._server.config.public_json()
        return pb.ListModelsResponse(
            models=[model_info(reg.get(n), reg.default_name, config) for n in reg.names()]
            + [self._ensemble_info(n, config) for n in self._server.ensembles],
            default_model=reg.default_name,
            server_config_json=config,
            encoders=[inline_model_info(e, config) for e in self._server.encoders],
            field_models=[
                inline_model_info(m, config) for m in (self._server.field_model,) if m is not None
            ],
        )

    @rpc
    async def GetModel(self, request, context):
        reg, config = self._registry, self._server.config.public_json()
        name = check_model_name(request.name)
        if name in self._server.ensembles:
            return self._ensemble_info(name, config)
        return model_info(reg.get(name), reg.default_name, config)

    def _embed(self, request: pb.EmbedRequest, encoder, budget: Budget, started: float):
        """Embed's work (in a work thread): decoding, the stations' windows, the encoder."""
        budget.check("before it started")
        stream = _stream(request)
        inventory = ingest.read_stationxml(request.stationxml) if request.stationxml else None
        budget.check("after decoding")
        return embed(
            encoder,
            stream,
            units=request.input_units,
            inventory=inventory,
            server_inventory=self._server.inventory,
            budget=budget,
            checked=True,
            started=started,
        )

    @rpc
    async def Embed(self, request, context):
        started, t0 = time.perf_counter(), time.perf_counter_ns()
        self._server.require_ready()
        encoder = self._server.encoders.get(check_model_name(request.encoder))
        ok = False
        try:
            budget = Budget(await check_deadline(context))
            work = functools.partial(self._embed, request, encoder, budget, started)
            try:
                found = await asyncio.get_running_loop().run_in_executor(self._server.work, work)
            except asyncio.CancelledError:
                budget.cancelled.set()
                raise
            ok = True
            return embed_response(encoder, found)
        finally:  # the interceptor counts Predict and ModelInfer; Embed names no model field
            encoder.statistics.record_request(ok, time.perf_counter_ns() - t0)

    @rpc
    async def StreamPredict(self, request_iterator, context):
        self._server.require_ready()
        async for message in stream_rpc.serve_stream(self._server, context):
            yield message


def _stream(request: pb.PredictRequest | pb.EmbedRequest) -> Stream:
    """The traces of a request's ``input`` (miniSEED or raw arrays), decoded and checked."""
    kind = request.WhichOneof("input")
    if kind == "miniseed":
        return ingest.read_miniseed(request.miniseed)
    if kind == "raw":
        traces = request.raw.traces
        check_count("traces", len(traces), MAX_TRACES, "send fewer stations or fewer gaps")
        return Stream([raw_trace(t) for t in traces])
    raise InvalidInput("the request has no input: set `miniseed` or `raw`")


def _windows(stream: Stream, interval: float) -> float:
    """Model windows a Predict of ``stream`` needs, at most (one per interval of its longest
    trace; decoding has bounded the sizes already)."""
    longest = max((tr.stats.npts / tr.stats.sampling_rate for tr in stream), default=0.0)
    return longest / max(interval, 1e-3) + 1
