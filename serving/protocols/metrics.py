"""Prometheus metrics for the server, on their own registry.

A private ``CollectorRegistry`` (not the process-global default) keeps two servers in one process
- the tests start several - from colliding on metric names, and keeps the scrape free of
unrelated process metrics unless we ask for them. Queue and compute time are separate histograms,
as in Triton, because "slow" means something different in each: a long queue wants more
capacity, a long compute wants a smaller model or a GPU.

Label cardinality is bounded: ``method`` and ``code`` come from fixed sets, ``model`` from the
loaded models, and the per-station lag gauge drops a station's label when the last stream that
carried it closes, so a long-running server does not accumulate every station it ever saw.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter as _Refcount

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_MS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """All metrics of one server; every method is thread-safe and cheap."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "seismag_requests",
            "RPCs finished, by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.failures = Counter(
            "seismag_request_failures",
            "RPCs that ended with a status other than OK or CANCELLED (a client that went away "
            "is not a failure)",
            ["method", "code"],
            registry=r,
        )
        self.duration = Histogram(
            "seismag_request_duration_seconds",
            "Wall time of an RPC in the server (a stream counts once, from open to close)",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_ms = Histogram(
            "seismag_queue_duration_ms",
            "Time a window waited in the dynamic batcher's queue",
            ["model"],
            buckets=_MS_BUCKETS,
            registry=r,
        )
        self.compute_ms = Histogram(
            "seismag_compute_duration_ms",
            "ONNX Runtime time of one batch",
            ["model"],
            buckets=_MS_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "seismag_batch_size",
            "Windows per batch run by the model",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.open_streams = Gauge(
            "seismag_open_streams", "StreamPredict calls currently open", registry=r
        )
        self.station_lag = Gauge(
            "seismag_station_lag_seconds",
            "Wall-clock minus data time of a station's latest stream update",
            ["station"],
            registry=r,
        )
        self.models_loaded = Gauge("seismag_models_loaded", "Models held by the server", registry=r)
        self._lock = threading.Lock()
        self._station_refs: _Refcount[str] = _Refcount()
        self._http = None
        self.http_port: int | None = None

    # -- RPCs ---------------------------------------------------------------------------------
    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        if code not in ("OK", "CANCELLED"):
            self.failures.labels(method, code).inc()
        self.duration.labels(method).observe(seconds)

    # -- batcher hook ---------------------------------------------------------------------------
    def on_batch(
        self, model_name: str, batch_rows: int, queue_ms: float, compute_ms: float
    ) -> None:
        """The batcher's per-batch callback: one observation per batch, not per request."""
        self.batch_size.labels(model_name).observe(batch_rows)
        self.queue_ms.labels(model_name).observe(queue_ms)
        self.compute_ms.labels(model_name).observe(compute_ms)

    # -- streams --------------------------------------------------------------------------------
    def stream_opened(self) -> None:
        self.open_streams.inc()

    def stream_closed(self, stations: set[str] | frozenset[str] = frozenset()) -> None:
        """Close one stream and drop the lag labels of stations no other open stream carries."""
        self.open_streams.dec()
        with self._lock:
            for sid in stations:
                self._station_refs[sid] -= 1
                if self._station_refs[sid] <= 0:
                    del self._station_refs[sid]
                    with contextlib.suppress(KeyError):
                        self.station_lag.remove(sid)

    def station_seen(self, station_id: str) -> None:
        """A stream started carrying this station (call once per stream and station)."""
        with self._lock:
            self._station_refs[station_id] += 1

    def set_lag(self, station_id: str, lag_s: float) -> None:
        with self._lock:
            if station_id in self._station_refs:  # never resurrect a label after its stream closed
                self.station_lag.labels(station_id).set(lag_s)

    def lag_stations(self) -> set[str]:
        """Stations that currently have a lag label (for tests and debugging)."""
        with self._lock:
            return set(self._station_refs)

    # -- HTTP -----------------------------------------------------------------------------------
    def start_http(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``addr:port`` (0 = a free port); returns the bound port."""
        httpd, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._http = httpd
        self.http_port = int(httpd.server_address[1])
        return self.http_port

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
