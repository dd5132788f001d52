"""What open, idle StreamPredict calls cost a server: memory per stream, and how fast health and
Predict answer while they stay open.

    seismag bench idle-streams --streams 2000

Each stream is one station feed that has sent ``--seconds`` of 3-component 100 Hz data (so the
server holds a session and its buffers) and then goes quiet, as a station does between packets.
With all streams open, health Check and one Predict (30 s miniSEED, BW.RJOB) are timed
``--probes`` times each, one at a time. Server memory is its RSS (``/proc/PID/status``) before the
streams open and with all of them open; the difference divided by the stream count is the memory
per idle stream. Run against a spawned server (the default) so the client's own memory and
threads do not count.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np

from seismag.benchmarks.stats import summary
from seismag.serving.config import DEFAULT_ADDRESS


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _chunks(station: int, seconds: float, t0: float):
    from seismag.serving.v1 import seismag_pb2 as pb

    n = round(seconds * 100)
    rng = np.random.default_rng(station)
    return [
        pb.StreamRequest(config=pb.StreamConfig(input_units="m/s")),
        pb.StreamRequest(
            raw_chunks=pb.RawTraces(
                traces=[
                    pb.RawTrace(
                        network="XX",
                        station=f"S{station:05d}",
                        channel=f"HH{c}",
                        sampling_rate=100.0,
                        starttime=t0,
                        samples=(rng.normal(size=n) * 1e-7).astype(np.float32).tolist(),
                    )
                    for c in "ZNE"
                ]
            )
        ),
    ]


async def _timed(fn, probes: int) -> list[float]:
    out = []
    for _ in range(probes):
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


async def measure(
    address: str, *, streams: int, seconds: float, probes: int, pid: int | None
) -> dict:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from seismag.benchmarks.loadgen import Workload
    from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc

    predict = Workload.rjob().request
    result: dict = {"streams": streams, "seconds_sent": seconds, "probes": probes}
    # Several channels: one HTTP/2 connection's concurrent-stream limit must not be what we hit.
    channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, streams // 500))]
    try:
        health = health_pb2_grpc.HealthStub(channels[0])
        stub = pb_grpc.MagnitudeServiceStub(channels[0])
        await stub.Predict(predict, timeout=60)  # warm the path before measuring
        before = rss_mb(pid) if pid else None

        async def check():
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        async def one_predict():
            await stub.Predict(predict, timeout=60)

        result["health_ms_no_streams"] = summary(await _timed(check, probes))
        t_open = time.perf_counter()
        calls = []
        t0 = time.time() - seconds
        for i in range(streams):
            call = pb_grpc.MagnitudeServiceStub(channels[i % len(channels)]).StreamPredict()
            for req in _chunks(i, seconds, t0):
                await call.write(req)
            calls.append(call)
        # Let the server take every packet before measuring.
        await asyncio.sleep(1.0 + streams / 2000)
        result["open_seconds"] = time.perf_counter() - t_open
        result["health_ms"] = summary(await _timed(check, probes))
        result["predict_ms"] = summary(await _timed(one_predict, probes))
        if pid:
            after = rss_mb(pid)
            result.update(
                rss_before_mb=before,
                rss_open_mb=after,
                kb_per_stream=(after - before) * 1024 / max(streams, 1),
            )
        alive = sum(not c.done() for c in calls)
        result["streams_still_open"] = alive
        for call in calls:
            call.cancel()
    finally:
        for ch in channels:
            await ch.close()
    return result


def run(address: str, *, streams: int, seconds: float, probes: int, pid: int | None) -> dict:
    return asyncio.run(measure(address, streams=streams, seconds=seconds, probes=probes, pid=pid))


def report(result: dict) -> str:
    lines = [
        f"{result['streams']} idle streams ({result['seconds_sent']:g} s of data each), "
        f"{result['streams_still_open']} still open at the end",
        f"  health Check, no streams: p50 {result['health_ms_no_streams']['p50']:.2f} ms, "
        f"p99 {result['health_ms_no_streams']['p99']:.2f} ms",
        f"  health Check, streams open: p50 {result['health_ms']['p50']:.2f} ms, "
        f"p99 {result['health_ms']['p99']:.2f} ms",
        f"  Predict (30 s miniSEED), streams open: p50 {result['predict_ms']['p50']:.2f} ms, "
        f"p99 {result['predict_ms']['p99']:.2f} ms",
    ]
    if "kb_per_stream" in result:
        lines.append(
            f"  server RSS {result['rss_before_mb']:.0f} -> {result['rss_open_mb']:.0f} MiB: "
            f"{result['kb_per_stream']:.1f} KiB per idle stream"
        )
    return "\n".join(lines)


__all__ = ["measure", "report", "rss_mb", "run"]

if __name__ == "__main__":  # pragma: no cover
    print(report(run(os.environ.get("SEISMAG_ADDRESS", DEFAULT_ADDRESS), streams=100,
                     seconds=1.0, probes=20, pid=None)))  # fmt: skip
