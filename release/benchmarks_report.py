"""Regenerate docs/benchmarks.md: every number in it is measured by this run, on this machine.

    python release/benchmarks_report.py --out docs/benchmarks.md            # ~15-20 min, 2 cores
    python release/benchmarks_report.py --out /tmp/b.md --quick             # ~5 min

A release script, run from a checkout (it writes into the repository, so it is not part of the
installed package); it imports ``seismag`` from the editable install (``pip install -e '.[dev]'``).

Sections: the machine; Predict latency (concurrency sweep, constant and Poisson rates) with the
server-side split; a 1000-station feed; the runtime comparison; station capacity per model; and
the before/after record of the serving fixes (docs/benchmarks/before_*.json and after_*.json,
written by ``seismag bench predict --json`` in one run each). Raw results go next to the page
(``docs/benchmarks/report.json``) with the PNG plots.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from seismag.benchmarks.cli import DEFAULT_EXPORTS, progress

SCRIPT = "python release/benchmarks_report.py"
DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> dict:
    """What the numbers were measured on: CPU, cores, memory, load, library versions."""
    import grpc
    import numpy
    import obspy
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "memory_gb": mem_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__,
            "obspy": obspy.__version__,
            "grpcio": grpc.__version__,
        },
    }


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _predict_table(runs: list[dict]) -> list[str]:
    out = [
        "| load | req/s | p50 | p90 | p95 | p99 | preprocess | queue | compute | server total "
        "| outside server | stable |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        if r["mode"] == "concurrency":
            load = f"concurrency {r['concurrency']}"
        else:
            load = f"{'Poisson' if r['poisson'] else 'constant'} {r['rate']:g}/s"
        lat, s = r["latency_ms"], r["server_ms"]
        out.append(
            f"| {load} | {r['throughput']:.0f} | {lat['p50']:.2f} | {lat['p90']:.2f} | "
            f"{lat['p95']:.2f} | {lat['p99']:.2f} | {s['preprocess_p50']:.2f} | "
            f"{s['queue_p50']:.2f} | {s['compute_p50']:.2f} | {s['total_p50']:.2f} | "
            f"{r['outside_server_p50_ms']:.2f} | {'yes' if r['stable'] else 'no'} |"
        )
    return out


def _before_after(docs: Path) -> list[str]:
    """The recorded before/after runs, if present (they are measurements, read from JSON)."""
    lines: list[str] = []
    for what in ("final", "series"):
        before, after = docs / f"before_predict_{what}.json", docs / f"after_predict_{what}.json"
        if not (before.exists() and after.exists()):
            continue
        b, a = json.loads(before.read_text()), json.loads(after.read_text())
        lines += ["", f"**{b['workload']}** ({b['target']}):", ""]
        lines += [
            "| concurrency | p50 before | p50 after | p99 before | p99 after | req/s before "
            "| req/s after | queue p50 before / after | preprocess p50 before / after "
            "| compute p50 before / after |",
            "|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
        ]
        after_by_c = {r["concurrency"]: r for r in a["runs"]}
        for rb in b["runs"]:
            ra = after_by_c.get(rb["concurrency"])
            if ra is None:
                continue
            sb, sa = rb["server_ms"], ra["server_ms"]
            lines.append(
                f"| {rb['concurrency']} | {rb['latency_ms']['p50']:.2f} | "
                f"{ra['latency_ms']['p50']:.2f} | {rb['latency_ms']['p99']:.2f} | "
                f"{ra['latency_ms']['p99']:.2f} | {rb['throughput']:.0f} | "
                f"{ra['throughput']:.0f} | {sb['queue_p50']:.2f} / {sa['queue_p50']:.2f} | "
                f"{sb['preprocess_p50']:.2f} / {sa['preprocess_p50']:.2f} | "
                f"{sb['compute_p50']:.2f} / {sa['compute_p50']:.2f} |"
            )
    return lines


def run(args: argparse.Namespace) -> dict:
    from seismag.benchmarks import idle_streams, loadgen
    from seismag.benchmarks.capacity import model_capacity
    from seismag.benchmarks.feeds import FeedConfig, run_stream
    from seismag.benchmarks.runtimes import compare
    from seismag.benchmarks.target import ServerOptions, export_models, open_target
    from seismag.models import load_cards

    quick = args.quick
    names = args.models or list(load_cards())
    out: dict = {
        "machine": machine(),
        "command": " ".join([SCRIPT, *sys.argv[1:]]),
    }
    window = 1.0 if quick else 2.0
    common = {"window_s": window, "max_windows": 6 if quick else 10, "progress": progress}
    options = ServerOptions()
    with open_target("spawn", options=options) as target:
        out["predict_target"] = target.description
        final = loadgen.Workload.rjob(series_interval=30.0)
        series = loadgen.Workload.rjob(series_interval=1.0)
        out["predict_final"] = [
            loadgen.run_concurrency(target.address, final, c, **common) for c in (1, 2, 4, 8)
        ]
        out["predict_rate"] = [
            loadgen.run_rate(target.address, final, 100.0, poisson=p, **common)
            for p in (False, True)
        ]
        out["predict_series"] = [
            loadgen.run_concurrency(target.address, series, c, **common) for c in (1, 2)
        ]
        out["predict_workloads"] = [final.description, series.description]
        out["stream"] = [
            run_stream(
                target.address,
                FeedConfig(1000, seconds=20 if quick else 30, warmup_s=10, batch_ms=batch_ms),
                progress,
            )
            for batch_ms in (0.0, args.batch_ms)
        ]
        # Each station its own StreamPredict call, as a station-feed client is naturally written.
        out["stream"].append(
            run_stream(
                target.address,
                FeedConfig(1000, seconds=20 if quick else 30, warmup_s=10, calls=1000),
                progress,
            )
        )
    # A fresh server: memory per stream is read from its RSS, which earlier load would blur.
    with open_target("spawn", options=options) as target:
        out["idle_streams"] = idle_streams.run(
            target.address, streams=2000, seconds=1.0, probes=50, pid=target.pid
        )
    out["runtimes"] = compare(
        names,
        batches=(1, 32) if quick else (1, 32, 256),
        threads=args.threads,
        min_time_s=0.3 if quick else 1.0,
        exports=args.exports,
        progress=progress,
    )
    per_window = {
        r["model"]: r["ms_per_window"]
        for r in out["runtimes"]["rows"]
        if r["runtime"] == "ort-fp32" and r["batch"] == 32 and r["ms_per_window"]
    }
    out["capacity"] = []
    for name in args.capacity_models or names:
        path = export_models([name], args.exports)[name]
        guess = int(min(max(300.0 / per_window.get(name, 3.0), 10), 2000))
        out["capacity"].append(
            model_capacity(
                name,
                path,
                guess=guess,
                seconds=16 if quick else 20,
                warmup_s=10,
                tolerance=0.25 if quick else 0.1,
                batch_ms=args.batch_ms,
                progress=progress,
            )
        )
    return out


def render(res: dict, docs: Path, command: str) -> str:
    from seismag.benchmarks.plots import plot_capacity, plot_predict, plot_stream

    plot_predict(res["predict_final"] + res["predict_rate"], docs / "predict.png", "Predict 30 s")
    for i, s in enumerate(res["stream"]):
        plot_stream(s, docs / f"stream{i}.png")
    plot_capacity(res["capacity"], docs / "capacity.png")
    m = res["machine"]
    rel = docs.name
    lines = [
        "# Benchmarks",
        "",
        f"Regenerated by `{command}` on {time.strftime('%Y-%m-%d %H:%M %Z')}; every number below "
        "was measured by that run (raw results: "
        f"[{rel}/report.json]({rel}/report.json)), except the before/after tables, which are "
        "read from the recorded runs named there.",
        "",
        f"**Machine**: {m['cpu']}, {m['cores']} cores, "
        f"{_fmt(m['memory_gb'], 0)} GB RAM, {m['os']}, Python {m['python']}, GPU: "
        f"{m['gpu'] or 'none'}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f". Load average at the start: {', '.join(f'{x:.1f}' for x in m['load_average'] or [])}"
        " (the machine may be shared: single runs are indicative).",
        "",
        "Tools: `seismag bench predict|stream|runtimes|capacity` (see `seismag bench -h`). "
        "Latencies are end to end at the client (gRPC included), nearest-rank percentiles; a "
        "load level counts once its last three windows agree within 10% on throughput and mean "
        "latency (perf_analyzer's rule), and the numbers are over those three windows.",
        "",
        "## Predict: one 30 s 3-component miniSEED request (PhaseNetMag)",
        "",
        f"Server: {res['predict_target']}. Times in ms; the split is the server's own (p50): "
        "preprocess (per station), queue (batcher wait), compute (model), server total "
        "(request arrival to answer, decode included); outside server = client latency minus "
        "server total (gRPC, serialisation, the client).",
        "",
        f"Final magnitude only ({res['predict_workloads'][0]}):",
        "",
        *_predict_table(res["predict_final"] + res["predict_rate"]),
        "",
        f"With the 1 s evolving series ({res['predict_workloads'][1]}):",
        "",
        *_predict_table(res["predict_series"]),
        "",
        f"![Predict]({rel}/predict.png)",
        "",
    ]
    c1 = res["predict_final"][0]["latency_ms"]["p50"]
    lines += [
        f"Target p50 <= 2.5 ms at concurrency 1: measured **{c1:.2f} ms** "
        f"({'met' if c1 <= 2.5 else 'not met'}).",
        "",
    ]
    streams = res["stream"]
    s0 = streams[0]
    lines += [
        f"## {s0['stations']} stations streaming at 1 s updates (PhaseNetMag)",
        "",
        f"`seismag bench stream --stations {s0['stations']} --seconds {s0['seconds']} "
        "[--batch-ms B]`: each station a copy of BW.RJOB with its own code and a P pick, 1 s "
        "raw packets (the three components in one `raw_chunks` message) at real-time pace, "
        f"stations spread evenly over the second, {s0['calls']} StreamPredict calls; statistics "
        f"over seconds {s0['warmup_s'] + 1}-{s0['seconds']}. Every station has an event in its "
        "window all the time, so every update runs the model (the worst case). Messages: one per "
        "station-second, or (batch B ms) the packets falling due within B ms in one message, as "
        "a forwarder of a SeedLink feed sends them; latency counts from the moment a station's "
        "packet was due, so the batching wait is included. Server: "
        f"{res['predict_target']}.",
        "",
        "| messages | calls | stations | updates/s | p50 ms | p90 ms | p99 ms | completeness | "
        "sender lag ms | queue p50 ms | compute p50 ms | p99 <= 250 ms and kept up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in streams:
        how = f"batch {s['batch_ms']:g} ms" if s["batch_ms"] else "one per station-second"
        lines.append(
            f"| {how} | {s['calls']} | {s['stations']} | {s['updates_per_s']:.0f} | "
            f"{s['p50']:.0f} | "
            f"{s['p90']:.0f} | {s['p99']:.0f} | {s['completeness']:.3f} | "
            f"{s['sender_lag_max_s'] * 1e3:.0f} | {s['server_ms']['queue_p50']:.1f} | "
            f"{s['server_ms']['compute_p50']:.1f} | {'yes' if s['ok'] else 'no'} |"
        )
    lines += [""] + [f"![stream]({rel}/stream{i}.png)" for i in range(len(streams))] + [""]
    if "idle_streams" in res:
        from seismag.benchmarks.idle_streams import report as idle_report

        lines += [
            "## Idle streams",
            "",
            "`seismag bench idle-streams --streams 2000`: 2,000 StreamPredict calls, each a "
            "station that sent 1 s of 3-component data and went quiet; health Check and one "
            "Predict timed 50 times each with them open; memory per stream from the server's RSS.",
            "",
            "```",
            idle_report(res["idle_streams"]),
            "```",
            "",
        ]
    rt = res["runtimes"]
    lines += [
        "## Runtimes per model",
        "",
        f"{rt['threads']} threads; measured matmul peak **{rt['matmul_peak_gflops']:.1f} "
        "GFLOP/s** (2048 x 2048 fp32 torch.matmul, best of 5). FLOPs per window from "
        "FlopCounterMode (matmul and convolution only, so the Mamba models' element-wise scan "
        "is not counted). ORT fp32/int8 are the sessions the server builds (the fused scan "
        "kernel for the Mamba models). Median of repeated calls after a warm-up.",
        "",
        "| model | MFLOP/window | runtime | batch | ms/window | windows/s | GFLOP/s | % of peak |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rt["rows"]:
        mf = rt["flops_per_window"][r["model"]] / 1e6
        if r["ms_per_window"] is None:
            lines.append(
                f"| {r['model']} | {mf:.0f} | {r['runtime']} | {r['batch']} | n/a | | | "
                f"{r['note']} |"
            )
            continue
        lines.append(
            f"| {r['model']} | {mf:.0f} | {r['runtime']} | {r['batch']} | "
            f"{r['ms_per_window']:.3f} | {r['windows_per_s']:.0f} | {r['gflops']:.2f} | "
            f"{r['peak_fraction']:.1%} |"
        )
    lines += [
        "",
        "## Station capacity at 1 s updates, p99 <= 250 ms",
        "",
        "`seismag bench capacity`: binary search on the station count, each probe a "
        "station-feed replay against a spawned server holding only that model (`--threads 1`, "
        f"default workers), packets due within {res['capacity'][0].get('batch_ms', 0):g} ms "
        "sent together; "
        "a probe passes when p99 update latency <= 250 ms, >= 99% of the expected updates "
        "arrive and the sender keeps pace.",
        "",
        "| model | stations | probes (stations: p99 ms, pass) |",
        "|---|---:|---|",
    ]
    for c in res["capacity"]:
        probes = "; ".join(
            f"{p['stations']}: {p['p99']:.0f}, {'pass' if p['ok'] else 'fail'}" for p in c["probes"]
        )
        cap = f"{c['capacity']}{'+' if c['capped'] else ''}"
        lines.append(f"| {c['model']} | {cap} | {probes} |")
    lines += ["", f"![capacity]({rel}/capacity.png)", ""]
    ba = _before_after(docs)
    if ba:
        lines += [
            "## Serving fixes: before and after",
            "",
            "Recorded with `seismag bench predict --spawn` (defaults: `--threads 1`, max queue "
            "delay 2 ms), one run before and one after the fixes, on the same machine (shared; "
            "see the files for their windows): `docs/benchmarks/before_predict_*.json` and "
            "`after_predict_*.json`. Times in ms.",
            *ba,
            "",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--quick", action="store_true", help="shorter windows and probes")
    parser.add_argument("--models", nargs="+", help="models for the runtime table (default all)")
    parser.add_argument("--capacity-models", nargs="+", help="models for capacity (default all)")
    parser.add_argument("--threads", type=int, default=2, help="threads for the runtime table")
    parser.add_argument("--exports", type=Path, default=DEFAULT_EXPORTS)
    parser.add_argument(
        "--batch-ms", type=float, default=10.0, help="feed batching of the batched stream runs"
    )
    args = parser.parse_args(argv)
    command = " ".join([SCRIPT, *(argv or sys.argv[1:])])
    t0 = time.perf_counter()
    res = run(args)
    res["seconds"] = time.perf_counter() - t0
    docs = args.out.parent / "benchmarks"
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "report.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    args.out.write_text(render(res, docs, command))
    progress(f"wrote {args.out} in {res['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
