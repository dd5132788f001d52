"""Predict load, perf_analyzer style: a fixed-concurrency sweep or a request rate.

* **Concurrency** ``c``: ``c`` threads each send the next request as soon as the previous answer
  is back (closed loop), so ``c`` requests are always outstanding.
* **Rate** ``r``: requests leave on a schedule, at constant intervals or with exponential gaps
  (Poisson arrivals), whatever the server's state (open loop): a slow server makes latency grow
  instead of slowing the client down, which is what real clients do.

Time is cut into windows; a measurement counts once the last three windows agree within 10% on
throughput and mean latency (:func:`~seismag.benchmarks.stats.is_stable`), and the result is
computed over those three windows. Every answer carries the server's own split (preprocess,
queue, compute, total), so a result says where the time went, not only how much there was.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from seismag.benchmarks.stats import PERCENTILES, STABILITY_WINDOWS, is_stable, summary
from seismag.serving.v1 import seismag_pb2 as pb
from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc

Progress = Callable[[str], None]
CSV_FIELDS = (
    "mode", "concurrency", "rate", "poisson", "throughput", "p50", "p90", "p95", "p99", "mean",
    "preprocess_p50", "queue_p50", "compute_p50", "server_total_p50", "outside_server_p50",
    "stable", "windows", "requests", "errors",
)  # fmt: skip


@dataclass(frozen=True)
class Workload:
    """One Predict request, built once: a 30 s 3-component miniSEED record and its P pick."""

    request: pb.PredictRequest
    description: str

    @classmethod
    def rjob(cls, *, model: str = "", series_interval: float = 30.0) -> Workload:
        """obspy.read()'s BW.RJOB record (30 s, 100 Hz, ZNE) with a P pick 5 s in, converted to
        ground velocity with its StationXML's sensitivity and sent as float32 miniSEED declared
        ``input_units="m/s"`` (the server then needs no response; counts would need one).

        ``series_interval=30`` asks for the final magnitude only (one model window);
        ``1`` asks for the evolving series as well (one window per second of data).
        """
        import obspy

        st = obspy.read().remove_sensitivity(obspy.read_inventory())
        for tr in st:
            tr.data = tr.data.astype(np.float32)
        buf = io.BytesIO()
        st.write(buf, format="MSEED", encoding="FLOAT32")
        pick = pb.PPick(station_id="BW.RJOB", time=(st[0].stats.starttime + 5.0).timestamp)
        request = pb.PredictRequest(
            miniseed=buf.getvalue(),
            p_picks=[pick],
            model=model,
            series_interval=series_interval,
            input_units="m/s",
        )
        what = f"30 s 3-component miniSEED in m/s (BW.RJOB), series_interval {series_interval:g} s"
        return cls(request, what)


@dataclass
class _Sample:
    t_end: float
    latency_ms: float
    preprocess: float
    queue: float
    compute: float
    total: float


@dataclass
class _Recorder:
    samples: list[_Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, t0: float, reply: pb.PredictResponse) -> None:
        t1 = time.perf_counter()
        t = reply.results[0].timings
        s = _Sample(t1, (t1 - t0) * 1e3, t.preprocess_ms, t.queue_ms, t.compute_ms, t.total_ms)
        with self.lock:
            self.samples.append(s)

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{type(exc).__name__}: {exc}"[:200])

    def between(self, t0: float, t1: float) -> list[_Sample]:
        with self.lock:
            return [s for s in self.samples if t0 <= s.t_end < t1]


def _window_stats(samples: list[_Sample], seconds: float) -> dict[str, float]:
    lat = summary([s.latency_ms for s in samples])
    return {
        "throughput": len(samples) / seconds,
        "latency_mean": lat["mean"],
        **{f"p{q}": lat[f"p{q}"] for q in PERCENTILES},
        "n": len(samples),
    }


def _result(samples: list[_Sample], seconds: float, windows: list[dict], errors: list[str]):
    lat = summary([s.latency_ms for s in samples])

    def p50(values: list[float]) -> float:
        return summary(values)["p50"]

    return {
        "throughput": len(samples) / seconds if seconds > 0 else 0.0,
        "latency_ms": lat,
        "server_ms": {
            "preprocess_p50": p50([s.preprocess for s in samples]),
            "queue_p50": p50([s.queue for s in samples]),
            "queue_p99": summary([s.queue for s in samples])["p99"],
            "compute_p50": p50([s.compute for s in samples]),
            "total_p50": p50([s.total for s in samples]),
        },
        "outside_server_p50_ms": p50([s.latency_ms - s.total for s in samples]),
        "stable": is_stable(windows),
        "windows": windows,
        "requests": len(samples),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def _measure(
    recorder: _Recorder,
    *,
    window_s: float,
    max_windows: int,
    label: str,
    progress: Progress | None,
) -> tuple[list[_Sample], float, list[dict]]:
    """Cut time into windows until the last three agree; the samples of those three."""
    windows: list[dict] = []
    start = time.perf_counter()
    for w in range(max_windows):
        t0 = start + w * window_s
        t1 = t0 + window_s
        time.sleep(max(t1 - time.perf_counter(), 0.0))
        stats = _window_stats(recorder.between(t0, t1), window_s)
        windows.append(stats)
        if progress:
            progress(
                f"{label} window {w + 1}: {stats['throughput']:.1f} req/s, p50 "
                f"{stats['p50']:.2f} ms, p99 {stats['p99']:.2f} ms, errors {len(recorder.errors)}"
            )
        if is_stable(windows):
            break
    k = min(STABILITY_WINDOWS, len(windows))
    t_last = start + len(windows) * window_s
    t_first = t_last - k * window_s
    return recorder.between(t_first, t_last), k * window_s, windows


def _warm(stub, request: pb.PredictRequest, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        stub.Predict(request, timeout=30)


def run_concurrency(
    address: str,
    workload: Workload,
    concurrency: int,
    *,
    window_s: float = 2.0,
    max_windows: int = 10,
    warmup_s: float = 0.5,
    progress: Progress | None = None,
) -> dict:
    """``concurrency`` closed-loop clients on one channel until the windows are stable."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.MagnitudeServiceStub(channel)
        _warm(stub, workload.request, warmup_s)
        recorder = _Recorder()
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    recorder.ok(t0, stub.Predict(workload.request, timeout=30))
                except grpc.RpcError as exc:
                    recorder.fail(exc)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        try:
            samples, seconds, windows = _measure(
                recorder,
                window_s=window_s,
                max_windows=max_windows,
                label=f"concurrency {concurrency}",
                progress=progress,
            )
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    out = _result(samples, seconds, windows, recorder.errors)
    return {
        "mode": "concurrency",
        "concurrency": concurrency,
        "rate": None,
        "poisson": False,
        **out,
    }


def run_rate(
    address: str,
    workload: Workload,
    rate: float,
    *,
    poisson: bool = False,
    window_s: float = 2.0,
    max_windows: int = 10,
    warmup_s: float = 0.5,
    max_outstanding: int = 1000,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict:
    """Requests at ``rate`` per second, constant or Poisson, until the windows are stable.

    Requests that would exceed ``max_outstanding`` unanswered ones are not sent and counted as
    errors: the server is saturated and latency would only grow with the run's length.
    """
    if not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    rng = random.Random(seed)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.MagnitudeServiceStub(channel)
        _warm(stub, workload.request, warmup_s)
        recorder = _Recorder()
        stop = threading.Event()
        outstanding = [0]
        lock = threading.Lock()

        def done(t0: float, future) -> None:
            with lock:
                outstanding[0] -= 1
            try:
                recorder.ok(t0, future.result())
            except grpc.RpcError as exc:
                recorder.fail(exc)

        def sender() -> None:
            due = time.perf_counter()
            while not stop.is_set():
                due += rng.expovariate(rate) if poisson else 1.0 / rate
                time.sleep(max(due - time.perf_counter(), 0.0))
                with lock:
                    if outstanding[0] >= max_outstanding:
                        recorder.fail(RuntimeError("too many outstanding requests"))
                        continue
                    outstanding[0] += 1
                t0 = time.perf_counter()
                future = stub.Predict.future(workload.request, timeout=30)
                future.add_done_callback(lambda f, t0=t0: done(t0, f))

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        try:
            samples, seconds, windows = _measure(
                recorder,
                window_s=window_s,
                max_windows=max_windows,
                label=f"{'Poisson' if poisson else 'constant'} {rate:g}/s",
                progress=progress,
            )
        finally:
            stop.set()
            thread.join(5)
            end = time.monotonic() + 30
            while outstanding[0] and time.monotonic() < end:
                time.sleep(0.01)
    out = _result(samples, seconds, windows, recorder.errors)
    return {"mode": "rate", "concurrency": None, "rate": rate, "poisson": poisson, **out}


def flat_row(result: dict) -> dict:
    """One CSV row (the keys of ``CSV_FIELDS``) from a run's result."""
    lat, srv = result["latency_ms"], result["server_ms"]
    return {
        "mode": result["mode"],
        "concurrency": result["concurrency"],
        "rate": result["rate"],
        "poisson": result["poisson"],
        "throughput": round(result["throughput"], 3),
        **{f"p{q}": round(lat[f"p{q}"], 3) for q in PERCENTILES},
        "mean": round(lat["mean"], 3),
        "preprocess_p50": round(srv["preprocess_p50"], 3),
        "queue_p50": round(srv["queue_p50"], 3),
        "compute_p50": round(srv["compute_p50"], 3),
        "server_total_p50": round(srv["total_p50"], 3),
        "outside_server_p50": round(result["outside_server_p50_ms"], 3),
        "stable": result["stable"],
        "windows": len(result["windows"]),
        "requests": result["requests"],
        "errors": result["errors"],
    }
