"""Export every model and measure it: export time, file size, ONNX Runtime vs PyTorch latency,
int8 speed and deviation, and for the Mamba models the scan function against its alternatives.

    python benchmarks/export_report.py --threads 2 --repeats 7 > /tmp/export_report.md

Every number printed is measured in this run on this machine; the header names the machine.
Medians of ``--repeats`` timed runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from seismag.benchmarks.stats import median_ms
from seismag.export.onnx_export import example_inputs, export_onnx
from seismag.export.quantize import quantize_int8
from seismag.export.scan_function import selective_scan_function
from seismag.models import build_model, load_cards
from seismag.serving.executor.ort_backend import fused_session, kernel_available


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_ms(sess: ort.InferenceSession, feeds: dict, repeats: int) -> float:
    return median_ms(lambda: sess.run(None, feeds), repeats)


def with_scan_kind(path: Path, kind: str, out: Path) -> Path:
    """The same exported graph with its SelectiveScan function body swapped for ``kind``."""
    proto = onnx.load(str(path))
    chunk = next(a.i for n in proto.graph.node if n.domain == "seismag" for a in n.attribute)
    del proto.functions[:]
    proto.functions.append(selective_scan_function(kind, chunk=chunk))
    onnx.save(proto, str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models or list(load_cards())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}; {args.threads} threads; median of {args.repeats}\n"
    )
    fused_ok, fused_reason = kernel_available()
    rows, int8_rows, scan_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in names:
            torch.manual_seed(0)
            model = build_model(name).eval()
            result = export_onnx(model, tmp / f"{name}.onnx")
            sess = session(result.path, args.threads)
            lat = {}
            for batch in (1, 32):
                waveform, log_amp = example_inputs(model.card, batch)
                feeds = {"waveform": waveform, "log_amp": log_amp}
                tw, ta = torch.from_numpy(waveform), torch.from_numpy(log_amp)
                with torch.inference_mode():
                    # Defaults bind this iteration's values (ruff B023); median_ms calls it now.
                    lat[("torch", batch)] = median_ms(
                        lambda model=model, tw=tw, ta=ta: model(tw, ta), args.repeats
                    )
                lat[("ort", batch)] = ort_ms(sess, feeds, args.repeats)
            rows.append(
                f"| {name} | {result.seconds:.1f} | {result.size_bytes / 1e6:.2f} | "
                f"{lat[('torch', 1)]:.2f} | {lat[('ort', 1)]:.2f} | "
                f"{lat[('torch', 32)]:.1f} | {lat[('ort', 32)]:.1f} | "
                f"{lat[('torch', 32)] / lat[('ort', 32)]:.2f}x |"
            )

            waveform, log_amp = example_inputs(model.card, 32, seed=7)
            feeds = {"waveform": waveform, "log_amp": log_amp}
            q_path = quantize_int8(result.path, tmp / f"{name}.int8.onnx")
            q_sess = session(q_path, args.threads)
            (ref,) = sess.run(["magnitude"], feeds)
            (q_out,) = q_sess.run(["magnitude"], feeds)
            int8_rows.append(
                f"| {name} | {q_path.stat().st_size / 1e6:.2f} | {lat[('ort', 32)]:.1f} | "
                f"{ort_ms(q_sess, feeds, args.repeats):.1f} | "
                f"{float(np.mean(np.abs(q_out - ref))):.3f} | "
                f"{float(np.max(np.abs(q_out - ref))):.3f} |"
            )

            if result.custom_nodes:
                fused = fused_session(result.path, threads=args.threads) if fused_ok else None
                for batch in (1, 32):
                    waveform, log_amp = example_inputs(model.card, batch)
                    feeds = {"waveform": waveform, "log_amp": log_amp}
                    ms = {
                        kind: ort_ms(
                            session(
                                with_scan_kind(result.path, kind, tmp / f"{kind}.onnx"),
                                args.threads,
                            ),
                            feeds,
                            args.repeats,
                        )
                        for kind in ("none", "scan")
                    }
                    ms["chunked"] = ort_ms(sess, feeds, args.repeats)
                    row = (
                        f"| {name} | {batch} | {ms['none']:.1f} | {ms['chunked']:.1f} | "
                        f"{ms['scan']:.1f} | {ms['chunked'] / ms['none']:.2f}x | "
                        f"{ms['scan'] / ms['chunked']:.2f}x |"
                    )
                    if fused is not None:
                        ms["fused"] = ort_ms(fused, feeds, args.repeats)
                        row += (
                            f" {ms['fused']:.1f} | {ms['fused'] / ms['none']:.2f}x | "
                            f"{ms['scan'] / ms['fused']:.2f}x |"
                        )
                    scan_rows.append(row)

    print("## Export and latency (ms per call, fp32)\n")
    print(
        "| model | export s | file MB | torch b1 | ORT b1 | torch b32 | ORT b32 | "
        "ORT speed-up b32 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print("\n## int8 dynamic quantisation (batch 32; deviation from fp32 in magnitude units)\n")
    print("| model | int8 MB | fp32 ms | int8 ms | mean abs dev | max abs dev |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(int8_rows))
    if scan_rows:
        print("\n## Mamba scan function in the full model (ms per call)\n")
        header = (
            "| model | batch | no recurrence | chunked (shipped) | ONNX Scan | "
            "chunked / none | Scan / chunked |"
        )
        rule = "|---|---:|---:|---:|---:|---:|---:|"
        if fused_ok:
            # The same file, SelectiveScan run by the numba kernel (serving/executor/ort_backend).
            header += " fused kernel | fused / none | Scan / fused |"
            rule += "---:|---:|---:|"
        else:
            print(f"(no fused-kernel column: {fused_reason})\n")
        print(header)
        print(rule)
        print("\n".join(scan_rows))


if __name__ == "__main__":
    main()
