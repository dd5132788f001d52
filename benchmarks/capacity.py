"""Station capacity: the most stations a model serves in real time, found by binary search.

A probe is a short station-feed replay (:func:`~seismag.benchmarks.feeds.run_stream`); it passes
when p99 update latency is within the limit and nothing fell behind. Passing is taken to be
monotone in the station count, so the search first brackets the threshold (doubling or halving
from a guess) and then bisects until the bracket is within ``tolerance`` (relative).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from seismag.serving.config import DEFAULTS

Progress = Callable[[str], None]


@dataclass
class Search:
    capacity: int
    """Largest station count that passed (0 when even ``minimum`` failed)."""
    probes: list[dict] = field(default_factory=list)
    capped: bool = False
    """True when ``maximum`` passed: the real capacity may be higher."""


def find_capacity(
    probe: Callable[[int], dict],
    *,
    guess: int = 100,
    minimum: int = 1,
    maximum: int = 20000,
    tolerance: float = 0.1,
    progress: Progress | None = None,
) -> Search:
    """Largest ``n`` in [minimum, maximum] with ``probe(n)["ok"]``, to within ``tolerance``."""
    if not 1 <= minimum <= maximum:
        raise ValueError(f"need 1 <= minimum <= maximum, got {minimum}, {maximum}")
    results: dict[int, dict] = {}

    def ok(n: int) -> bool:
        if n not in results:
            results[n] = probe(n)
            if progress:
                verdict = "pass" if results[n]["ok"] else "fail"
                progress(f"capacity probe {n} stations: {verdict}")
        return bool(results[n]["ok"])

    n = min(max(guess, minimum), maximum)
    if ok(n):
        lo, hi = n, None
        while hi is None:
            if lo >= maximum:
                return Search(lo, [results[k] for k in sorted(results)], capped=True)
            nxt = min(lo * 2, maximum)
            if ok(nxt):
                lo = nxt
            else:
                hi = nxt
    else:
        hi, lo = n, None
        while lo is None:
            if hi <= minimum:
                return Search(0, [results[k] for k in sorted(results)])
            nxt = max(hi // 2, minimum)
            if ok(nxt):
                lo = nxt
            else:
                hi = nxt
    while hi - lo > 1 and hi > lo * (1 + tolerance):
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return Search(lo, [results[k] for k in sorted(results)])


def model_capacity(
    model: str,
    onnx_path: Path | None,
    *,
    guess: int,
    seconds: int = 20,
    warmup_s: int = 10,
    limit_ms: float = 250.0,
    tolerance: float = 0.1,
    threads: int = DEFAULTS.threads,
    workers: int | None = DEFAULTS.workers,
    batch_ms: float = 0.0,
    progress: Progress | None = None,
) -> dict:
    """Capacity of one model on a spawned server of its own (``onnx_path`` None = embedded)."""
    from seismag.benchmarks.feeds import FeedConfig, run_stream
    from seismag.benchmarks.target import ServerOptions, open_target

    options = ServerOptions(
        models=[onnx_path] if onnx_path else [], threads=threads, workers=workers
    )
    with open_target("spawn", options=options) as target:

        def probe(n: int) -> dict:
            cfg = FeedConfig(
                n,
                hop=DEFAULTS.stream_hop,
                seconds=seconds,
                warmup_s=warmup_s,
                limit_ms=limit_ms,
                batch_ms=batch_ms,
            )
            r = run_stream(target.address, cfg)
            keep = ("stations", "ok", "p50", "p99", "completeness", "sender_lag_max_s")
            return {k: r[k] for k in keep} | {"server_ms": r["server_ms"]}

        search = find_capacity(probe, guess=guess, tolerance=tolerance, progress=progress)
    return {
        "model": model,
        "capacity": search.capacity,
        "capped": search.capped,
        "limit_ms": limit_ms,
        "hop": DEFAULTS.stream_hop,
        "probe_seconds": seconds,
        "batch_ms": batch_ms,
        "target": target.description,
        "probes": search.probes,
    }
