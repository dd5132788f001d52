"""The gRPC server on asyncio: MagnitudeService, the Open Inference Protocol, health, reflection,
metrics.

Design choices, and why:

* **asyncio, no thread per RPC.** ``grpc.aio`` runs every RPC as a coroutine on one event loop,
  so an open StreamPredict costs two suspended coroutines and its session, not a pool thread:
  thousands of station feeds stay open while health and Predict are answered. Blocking work
  (Predict's preprocessing, waiting on the batcher) runs in ``work_threads`` threads; model runs
  happen on the executor's own worker threads.
* **A synchronous facade.** :class:`SeismagServer` runs its loop in a thread of its own, so
  ``build_server(...).start()`` / ``stop(grace)`` work from ordinary code (tests, benchmarks,
  :func:`serve_forever` in the main thread, which keeps the signal handlers).
* **Readiness is gated on warm-up.** Health (overall ``""`` and per service) stays NOT_SERVING and
  inference RPCs answer UNAVAILABLE until ``registry.warm_up()`` has run, so a load balancer never
  sends traffic to a server whose first request would pay the runtime's lazy initialisation.
  Draining (SIGTERM) flips it back first, asks open streams to deliver what is due and end, then
  stops accepting and lets in-flight RPCs finish within the grace period.
* **Explicit message limits.** gRPC's default receive limit is 4 MiB, less than one hour of
  3-component 100 Hz float32; the limit here is a server option and oversized messages get
  RESOURCE_EXHAUSTED from gRPC itself, before any of our code allocates anything.
* **Deadlines and cancellation reach the work**: Predict's work thread checks the client's
  deadline and a cancel flag (set when the call is cancelled) between stations, series points and
  before the model; the time left is passed to the batcher, so a request whose client gave up is
  cancelled in the queue instead of spending model time.
* **Shutdown is bounded**: ``stop(grace)`` gives in-flight RPCs ``grace`` seconds, then cancels
  them; work threads are daemon threads that stop at their next check, and nothing waits on them,
  so :func:`serve_forever` returns within a second after the grace period whatever is in flight.
* **Station metadata** (``--inventory``): StationXML the server converts counts with when a request
  carries none; reloaded on SIGHUP and when its files change, without a restart.
* **Auth is one interceptor** (bearer tokens, constant-time compare) that exempts only health.
* **One configuration object** (:class:`~seismag.serving.config.ServeConfig`), reported by
  ListModels and GetModel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from seismag.serving.config import DEFAULTS, ServeConfig
from seismag.serving.errors import NotReady
from seismag.serving.executor.encoder_runtime import EncoderSet
from seismag.serving.executor.field_runtime import FieldRuntime
from seismag.serving.executor.statistics import statistics_table
from seismag.serving.oip import grpc_service_pb2 as oip_pb2
from seismag.serving.pipeline.station_table import StationTable
from seismag.serving.pipeline.units import StationInventory
from seismag.serving.protocols.field_service import FieldServicer
from seismag.serving.protocols.health import HealthServicer
from seismag.serving.protocols.interceptor import Interceptor
from seismag.serving.protocols.magnitude_service import MagnitudeServicer
from seismag.serving.protocols.metrics import ServerMetrics
from seismag.serving.protocols.oip_service import InferenceServicer
from seismag.serving.protocols.oip_service import add_to_server as add_oip
from seismag.serving.protocols.stream_rpc import Waker
from seismag.serving.v1 import field_pb2 as fpb
from seismag.serving.v1 import field_pb2_grpc as fpb_grpc
from seismag.serving.v1 import seismag_pb2 as pb
from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc

log = logging.getLogger("seismag.serving")

MAGNITUDE_SERVICE = pb.DESCRIPTOR.services_by_name["MagnitudeService"].full_name
FIELD_SERVICE = fpb.DESCRIPTOR.services_by_name["FieldService"].full_name
OIP_SERVICE = oip_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
CLOSE_WAIT_SECONDS = 0.5
"""After the grace period, how long serve_forever waits for the models to close before exiting."""


class DaemonPool(Executor):
    """Up to ``workers`` daemon threads, started as work arrives.

    ThreadPoolExecutor's threads are joined when the interpreter exits, so one stuck
    preprocessing call (ObsPy cannot be interrupted) held the process past its grace period;
    nothing waits on these threads, and the work in them stops at its budget's next check.
    """

    def __init__(self, workers: int, name: str) -> None:
        self._workers, self._name = workers, name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            future: Future = Future()
            self._queue.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._workers:
                t = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                t.start()
                self._threads.append(t)
            return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del item, future, fn, args, kwargs  # the request's objects, before waiting again
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._queue.put(None)
        if wait:
            for t in self._threads:
                t.join()


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

    files = (pb.DESCRIPTOR, fpb.DESCRIPTOR, oip_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR)
    for fd in (*files, reflection_pb2.DESCRIPTOR):
        add(fd)
    return pool


class SeismagServer:
    """A configured gRPC server; ``start()``, then ``stop(grace)`` or ``wait()``."""

    def __init__(self, registry, config: ServeConfig) -> None:
        self.registry = registry
        self.config = config
        self.stream_hop = float(config.stream_hop)
        self._ready = threading.Event()
        self._draining = threading.Event()
        self._stopped = threading.Event()
        self._streams: set = set()  # open StreamCalls (touched on the loop only)
        self.inventory = StationInventory(config.inventory) if config.inventory else None
        """The server's station metadata (``--inventory``), or None."""
        self.station_table = (
            StationTable.read(config.station_table) if config.station_table else StationTable()
        )
        """Station corrections for event magnitudes (``--station-table``); empty without one."""
        self.ensembles = config.ensembles()
        """Ensemble models (``--ensemble``): name -> member model names."""
        for name, members in self.ensembles.items():
            unknown = [m for m in members if m not in registry.names()]
            if name in registry.names() or unknown:
                raise ValueError(
                    f"ensemble {name}: "
                    + (f"members {unknown} are not loaded" if unknown else "a model has that name")
                    + f" (models: {', '.join(registry.names())})"
                )
        self.encoders = EncoderSet.from_paths(config.encoder, threads=config.threads)
        """Pretraining encoders (``--encoder``) for Embed and the OIP."""
        taken = {*registry.names(), *self.ensembles}
        clash = [name for name in self.encoders.names() if name in taken]
        if clash:
            raise ValueError(f"encoders {clash} share their names with served models")
        self.field_model = (
            FieldRuntime(config.field_model, threads=config.threads) if config.field_model else None
        )
        """The sparse-field model (``--field-model``) for FieldService, or None."""
        self.metrics = ServerMetrics(statistics_table(registry, self.ensembles, self.encoders))
        self.metrics.models_loaded.set(len(registry.names()))
        self.work = DaemonPool(config.work_threads, "seismag-work")
        self.health = HealthServicer()
        self._health_services = ("", MAGNITUDE_SERVICE, OIP_SERVICE) + (
            (FIELD_SERVICE,) if self.field_model is not None else ()
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="seismag-grpc-loop", daemon=True
        )
        self._thread.start()
        try:
            self._grpc, self.port = self._call(self._build())
        except BaseException:
            self._close_loop()
            raise
        if not self.port:
            self._close_loop()
            raise OSError(f"cannot bind the gRPC server to {config.address}")
        self.address = config.address
        self.host = config.host or "0.0.0.0"
        self.metrics_port: int | None = None
        self.http = None  # the OIP HTTP/REST binding (--http-port), started by start()
        self.http_port: int | None = None
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    def _call(self, coro: Coroutine, timeout: float | None = None):
        """Run ``coro`` on the server's loop and wait for its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _build(self) -> tuple[grpc.aio.Server, int]:
        config = self.config
        limit = int(config.max_message_mb * 1024 * 1024)
        server = grpc.aio.server(
            interceptors=[Interceptor(self.metrics, config.tokens)],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),  # port 0 / a taken port must not be silently shared
            ],
        )
        self.health.bind(asyncio.get_running_loop())
        self.waker = Waker(asyncio.get_running_loop())
        pb_grpc.add_MagnitudeServiceServicer_to_server(MagnitudeServicer(self), server)
        self.oip = InferenceServicer(
            self.registry,
            self.is_ready,
            self.work,
            statistics=self.metrics.statistics,
            encoders=self.encoders,
        )  # the gRPC service and the HTTP binding (--http-port) both call this one
        add_oip(self.oip, server)
        services = [MAGNITUDE_SERVICE, OIP_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME]
        if self.field_model is not None:
            servicer = FieldServicer(self, self.field_model)
            fpb_grpc.add_FieldServiceServicer_to_server(servicer, server)
            services.insert(1, FIELD_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            services,
            server,
            pool=_reflection_pool(),
        )
        credentials = _credentials(config)
        try:
            if credentials is None:
                port = server.add_insecure_port(config.address)
            else:
                port = server.add_secure_port(config.address, credentials)
        except RuntimeError as exc:  # grpc raises RuntimeError when it cannot bind
            raise OSError(f"cannot bind the gRPC server to {config.address}: {exc}") from None
        return server, port

    def _close_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()
        self.work.shutdown(wait=False, cancel_futures=True)

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
        """Run every model and encoder once, then report SERVING (unless draining has begun)."""
        self.registry.warm_up()
        self.encoders.warm_up()
        if self.field_model is not None:
            self.field_model.warm_up()
        if not self._draining.is_set():
            self._ready.set()
            self._set_health(health_pb2.HealthCheckResponse.SERVING)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, *, warm_up: bool = True) -> SeismagServer:
        """Start serving (health NOT_SERVING) and, by default, warm up and turn SERVING."""
        self._call(self._grpc.start())
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.start_http(self.config.metrics_port, addr=self.host)
        if self.config.http_port is not None:
            from seismag.serving.protocols.oip_http import OipHttpServer  # aiohttp, only if asked

            self.http = OipHttpServer(self.oip, self.metrics, self.config)
            self.http_port = self._call(self.http.start(self.host))
        if warm_up:
            self.warm_up()
        return self

    def drain(self) -> None:
        """Report NOT_SERVING and end open streams; new inference RPCs answer UNAVAILABLE."""
        self._draining.set()
        self._ready.clear()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake_streams)

    def _wake_streams(self) -> None:
        for call in list(self._streams):
            call.wake.set()  # each sees `draining`, stops reading and finishes its session

    def reload_inventory(self, *, only_if_changed: bool = False) -> bool:
        """Read the inventory's files again (all of them, or only when one changed); True when
        it was reloaded. A file that does not parse is logged and the previous metadata kept."""
        if self.inventory is None:
            return False
        try:
            if only_if_changed:
                changed = self.inventory.reload_if_changed()
            else:
                self.inventory.reload()
                changed = True
        except (OSError, ValueError) as exc:
            log.error("inventory not reloaded, the previous one stays: %s", exc)
            return False
        if changed:
            log.info("inventory %s: %d channels", self.inventory.path, self.inventory.channels)
        return changed

    def stop(self, grace: float | None = DEFAULTS.grace) -> None:
        """Drain, stop accepting, give in-flight RPCs ``grace`` seconds, then cancel the rest.

        The registry is not closed: it belongs to whoever built it (see :func:`serve_forever`).
        """
        if self._stopped.is_set():
            return
        self.drain()
        self.health.end_watches()
        try:
            # grpc cancels what is left after `grace`; the margin covers its own bookkeeping.
            self._call(self._stop_servers(grace), None if grace is None else grace + 0.5)
        except TimeoutError:
            log.warning("the gRPC server did not stop within %.1f s of grace", grace)
        self.metrics.stop_http()
        self._close_loop()
        self._stopped.set()

    async def _stop_servers(self, grace: float | None) -> None:
        # Both bindings drain at once, within the same grace period.
        await asyncio.gather(
            self._grpc.stop(grace), *([self.http.stop()] if self.http is not None else [])
        )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; True if it has."""
        return self._stopped.wait(timeout)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    # -- StreamPredict bookkeeping (called on the loop) --------------------------------------
    def stream_opened(self, call) -> None:
        self._streams.add(call)
        self.metrics.stream_opened()

    def stream_closed(self, call) -> None:
        self._streams.discard(call)
        self.metrics.stream_closed(call.stations)


def _credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None:
        return None
    ca = _read_pem(config.tls_client_ca)
    return grpc.ssl_server_credentials(
        [(_read_pem(config.tls_key), _read_pem(config.tls_cert))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def build_server(registry, config: ServeConfig | None = None, **changes: Any) -> SeismagServer:
    """A server for ``registry`` (not yet started): ``config`` (default: the defaults) with
    ``changes`` applied, e.g. ``address="127.0.0.1:0"`` (port 0 = any free port),
    ``tokens=[...]``, ``tls_cert=``/``tls_key=`` (paths or PEM bytes), ``metrics_port=0``.
    """
    config = (config or DEFAULTS).replace(**changes).validate()
    return SeismagServer(registry, config)


def serve_forever(
    config: ServeConfig,
    models: Sequence[str | Path] | None = None,
    default_model: str | None = None,
    *,
    exit_process: bool = True,
) -> int:
    """Load the models, serve until SIGTERM/SIGINT, drain within ``config.grace``; exit code.

    Returns 2 without serving when a model cannot be loaded: a server that comes up without the
    model it was asked for is worse than one that refuses to start. Must run in the main thread
    (signal handlers): it is the program's main loop (``seismag serve``). After a drain it ends
    the process with ``os._exit(0)`` once logs are flushed (``exit_process=False`` returns 0
    instead): the interpreter's own teardown took 0.5-0.9 s more (ONNX Runtime, and torch, which
    onnxruntime-extensions imports), past the grace period plus one second the exit must meet.
    """
    from seismag.serving.executor.runtime import (
        ModelLoadError,
        ModelRegistry,
        default_model_path,
        default_workers,
    )

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    try:
        config.validate()
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        return 2
    if config.gil_switch_ms > 0:
        # Work is handed between threads thousands of times a second (the loop, the batcher's
        # workers, Predict's work threads); a woken thread waits until the GIL holder lets go,
        # which a busy holder does only at the switch interval (Python's default: 5 ms).
        sys.setswitchinterval(config.gil_switch_ms / 1e3)
    if default_model is not None:
        config = config.replace(default_model=default_model)
    try:
        paths = list(models) if models else [default_model_path()]
        registry = ModelRegistry.from_paths(
            paths,
            None,
            threads=config.threads,
            workers=config.workers or default_workers(config.threads),
            max_batch=config.max_batch,
            max_queue_delay_ms=config.max_queue_delay_ms,
            max_queue=config.max_queue,
            backend=config.backend,
            picker=config.picker,
        )
    except ModelLoadError as exc:
        log.error("cannot start: %s", exc)
        return 2
    try:
        try:
            # The rule is the config's (ServeConfig.resolve_default_model), logged below.
            registry.default_name = config.resolve_default_model(registry.names())
            why = (
                "--default-model"
                if registry.default_name == config.default_model
                else f"the only model loaded; --default-model {config.default_model} is not"
            )
            config = config.replace(default_model=registry.default_name)
            server = SeismagServer(registry, config)
        except (OSError, RuntimeError, ValueError) as exc:
            log.error("cannot start: %s", exc)
            return 2
        stop, reload = threading.Event(), threading.Event()
        previous = {
            sig: signal.signal(sig, lambda signum, frame: stop.set())
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        if hasattr(signal, "SIGHUP"):
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: reload.set())
        try:
            try:
                server.start(warm_up=False)
            except OSError as exc:  # the metrics or HTTP port taken (the gRPC one is checked)
                log.error("cannot start: %s", exc)
                server.stop(0)
                return 2
            for rt in registry:
                log.info(
                    "model %s %s from %s (weights: %s, backend: %s, kernel: %s)",
                    rt.name, rt.version, rt.path, rt.weights, rt.backend_name, rt.kernel,
                )  # fmt: skip
                if "untrained" in str(rt.weights).lower():
                    log.warning(
                        "model %s has UNTRAINED weights (%s): its magnitudes are meaningless; "
                        "serve trained weights for real use",
                        rt.name,
                        rt.weights,
                    )
            for enc in server.encoders:
                log.info(
                    "encoder %s %s from %s (weights: %s): Embed and the OIP",
                    enc.name, enc.version, enc.path, enc.weights,
                )  # fmt: skip
            if server.field_model is not None:
                fm = server.field_model
                log.info(
                    "field model %s %s from %s (weights: %s): FieldService/Reconstruct",
                    fm.name, fm.version, fm.path, fm.weights,
                )  # fmt: skip
                if "untrained" in str(fm.weights).lower():
                    log.warning("field model %s has UNTRAINED weights: noise, not fields", fm.name)
            log.info(
                "seismag serving on %s:%d (default model %s: %s)%s",
                server.host,
                server.port,
                registry.default_name,
                why,
                (f", metrics on :{server.metrics_port}" if server.metrics_port else "")
                + (f", OIP HTTP on :{server.http_port}" if server.http_port else ""),
            )
            if server.inventory is not None:
                log.info(
                    "inventory %s: %d channels (reloaded on SIGHUP%s)",
                    server.inventory.path,
                    server.inventory.channels,
                    f" and every {config.inventory_poll:g} s when changed"
                    if config.inventory_poll
                    else "",
                )
            server.warm_up()  # with --backend auto this measures and logs each model's choice
            log.info("warm-up done; health SERVING")
            next_poll = time.monotonic() + config.inventory_poll
            while not stop.wait(0.5):
                if reload.is_set():
                    reload.clear()
                    log.info("SIGHUP: reloading the inventory")
                    server.reload_inventory()
                elif config.inventory_poll and time.monotonic() >= next_poll:
                    server.reload_inventory(only_if_changed=True)
                    next_poll = time.monotonic() + config.inventory_poll
            log.info("signal received: draining (grace %.1f s)", config.grace)
            t_stop = time.monotonic()
            server.stop(config.grace)
            log.info("stopped in %.2f s", time.monotonic() - t_stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        # Closing runs the models' queued windows; past the grace period nobody waits for them.
        t_close = time.monotonic()
        closing = threading.Thread(target=registry.close, name="seismag-close", daemon=True)
        closing.start()
        closing.join(CLOSE_WAIT_SECONDS)
        if closing.is_alive():
            log.warning("models still busy after the grace period; exiting anyway")
        else:
            log.info("models closed in %.2f s", time.monotonic() - t_close)
    if exit_process:
        logging.shutdown()  # flushes every handler
        for f in (sys.stdout, sys.stderr):
            f.flush()
        os._exit(0)
    return 0


__all__ = ["SeismagServer", "build_server", "serve_forever"]
