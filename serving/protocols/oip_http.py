"""The Open Inference Protocol's HTTP/REST binding (KServe v2, as Triton serves it).

Every route calls the same :class:`~seismag.serving.protocols.oip_service.InferenceServicer`
method the gRPC service does, with the request translated from the URL and JSON body into the
method's protobuf message and the reply translated back, so the two bindings cannot answer
differently. A route is served only when its RPC is in the service, so a new OIP RPC needs a row
in :data:`ROUTES` and nothing else.

Inference takes JSON tensors (``data``) and Triton's binary-data extension: with an
``Inference-Header-Content-Length: N`` header the body is N bytes of JSON followed by each input
whose ``parameters.binary_data_size`` is given, in input order; outputs asked for with
``parameters.binary_data`` (or all, with the request parameter ``binary_data_output``) come back
the same way. Errors answer ``{"error": "..."}`` with the gRPC status mapped onto an HTTP status.

Published protocol: https://github.com/kserve/open-inference-protocol (REST),
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from aiohttp import web
from grpc.aio import AbortError

from seismag.serving.config import ServeConfig
from seismag.serving.oip import grpc_service_pb2 as pb
from seismag.serving.protocols.metrics import ServerMetrics
from seismag.serving.protocols.oip_service import InferenceServicer

log = logging.getLogger("seismag.serving")

HEADER_LENGTH = "Inference-Header-Content-Length"
"""Triton's binary-data extension: the JSON part's length in bytes; binary tensors follow."""
_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
_LE_FP32 = np.dtype("<f4")

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
"""gRPC status -> HTTP status (anything else: 500), as grpc-gateway maps them."""


class Refused(AbortError):
    """A servicer method aborted: its status and details (an AbortError, so the ``rpc``
    wrapper passes it through as it does a real abort)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Context:
    """The part of ``grpc.aio.ServicerContext`` the servicer uses: the deadline and abort."""

    def __init__(self, timeout: float | None = None) -> None:
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Refused(code, details)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _bad(message: str) -> Refused:
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, message)


# -- protobuf <-> JSON ---------------------------------------------------------------------------
def _repeated(fd) -> bool:
    flag = getattr(fd, "is_repeated", None)  # protobuf 7 dropped ``label``; 6.30 lacks this
    return flag if flag is not None else fd.label == fd.LABEL_REPEATED


def _value(fd, value: Any) -> Any:
    if fd.message_type is not None:
        return to_json(value)
    if fd.enum_type is not None:
        found = fd.enum_type.values_by_number.get(value)
        return found.name if found else value
    return value


def to_json(message) -> dict[str, Any]:
    """A message as Triton writes it: proto field names, 64-bit integers as JSON numbers (the
    proto3 JSON mapping would write strings), enums by name, unset submessages left out."""
    out: dict[str, Any] = {}
    for fd in message.DESCRIPTOR.fields:
        value = getattr(message, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            item = fd.message_type.fields_by_name["value"]
            out[fd.name] = {k: _value(item, v) for k, v in value.items()}
        elif _repeated(fd):
            out[fd.name] = [_value(fd, v) for v in value]
        elif (fd.message_type is not None or fd.containing_oneof) and not message.HasField(fd.name):
            continue
        else:
            out[fd.name] = _value(fd, value)
    return out


def _message(rpc: str, fields: dict[str, Any]):
    """The RPC's request message from ``fields`` (JSON names and values)."""
    from google.protobuf import json_format

    cls = getattr(pb, _SERVICE.methods_by_name[rpc].input_type.name)
    try:
        return json_format.ParseDict(fields, cls())
    except json_format.ParseError as exc:
        raise _bad(f"the request does not fit {cls.__name__}: {exc}") from None


# -- routes --------------------------------------------------------------------------------------
Reply = Callable[[Any], web.Response]


def _json_reply(message) -> web.Response:
    return web.json_response(to_json(message))


def _ok_if(flag: str) -> Reply:
    """200 when the reply's ``flag`` is true, else 503 (a load balancer's "not now")."""

    def reply(message) -> web.Response:
        ok = bool(getattr(message, flag))
        return web.Response(status=200) if ok else _error(503, f"not {flag}")

    return reply


def _model(match: dict[str, str], body: dict) -> dict[str, Any]:
    return {"name": match["model"], "version": match.get("version", "")}


_PARAMETER_KIND = ((bool, "bool_param"), (int, "int64_param"), (str, "string_param"))
"""Triton's JSON writes repository parameters as plain values; the proto wraps them in a oneof."""


def _repository(match: dict[str, str], body: dict) -> dict[str, Any]:
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad("parameters must be a JSON object")
    wrapped = {}
    for key, value in params.items():
        kind = next((k for t, k in _PARAMETER_KIND if isinstance(value, t)), None)
        if kind is None:
            raise _bad(f"parameter {key[:40]!r} must be a boolean, integer or string")
        wrapped[key] = {kind: value}
    return {"model_name": match["model"], "parameters": wrapped}


def _config_reply(message) -> web.Response:
    return web.json_response(to_json(message.config))  # Triton answers the config itself


def _index_reply(message) -> web.Response:
    return web.json_response([to_json(m) for m in message.models])  # Triton answers a list


def _stats(match: dict[str, str], body: dict) -> dict[str, Any]:
    return {"name": match.get("model", ""), "version": match.get("version", "")}


@dataclass(frozen=True)
class Route:
    method: str
    paths: tuple[str, ...]
    rpc: str
    fields: Callable[[dict[str, str], dict], dict[str, Any]]
    reply: Reply = _json_reply


_MODEL = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
ROUTES = (
    Route("GET", ("/v2/health/live",), "ServerLive", lambda m, b: {}, _ok_if("live")),
    Route("GET", ("/v2/health/ready",), "ServerReady", lambda m, b: {}, _ok_if("ready")),
    Route("GET", ("/v2",), "ServerMetadata", lambda m, b: {}),
    Route("GET", _MODEL, "ModelMetadata", _model),
    Route("GET", tuple(p + "/ready" for p in _MODEL), "ModelReady", _model, _ok_if("ready")),
    Route("GET", tuple(p + "/config" for p in _MODEL), "ModelConfig", _model, _config_reply),
    Route("GET", ("/v2/models/stats", *(p + "/stats" for p in _MODEL)), "ModelStatistics", _stats),
    Route("POST", ("/v2/repository/index",), "RepositoryIndex", lambda m, b: b, _index_reply),
    Route("POST", ("/v2/repository/models/{model}/load",), "RepositoryModelLoad", _repository),
    Route("POST", ("/v2/repository/models/{model}/unload",), "RepositoryModelUnload", _repository),
)
"""Triton's HTTP routes and the RPC each one calls. Inference (``.../infer``) is its own
handler, for the binary-data extension."""
INFER_PATHS = tuple(p + "/infer" for p in _MODEL)
_HEALTH = "/v2/health/"


def _infer_request(match: dict[str, str], body: bytes, header_length: str | None):
    """ModelInferRequest from the HTTP body; also whether each output goes back as binary."""
    if header_length is None:
        head, binary = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise _bad(f"{HEADER_LENGTH} {header_length[:40]!r} is not an integer") from None
        if not 0 <= n <= len(body):
            raise _bad(f"{HEADER_LENGTH} {n} is outside the body's {len(body)} bytes")
        head, binary = body[:n], body[n:]
    doc = _json_object(head)
    params = _parameters(doc, "the request")
    timeout_us = params.get("timeout")
    request = pb.ModelInferRequest(
        model_name=match["model"], model_version=match.get("version", ""), id=str(doc.get("id", ""))
    )
    offset = 0
    for i, tensor in enumerate(_list(doc, "inputs")):
        try:
            name, datatype, shape = tensor["name"], tensor["datatype"], tensor["shape"]
            if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
                raise TypeError(f"shape {shape!r}")  # 1.5 or true is no dimension
            request.inputs.add(name=str(name), datatype=str(datatype), shape=shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(f"inputs[{i}] needs name, datatype and an integer shape ({exc})") from None
        size = _parameters(tensor, f"input {str(name)!r}").get("binary_data_size")
        if size is not None:
            if (
                not isinstance(size, int)
                or isinstance(size, bool)
                or size < 0
                or offset + size > len(binary)
            ):
                raise _bad(
                    f"input {str(name)!r}: binary_data_size {size!r} exceeds the "
                    f"{len(binary) - offset} binary bytes left"
                )
            request.raw_input_contents.append(binary[offset : offset + size])
            offset += size
        elif "data" in tensor:
            request.raw_input_contents.append(
                _json_tensor(str(name), str(datatype), tensor["data"])
            )
        else:
            raise _bad(f"input {str(name)!r} has neither data nor parameters.binary_data_size")
    if offset != len(binary):
        raise _bad(f"{len(binary) - offset} bytes of binary data after the last binary input")
    all_binary = _flag(params, "binary_data_output", False, "parameters")
    binary_out: dict[str, bool] = {}
    for i, out in enumerate(_list(doc, "outputs")):
        if not isinstance(out, dict) or "name" not in out:
            raise _bad(f"outputs[{i}] needs a name")
        request.outputs.add(name=str(out["name"]))
        where = f"output {str(out['name'])!r}"
        binary_out[str(out["name"])] = _flag(
            _parameters(out, where), "binary_data", all_binary, where
        )
    if timeout_us is not None and (not isinstance(timeout_us, int) or timeout_us <= 0):
        raise _bad(
            f"parameters.timeout must be a positive integer (microseconds), not {timeout_us!r}"
        )
    timeout = None if timeout_us is None else timeout_us / 1e6
    return request, binary_out, all_binary, timeout


def _json_object(data: bytes) -> dict:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"the request body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad(f"the request body must be a JSON object, not {type(doc).__name__}")
    return doc


def _flag(params: dict, key: str, default: bool, where: str) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise _bad(f"{where}: {key} must be true or false, not {value!r:.40}")
    return value


def _parameters(owner: dict, where: str) -> dict:
    """``owner``'s ``parameters`` object ({} when absent); 400 for anything but an object."""
    value = owner.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{where}: parameters must be a JSON object, not {type(value).__name__}")
    return value


def _list(doc: dict, key: str) -> list:
    value = doc.get(key) or []
    if not isinstance(value, list):
        raise _bad(f"{key} must be a list")
    return value


def _json_tensor(name: str, datatype: str, data: Any) -> bytes:
    """JSON ``data`` (nested or flat, row-major) as the raw bytes the servicer decodes. Only
    FP32 is converted; any other datatype is passed on empty for the servicer to refuse."""
    if datatype != "FP32":
        return b""
    try:
        return np.asarray(data, dtype=_LE_FP32).tobytes()
    except (TypeError, ValueError) as exc:
        raise _bad(f"input {name!r}: data is not a list of numbers ({exc})") from None


def _infer_reply(reply, binary_out: dict[str, bool], all_binary: bool) -> web.Response:
    outputs, chunks = [], []
    for tensor, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
        item: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if binary_out.get(tensor.name, all_binary):
            item["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            item["data"] = np.frombuffer(raw, dtype=_LE_FP32).tolist()
        outputs.append(item)
    doc = {"model_name": reply.model_name, "model_version": reply.model_version}
    if reply.id:
        doc["id"] = reply.id
    doc["outputs"] = outputs
    head = json.dumps(doc).encode()
    if not chunks:
        return web.Response(body=head, content_type="application/json")
    return web.Response(
        body=head + b"".join(chunks),
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(head))},
    )


# -- the server ----------------------------------------------------------------------------------
class OipHttpServer:
    """The HTTP/REST binding on its own port, on the gRPC server's event loop."""

    def __init__(
        self, servicer: InferenceServicer, metrics: ServerMetrics, config: ServeConfig
    ) -> None:
        self._servicer = servicer
        self._metrics = metrics
        self._config = config
        self._tokens = [t.encode() for t in config.tokens if t]
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.app = web.Application(
            client_max_size=int(config.max_message_mb * 1024 * 1024),
            middlewares=[self._errors_and_auth],
        )
        methods = _SERVICE.methods_by_name
        for route in ROUTES:
            if route.rpc in methods and hasattr(servicer, route.rpc):
                for path in route.paths:
                    self.app.router.add_route(route.method, path, self._handler(route))
        for path in INFER_PATHS:
            self.app.router.add_post(path, self._infer)

    # -- handlers ----------------------------------------------------------------------------
    @web.middleware
    async def _errors_and_auth(self, request: web.Request, handler) -> web.StreamResponse:
        if not request.path.startswith(_HEALTH) and not self._authorised(request):
            return _error(
                401,
                "missing or invalid bearer token (header `Authorization: Bearer <token>`)",
                {"WWW-Authenticate": "Bearer"},
            )
        try:
            return await handler(request)
        except Refused as exc:
            return _error(HTTP_STATUS.get(exc.code, 500), exc.details)
        except web.HTTPException as exc:  # no route (404), wrong method (405), too large (413)
            if exc.status < 400:
                raise
            return _error(exc.status, f"{exc.reason}: {request.method} {request.path}")
        except Exception as exc:  # a bug of this module: the traceback to the log, not the client
            log.error("HTTP %s %s failed", request.method, request.path, exc_info=exc)
            return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    def _authorised(self, request: web.Request) -> bool:
        if not self._tokens:
            return True
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        given = header[len("Bearer ") :].strip().encode()
        return any(hmac.compare_digest(given, t) for t in self._tokens)

    async def _call(self, rpc: str, message, context: _Context, model=None):
        """Run the servicer's ``rpc``, counted in the metrics as its gRPC call is."""
        t0, code = time.perf_counter(), "OK"
        try:
            return await getattr(self._servicer, rpc)(message, context)
        except Refused as exc:
            code = exc.code.name
            raise
        except asyncio.CancelledError:  # the client went away: not a failure, as over gRPC
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self._metrics.observe_request(
                f"{_SERVICE.name}/{rpc}", code, time.perf_counter() - t0, model
            )

    def _handler(self, route: Route):
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            doc = _json_object(body) if body.strip() else {}
            message = _message(route.rpc, route.fields(dict(request.match_info), doc))
            return route.reply(await self._call(route.rpc, message, _Context()))

        return handle

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        match = dict(request.match_info)
        message, binary_out, all_binary, timeout = _infer_request(
            match, body, request.headers.get(HEADER_LENGTH)
        )
        model = self._metrics.statistics.find(message.model_name, message.model_version)
        reply = await self._call("ModelInfer", message, _Context(timeout), model)
        return _infer_reply(reply, binary_out, all_binary)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, host: str) -> int:
        """Bind and serve (on the running loop); the bound port."""
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=self._config.grace
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, host, self._config.http_port, ssl_context=_ssl_context(self._config)
        )
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(
                f"cannot bind the HTTP server to {host}:{self._config.http_port}: {exc}"
            ) from None
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Stop accepting; in-flight requests get the grace period (``shutdown_timeout``)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _ssl_context(config: ServeConfig) -> ssl.SSLContext | None:
    """The gRPC port's TLS (and mutual TLS) for the HTTP port; None without a certificate."""
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as tmp:  # ssl loads a chain from files only
        cert, key = (
            _pem_file(v, Path(tmp) / n) for v, n in ((config.tls_cert, "c"), (config.tls_key, "k"))
        )
        context.load_cert_chain(cert, key)
    if config.tls_client_ca is not None:
        ca = config.tls_client_ca
        context.load_verify_locations(
            cadata=ca.decode() if isinstance(ca, bytes) else Path(ca).read_text()
        )
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _pem_file(value: str | bytes | Path, spare: Path) -> str:
    if isinstance(value, bytes):
        spare.write_bytes(value)
        return str(spare)
    return str(value)


__all__ = ["HTTP_STATUS", "ROUTES", "OipHttpServer", "to_json"]
