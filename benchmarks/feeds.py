"""N simulated stations streaming 1 s packets at real-time pace through StreamPredict.

Each station is a copy of ``obspy.read()``'s BW.RJOB record (30 s, 100 Hz, ZNE, looped for longer
runs) under its own station code, with a P pick 5 s in. Station ``i`` starts ``i/N`` s after the
first (``spread``), as independent digitisers do, so packets arrive evenly through each second;
``aligned`` sends every station's packet at the same instant, a burst no real network produces.

Packet ``k`` of a station (its samples k s to k+1 s) is sent when that second has passed, as one
message holding a raw chunk per component (``raw_chunks``). **Update latency** is the time an
update arrives minus the wall time the packet completing its window was sent. A run passes when the
p99 over the measured seconds (after ``warmup_s``, while stations start and the first onsets are
reached) is within the limit, at least 99% of the expected updates arrived (the server coalesces a
station's windows when it falls behind, so missing updates mean falling behind), and the sender
itself kept pace.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from seismag.benchmarks.stats import PERCENTILES, summary
from seismag.serving.v1 import seismag_pb2 as pb
from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc

Progress = Callable[[str], None]
PICK_SECONDS = 5.0
MIN_COMPLETENESS = 0.99
MAX_SENDER_LAG_S = 0.5
MAX_CALLS = 8
"""Streams per run: the server's gRPC pool has 16 workers and each stream holds one."""


@dataclass
class FeedConfig:
    stations: int
    seconds: int = 30
    model: str = ""
    hop: float = 1.0
    calls: int | None = None
    """StreamPredict calls the stations are split over (default: one per 250, at most 8)."""
    warmup_s: int = 10
    spread: bool = True
    limit_ms: float = 250.0
    batch_ms: float = 0.0
    """Packets falling due within this many ms share one message (0: one per station-second)."""

    def n_calls(self) -> int:
        n = self.calls or math.ceil(self.stations / 250)
        return max(1, min(n, MAX_CALLS, self.stations))


class _Packets:
    """Sample lists of RJOB per component and second, converted once and shared by all stations."""

    def __init__(self) -> None:
        import obspy

        st = obspy.read()
        self.rate = st[0].stats.sampling_rate
        self.per = round(self.rate)
        self.loop = st[0].stats.npts // self.per
        self.channels = [tr.stats.channel for tr in st]
        self.chunks = [
            [
                np.asarray(tr.data[k * self.per : (k + 1) * self.per], np.float32).tolist()
                for k in range(self.loop)
            ]
            for tr in st
        ]

    def samples(self, comp: int, k: int) -> list[float]:
        return self.chunks[comp][k % self.loop]


class _Run:
    def __init__(self, cfg: FeedConfig, progress: Progress | None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.packets = _Packets()
        n = cfg.stations
        self.phase = [(i / n if cfg.spread else 0.0) for i in range(n)]
        self.codes = [f"{i:05d}" for i in range(n)]
        self.index = {c: i for i, c in enumerate(self.codes)}
        self.sent = np.full((n, cfg.seconds), np.nan)
        self.t0 = time.perf_counter() + 1.0
        self.wall0 = time.time() + 1.0
        self.lock = threading.Lock()
        self.latency: list[tuple[int, float]] = []  # (second k, ms)
        self.server: list[tuple[float, float, float]] = []  # queue, compute, preprocess
        self.received = np.zeros((n, cfg.seconds), dtype=bool)
        self.lag_max = 0.0
        self.errors: list[str] = []

    def start_of(self, i: int) -> float:
        return self.wall0 + self.phase[i]

    def requests(self, stations: list[int]) -> Iterator[pb.StreamRequest]:
        cfg, pk = self.cfg, self.packets
        yield pb.StreamRequest(config=pb.StreamConfig(model=cfg.model, hop_seconds=cfg.hop))
        for i in stations:
            t = self.start_of(i) + PICK_SECONDS
            yield pb.StreamRequest(pick=pb.PPick(station_id=f"SB.{self.codes[i]}", time=t))
        pending: list[pb.RawTrace] = []
        first_due = 0.0
        for k in range(cfg.seconds):
            for i in stations:
                due = self.t0 + self.phase[i] + k + 1
                if pending and due - first_due >= cfg.batch_ms / 1e3:
                    yield pb.StreamRequest(raw_chunks=pb.RawTraces(traces=pending))
                    pending = []
                wait = due - time.perf_counter()
                if wait > 0.0005:
                    time.sleep(wait)
                now = time.perf_counter()
                self.lag_max = max(self.lag_max, now - due)
                self.sent[i, k] = now  # latency counts from here, batching delay included
                if not pending:
                    first_due = due
                start = self.start_of(i) + k
                pending += [
                    pb.RawTrace(
                        network="SB",
                        station=self.codes[i],
                        channel=channel,
                        sampling_rate=pk.rate,
                        starttime=start,
                        samples=pk.samples(c, k),
                    )
                    for c, channel in enumerate(pk.channels)
                ]
        if pending:
            yield pb.StreamRequest(raw_chunks=pb.RawTraces(traces=pending))

    def receive(self, call) -> None:
        try:
            for message in call:
                now = time.perf_counter()
                self.on_updates(message.updates, now)
        except grpc.RpcError as exc:
            self.errors.append(f"{exc.code().name}: {exc.details()}"[:200])

    def on_updates(self, updates, now: float) -> None:
        per = self.packets.per
        for u in updates:
            i = self.index.get(u.station)
            if i is None:
                continue
            sample = round((u.time - self.start_of(i)) * self.packets.rate)
            if (sample + 1) % per:
                continue  # not at a packet boundary (cannot happen with whole-second hops)
            k = (sample + 1) // per - 1
            if not 0 <= k < self.cfg.seconds or math.isnan(self.sent[i, k]):
                continue
            t = u.timings
            with self.lock:
                self.received[i, k] = True
                self.latency.append((k, (now - self.sent[i, k]) * 1e3))
                self.server.append((t.queue_ms, t.compute_ms, t.preprocess_ms))

    def report_progress(self, stop: threading.Event) -> None:
        last = 0
        while not stop.wait(2.0):
            with self.lock:
                recent = [ms for k, ms in self.latency[last:]]
                last = len(self.latency)
            s = summary(recent)
            elapsed = time.perf_counter() - self.t0
            self.progress(
                f"stream {self.cfg.stations} stations t={elapsed:5.1f}s: {len(recent)} updates "
                f"in 2 s, p50 {s['p50']:.0f} ms, p99 {s['p99']:.0f} ms, "
                f"sender lag {self.lag_max * 1e3:.0f} ms"
            )


def run_stream(address: str, cfg: FeedConfig, progress: Progress | None = None) -> dict:
    """Replay ``cfg.stations`` stations for ``cfg.seconds`` s; latency and pass/fail."""
    if cfg.stations < 1 or cfg.seconds <= cfg.warmup_s:
        raise ValueError("need at least one station and more seconds than warmup_s")
    run = _Run(cfg, progress)
    groups = [list(range(g, cfg.stations, cfg.n_calls())) for g in range(cfg.n_calls())]
    stop = threading.Event()
    channel = grpc.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    try:
        stub = pb_grpc.MagnitudeServiceStub(channel)
        timeout = cfg.seconds + 60.0
        calls = [stub.StreamPredict(run.requests(g), timeout=timeout) for g in groups]
        readers = [threading.Thread(target=run.receive, args=(c,), daemon=True) for c in calls]
        for r in readers:
            r.start()
        ticker = None
        if progress:
            ticker = threading.Thread(target=run.report_progress, args=(stop,), daemon=True)
            ticker.start()
        for r in readers:
            r.join(timeout)
        for c in calls:
            c.cancel()
    finally:
        stop.set()
        channel.close()
    return _result(run)


def _result(run: _Run) -> dict:
    cfg = run.cfg
    measured = [ms for k, ms in run.latency if k >= cfg.warmup_s]
    lat = summary(measured)
    expected = cfg.stations * (cfg.seconds - cfg.warmup_s)
    got = int(run.received[:, cfg.warmup_s :].sum())
    completeness = got / expected if expected else 0.0
    srv = np.array(run.server) if run.server else np.full((1, 3), np.nan)
    per_second = []
    for k in range(cfg.seconds):
        vals = [ms for kk, ms in run.latency if kk == k]
        s = summary(vals)
        per_second.append({"second": k + 1, "p50": s["p50"], "p99": s["p99"], "updates": len(vals)})
    ok = (
        lat["p99"] <= cfg.limit_ms
        and completeness >= MIN_COMPLETENESS
        and run.lag_max <= MAX_SENDER_LAG_S
        and not run.errors
    )
    return {
        "stations": cfg.stations,
        "model": cfg.model or "(default)",
        "hop": cfg.hop,
        "seconds": cfg.seconds,
        "warmup_s": cfg.warmup_s,
        "calls": cfg.n_calls(),
        "spread": cfg.spread,
        "limit_ms": cfg.limit_ms,
        "batch_ms": cfg.batch_ms,
        "latency_ms": lat,
        **{f"p{q}": lat[f"p{q}"] for q in PERCENTILES},
        "updates_per_s": len(measured) / (cfg.seconds - cfg.warmup_s),
        "completeness": completeness,
        "sender_lag_max_s": run.lag_max,
        "server_ms": {
            "queue_p50": float(np.nanmedian(srv[:, 0])),
            "queue_p99": float(np.nanpercentile(srv[:, 0], 99)),
            "compute_p50": float(np.nanmedian(srv[:, 1])),
            "preprocess_p50": float(np.nanmedian(srv[:, 2])),
        },
        "per_second": per_second,
        "errors": run.errors[:3],
        "ok": ok,
    }
