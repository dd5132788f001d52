"""Prometheus metrics for the server, on their own registry.

A private ``CollectorRegistry`` (not the process-global default) keeps two servers in one process
- the tests start several - from colliding on metric names, and keeps the scrape free of
unrelated process metrics unless we ask for them.

Names follow Prometheus's conventions, so ``promtool check metrics`` passes: base units
(seconds), ``_total`` on counters. The per-model metrics take Triton's names and concepts
(``nv_inference_request_success`` -> ``seismag_inference_request_success_total``, ...) with
seconds instead of microseconds, and are not kept here: a collector renders each model's
:class:`~seismag.serving.executor.statistics.ModelStatistics` at scrape time, the same numbers
the Open Inference Protocol's ModelStatistics RPC returns. Queue and compute time are separate,
as in Triton, because "slow" means something different in each: a long queue wants more
capacity, a long compute wants a smaller model or a GPU.

Label cardinality is bounded: ``method`` comes from the services' methods (any other name is
``method="unknown"``), ``code`` from gRPC's status codes, ``model``/``version`` from the loaded
models, and the per-station lag gauge drops a station's label when the last stream that carried
it closes, so a long-running server does not accumulate every station it ever saw.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter as _Refcount
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from seismag.serving.executor.statistics import Histogram as Buckets
from seismag.serving.executor.statistics import ModelStatistics, Snapshot, StatisticsTable

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_MODEL_LABELS = ("model", "version")

_COUNTERS = (
    # (name without seismag_ and _total, help, value of a snapshot)
    (
        "inference_request_success",
        "Predict and ModelInfer calls for this model that ended OK (Triton: "
        "nv_inference_request_success)",
        lambda s: s.success.count,
    ),
    (
        "inference_request_failure",
        "Predict and ModelInfer calls for this model that ended with a status other than OK or "
        "CANCELLED (Triton: nv_inference_request_failure)",
        lambda s: s.fail.count,
    ),
    (
        "inference_count",
        "Windows run by the model; a batch of n counts n (Triton: nv_inference_count)",
        lambda s: s.inference_count,
    ),
    (
        "inference_exec_count",
        "Model executions (batches) (Triton: nv_inference_exec_count)",
        lambda s: s.execution_count,
    ),
    (
        "inference_request_duration_seconds",
        "Cumulative end-to-end time of this model's Predict and ModelInfer calls, OK or failed "
        "(Triton: nv_inference_request_duration_us)",
        lambda s: (s.success.ns + s.fail.ns) / 1e9,
    ),
    (
        "inference_queue_duration_seconds",
        "Cumulative time submissions waited in the batcher (Triton: "
        "nv_inference_queue_duration_us)",
        lambda s: s.queue.ns / 1e9,
    ),
    (
        "inference_compute_input_duration_seconds",
        "Cumulative time submissions spent in the batcher's input preparation (Triton: "
        "nv_inference_compute_input_duration_us)",
        lambda s: s.compute_input.ns / 1e9,
    ),
    (
        "inference_compute_infer_duration_seconds",
        "Cumulative model time of submissions (Triton: nv_inference_compute_infer_duration_us)",
        lambda s: s.compute_infer.ns / 1e9,
    ),
    (
        "inference_compute_output_duration_seconds",
        "Cumulative time from the model's output to each submission's result (Triton: "
        "nv_inference_compute_output_duration_us)",
        lambda s: s.compute_output.ns / 1e9,
    ),
)
_HISTOGRAMS = (
    (
        "batch_queue_duration_seconds",
        "Time the oldest window of a batch waited in the batcher, per batch",
        lambda s: s.batch_queue,
    ),
    (
        "batch_compute_duration_seconds",
        "Model time of one batch",
        lambda s: s.batch_compute,
    ),
    ("batch_size", "Windows per batch run by the model", lambda s: s.batch_size),
)


class ModelCollector:
    """Renders every model's statistics at scrape time (a prometheus_client custom collector)."""

    def __init__(self, models: Iterable[ModelStatistics]) -> None:
        self._models = models

    def describe(self) -> Iterator[Metric]:
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        return self._families([m.snapshot() for m in self._models])

    @staticmethod
    def _families(snapshots: list[Snapshot]) -> Iterator[Metric]:
        for name, text, value in _COUNTERS:
            family = CounterMetricFamily(f"seismag_{name}", text, labels=_MODEL_LABELS)
            for s in snapshots:
                family.add_metric((s.name, s.version), value(s))
            yield family
        for name, text, value in _HISTOGRAMS:
            family = HistogramMetricFamily(f"seismag_{name}", text, labels=_MODEL_LABELS)
            for s in snapshots:
                h: Buckets = value(s)
                bounds = [floatToGoString(b) for b in h.bounds] + ["+Inf"]
                family.add_metric(
                    (s.name, s.version), list(zip(bounds, h.cumulative, strict=True)), h.total
                )
            yield family


class ServerMetrics:
    """All metrics of one server; every method is thread-safe and cheap.

    ``statistics``: the models' statistics (:class:`StatisticsTable`); requests for a model are
    recorded there, and the scrape renders them.
    """

    def __init__(self, statistics: StatisticsTable | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.statistics = statistics or StatisticsTable((), "")
        self.requests = Counter(
            "seismag_requests",
            "RPCs finished, by method and status code (every RPC, health and unknown methods "
            "included)",
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
        r.register(ModelCollector(self.statistics))
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
    def observe_request(
        self, method: str, code: str, seconds: float, model: ModelStatistics | None = None
    ) -> None:
        """One RPC ended; ``model``: the model it asked for, when it named a loaded one."""
        self.requests.labels(method, code).inc()
        failed = code not in ("OK", "CANCELLED")
        if failed:
            self.failures.labels(method, code).inc()
        self.duration.labels(method).observe(seconds)
        if model is not None and code != "CANCELLED":
            model.record_request(not failed, int(seconds * 1e9))

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
        try:
            httpd, _thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise OSError(f"cannot bind the metrics server to {addr}:{port}: {exc}") from None
        self._http = httpd
        self.http_port = int(httpd.server_address[1])
        return self.http_port

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
