"""seismag.v1.FieldService on the asyncio server: wire messages <-> the field pipeline.

A reconstruction is milliseconds to minutes of NumPy and ONNX Runtime, so all of it (the
message conversion, the checks, the sampler, the reply's float lists) runs in one of the
server's work threads; the event loop only awaits it. The work carries a Budget (the client's
deadline, a cancel flag set when the call is cancelled), checked before each network run, so a
reconstruction nobody waits for stops within one run. At most ``field_concurrency``
reconstructions are in flight (running, or waiting for a work thread) at once; one more is
refused at once with RESOURCE_EXHAUSTED, so minutes-long reconstructions can never hold every
work thread that Predict needs. A slot is freed when the work ends in its thread, not when the
call ends, so a cancelled reconstruction still counts until it has stopped. No model logic here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import TYPE_CHECKING

import numpy as np

from seismag.serving.errors import InvalidInput, Overloaded
from seismag.serving.executor.field_runtime import FieldRuntime
from seismag.serving.pipeline import field
from seismag.serving.pipeline.limits import Budget, check_model_name
from seismag.serving.protocols.rpc import check_deadline, rpc
from seismag.serving.v1 import field_pb2 as fpb
from seismag.serving.v1 import field_pb2_grpc as fpb_grpc
from seismag.serving.v1 import seismag_pb2 as pb

if TYPE_CHECKING:
    from seismag.serving.protocols.server import SeismagServer


def field_request(request: fpb.ReconstructRequest, card) -> field.FieldRequest:
    """The request's fields as arrays, checked (InvalidInput / Overloaded)."""
    fields = request.fields
    coords, values = field.stack_fields(
        [np.asarray(f.coords, np.float32) for f in fields],
        [np.asarray(f.values, np.float32) for f in fields],
    )
    has = [f.HasField("source") for f in fields]
    if any(has) and not all(has):
        raise InvalidInput(
            f"field {has.index(not has[0])} {'lacks' if has[0] else 'has'} an event source and "
            f"field 0 {'has' if has[0] else 'lacks'} one: every field of a request has one, or none"
        )
    sources = (
        np.array(
            [
                (s.magnitude, s.epicentre_row, s.epicentre_column, s.depth_km)
                for s in (f.source for f in fields)
            ]
        )
        if has and has[0]
        else None
    )
    return field.check_request(
        card,
        coords,
        values,
        (request.height, request.width),
        samples=request.samples if request.HasField("samples") else None,
        steps=request.steps if request.HasField("steps") else None,
        seed=request.seed,
        sources=sources,
    )


def reconstruct_response(result: field.FieldResult) -> fpb.ReconstructResponse:
    _, h, w = result.mean.shape
    t = result.timings_ms
    return fpb.ReconstructResponse(
        model=result.model,
        model_version=result.model_version,
        height=h,
        width=w,
        samples=result.samples,
        steps=result.steps,
        objective=result.objective,
        fields=[
            fpb.ReconstructedField(mean=m.ravel().tolist(), std=s.ravel().tolist())
            for m, s in zip(result.mean, result.std, strict=True)
        ],
        timings=pb.Timings(
            preprocess_ms=t["preprocess"],
            queue_ms=t["queue"],
            compute_ms=t["compute"],
            total_ms=t["total"],
        ),
    )


def _call_soon(loop: asyncio.AbstractEventLoop, fn) -> None:
    # RuntimeError: the loop has closed (the server stopped); nobody counts any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn)


class FieldServicer(fpb_grpc.FieldServiceServicer):
    def __init__(self, server: SeismagServer, runtime: FieldRuntime) -> None:
        self._server = server
        self._runtime = runtime
        self._limit = server.config.field_concurrency
        self._in_flight = 0  # touched on the event loop only

    def _release(self) -> None:
        self._in_flight -= 1

    @staticmethod
    def _work(request, runtime: FieldRuntime, budget: Budget, started: float):
        budget.check("before it started")
        checked = field_request(request, runtime.card)
        result = field.reconstruct(runtime, checked, budget=budget, started=started)
        return reconstruct_response(result)

    @rpc
    async def Reconstruct(self, request, context):
        started = time.perf_counter()
        self._server.require_ready()
        runtime = field.resolve(self._runtime, check_model_name(request.model))
        budget = Budget(await check_deadline(context))
        if self._in_flight >= self._limit:
            raise Overloaded(
                f"{self._in_flight} reconstructions are in flight (limit {self._limit}, "
                "seismag serve --field-concurrency); retry when one has finished"
            )
        loop = asyncio.get_running_loop()
        work = functools.partial(self._work, request, runtime, budget, started)
        future = self._server.work.submit(work)
        self._in_flight += 1
        future.add_done_callback(lambda _: _call_soon(loop, self._release))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            budget.cancelled.set()  # the work thread stops before its next network run
            raise
