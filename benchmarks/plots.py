"""PNG plots of benchmark results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close ``fig``; the path written."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_predict(results: list[dict], path: str | Path, title: str = "Predict") -> Path:
    """Latency percentiles and the server-side split against load (concurrency or rate)."""
    plt = _pyplot()
    xs = [r["concurrency"] if r["mode"] == "concurrency" else r["rate"] for r in results]
    labels = [
        f"c={r['concurrency']}"
        if r["mode"] == "concurrency"
        else f"{'P' if r['poisson'] else 'r'}={r['rate']:g}/s"
        for r in results
    ]
    pos = list(range(len(xs)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for q in ("p50", "p90", "p95", "p99"):
        ax1.plot(pos, [r["latency_ms"][q] for r in results], marker="o", label=q)
    ax1.set_xticks(pos, labels)
    ax1.set_ylabel("end-to-end latency (ms)")
    ax1.set_title(f"{title}: latency")
    ax1.legend()
    ax1.grid(alpha=0.3)
    bottom = [0.0] * len(results)
    parts = [
        ("preprocess", lambda r: r["server_ms"]["preprocess_p50"]),
        ("queue", lambda r: r["server_ms"]["queue_p50"]),
        ("compute", lambda r: r["server_ms"]["compute_p50"]),
        ("rest (decode, gRPC, ...)", lambda r: max(r["latency_ms"]["p50"] - sum_parts(r), 0.0)),
    ]
    for name, get in parts:
        vals = [get(r) for r in results]
        ax2.bar(pos, vals, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax2.set_xticks(pos, labels)
    ax2.set_ylabel("p50 split (ms)")
    ax3 = ax2.twinx()
    ax3.plot(pos, [r["throughput"] for r in results], color="k", marker="s", label="req/s")
    ax3.set_ylabel("throughput (req/s)")
    ax2.set_title(f"{title}: where the time goes (p50)")
    ax2.legend(loc="upper left", fontsize=8)
    return _save(plt, fig, path)


def sum_parts(r: dict) -> float:
    s = r["server_ms"]
    return s["preprocess_p50"] + s["queue_p50"] + s["compute_p50"]


def plot_stream(result: dict, path: str | Path) -> Path:
    """Per-second p50/p99 update latency and updates per second of a station-feed replay."""
    plt = _pyplot()
    per = result["per_second"]
    t = [p["second"] for p in per]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [p["p50"] for p in per], label="p50")
    ax.plot(t, [p["p99"] for p in per], label="p99")
    ax.axhline(result["limit_ms"], color="r", ls="--", label=f"limit {result['limit_ms']:g} ms")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("update latency (ms)")
    ax2 = ax.twinx()
    ax2.plot(t, [p["updates"] for p in per], color="k", alpha=0.4, label="updates/s")
    ax2.set_ylabel("updates per second")
    ax.set_title(f"{result['stations']} stations, {result['model']}, hop {result['hop']:g} s")
    ax.legend(loc="upper left")
    return _save(plt, fig, path)


def plot_capacity(results: list[dict], path: str | Path) -> Path:
    """Each capacity probe (stations vs p99) per model, with the limit."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for r in results:
        probes = sorted(r["probes"], key=lambda p: p["stations"])
        ax.plot(
            [p["stations"] for p in probes],
            [p["p99"] for p in probes],
            marker="o",
            label=f"{r['model']} ({r['capacity']})",
        )
    if results:
        ax.axhline(results[0]["limit_ms"], color="r", ls="--", label="limit")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("stations")
    ax.set_ylabel("p99 update latency (ms)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def plot_event(event, stations, truth: float | None, path: str | Path, title: str = "") -> Path:
    """An evolving event magnitude (:class:`~seismag.serving.pipeline.event.EventResult`) with
    its one-sigma band, each station's series (thin) and P onset (ticks), against seconds
    after the event's first P."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for r in stations:
        t0 = float(r.series_start - event.first_onset)
        t = t0 + np.arange(len(r.series)) * r.series_interval
        sid = f"{r.network}.{r.station}"
        line = ax.plot(t, r.series, lw=0.8, alpha=0.6, label=sid)[0]
        if r.onset is not None:
            ax.axvline(float(r.onset - event.first_onset), color=line.get_color(), lw=0.6, ls=":")
    t = float(event.series_start - event.first_onset) + np.arange(len(event.series)) * (
        event.series_interval
    )
    t[-1] = float(event.series_end - event.first_onset)
    ax.plot(t, event.series, color="k", lw=2, label="event")
    if np.all(np.isfinite(event.sigma_series)):
        ax.fill_between(
            t,
            event.series - event.sigma_series,
            event.series + event.sigma_series,
            color="k",
            alpha=0.15,
            label="event +- 1 sigma",
        )
    if truth is not None:
        ax.axhline(truth, color="tab:red", ls="--", lw=1, label=f"catalogue M {truth:.2f}")
    ax.set_xlabel("seconds after the event's first P (dotted: each station's P)")
    ax.set_ylabel("magnitude")
    ax.set_xlim(left=-1)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    return _save(plt, fig, path)
