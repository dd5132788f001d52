"""How an exported model's ONNX Runtime session behaves under the server's batching choices.

    python benchmarks/ort_parallel.py serving/default_model/PhaseNetMag.onnx --runs 1 2

1. Cost per window by rows per call, one thread (what the micro-batch tuning weighs).
2. Windows per second with ``--runs`` concurrent calls on ONE session from Python threads, each
   with 1 intra-op thread (what ``seismag serve --workers`` does), at batch ``--batch``.
Sessions are built with the server's options (``seismag.serving.executor.runtime.session_options``).
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import onnxruntime as ort

from seismag.serving.executor.runtime import session_options


def _inputs(session: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        i.name: rng.normal(size=[batch, *i.shape[1:]]).astype(np.float32)
        for i in session.get_inputs()
    }


def per_window_ms(session: ort.InferenceSession, rows: int, repeats: int) -> float:
    feeds = _inputs(session, rows)
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / rows * 1e3


def windows_per_s(session: ort.InferenceSession, runs: int, batch: int, calls: int) -> float:
    feeds = _inputs(session, batch)
    session.run(None, feeds)

    def loop() -> None:
        for _ in range(calls):
            session.run(None, feeds)

    threads = [threading.Thread(target=loop) for _ in range(runs)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return runs * calls * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an exported .onnx file")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calls", type=int, default=10, help="calls per thread")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    session = ort.InferenceSession(
        args.model, session_options(1), providers=["CPUExecutionProvider"]
    )
    print("| rows per call | ms per window (median, 1 thread) |\n|---:|---:|")
    for rows in args.rows:
        print(f"| {rows} | {per_window_ms(session, rows, args.repeats):.3f} |")
    print(f"\n| concurrent runs (batch {args.batch}) | windows/s |\n|---:|---:|")
    for runs in args.runs:
        print(f"| {runs} | {windows_per_s(session, runs, args.batch, args.calls):.0f} |")


if __name__ == "__main__":
    main()
