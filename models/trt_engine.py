"""TensorRT engines from exported ONNX files: build, deserialize, run. Needs an NVIDIA GPU.

Shared by export (``seismag export --to tensorrt`` writes ``.plan`` files,
:mod:`seismag.export.tensorrt`) and the serving executor's TensorRT backend (which loads such a
plan or builds one in memory), so neither imports the other. ``tensorrt`` and ``torch`` (which
holds the CUDA buffers) are imported only inside these functions.

One optimisation profile covers batch 1-256 (optimum 32). The Mamba models'
``seismag::SelectiveScan`` nodes carry a model-local function of standard ops; TensorRT's ONNX
parser expands local functions before it looks for plugins, so the engine builds from it as is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

MIN_BATCH, OPT_BATCH, MAX_BATCH = 1, 32, 256
PRECISIONS = ("fp32", "fp16")


class TensorRTUnavailable(RuntimeError):
    """TensorRT, torch (the CUDA buffers) or a CUDA GPU is missing on this machine."""


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
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT runs here with torch holding the CUDA buffers; torch is not installed"
        ) from exc
    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs a CUDA GPU; none is visible on this machine")
    return trt


def build_serialized(
    onnx_path: str | Path, *, precision: str = "fp32", workspace_gib: float = 4.0
) -> bytes:
    """Parse the ONNX file and build a serialized engine with a batch 1-256 profile."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
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
    else:
        # fp32 means fp32: TensorRT allows TF32 (10-bit mantissa) in fp32 engines by default on
        # Ampere and later GPUs, which is ~1e-3 off, ten times the cards' tolerance.
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (MIN_BATCH, *rest), (OPT_BATCH, *rest), (MAX_BATCH, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(serialized)


class Engine:
    """A deserialized engine and one execution context, run on numpy arrays.

    :meth:`run` copies the inputs to the GPU, executes and copies every output back; one run at
    a time (a lock), since an execution context must not be used from two threads at once.
    """

    def __init__(self, serialized: bytes) -> None:
        self._trt = trt = require_tensorrt()
        import torch

        self._torch = torch
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:  # a plan from another TensorRT version or GPU
            raise RuntimeError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self._lock = threading.Lock()

    def prepare(self, feeds: dict[str, np.ndarray]) -> tuple[Callable[[], None], dict]:
        """Inputs on the GPU once, outputs allocated: ``(run, tensors)``; ``run()`` executes and
        waits. For timing the engine alone (the benchmarks); :meth:`run` is the serving path."""
        torch = self._torch
        tensors = {}
        for name, array in feeds.items():
            tensors[name] = torch.from_numpy(np.ascontiguousarray(array)).cuda()
            self.context.set_input_shape(name, tuple(array.shape))
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            tensors[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
        for name, tensor in tensors.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.current_stream()

        def run() -> None:
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            stream.synchronize()

        return run, tensors

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output for ``feeds`` (batch <= MAX_BATCH), as numpy arrays."""
        with self._lock:
            run, tensors = self.prepare(feeds)
            run()
            return {name: tensors[name].cpu().numpy() for name in self.output_names}


def load_engine(plan_path: str | Path) -> Engine:
    return Engine(Path(plan_path).read_bytes())
