"""onnxruntime latency of the three SelectiveScan function bodies, one node each.

    python benchmarks/scan_onnx.py --threads 1 --repeats 50

Builds :func:`seismag.export.scan_function.scan_node_model` for the kinds "none" (no
recurrence: the floor of state-sized work), "chunked" (what ships) and "scan" (a plain ONNX Scan
over L: the generic-exporter baseline the chunked body must beat by >= 2x), runs each in stock
onnxruntime on the CPU (graph optimisation level ALL, so the function is inlined and optimised
like any exported model), and prints a Markdown table of the median latency of ``--repeats``
runs after ``--warmup`` runs, with the ratios chunked/none and scan/chunked. Numbers depend on the
machine; the header names it.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import numpy as np
import onnxruntime as ort

from seismag.export.scan_function import scan_node_model

KINDS = ("none", "chunked", "scan")
# (batch, d_inner, d_state, L): a U-Mamba-like stage at 751 samples, and a long thin one.
SIZES = ((1, 32, 16, 751), (1, 16, 16, 3001))


def make_feeds(batch: int, d_inner: int, d_state: int, length: int) -> dict[str, np.ndarray]:
    """Mamba-like inputs: dt log-uniform in 1e-3..1e-1, A = -exp(randn)."""
    rng = np.random.default_rng(0)
    feeds = {
        "u": rng.standard_normal((batch, d_inner, length)),
        "delta": np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), (batch, d_inner, length))),
        "A": -np.exp(rng.standard_normal((d_inner, d_state))),
        "B": rng.standard_normal((batch, d_state, length)),
        "C": rng.standard_normal((batch, d_state, length)),
        "D": rng.standard_normal(d_inner),
        "z": rng.standard_normal((batch, d_inner, length)),
    }
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}


def make_session(kind: str, chunk: int, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    model = scan_node_model(kind, chunk=chunk)
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def time_ms(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], warmup: int, repeats: int):
    """Median wall time of one run in ms; warm-up first (allocator arena, thread pool)."""
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="ORT intra_op_num_threads")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=32)
    args = parser.parse_args()

    sessions = {kind: make_session(kind, args.chunk, args.threads) for kind in KINDS}
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; onnxruntime {ort.__version__} (CPU EP), "
        f"{args.threads} intra-op thread(s), graph optimisation ALL, chunk {args.chunk}, "
        f"median of {args.repeats} runs after {args.warmup} warm-up\n"
    )
    print("| b, d, n, L | none ms | chunked ms | scan ms | chunked / none | scan / chunked |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in SIZES:
        feeds = make_feeds(*size)
        ms = {kind: time_ms(sessions[kind], feeds, args.warmup, args.repeats) for kind in KINDS}
        print(
            f"| {', '.join(map(str, size))} | {ms['none']:.3f} | {ms['chunked']:.3f} | "
            f"{ms['scan']:.3f} | {ms['chunked'] / ms['none']:.1f}x | "
            f"{ms['scan'] / ms['chunked']:.1f}x |"
        )


if __name__ == "__main__":
    main()
