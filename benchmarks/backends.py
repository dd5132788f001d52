"""Serving backends side by side: ms per window for every model in every available backend.

    python -m seismag.benchmarks.backends --threads 2 --batch 32

Each model is loaded as the server loads it (:func:`seismag.serving.executor.backend.load_backend`,
f32, ``--threads`` intra-op threads, one stream) and timed on the same ``--batch`` windows: the
median of repeated calls for ``--min-time`` seconds after a warm-up (:func:`.runtimes.time_call`).
"max |diff|" is the largest difference to ONNX Runtime's outputs (magnitude and sigma, magnitude
units) on those windows. Columns:

- ``ort``: ONNX Runtime, the compiled SelectiveScan kernel for the Mamba models (the default);
- ``openvino``: OpenVINO f32, the Mamba scans through the same kernel as a Python operation;
- ``openvino-inline``: OpenVINO f32 with the scans' ONNX functions inlined into standard ops
  (Mamba models only: the other files have no scan);
- ``tensorrt``: fp32 engine, where TensorRT and a GPU exist.

Models come from ``--exports`` (exported once with untrained weights, as the other benchmarks do:
time does not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

COLUMNS = ("ort", "openvino", "openvino-inline", "tensorrt")


def _variant(column: str) -> tuple[str, dict]:
    """(backend name, BackendOptions overrides) of a column."""
    if column == "openvino-inline":
        return "openvino", {"fused_kernel": False}
    return column, {}


def measure(
    names: list[str], exports: Path, *, threads: int, batch: int, min_time_s: float, progress=None
) -> list[dict]:
    """One row per (model, column): ms/window, max |diff| to ORT, or why it could not run."""
    from seismag.benchmarks.runtimes import time_call
    from seismag.benchmarks.target import export_models
    from seismag.models.scan_kernel import OP_TYPE
    from seismag.serving.executor.backend import (
        BackendOptions,
        backend_available,
        comparison_inputs,
        load_backend,
        max_abs_difference,
    )

    paths = export_models(names, exports)
    rows = []
    for name in names:
        path = paths[name]
        has_scan = OP_TYPE.encode() in path.read_bytes()  # the custom node's op type
        expected = None
        for column in COLUMNS:
            row = {"model": name, "backend": column, "ms_per_window": None, "max_abs_diff": None}
            backend_name, overrides = _variant(column)
            ok, why = backend_available(backend_name)
            if column == "openvino-inline" and not has_scan:
                row["note"] = "no scan in this model: same as openvino"
            elif not ok:
                row["note"] = why
            else:
                try:
                    options = BackendOptions(threads=threads, **overrides)
                    backend = load_backend(backend_name, path, options)
                    wave, amp = comparison_inputs(backend.card, batch)
                    out = backend.run(wave, amp)
                    expected = out if column == "ort" else expected
                    row["max_abs_diff"] = max_abs_difference(out, expected)
                    row["kernel"] = backend.kernel
                    ms = time_call(lambda b=backend, w=wave, a=amp: b.run(w, a), min_time_s)
                    row["ms_per_window"] = ms / batch
                    backend.close()
                except Exception as exc:  # a backend that cannot run this model says why
                    row["note"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
            rows.append(row)
            if progress:
                progress(row)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: a row per model, ms/window and max |diff| to ORT per backend."""
    names = list(dict.fromkeys(r["model"] for r in rows))
    cells = {(r["model"], r["backend"]): r for r in rows}
    head = (
        "| model | "
        + " | ".join(COLUMNS)
        + " | "
        + " | ".join(f"{c} max abs diff" for c in COLUMNS[1:])
    )
    lines = [head + " |", "|---|" + "---:|" * (2 * len(COLUMNS) - 1)]
    for name in names:
        ms, diffs = [], []
        for column in COLUMNS:
            r = cells[(name, column)]
            ms.append(f"{r['ms_per_window']:.3f}" if r["ms_per_window"] is not None else "n/a")
            if column != "ort":
                d = r["max_abs_diff"]
                diffs.append(f"{d:.1e}" if d is not None else "")
        lines.append(f"| {name} | " + " | ".join(ms) + " | " + " | ".join(diffs) + " |")
    notes = sorted({(r["backend"], r["note"]) for r in rows if r.get("note")})
    lines += ["", *(f"- {column}: {note}" for column, note in notes)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from seismag.benchmarks.cli import DEFAULT_EXPORTS
    from seismag.models import load_cards

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(load_cards()))
    p.add_argument("--exports", type=Path, default=DEFAULT_EXPORTS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per cell")
    args = p.parse_args(argv)

    import onnxruntime

    versions = [f"onnxruntime {onnxruntime.__version__}"]
    for module in ("openvino", "numba", "tensorrt"):
        try:
            versions.append(f"{module} {__import__(module).__version__.split('-')[0]}")
        except ImportError:
            versions.append(f"{module} not installed")
    try:
        import numba

        # The scan kernel's own pool follows --threads, as the ORT sessions do.
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    print(
        f"batch {args.batch}, {args.threads} threads, f32; {platform.machine()}, "
        f"{', '.join(versions)}; ms per window (median), max abs diff to ort in magnitude units",
        flush=True,
    )

    def progress(row: dict) -> None:
        ms = row["ms_per_window"]
        done = f"{ms:.3f} ms/window" if ms is not None else f"n/a ({row.get('note', '')})"
        stamp = time.strftime("%H:%M:%S")
        print(f"[{stamp}] {row['model']} {row['backend']}: {done}", file=sys.stderr, flush=True)

    rows = measure(
        args.models,
        args.exports,
        threads=args.threads,
        batch=args.batch,
        min_time_s=args.min_time,
        progress=progress,
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
