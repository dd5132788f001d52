"""The gRPC server: MagnitudeService, the Open Inference Protocol, health, reflection, metrics.

Design choices, and why:

* **Readiness is gated on warm-up.** Health (overall ``""`` and per service) stays NOT_SERVING and
  inference RPCs answer UNAVAILABLE until ``registry.warm_up()`` has run, so a load balancer never
  sends traffic to a server whose first request would pay ONNX Runtime's lazy initialisation.
  Draining (SIGTERM) flips it back first, then stops accepting and lets in-flight RPCs finish.
* **Explicit message limits.** gRPC's default receive limit is 4 MiB, less than one hour of
  3-component 100 Hz float32; the limit here is a server option and oversized messages get
  RESOURCE_EXHAUSTED from gRPC itself, before any of our code allocates anything.
* **Deadlines are honoured**: the time left is passed to the batcher, so a request whose client
  gave up is cancelled in the queue instead of spending model time.
* **Auth is one interceptor** (bearer tokens, constant-time compare) that exempts only health,
  so orchestrators can probe without a secret.
* **Streams never leak**: every StreamPredict owns one session and one reader thread, and both are
  closed in a ``finally`` that also runs when the client cancels or disconnects.
"""

from __future__ import annotations

import hmac
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from obspy import Stream

from seismag.serving.errors import InvalidInput, NotReady
from seismag.serving.oip import grpc_service_pb2 as oip_pb2
from seismag.serving.pipeline import ingest
from seismag.serving.pipeline.predict import predict
from seismag.serving.protocols import stream_rpc
from seismag.serving.protocols.messages import model_info, pick_time, raw_trace, station_magnitude
from seismag.serving.protocols.metrics import ServerMetrics
from seismag.serving.protocols.oip_service import InferenceServicer
from seismag.serving.protocols.oip_service import add_to_server as add_oip
from seismag.serving.protocols.rpc import check_deadline, rpc
from seismag.serving.v1 import seismag_pb2 as pb
from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc

log = logging.getLogger("seismag.serving")

MAGNITUDE_SERVICE = pb.DESCRIPTOR.services_by_name["MagnitudeService"].full_name
OIP_SERVICE = oip_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_HEALTH_PREFIX = f"/{HEALTH_SERVICE}/"
DEFAULT_SERIES_INTERVAL = 1.0
DEFAULT_GRACE = 10.0
DEFAULT_GIL_SWITCH_MS = 0.2
"""Interpreter switch interval of a served process. A stream hands work between threads
thousands of times a second (gRPC's poller, the readers, the batcher's workers, the response
senders); a thread woken for its next step waits until the GIL holder releases it, which a busy
holder only does at the switch interval (Python's default: 5 ms). At 0.2 ms, 1000 stations sending
one message per station-second went from p99 411 ms to 180 ms (docs/serving.md)."""


# -- MagnitudeService ---------------------------------------------------------------------------


class MagnitudeServicer(pb_grpc.MagnitudeServiceServicer):
    """Wire format <-> the core (ingest, predict, StreamSession); no model logic lives here."""

    def __init__(self, server: SeismagServer) -> None:
        self._server = server
        self._registry = server.registry

    @rpc
    def Predict(self, request, context):
        started = time.perf_counter()
        self._server.require_ready()
        check_deadline(context)
        kind = request.WhichOneof("input")
        if kind == "miniseed":
            stream = ingest.read_miniseed(request.miniseed)
        elif kind == "raw":
            stream = Stream([raw_trace(t) for t in request.raw.traces])
        else:
            raise InvalidInput("the request has no input: set `miniseed` or `raw`")
        inventory = ingest.read_stationxml(request.stationxml) if request.stationxml else None
        picks = {p.station_id: pick_time(p) for p in request.p_picks}
        interval = request.series_interval or DEFAULT_SERIES_INTERVAL
        results = predict(
            self._registry,
            stream,
            model=request.model,
            inventory=inventory,
            p_picks=picks or None,
            series_interval=interval,
            timeout=check_deadline(context),
            started=started,
        )
        return pb.PredictResponse(results=[station_magnitude(r) for r in results])

    @rpc
    def ListModels(self, request, context):
        reg = self._registry
        return pb.ListModelsResponse(
            models=[model_info(reg.get(n), reg.default_name) for n in reg.names()],
            default_model=reg.default_name,
        )

    @rpc
    def GetModel(self, request, context):
        return model_info(self._registry.get(request.name), self._registry.default_name)

    @rpc
    def StreamPredict(self, request_iterator, context):
        yield from self._server.stream_updates(request_iterator, context)


# -- interceptor: auth + metrics ----------------------------------------------------------------


def _short_method(full: str) -> str:
    """'/seismag.v1.MagnitudeService/Predict' -> 'MagnitudeService/Predict' (a bounded label)."""
    service, _, method = full.lstrip("/").partition("/")
    return f"{service.rsplit('.', 1)[-1]}/{method}"


def _code_name(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()
    if code is None:
        if failed:
            return "UNKNOWN"
        return "OK" if context.is_active() else "CANCELLED"
    return code.name


def _handler_like(handler: grpc.RpcMethodHandler, behaviour: Callable[..., Any]):
    """A method handler of the same kind (unary/stream) as ``handler`` with another behaviour."""
    kw = {
        "request_deserializer": handler.request_deserializer,
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


class _Interceptor(grpc.ServerInterceptor):
    """Bearer-token check (all but health) and per-RPC metrics around every handler."""

    def __init__(self, metrics: ServerMetrics, tokens: Sequence[str] | None) -> None:
        self._metrics = metrics
        self._tokens = [t.encode() for t in tokens or () if t]

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

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_HEALTH_PREFIX):
            # Health is open to all and unmetered; wrapping it would also drop the attribute that
            # lets Watch run without holding a worker thread per watcher.
            return handler
        method = _short_method(handler_call_details.method)
        metrics = self._metrics
        if not self._authorised(handler_call_details):

            def deny(request, context):
                metrics.observe_request(method, "UNAUTHENTICATED", 0.0)
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or invalid bearer token (metadata `authorization: Bearer <token>`)",
                )

            return _handler_like(handler, deny)

        inner = _behaviour(handler)
        if handler.response_streaming:

            def timed_stream(request, context):
                t0 = time.perf_counter()
                failed = False
                try:
                    yield from inner(request, context)
                except BaseException:
                    failed = True
                    raise
                finally:
                    code = _code_name(context, failed)
                    metrics.observe_request(method, code, time.perf_counter() - t0)

            return _handler_like(handler, timed_stream)

        def timed(request, context):
            t0 = time.perf_counter()
            failed = False
            try:
                return inner(request, context)
            except BaseException:
                failed = True
                raise
            finally:
                metrics.observe_request(
                    method, _code_name(context, failed), time.perf_counter() - t0
                )

        return _handler_like(handler, timed)


# -- the server ---------------------------------------------------------------------------------


class _HealthServicer(health.HealthServicer):
    """grpc.health.v1 that can end its Watch streams when the server drains.

    An open Watch is an in-flight RPC, so without this every shutdown with a watching client
    (client-side health checking, a sidecar) would wait out the whole grace period.
    """

    def __init__(self) -> None:
        super().__init__()
        self._watch_lock = threading.Lock()
        self._watches: set[Callable[[Any], None]] = set()

    def Watch(self, request, context, send_response_callback=None):
        if send_response_callback is None:  # blocking mode: nothing we can end early
            return super().Watch(request, context)
        lock = threading.Lock()
        ended = False

        def send(response) -> None:
            nonlocal ended
            with lock:  # one status per call: the base class sends None again when it closes
                if ended:
                    return
                ended = response is None
                send_response_callback(response)

        with self._watch_lock:
            self._watches.add(send)
        context.add_callback(lambda: self._forget(send))
        return super().Watch(request, context, send)

    def _forget(self, send) -> None:
        with self._watch_lock:
            self._watches.discard(send)

    def end_watches(self) -> None:
        """Finish every open Watch with status OK (after its last status was sent)."""
        with self._watch_lock:
            watches = list(self._watches)
        for send in watches:
            send(None)


def _read_pem(value: str | Path | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _reflection_pool():
    """One descriptor pool holding every service we expose, for server reflection.

    The OIP messages live in a private pool (see :mod:`seismag.serving.codegen`), so the default
    pool that reflection normally reads does not know them; this pool gathers all files.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool

    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(fd) -> None:
        if fd.name in added:
            return
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        pool.Add(proto)
        added.add(fd.name)

    for fd in (pb.DESCRIPTOR, oip_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        add(fd)
    return pool


class SeismagServer:
    """A configured gRPC server; ``start()``, then ``stop(grace)`` or ``wait()``."""

    def __init__(
        self,
        registry,
        *,
        address: str,
        max_workers: int,
        max_message_mb: float,
        credentials: grpc.ServerCredentials | None,
        tokens: Sequence[str] | None,
        metrics_port: int | None,
        stream_hop: float,
    ) -> None:
        self.registry = registry
        self.address = address
        self.stream_hop = float(stream_hop)
        self.metrics = ServerMetrics()
        self.metrics.models_loaded.set(len(registry.names()))
        self._previous_hooks: dict[str, Any] = {}
        self._metrics_port = metrics_port
        self._ready = threading.Event()
        self._draining = threading.Event()
        self._stopped = threading.Event()
        limit = int(max_message_mb * 1024 * 1024)
        options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # port 0 / a taken port must not be silently shared
        ]
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="seismag-rpc"),
            interceptors=[_Interceptor(self.metrics, tokens)],
            options=options,
        )
        self.health = _HealthServicer()
        self._health_services = ("", MAGNITUDE_SERVICE, OIP_SERVICE)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        pb_grpc.add_MagnitudeServiceServicer_to_server(MagnitudeServicer(self), self._grpc)
        add_oip(InferenceServicer(registry, self.is_ready), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (MAGNITUDE_SERVICE, OIP_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME),
            self._grpc,
            pool=_reflection_pool(),
        )
        if credentials is None:
            self.port = self._grpc.add_insecure_port(address)
        else:
            self.port = self._grpc.add_secure_port(address, credentials)
        if not self.port:
            raise OSError(f"cannot bind the gRPC server to {address}")
        self.host = address.rsplit(":", 1)[0].strip("[]") or "0.0.0.0"
        self.metrics_port: int | None = None
        self._stream_count = 0
        self._stream_lock = threading.Lock()

    # -- readiness --------------------------------------------------------------------------
    def _set_health(self, status) -> None:
        for name in self._health_services:
            self.health.set(name, status)

    def is_ready(self) -> bool:
        return self._ready.is_set()

    def require_ready(self) -> None:
        if not self._ready.is_set():
            state = "draining" if self._draining.is_set() else "warming up"
            raise NotReady(f"the server is {state}; retry on another replica or later")

    def warm_up(self) -> None:
        """Run every model once, then report SERVING (unless draining has begun)."""
        self.registry.warm_up()
        if not self._draining.is_set():
            self._ready.set()
            self._set_health(health_pb2.HealthCheckResponse.SERVING)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, *, warm_up: bool = True) -> SeismagServer:
        """Start serving (health NOT_SERVING) and, by default, warm up and turn SERVING."""
        self._previous_hooks = {rt.name: rt.batcher.on_batch for rt in self.registry}
        self.registry.set_on_batch(self.metrics.on_batch)
        self._grpc.start()
        if self._metrics_port is not None:
            self.metrics_port = self.metrics.start_http(self._metrics_port, addr=self.host)
        if warm_up:
            self.warm_up()
        return self

    def drain(self) -> None:
        """Report NOT_SERVING and end open streams; new inference RPCs answer UNAVAILABLE."""
        self._draining.set()
        self._ready.clear()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    def stop(self, grace: float | None = DEFAULT_GRACE) -> None:
        """Drain, stop accepting, give in-flight RPCs ``grace`` seconds, then cancel the rest.

        The registry is not closed: it belongs to whoever built it (see :func:`serve_forever`).
        """
        if self._stopped.is_set():
            return
        self.drain()
        stopped = self._grpc.stop(grace)  # refuses new RPCs from here on
        self.health.end_watches()  # after stop(), so a watcher cannot reconnect meanwhile
        stopped.wait()
        self.metrics.stop_http()
        for rt in self.registry:  # hand the batch hook back if a server started before us had it
            if rt.batcher.on_batch == self.metrics.on_batch:
                rt.batcher.on_batch = self._previous_hooks.get(rt.name)
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; True if it has."""
        return self._grpc.wait_for_termination(timeout)

    @property
    def open_streams(self) -> int:
        with self._stream_lock:
            return self._stream_count

    # -- StreamPredict ----------------------------------------------------------------------
    def stream_updates(self, request_iterator, context) -> Iterator[pb.StreamUpdates]:
        """One StreamPredict call (see :mod:`seismag.serving.protocols.stream_rpc`)."""
        self.require_ready()
        yield from stream_rpc.serve_stream(self, request_iterator, context)

    def stream_opened(self) -> None:
        with self._stream_lock:
            self._stream_count += 1
        self.metrics.stream_opened()

    def stream_closed(self, stations: set[str]) -> None:
        with self._stream_lock:
            self._stream_count -= 1
        self.metrics.stream_closed(stations)

    @property
    def draining(self) -> bool:
        return self._draining.is_set()


def _credentials(tls_cert, tls_key, tls_client_ca) -> grpc.ServerCredentials | None:
    if tls_cert is None and tls_key is None:
        if tls_client_ca is not None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        return None
    if tls_cert is None or tls_key is None:
        raise ValueError("TLS needs both tls_cert and tls_key")
    ca = _read_pem(tls_client_ca)
    return grpc.ssl_server_credentials(
        [(_read_pem(tls_key), _read_pem(tls_cert))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def build_server(
    registry,
    *,
    address: str = "127.0.0.1:8500",
    max_workers: int = 16,
    max_message_mb: float = 64,
    tls_cert: str | Path | bytes | None = None,
    tls_key: str | Path | bytes | None = None,
    tls_client_ca: str | Path | bytes | None = None,
    tokens: Sequence[str] | None = None,
    metrics_port: int | None = None,
    stream_hop: float = 1.0,
) -> SeismagServer:
    """A server for ``registry`` bound to ``address`` (port 0 = any free port), not yet started.

    TLS files may be paths or PEM bytes; ``tls_client_ca`` turns on mutual TLS (clients must
    present a certificate signed by it). ``tokens`` turns on bearer-token auth for every RPC but
    health. ``metrics_port`` serves Prometheus metrics on the gRPC host (0 = any free port).
    """
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if not max_message_mb > 0:
        raise ValueError(f"max_message_mb must be positive, got {max_message_mb}")
    if not stream_hop > 0:
        raise ValueError(f"stream_hop must be positive, got {stream_hop}")
    return SeismagServer(
        registry,
        address=address,
        max_workers=max_workers,
        max_message_mb=max_message_mb,
        credentials=_credentials(tls_cert, tls_key, tls_client_ca),
        tokens=tokens,
        metrics_port=metrics_port,
        stream_hop=stream_hop,
    )


def serve_forever(
    model_paths: Sequence[str | Path] | None = None,
    default_model: str | None = None,
    *,
    threads: int = 1,
    workers: int = 1,
    max_batch: int = 64,
    max_queue_delay_ms: float = 2.0,
    providers: list[str] | None = None,
    grace: float = DEFAULT_GRACE,
    gil_switch_ms: float = DEFAULT_GIL_SWITCH_MS,
    **options: Any,
) -> int:
    """Load the models, serve until SIGTERM/SIGINT, drain within ``grace`` seconds; exit code.

    Returns 2 without serving when a model cannot be loaded: a server that comes up without the
    model it was asked for is worse than one that refuses to start. ``options`` go to
    :func:`build_server`. Must run in the main thread (signal handlers).

    ``gil_switch_ms`` sets the interpreter's switch interval for this process (see
    ``DEFAULT_GIL_SWITCH_MS``); 0 leaves Python's default.
    """
    from seismag.serving.executor.runtime import ModelLoadError, ModelRegistry, default_model_path

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    if gil_switch_ms > 0:
        sys.setswitchinterval(gil_switch_ms / 1e3)
    try:
        paths = list(model_paths) if model_paths else [default_model_path()]
        registry = ModelRegistry.from_paths(
            paths,
            default_model,
            threads=threads,
            workers=workers,
            max_batch=max_batch,
            max_queue_delay_ms=max_queue_delay_ms,
            providers=providers,
        )
    except ModelLoadError as exc:
        log.error("cannot start: %s", exc)
        return 2
    try:
        try:
            server = build_server(registry, **options)
        except (OSError, RuntimeError, ValueError) as exc:
            log.error("cannot start: %s", exc)
            return 2
        stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda signum, frame: stop.set())
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            server.start(warm_up=False)
            for rt in registry:
                log.info(
                    "model %s %s from %s (weights: %s)", rt.name, rt.version, rt.path, rt.weights
                )
                if "untrained" in str(rt.weights).lower():
                    log.warning(
                        "model %s has UNTRAINED weights (%s): its magnitudes are meaningless; "
                        "serve trained weights for real use",
                        rt.name,
                        rt.weights,
                    )
            log.info(
                "seismag serving on %s:%d (default model %s)%s",
                server.host,
                server.port,
                registry.default_name,
                f", metrics on :{server.metrics_port}" if server.metrics_port else "",
            )
            server.warm_up()
            log.info("warm-up done; health SERVING")
            while not stop.wait(0.5):
                pass
            log.info("signal received: draining (grace %.1f s)", grace)
            server.stop(grace)
            log.info("stopped")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        registry.close()
    return 0


__all__ = ["SeismagServer", "build_server", "serve_forever"]
