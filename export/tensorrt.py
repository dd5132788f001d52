"""TensorRT engine files (fp32 / fp16) from the exported ONNX files. Needs an NVIDIA GPU.

The engine itself (parse, profile, build, run) lives in :mod:`seismag.models.trt_engine`, shared
with the serving executor's TensorRT backend; this module writes it to a ``.plan`` file.
``tensorrt`` is imported only inside those functions: the rest of seismag never needs it.

A native TensorRT plugin for the scan would need the model-local function stripped
(:func:`strip_local_functions`) and a plugin registered under ``seismag::SelectiveScan``; no such
plugin ships with seismag yet (see docs/export.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from seismag.models.trt_engine import (
    MAX_BATCH,
    MIN_BATCH,
    OPT_BATCH,
    TensorRTUnavailable,
    build_serialized,
    load_engine,
    require_tensorrt,
)

__all__ = [
    "MAX_BATCH",
    "MIN_BATCH",
    "OPT_BATCH",
    "EngineResult",
    "TensorRTUnavailable",
    "build_engine",
    "engine_runner",
    "require_tensorrt",
    "run_engine",
    "strip_local_functions",
]


def strip_local_functions(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without model-local functions, so a registered plugin takes the custom nodes."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(proto)
    del stripped.functions[:]
    return stripped


@dataclass(frozen=True)
class EngineResult:
    path: Path
    precision: str
    size_bytes: int


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    *,
    precision: str = "fp32",
    workspace_gib: float = 4.0,
) -> EngineResult:
    """Parse the ONNX file and write a serialized engine with a batch 1-256 profile."""
    serialized = build_serialized(onnx_path, precision=precision, workspace_gib=workspace_gib)
    plan_path = Path(plan_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(serialized)
    return EngineResult(plan_path, precision, plan_path.stat().st_size)


def engine_runner(plan_path: str | Path, feeds: dict):
    """Load an engine, put ``feeds`` (numpy) on the GPU once; returns ``(run, output)``.

    ``run()`` executes the engine and waits for it; ``output`` is the CUDA tensor of the first
    output it fills. The benchmarks time ``run`` alone, so copies are not counted.
    """
    engine = load_engine(plan_path)
    run, tensors = engine.prepare(feeds)
    return run, tensors[engine.output_names[0]]


def run_engine(plan_path: str | Path, feeds: dict):
    """Run a built engine once on numpy inputs; returns its first output as numpy."""
    engine = load_engine(plan_path)
    return engine.run(feeds)[engine.output_names[0]]
