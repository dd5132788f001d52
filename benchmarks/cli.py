"""``seismag bench``: predict, stages, stream, runtimes and capacity benchmarks (command line).

    seismag bench predict --spawn --concurrency 1 2 4 8 --json out.json --plot out.png
    seismag bench predict --server HOST:PORT --rate 50 --poisson
    seismag bench stages --repeats 1000
    seismag bench stream --spawn --stations 1000 --seconds 30
    seismag bench idle-streams --streams 2000
    seismag bench runtimes --models PhaseNetMag ViTMag --batch 1 32 256
    seismag bench capacity --models PhaseNetMag

Live progress goes to stderr, one line per measurement window or probe; results to the files
named by ``--json``/``--csv``/``--plot`` and a short table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import time
from pathlib import Path

from seismag.serving.config import DEFAULTS

DEFAULT_EXPORTS = Path.home() / ".cache" / "seismag" / "bench-exports"


def progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def write_outputs(args: argparse.Namespace, payload: dict, rows: list[dict]) -> None:
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        progress(f"wrote {args.json}")
    if args.csv and rows:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        progress(f"wrote {args.csv}")


def _target_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--server", help="HOST:PORT of a running seismag server")
    where.add_argument(
        "--in-process", action="store_true", help="start a server in this process (127.0.0.1:0)"
    )
    where.add_argument(
        "--spawn", action="store_true", help="start `seismag serve` as a child process (default)"
    )
    p.add_argument("--models-path", nargs="+", type=Path, help="ONNX files the server loads")
    p.add_argument(
        "--threads", type=int, default=DEFAULTS.threads, help="runtime threads (started server)"
    )
    p.add_argument("--workers", type=int, help="parallel model runs (default: as seismag serve)")
    p.add_argument("--max-batch", type=int, default=DEFAULTS.max_batch)
    p.add_argument("--max-queue-delay-ms", type=float, default=DEFAULTS.max_queue_delay_ms)


def _outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="write the full result as JSON")
    p.add_argument("--csv", metavar="FILE", help="write one row per measurement as CSV")
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG plot")


def _feed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help="model name (default: the server's default)")
    p.add_argument(
        "--hop", type=float, default=DEFAULTS.stream_hop, help="update interval, seconds"
    )
    p.add_argument("--calls", type=int, help="StreamPredict calls (default: 1 per 250 stations)")
    p.add_argument("--warmup", type=int, default=10, help="seconds left out of the statistics")
    p.add_argument("--aligned", action="store_true", help="all stations send at the same instant")
    p.add_argument("--limit-ms", type=float, default=250.0, help="p99 update latency limit")
    p.add_argument(
        "--batch-ms",
        type=float,
        default=0.0,
        help="packets due within this many ms share one message (default 0: one per station)",
    )


def _mode(args: argparse.Namespace) -> str:
    if args.server:
        return "remote"
    return "in-process" if args.in_process else "spawn"


def _options(args: argparse.Namespace):
    from seismag.benchmarks.target import ServerOptions

    return ServerOptions(
        models=list(args.models_path or []),
        threads=args.threads,
        workers=args.workers,
        max_batch=args.max_batch,
        max_queue_delay_ms=args.max_queue_delay_ms,
    )


@contextlib.contextmanager
def _target(args: argparse.Namespace):
    """The benchmark's server; one not reached in time is a CLI error, not a traceback."""
    from seismag.benchmarks.target import open_target
    from seismag.serving.client_cli import CliError

    with contextlib.ExitStack() as stack:
        try:
            target = stack.enter_context(
                open_target(_mode(args), server=args.server, options=_options(args))
            )
        except TimeoutError as exc:  # only the wait for the server; the benchmark's own pass
            hint = "; is `seismag serve` running there?" if args.server else ""
            raise CliError(f"{exc}{hint}") from None
        yield target


def _cmd_predict(args: argparse.Namespace) -> int:
    from seismag.benchmarks import loadgen

    workload = loadgen.Workload.rjob(model=args.model, series_interval=args.series_interval)
    results = []
    with _target(args) as target:
        progress(f"target: {target.description} at {target.address}")
        common = {"window_s": args.window, "max_windows": args.max_windows, "progress": progress}
        if args.rate:
            for rate in args.rate:
                results.append(
                    loadgen.run_rate(target.address, workload, rate, poisson=args.poisson, **common)
                )
        else:
            for c in args.concurrency:
                results.append(loadgen.run_concurrency(target.address, workload, c, **common))
    rows = [loadgen.flat_row(r) for r in results]
    print(
        f"{'load':>12} {'req/s':>8} {'p50':>7} {'p90':>7} {'p95':>7} {'p99':>7} "
        f"{'prep':>6} {'queue':>6} {'comp':>6} {'other':>6} stable"
    )
    for r in rows:
        load = f"c={r['concurrency']}" if r["mode"] == "concurrency" else f"{r['rate']:g}/s"
        print(
            f"{load:>12} {r['throughput']:>8.1f} {r['p50']:>7.2f} {r['p90']:>7.2f} "
            f"{r['p95']:>7.2f} {r['p99']:>7.2f} {r['preprocess_p50']:>6.2f} "
            f"{r['queue_p50']:>6.2f} {r['compute_p50']:>6.2f} {r['outside_server_p50']:>6.2f} "
            f"{r['stable']}"
        )
    payload = {"target": target.description, "workload": workload.description, "runs": results}
    write_outputs(args, payload, rows)
    if args.plot:
        from seismag.benchmarks.plots import plot_predict

        progress(f"wrote {plot_predict(results, args.plot)}")
    return 0


def _cmd_stages(args: argparse.Namespace) -> int:
    from seismag.benchmarks import predict_stages

    with _target(args) as target:
        progress(f"target: {target.description} at {target.address}")
        result = predict_stages.run(
            target.address, _options(args), repeats=args.repeats, model=args.model
        )
    result["target"] = target.description
    print(predict_stages.report(result))
    rows = [
        {"what": k, "ms": v}
        for part in ("stages_ms", "round_trips_ms")
        for k, v in result[part].items()
    ]
    write_outputs(args, result, rows)
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    from seismag.benchmarks.feeds import FeedConfig, run_stream

    cfg = FeedConfig(
        stations=args.stations,
        seconds=args.seconds,
        model=args.model,
        hop=args.hop,
        calls=args.calls,
        warmup_s=args.warmup,
        spread=not args.aligned,
        limit_ms=args.limit_ms,
        batch_ms=args.batch_ms,
    )
    with _target(args) as target:
        progress(f"target: {target.description} at {target.address}")
        result = run_stream(target.address, cfg, progress)
    result["target"] = target.description
    print(_stream_line(result))
    row = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}
    write_outputs(args, result, [row])
    if args.plot:
        from seismag.benchmarks.plots import plot_stream

        progress(f"wrote {plot_stream(result, args.plot)}")
    return 0 if result["ok"] else 1


def _stream_line(r: dict) -> str:
    return (
        f"{r['stations']} stations, {r['model']}: p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms "
        f"(limit {r['limit_ms']:g}), {r['updates_per_s']:.0f} updates/s, completeness "
        f"{r['completeness']:.3f}, sender lag {r['sender_lag_max_s'] * 1e3:.0f} ms, "
        f"queue p50 {r['server_ms']['queue_p50']:.1f} ms, compute p50 "
        f"{r['server_ms']['compute_p50']:.1f} ms -> {'PASS' if r['ok'] else 'FAIL'}"
    )


def _cmd_idle_streams(args: argparse.Namespace) -> int:
    from seismag.benchmarks import idle_streams

    with _target(args) as target:
        progress(f"target: {target.description} at {target.address}")
        pid = target.pid if target.mode != "remote" else None
        result = idle_streams.run(
            target.address,
            streams=args.streams,
            seconds=args.seconds,
            probes=args.probes,
            pid=pid,
        )
    result["target"] = target.description
    print(idle_streams.report(result))
    row = {k: v for k, v in result.items() if not isinstance(v, dict)}
    write_outputs(args, result, [row])
    return 0 if result["streams_still_open"] == args.streams else 1


def _cmd_runtimes(args: argparse.Namespace) -> int:
    from seismag.benchmarks.runtimes import compare
    from seismag.models import load_cards

    result = compare(
        args.models or list(load_cards()),
        batches=tuple(args.batch),
        runtimes=tuple(args.runtime),
        threads=args.threads,
        min_time_s=args.min_time,
        exports=args.exports,
        progress=progress,
    )
    print(f"matmul peak {result['matmul_peak_gflops']:.1f} GFLOP/s ({args.threads} threads)")
    for r in result["rows"]:
        if r["ms_per_window"] is None:
            print(f"{r['model']:<17} {r['runtime']:<13} b{r['batch']:<4} n/a: {r['note']}")
            continue
        print(
            f"{r['model']:<17} {r['runtime']:<13} b{r['batch']:<4} {r['ms_per_window']:8.3f} "
            f"ms/window {r['windows_per_s']:8.0f}/s {r['gflops']:7.2f} GFLOP/s "
            f"{r['peak_fraction']:6.1%}"
        )
    write_outputs(args, result, result["rows"])
    return 0


def _cmd_capacity(args: argparse.Namespace) -> int:
    from seismag.benchmarks.capacity import model_capacity
    from seismag.benchmarks.target import export_models

    results = []
    for name in args.models:
        path = export_models([name], args.exports)[name]
        r = model_capacity(
            name,
            path,
            guess=args.guess,
            seconds=args.seconds,
            warmup_s=args.warmup,
            limit_ms=args.limit_ms,
            tolerance=args.tolerance,
            threads=args.threads,
            workers=args.workers,
            batch_ms=args.batch_ms,
            progress=progress,
        )
        results.append(r)
        print(f"{name}: {r['capacity']}{'+' if r['capped'] else ''} stations at 1 s updates")
    rows = [{k: v for k, v in r.items() if k != "probes"} for r in results]
    write_outputs(args, {"runs": results}, rows)
    if args.plot:
        from seismag.benchmarks.plots import plot_capacity

        progress(f"wrote {plot_capacity(results, args.plot)}")
    return 0


def add_bench_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``seismag bench ...`` on the top-level ``seismag`` parser."""
    bench = sub.add_parser(
        "bench",
        help="latency benchmarks: Predict load and stages, station feeds, runtimes, capacity",
        description=__doc__.split("\n\n")[0],
    )
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")

    p = bsub.add_parser("predict", help="Predict latency at fixed concurrency or request rate")
    _target_args(p)
    _outputs(p)
    p.add_argument("--model", default="", help="model name (default: the server's default)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--rate", type=float, nargs="+", help="requests per second (open loop)")
    p.add_argument("--poisson", action="store_true", help="Poisson arrivals for --rate")
    p.add_argument(
        "--series-interval",
        type=float,
        default=30.0,
        help="30 = the final magnitude only (one window); 1 = the 1 s evolving series too",
    )
    p.add_argument("--window", type=float, default=2.0, help="measurement window, seconds")
    p.add_argument("--max-windows", type=int, default=10)
    p.set_defaults(func=_cmd_predict)

    p = bsub.add_parser(
        "stages", help="one Predict's stages timed alone, and the gRPC round trips around them"
    )
    _target_args(p)
    _outputs(p)
    p.add_argument("--model", default="", help="model name (default: the server's default)")
    p.add_argument("--repeats", type=int, default=1000, help="timed calls per stage and RPC")
    p.set_defaults(func=_cmd_stages)

    p = bsub.add_parser("stream", help="N stations streaming 1 s packets at real-time pace")
    _target_args(p)
    _outputs(p)
    _feed_args(p)
    p.add_argument("--stations", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=30)
    p.set_defaults(func=_cmd_stream)

    p = bsub.add_parser(
        "idle-streams", help="memory per open idle stream; health and Predict latency meanwhile"
    )
    _target_args(p)
    _outputs(p)
    p.add_argument("--streams", type=int, default=2000, help="StreamPredict calls held open")
    p.add_argument("--seconds", type=float, default=1.0, help="data each stream sends first")
    p.add_argument("--probes", type=int, default=50, help="health checks and Predicts timed")
    p.set_defaults(func=_cmd_idle_streams)

    from seismag.benchmarks.runtimes import DEFAULT_RUNTIMES, RUNTIMES

    p = bsub.add_parser("runtimes", help="PyTorch vs ONNX Runtime (vs TensorRT) per model")
    _outputs(p)
    p.add_argument("--models", nargs="+", help="model names (default: all six)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--runtime", nargs="+", choices=RUNTIMES, default=list(DEFAULT_RUNTIMES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds timed per measurement")
    p.add_argument("--exports", type=Path, default=DEFAULT_EXPORTS, help="ONNX export cache")
    p.set_defaults(func=_cmd_runtimes)

    p = bsub.add_parser("capacity", help="largest station count served in real time, per model")
    _outputs(p)
    p.add_argument("--models", nargs="+", default=["PhaseNetMag"])
    p.add_argument("--guess", type=int, default=200, help="first station count probed")
    p.add_argument("--seconds", type=int, default=20, help="length of each probe")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--limit-ms", type=float, default=250.0)
    p.add_argument("--tolerance", type=float, default=0.1, help="relative bracket to stop at")
    p.add_argument(
        "--batch-ms", type=float, default=0.0, help="feed packets due within this many ms together"
    )
    p.add_argument(
        "--threads", type=int, default=DEFAULTS.threads, help="ONNX Runtime threads of the server"
    )
    p.add_argument("--workers", type=int, help="parallel model runs (default: as seismag serve)")
    p.add_argument("--exports", type=Path, default=DEFAULT_EXPORTS, help="ONNX export cache")
    p.set_defaults(func=_cmd_capacity)
