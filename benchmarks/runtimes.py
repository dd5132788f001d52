"""Runtime comparison per model: PyTorch eager, TorchScript (or torch.compile), ONNX Runtime fp32
and int8, TensorRT when a GPU is present; ms per window, windows/s, and GFLOP/s against the
machine's measured matmul peak.

FLOPs per window come from ``torch.utils.flop_counter.FlopCounterMode`` on the PyTorch model: it
counts matrix products and convolutions (2 per multiply-add), not element-wise work, so for the
Mamba models, whose selective scan is element-wise, the achieved GFLOP/s understates the work.
The peak is the best of a few 2048 x 2048 fp32 ``torch.matmul`` runs on the same thread count.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

Progress = Callable[[str], None]
RUNTIMES = (
    "torch-eager",
    "torchscript",
    "torch-compile",
    "ort-fp32",
    "ort-int8",
    "openvino-fp32",
    "tensorrt",
)
DEFAULT_RUNTIMES = (
    "torch-eager",
    "torchscript",
    "ort-fp32",
    "ort-int8",
    "openvino-fp32",
    "tensorrt",
)
CSV_FIELDS = (
    "model", "runtime", "batch", "ms_per_call", "ms_per_window", "windows_per_s", "gflops",
    "peak_fraction", "note",
)  # fmt: skip


def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n matmul with ``threads`` torch threads (2 n^3 flops)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def flops_per_window(model, card) -> float:
    """Matmul + convolution FLOPs of one forward pass at batch 1 (FlopCounterMode)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from seismag.export.onnx_export import example_inputs

    x, amp = (torch.from_numpy(a) for a in example_inputs(card, 1))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x, amp)
    return float(counter.get_total_flops())


def time_call(
    fn: Callable[[], object], min_time_s: float, min_repeats: int = 3, warmup_s: float = 1.0
) -> float:
    """Median ms of ``fn``, repeated for ``min_time_s`` (at least 3 times), after a warm-up.

    The warm-up lasts ``warmup_s`` and at least two calls: PyTorch eager at batch 1 took
    80-330 ms per call for its first 6-8 calls here (oneDNN primitive creation), 2 ms after.
    """
    start = time.perf_counter()
    for i in range(20):
        fn()
        if i >= 1 and time.perf_counter() - start >= warmup_s:
            break
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 50:
            break
    return statistics.median(times)


def _ort_session(path: Path, threads: int):
    """The session the server would use: fused scan kernel where the model has scans."""
    from seismag.serving.executor.ort_backend import server_session

    return server_session(path, threads)[0]


def _runner(runtime: str, model, paths: dict[str, Path], threads: int, batch: int, card):
    """A zero-argument callable running one batch, or raise with the reason it cannot run."""
    import torch

    from seismag.export.onnx_export import example_inputs

    wave, amp = example_inputs(card, batch)
    tw, ta = torch.from_numpy(wave), torch.from_numpy(amp)
    if runtime == "torch-eager":

        def run():
            with torch.inference_mode():
                return model(tw, ta)

        return run
    if runtime == "torchscript":
        with torch.no_grad():
            traced = torch.jit.freeze(torch.jit.trace(model, (tw, ta), check_trace=False))

        def run():
            with torch.inference_mode():
                return traced(tw, ta)

        return run
    if runtime == "torch-compile":
        compiled = torch.compile(model, dynamic=False)

        def run():
            with torch.inference_mode():
                return compiled(tw, ta)

        return run
    if runtime in ("ort-fp32", "ort-int8"):
        key = card.name if runtime == "ort-fp32" else f"{card.name}.int8"
        sess = _ort_session(paths[key], threads)
        feeds = {"waveform": wave, "log_amp": amp}
        return lambda: sess.run(None, feeds)
    if runtime == "openvino-fp32":  # the server's OpenVINO backend (scan extension included)
        from seismag.serving.executor.backend import BackendOptions, load_backend

        backend = load_backend("openvino", paths[card.name], BackendOptions(threads=threads))
        return lambda: backend.run(wave, amp)
    if runtime == "tensorrt":
        return _tensorrt_runner(paths[card.name], wave, amp)
    raise ValueError(f"unknown runtime {runtime!r}; choose from {RUNTIMES}")


def _tensorrt_runner(onnx_path: Path, wave: np.ndarray, amp: np.ndarray):
    """Build an fp32 engine once and time execute_async_v3 (inputs already on the GPU)."""
    from seismag.export.tensorrt import build_engine, engine_runner, require_tensorrt

    require_tensorrt()  # raises TensorRTUnavailable with the reason on CPU-only hosts
    plan = onnx_path.with_suffix(".fp32.plan")
    if not plan.exists():
        build_engine(onnx_path, plan, precision="fp32")
    run, _ = engine_runner(plan, {"waveform": wave, "log_amp": amp})
    return run


def compare(
    names: list[str],
    *,
    batches: tuple[int, ...] = (1, 32, 256),
    runtimes: tuple[str, ...] = DEFAULT_RUNTIMES,
    threads: int = 2,
    min_time_s: float = 1.0,
    exports: Path,
    progress: Progress | None = None,
) -> dict:
    """Every (model, runtime, batch) measured here; a row per combination, reasons for gaps."""
    import torch

    from seismag.benchmarks.target import export_models
    from seismag.models import build_model

    torch.set_num_threads(threads)
    peak = matmul_peak_gflops(threads)
    if progress:
        progress(f"matmul peak ({threads} threads): {peak:.1f} GFLOP/s")
    rows: list[dict] = []
    flops: dict[str, float] = {}
    for name in names:
        paths = export_models([name], exports, int8="ort-int8" in runtimes)
        torch.manual_seed(0)
        model = build_model(name).eval()
        flops[name] = flops_per_window(model, model.card)
        for runtime in runtimes:
            for batch in batches:
                row = {"model": name, "runtime": runtime, "batch": batch, "note": ""}
                try:
                    ms = time_call(
                        _runner(runtime, model, paths, threads, batch, model.card), min_time_s
                    )
                except Exception as exc:  # a runtime that cannot run here says why
                    row.update(ms_per_call=None, ms_per_window=None, windows_per_s=None)
                    row.update(gflops=None, peak_fraction=None)
                    row["note"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
                    rows.append(row)
                    if progress:
                        progress(f"{name} {runtime} b{batch}: n/a ({row['note']})")
                    break  # the other batch sizes would fail the same way
                per = ms / batch
                gflops = flops[name] * (1e3 / per) / 1e9
                row.update(
                    ms_per_call=ms,
                    ms_per_window=per,
                    windows_per_s=1e3 / per,
                    gflops=gflops,
                    peak_fraction=gflops / peak,
                )
                rows.append(row)
                if progress:
                    progress(
                        f"{name} {runtime} b{batch}: {per:.3f} ms/window, "
                        f"{1e3 / per:.0f} windows/s, {gflops:.1f} GFLOP/s ({gflops / peak:.1%})"
                    )
    return {"threads": threads, "matmul_peak_gflops": peak, "flops_per_window": flops, "rows": rows}
