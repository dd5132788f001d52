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

The client is asyncio (``grpc.aio``): one writer and one reader coroutine per StreamPredict call,
so ``calls`` may go up to one stream per station, the natural design of a station-feed client.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from seismag.benchmarks.stats import PERCENTILES, summary
from seismag.serving.config import DEFAULTS
from seismag.serving.v1 import seismag_pb2 as pb
from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc

Progress = Callable[[str], None]
PICK_SECONDS = 5.0
MIN_COMPLETENESS = 0.99
MAX_SENDER_LAG_S = 0.5


@dataclass
class FeedConfig:
    stations: int
    seconds: int = 30
    model: str = ""
    hop: float = DEFAULTS.stream_hop
    calls: int | None = None
    """StreamPredict calls the stations are split over (default: one per 250 stations; up to
    one per station)."""
    warmup_s: int = 10
    spread: bool = True
    limit_ms: float = 250.0
    batch_ms: float = 0.0
    """Packets falling due within this many ms share one message (0: one per station-second)."""

    def n_calls(self) -> int:
        n = self.calls or math.ceil(self.stations / 250)
        return max(1, min(n, self.stations))


class _Packets:
    """Sample lists of RJOB per component and second, converted once and shared by all stations."""

    def __init__(self) -> None:
        import obspy

        st = obspy.read().remove_sensitivity(obspy.read_inventory())  # sent in m/s, declared
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

    async def send(self, call, stations: list[int]) -> None:
        """Write the config, the picks, then each station-second's packet when it is due."""
        cfg, pk = self.cfg, self.packets
        await call.write(
            pb.StreamRequest(
                config=pb.StreamConfig(model=cfg.model, hop_seconds=cfg.hop, input_units="m/s")
            )
        )
        for i in stations:
            t = self.start_of(i) + PICK_SECONDS
            await call.write(
                pb.StreamRequest(pick=pb.PPick(station_id=f"SB.{self.codes[i]}", time=t))
            )
        pending: list[pb.RawTrace] = []
        first_due = 0.0
        for k in range(cfg.seconds):
            for i in stations:
                due = self.t0 + self.phase[i] + k + 1
                if pending and due - first_due >= cfg.batch_ms / 1e3:
                    await call.write(pb.StreamRequest(raw_chunks=pb.RawTraces(traces=pending)))
                    pending = []
                wait = due - time.perf_counter()
                if wait > 0.0005:
                    await asyncio.sleep(wait)
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
            await call.write(pb.StreamRequest(raw_chunks=pb.RawTraces(traces=pending)))
        await call.done_writing()

    async def receive(self, call) -> None:
        try:
            async for message in call:
                self.on_updates(message.updates, time.perf_counter())
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
    stop = threading.Event()
    ticker = None
    if progress:
        ticker = threading.Thread(target=run.report_progress, args=(stop,), daemon=True)
        ticker.start()
    try:
        asyncio.run(_replay(address, run))
    finally:
        stop.set()
    return _result(run)


async def _replay(address: str, run: _Run) -> None:
    cfg = run.cfg
    n = cfg.n_calls()
    groups = [list(range(g, cfg.stations, n)) for g in range(n)]
    # One HTTP/2 connection per 100 streams keeps every connection under gRPC's default limit
    # of concurrent streams and spreads the frames.
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
        for _ in range(math.ceil(n / 100))
    ]
    run.t0 = time.perf_counter() + 1.0 + n / 2000  # opening many streams takes a moment
    run.wall0 = time.time() + (run.t0 - time.perf_counter())
    try:
        stubs = [pb_grpc.MagnitudeServiceStub(ch) for ch in channels]
        timeout = cfg.seconds + 60.0
        calls = [stubs[g % len(stubs)].StreamPredict(timeout=timeout) for g in range(n)]
        tasks = [_guarded(run, run.send(c, grp)) for c, grp in zip(calls, groups, strict=True)]
        tasks += [run.receive(c) for c in calls]
        await asyncio.gather(*tasks)
    finally:
        for ch in channels:
            await ch.close()


async def _guarded(run: _Run, coro) -> None:
    """A sender whose call failed records why (its reader reports the status too)."""
    try:
        await coro
    except (grpc.RpcError, asyncio.InvalidStateError) as exc:
        run.errors.append(f"sender: {exc}"[:200])


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
