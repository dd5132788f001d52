"""TensorRT engines (fp32 / fp16) from the exported ONNX files. Needs an NVIDIA GPU.

``tensorrt`` is imported only inside these functions: the rest of seismag never needs it. The
engine has one optimisation profile covering batch 1-256 (optimum at 32).

The Mamba models' ``seismag::SelectiveScan`` nodes carry a model-local function of standard ops;
TensorRT's ONNX parser expands local functions before it looks for plugins, so the engine builds
from that function as is. A native TensorRT plugin for the scan would need the function stripped
(:func:`strip_local_functions`) and a plugin registered under ``seismag::SelectiveScan``; no such
plugin ships with seismag yet (see docs/export.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

MIN_BATCH, OPT_BATCH, MAX_BATCH = 1, 32, 256


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing on this machine."""


def require_tensorrt():
    """Import tensorrt and check for a GPU, or say plainly what is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT is not installed: pip install 'seismag[gpu]' on a machine with an NVIDIA GPU"
        ) from exc
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        raise TensorRTUnavailable("TensorRT needs a CUDA GPU; none is visible on this machine")
    return trt


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
    """Parse the ONNX file and build a serialized engine with a batch 1-256 profile."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (MIN_BATCH, *rest), (OPT_BATCH, *rest), (MAX_BATCH, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    plan_path = Path(plan_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    return EngineResult(plan_path, precision, plan_path.stat().st_size)


def engine_runner(plan_path: str | Path, feeds: dict):
    """Load an engine, put ``feeds`` (numpy) on the GPU once; returns ``(run, output)``.

    ``run()`` executes the engine and waits for it; ``output`` is the CUDA tensor it fills. The
    benchmarks time ``run`` alone, so copies are not counted.
    """
    trt = require_tensorrt()
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
    context = engine.create_execution_context()
    tensors = {}
    for name, array in feeds.items():
        tensors[name] = torch.from_numpy(array).cuda().contiguous()
        context.set_input_shape(name, tuple(array.shape))
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            shape = tuple(context.get_tensor_shape(name))
            tensors[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
    for name, tensor in tensors.items():
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.current_stream()

    def run() -> None:
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()

    outputs = [n for n in tensors if n not in feeds]
    return run, tensors[outputs[0]]


def run_engine(plan_path: str | Path, feeds: dict):
    """Run a built engine once on numpy inputs (CUDA via torch); returns the output as numpy."""
    run, output = engine_runner(plan_path, feeds)
    run()
    return output.cpu().numpy()
