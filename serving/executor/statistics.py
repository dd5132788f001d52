"""Per-model statistics, Triton's concepts: the one source for Prometheus and ModelStatistics.

Two places record into a model's :class:`ModelStatistics`: the batcher (every model execution:
windows run, queue and compute time of each submission, batch sizes) and the protocol layer
(every Predict or ModelInfer naming the model: success or failure, end-to-end time). Readers take
a :meth:`ModelStatistics.snapshot`; the Prometheus collector and the Open Inference Protocol's
ModelStatistics RPC both render the same snapshot, so they cannot disagree.

Terms as in Triton's statistics extension (docs/protocol/extension_statistics.md in
triton-inference-server/server): a *request* is one RPC for the model; an *inference* is one
window (a batch of n windows counts n); an *execution* is one model run (one batch). ``queue``
and the ``compute_*`` durations are counted per *submission* to the batcher: a Predict's windows
go in as one submission, a stream's each window as one, a ModelInfer's tensor batch as one.
Times are kept in integer nanoseconds, as the wire message carries them.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

BATCH_DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
"""Upper bounds (seconds) of the per-batch queue and compute histograms."""
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Upper bounds (windows) of the batch size histogram."""


@dataclass(frozen=True)
class Duration:
    """How many, and their cumulative nanoseconds (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class BatchSizeStats:
    """Executions of one batch size and their cumulative times (InferBatchStatistics)."""

    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts per upper bound (the last is +Inf), and the sum of the observations."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    total: float


@dataclass(frozen=True)
class Snapshot:
    """One model's statistics at one moment."""

    name: str
    version: str
    last_inference_ms: int
    inference_count: int
    execution_count: int
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    batches: tuple[BatchSizeStats, ...]
    batch_queue: Histogram
    batch_compute: Histogram
    batch_size: Histogram


@dataclass(frozen=True)
class Finished:
    """The submissions one batch finished: how many, and their summed times (nanoseconds)."""

    count: int = 0
    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


class _Buckets:
    """A fixed-bound histogram (not thread-safe; its owner holds the lock)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def frozen(self) -> Histogram:
        running, cumulative = 0, []
        for c in self.counts:
            running += c
            cumulative.append(running)
        return Histogram(self.bounds, tuple(cumulative), self.total)


class ModelStatistics:
    """Thread-safe counters of one model version; every method is a few additions under a lock."""

    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version
        self._lock = threading.Lock()
        self._last_ms = 0
        self._inferences = 0
        self._executions = 0
        # [count, ns] pairs, mutated in place under the lock
        self._success = [0, 0]
        self._fail = [0, 0]
        self._queue = [0, 0]
        self._input = [0, 0]
        self._infer = [0, 0]
        self._output = [0, 0]
        self._per_size: dict[int, list[int]] = {}  # size -> [count, input ns, infer ns, output ns]
        self._batch_queue = _Buckets(BATCH_DURATION_BUCKETS)
        self._batch_compute = _Buckets(BATCH_DURATION_BUCKETS)
        self._batch_size = _Buckets(BATCH_SIZE_BUCKETS)

    def record_request(self, ok: bool, ns: int) -> None:
        """One RPC for this model ended: OK (``ok``) or a failure, after ``ns`` nanoseconds."""
        pair = self._success if ok else self._fail
        with self._lock:
            pair[0] += 1
            pair[1] += ns

    def record_execution(
        self,
        rows: int,
        queue_ns: int,
        input_ns: int,
        infer_ns: int,
        output_ns: int,
        finished: Finished = Finished(),
    ) -> None:
        """One model run of ``rows`` windows (``queue_ns``: its oldest window's wait), and the
        submissions it finished."""
        with self._lock:
            self._last_ms = time.time_ns() // 1_000_000
            self._inferences += rows
            self._executions += 1
            size = self._per_size.get(rows)
            if size is None:
                size = self._per_size[rows] = [0, 0, 0, 0]
            size[0] += 1
            size[1] += input_ns
            size[2] += infer_ns
            size[3] += output_ns
            self._batch_queue.observe(queue_ns / 1e9)
            self._batch_compute.observe(infer_ns / 1e9)
            self._batch_size.observe(rows)
            for pair, ns in (
                (self._queue, finished.queue_ns),
                (self._input, finished.input_ns),
                (self._infer, finished.infer_ns),
                (self._output, finished.output_ns),
            ):
                pair[0] += finished.count
                pair[1] += ns

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                name=self.name,
                version=self.version,
                last_inference_ms=self._last_ms,
                inference_count=self._inferences,
                execution_count=self._executions,
                success=Duration(*self._success),
                fail=Duration(*self._fail),
                queue=Duration(*self._queue),
                compute_input=Duration(*self._input),
                compute_infer=Duration(*self._infer),
                compute_output=Duration(*self._output),
                batches=tuple(
                    BatchSizeStats(n, Duration(c, i), Duration(c, f), Duration(c, o))
                    for n, (c, i, f, o) in sorted(self._per_size.items())
                ),
                batch_queue=self._batch_queue.frozen(),
                batch_compute=self._batch_compute.frozen(),
                batch_size=self._batch_size.frozen(),
            )


class StatisticsTable:
    """The statistics of the models one server answers for, found by name and version.

    ``default`` is the model a request naming none gets. Only these names are ever looked up, so
    labels and RPC answers stay bounded whatever names clients send.
    """

    def __init__(self, models: Iterable[ModelStatistics], default: str) -> None:
        self._models = {m.name: m for m in models}
        self.default = default

    def find(self, name: str, version: str = "") -> ModelStatistics | None:
        """The model a request for ``name`` ("" = the default) and ``version`` ("" = any) gets."""
        stats = self._models.get(name or self.default)
        if stats is None or (version and version != stats.version):
            return None
        return stats

    def __iter__(self) -> Iterator[ModelStatistics]:
        return iter(self._models.values())


def statistics_table(
    registry, ensembles: dict[str, tuple[str, ...]], encoders: Iterable = ()
) -> StatisticsTable:
    """The table of a server: each loaded model's own statistics, one per ensemble (its
    requests; its members' runs are counted under the members), and each encoder's. An
    ensemble's version is its members' names and versions, as ListModels reports it."""
    models = [rt.statistics for rt in registry]
    for name, members in ensembles.items():
        version = "+".join(f"{m}:{registry.get(m).version}" for m in members)
        models.append(ModelStatistics(name, version))
    models.extend(enc.statistics for enc in encoders)
    return StatisticsTable(models, registry.default_name)
