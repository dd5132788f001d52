"""Percentiles, the perf_analyzer stability rule, a bootstrap interval of a mean and a median
call timer, kept apart so tests can pin them down."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)
STABILITY_TOLERANCE = 0.10
STABILITY_WINDOWS = 3


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the value at rank ceil(q/100 * n)), as perf_analyzer reports.

    Nearest rank always returns a latency that was observed; interpolating between two samples
    would invent one, which matters for p99 of a few hundred requests. NaN when empty.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if len(values) == 0:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q / 100.0 * len(ordered)), 1)
    return float(ordered[rank - 1])


def summary(values: Sequence[float], qs: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """``{"p50": ..., "p90": ..., "mean": ..., "n": ...}`` for a list of latencies."""
    out = {f"p{q:g}": percentile(values, q) for q in qs}
    out["mean"] = float(sum(values) / len(values)) if len(values) else math.nan
    out["n"] = len(values)
    return out


def agree(values: Sequence[float], tolerance: float = STABILITY_TOLERANCE) -> bool:
    """True when every value lies within ``tolerance`` (relative) of their mean."""
    if not values or any(not math.isfinite(v) for v in values):
        return False
    mean = sum(values) / len(values)
    if mean == 0:
        return all(v == 0 for v in values)
    return all(abs(v - mean) <= tolerance * abs(mean) for v in values)


def is_stable(
    windows: Sequence[dict[str, float]],
    keys: Sequence[str] = ("throughput", "latency_mean"),
    *,
    count: int = STABILITY_WINDOWS,
    tolerance: float = STABILITY_TOLERANCE,
) -> bool:
    """perf_analyzer's rule: the last ``count`` windows agree within ``tolerance`` on each key.

    Throughput and mean latency are the keys by default (perf_analyzer's defaults): a p99 over a
    short window rests on a handful of requests and would rarely settle on a shared machine.
    """
    if len(windows) < count:
        return False
    last = windows[-count:]
    return all(agree([w[k] for w in last], tolerance) for k in keys)


BOOTSTRAP_RESAMPLES = 2000


def bootstrap_interval(values: Sequence[float]) -> list[float]:
    """95 % percentile interval of the mean of per-item values (events, fields), resampling the
    items; for a paired comparison pass the per-item differences. Seeded: a rerun prints the
    same interval."""
    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(0)
    means = values[rng.integers(0, values.size, size=(BOOTSTRAP_RESAMPLES, values.size))].mean(1)
    return [float(v) for v in np.percentile(means, [2.5, 97.5])]


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
