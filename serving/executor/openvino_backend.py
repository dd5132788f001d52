"""The OpenVINO backend (CPU), f32 unless bf16 is asked for explicitly.

Precision: OpenVINO's CPU plugin infers in bf16 by default where the CPU has bf16 units (AMX /
AVX512-BF16, as this development machine does); that moved PhaseNetMag by 0.09 magnitude units,
so ``INFERENCE_PRECISION_HINT`` is set to f32 unless ``BackendOptions.precision="bf16"``, and the
precision the compiled model reports is kept in :attr:`OpenVinoBackend.precision`.

The Mamba models: OpenVINO's ONNX frontend does not expand model-local functions, so it refuses
their ``seismag::SelectiveScan`` nodes ("No conversion rule found for operations:
seismag.SelectiveScan"). Two ways in, both here, measured on 2 cores at batch 32:

- ``kernel`` (default where numba imports): a frontend ``ConversionExtension`` maps each node to
  a Python ``openvino.Op`` whose ``evaluate`` runs the compiled scan of
  :mod:`seismag.models.scan_kernel` (the one ONNX Runtime and training use). The CPU plugin runs
  it as a reference node, once per scan per inference; the rest of the graph stays native.
  UMambaMagV1 / V2: 2.6 / 2.9 ms per window against ONNX Runtime's 3.5 / 3.0 (fused kernel).
- ``inline`` (``BackendOptions.fused_kernel=False``, or without numba): the functions are inlined
  into standard ops at load time (``onnx.inliner.inline_local_functions``, needs ``onnx``) and
  OpenVINO compiles the chunked scan like any other subgraph. Correct (the same outputs within
  2e-7), but 10.4 / 9.4 ms per window: the chunked scan is ~4x slower than the loop.

``openvino`` is optional (the ``openvino`` extra) and imported when a backend is loaded.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from seismag.models import scan_kernel
from seismag.models.artifact import ArtifactError, read_artifact
from seismag.models.card import INPUT_NAMES, OUTPUT_NAME, SIGMA_NAME
from seismag.models.scan_kernel import OP_DOMAIN, OP_TYPE, fused_selective_scan
from seismag.serving.executor.backend import (
    BackendOptions,
    ModelLoadError,
    ModelRows,
    TensorSpec,
    served_outputs,
)

PRECISIONS = ("f32", "bf16")
_lock = threading.Lock()
_scan_op_class = None


def available() -> tuple[bool, str]:
    try:
        import openvino
    except ImportError as exc:
        return False, f"openvino is not installed ({exc}): pip install 'seismag[openvino]'"
    return True, f"openvino {openvino.__version__}"


def _scan_op():
    """The ``openvino.Op`` running SelectiveScan with the compiled kernel (defined once, on first
    use, because ``openvino`` is only imported here)."""
    global _scan_op_class
    with _lock:
        if _scan_op_class is not None:
            return _scan_op_class
        from openvino import Op

        class SelectiveScan(Op):
            """seismag::SelectiveScan: y (b, d, L) = (scan + D * u) * silu(z), float32."""

            def __init__(self, inputs=None):
                super().__init__(self, inputs)

            def validate_and_infer_types(self):
                self.set_output_type(
                    0, self.get_input_element_type(0), self.get_input_partial_shape(0)
                )

            def clone_with_new_inputs(self, new_inputs):
                return SelectiveScan(new_inputs)

            def visit_attributes(self, visitor):
                return True  # `chunk` only shapes the standard-op function; the loop has none

            def has_evaluate(self):
                return True

            def evaluate(self, outputs, inputs):
                y = fused_selective_scan(*(np.asarray(t.data) for t in inputs))
                outputs[0].shape = y.shape
                np.asarray(outputs[0].data)[...] = y
                return True

        _scan_op_class = SelectiveScan
        return SelectiveScan


def _read_model(core, path: Path, scan: str):
    """The OpenVINO model of ``path``; ``scan`` says how SelectiveScan nodes are handled:
    ``kernel`` (extension) or ``inline`` (standard ops)."""
    if scan == "kernel":
        from openvino.frontend.onnx import ConversionExtension

        op = _scan_op()
        core.add_extension(
            ConversionExtension(
                OP_TYPE, OP_DOMAIN, lambda node: op([node.get_input(i) for i in range(7)]).outputs()
            )
        )
        return core.read_model(str(path))
    try:
        return core.read_model(str(path))
    except Exception as plain_error:  # the frontend refuses the custom op: inline its function
        try:
            import onnx
            from onnx import inliner
        except ImportError:
            raise ModelLoadError(
                f"{path}: OpenVINO cannot read it ({str(plain_error).splitlines()[-1]}), and "
                "inlining its SelectiveScan functions needs onnx: pip install onnx, or install "
                "numba for the kernel path ('seismag[kernels]')"
            ) from plain_error
        proto = onnx.load(str(path))
        if not any(n.domain == OP_DOMAIN for n in proto.graph.node):
            raise
        return core.read_model(inliner.inline_local_functions(proto).SerializeToString())


def _port_name(port) -> str:
    """The port's ONNX interface name: a port may carry several tensor names (OpenVINO merges
    ``sigma`` with the internal name of the node computing it), and ``get_any_name`` picks any."""
    names = port.get_names()
    return next((n for n in (*INPUT_NAMES, OUTPUT_NAME, SIGMA_NAME) if n in names), None) or (
        port.get_any_name()
    )


def _spec(port) -> TensorSpec:
    shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
    return TensorSpec(_port_name(port), port.get_element_type().to_dtype().name, shape)


class OpenVinoBackend:
    """An exported model compiled by OpenVINO for the CPU (see :mod:`.backend` for the protocol).

    One infer request per calling thread (a request must not be shared between threads), so the
    batcher's workers run in parallel on ``streams`` streams of ``threads`` threads each.
    """

    name = "openvino"
    device = "cpu"

    def __init__(self, path: Path, options: BackendOptions) -> None:
        import openvino as ov

        if options.precision not in PRECISIONS:
            raise ValueError(
                f"OpenVINO precision must be one of {PRECISIONS}, got {options.precision!r}"
            )
        self.path = Path(path)
        try:
            self.card, self.weights = read_artifact(self.path)
        except ArtifactError as exc:
            raise ModelLoadError(str(exc)) from exc
        kernel_ok = scan_kernel.kernel_available()
        self.scan = "kernel" if options.fused_kernel and kernel_ok else "inline"
        core = ov.Core()
        try:
            model = _read_model(core, self.path, self.scan)
            streams = max(int(options.streams), 1)
            config = {
                "INFERENCE_PRECISION_HINT": options.precision,
                "INFERENCE_NUM_THREADS": max(int(options.threads), 1) * streams,
                "NUM_STREAMS": streams,
            }
            self._compiled = core.compile_model(model, "CPU", config)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{self.path}: OpenVINO cannot load it: {exc}") from exc
        # What the plugin will really use (an ov.Type: "f32" / "bf16"), not what was asked.
        self.precision = self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        uses_scan = self.scan == "kernel" and any(
            op.get_type_name() == "SelectiveScan" for op in model.get_ops()
        )
        self.kernel = f"openvino-{self.precision}" + ("+fused-scan" if uses_scan else "")
        self.inputs = tuple(_spec(p) for p in self._compiled.inputs)
        ports = {_port_name(p): p for p in self._compiled.outputs}
        self._fetch = [ports[n] for n in served_outputs(list(ports))]
        self.outputs = tuple(_spec(p) for p in self._fetch)
        self._local = threading.local()

    def run(self, waveform: np.ndarray, log_amp: np.ndarray) -> ModelRows:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        # share_inputs: the request reads the arrays in place (they live until infer returns).
        # Copying them instead resized the request's own input tensors whenever the batch size
        # changed, as the batcher's does from one run to the next: PhaseNetMag at batches 1, 2,
        # 1, 4 in turn, one thread, 1.99 against 1.34 ms per window (medians, one run, 2 cores).
        # share_outputs=False (the default): the rows are copies, the request is reused.
        out = request.infer(
            {
                "waveform": np.ascontiguousarray(waveform, np.float32),
                "log_amp": np.ascontiguousarray(log_amp, np.float32),
            },
            share_inputs=True,
        )
        values = [out[p] for p in self._fetch]
        return ModelRows(values[0], values[1] if len(values) > 1 else None)

    def close(self) -> None:
        self._compiled = None
        self._local = threading.local()


def load(path: Path, options: BackendOptions) -> OpenVinoBackend:
    return OpenVinoBackend(path, options)
