"""One asyncio interceptor around every RPC: bearer-token auth and per-RPC metrics.

Health is exempt from auth (orchestrators probe without a secret) but counted like every other
RPC, under its own ``method`` label. A method no service has is answered UNIMPLEMENTED here, and
counted as ``method="unknown"`` (the name is the client's, so it is not a label). Predict and
ModelInfer are also counted for the model they name (its success and failure counts and
end-to-end time; see :mod:`seismag.serving.executor.statistics`).

It also makes undecodable requests INVALID_ARGUMENT. gRPC parses a request before any handler
runs, and a parse error there surfaced as UNKNOWN ("Unexpected DecodeError") with a traceback in
the log; the interceptor wraps each method's request deserializer so that bytes which are not
the method's message become an :class:`~seismag.serving.protocols.rpc.Undecodable` value, which
the handler wrapper (unary requests) or ``stream_rpc`` (StreamPredict's reads) answers with
INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from seismag.serving.executor.statistics import ModelStatistics
from seismag.serving.oip import grpc_service_pb2 as oip_pb2
from seismag.serving.protocols.metrics import ServerMetrics
from seismag.serving.protocols.rpc import Undecodable
from seismag.serving.v1 import seismag_pb2 as pb

_HEALTH_PREFIX = f"/{health_pb2.DESCRIPTOR.services_by_name['Health'].full_name}/"
_READS_CHECKED = frozenset(
    {
        "/seismag.v1.MagnitudeService/StreamPredict",
        "/inference.GRPCInferenceService/ModelStreamInfer",
    }
)
"""Request-streaming methods whose handler checks each read for Undecodable (stream_rpc,
oip_service's ModelStreamInfer)."""
UNKNOWN_METHOD = "unknown"
"""The ``method`` label of calls to a method no service has."""


def _full_name(descriptor, service: str, method: str) -> str:
    """'/package.Service/Method' as gRPC names the call (KeyError for a name that is not there)."""
    found = descriptor.services_by_name[service]
    return f"/{found.full_name}/{found.methods_by_name[method].name}"


_MODEL_FIELDS = {
    _full_name(pb.DESCRIPTOR, "MagnitudeService", "Predict"): ("model", None),
    _full_name(oip_pb2.DESCRIPTOR, "GRPCInferenceService", "ModelInfer"): (
        "model_name",
        "model_version",
    ),
}
"""Unary methods that run a model: the request fields naming it and its version."""


def short_method(full: str) -> str:
    """'/seismag.v1.MagnitudeService/Predict' -> 'MagnitudeService/Predict' (a bounded label)."""
    service, _, method = full.lstrip("/").partition("/")
    return f"{service.rsplit('.', 1)[-1]}/{method}"


def _code_name(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    # The client went away (or the server stopped): not a failure. A streaming handler whose
    # responses can no longer be sent is closed at its ``yield`` (GeneratorExit).
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "CANCELLED"
    code = context.code()
    if code is not None and code != grpc.StatusCode.OK:
        return code.name if isinstance(code, grpc.StatusCode) else str(code)
    if exc is not None:
        return "UNKNOWN"
    # A stream's handler can also end without an exception after its client cancelled (the
    # reader saw the requests end first and the session finished): the call says CANCELLED.
    return "CANCELLED" if _cancelled(context) else "OK"


def _cancelled(context) -> bool:
    cancelled = getattr(context, "cancelled", None)
    return bool(cancelled()) if cancelled is not None else False


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns Undecodable instead of raising."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return Undecodable(f"{type(exc).__name__}: {exc}", len(data))

    return parse


def _handler_like(
    handler: grpc.RpcMethodHandler, behaviour: Callable[..., Any], *, safe: bool = False
):
    """A method handler of the same kind (unary/stream) as ``handler`` with another behaviour;
    ``safe``: its request deserializer returns Undecodable instead of raising."""
    deserializer = handler.request_deserializer
    kw = {
        "request_deserializer": _safe(deserializer) if safe else deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behaviour, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behaviour, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behaviour, **kw)
    return grpc.unary_unary_rpc_method_handler(behaviour, **kw)


def _behaviour(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    return (
        handler.stream_stream or handler.stream_unary or handler.unary_stream or handler.unary_unary
    )


class Interceptor(grpc.aio.ServerInterceptor):
    """Bearer-token check (all but health) and per-RPC metrics around every handler."""

    def __init__(self, metrics: ServerMetrics, tokens: Sequence[str] | None) -> None:
        self._metrics = metrics
        self._tokens = [t.encode() for t in tokens or () if t]

    def _model(self, full: str, request) -> ModelStatistics | None:
        """The loaded model (or ensemble) a request of method ``full`` names, if any."""
        fields = _MODEL_FIELDS.get(full)
        if fields is None or isinstance(request, Undecodable):
            return None
        name_field, version_field = fields
        version = getattr(request, version_field) if version_field else ""
        return self._metrics.statistics.find(getattr(request, name_field), version)

    def _authorised(self, details: grpc.HandlerCallDetails) -> bool:
        if not self._tokens:
            return True
        header = next(
            (v for k, v in details.invocation_metadata or () if k == "authorization"), None
        )
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return False
        given = header[len("Bearer ") :].strip().encode()
        return any(hmac.compare_digest(given, t) for t in self._tokens)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        metrics = self._metrics
        if handler is None:
            return _unimplemented(metrics, self._authorised(handler_call_details))
        full = handler_call_details.method
        # Only requests the wrapper below (unary) or the handler (StreamPredict) can check.
        safe = not handler.request_streaming or full in _READS_CHECKED
        method = short_method(full)
        if full.startswith(_HEALTH_PREFIX):
            return _counted(_undecodable_checked(handler) if safe else handler, metrics, method)
        if not self._authorised(handler_call_details):

            async def deny(request, context):
                metrics.observe_request(method, "UNAUTHENTICATED", 0.0)
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or invalid bearer token (metadata `authorization: Bearer <token>`)",
                )

            return _handler_like(handler, deny, safe=safe)

        inner = _behaviour(handler)
        unary_request = not handler.request_streaming
        if inspect.isasyncgenfunction(inner):

            async def timed_stream(request, context):
                with _Observed(metrics, method, context):
                    if unary_request and isinstance(request, Undecodable):
                        await request.abort(context)
                    async for item in inner(request, context):
                        yield item

            return _handler_like(handler, timed_stream, safe=safe)

        async def timed(request, context):
            model = self._model(full, request) if unary_request else None
            with _Observed(metrics, method, context, model):
                if unary_request and isinstance(request, Undecodable):
                    await request.abort(context)
                return await inner(request, context)

        return _handler_like(handler, timed, safe=safe)


class _Observed:
    """Counts one RPC in the metrics when it ends, with the status it ended with."""

    def __init__(
        self, metrics: ServerMetrics, method: str, context, model: ModelStatistics | None = None
    ) -> None:
        self._metrics, self._method, self._context = metrics, method, context
        self._model = model
        self._t0 = time.perf_counter()

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        code = _code_name(self._context, exc)
        seconds = time.perf_counter() - self._t0
        self._metrics.observe_request(self._method, code, seconds, self._model)


def _counted(handler: grpc.RpcMethodHandler, metrics: ServerMetrics, method: str):
    """``handler`` counted in the per-method metrics (health: no auth, no model)."""
    inner = _behaviour(handler)
    if inspect.isasyncgenfunction(inner):

        async def streaming(request, context):
            with _Observed(metrics, method, context):
                async for item in inner(request, context):
                    yield item

        return _handler_like(handler, streaming)

    async def unary(request, context):
        with _Observed(metrics, method, context):
            return await inner(request, context)

    return _handler_like(handler, unary)


def _unimplemented(metrics: ServerMetrics, authorised: bool) -> grpc.RpcMethodHandler:
    """A handler for a method no service has: UNIMPLEMENTED (UNAUTHENTICATED without a valid
    token, as for every other method), counted. A stream-stream handler that reads nothing
    answers any kind of call; requests stay bytes, never parsed."""
    code, text = (
        (grpc.StatusCode.UNIMPLEMENTED, "no such method on this server")
        if authorised
        else (
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or invalid bearer token (metadata `authorization: Bearer <token>`)",
        )
    )

    async def refuse(request_iterator, context):
        metrics.observe_request(UNKNOWN_METHOD, code.name, 0.0)
        await context.abort(code, text)
        yield  # pragma: no cover - makes this an async generator (a streaming handler)

    return grpc.stream_stream_rpc_method_handler(refuse)


def _undecodable_checked(handler: grpc.RpcMethodHandler):
    """``handler`` (unary request) answering undecodable requests with INVALID_ARGUMENT, without
    metrics (health)."""
    inner = _behaviour(handler)
    if inspect.isasyncgenfunction(inner):

        async def streaming(request, context):
            if isinstance(request, Undecodable):
                await request.abort(context)
            async for item in inner(request, context):
                yield item

        return _handler_like(handler, streaming, safe=True)

    async def unary(request, context):
        if isinstance(request, Undecodable):
            await request.abort(context)
        return await inner(request, context)

    return _handler_like(handler, unary, safe=True)
