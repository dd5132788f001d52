"""The ONNX Runtime backend, with the compiled SelectiveScan kernel as an ORT custom op.

The exported file carries each Mamba scan as one ``seismag::SelectiveScan`` node plus a
model-local function in standard ops, so stock onnxruntime runs it anywhere. On CPU that function
is no faster than an ONNX ``Scan``; the compiled loop (:mod:`seismag.models.scan_kernel`, the same
one training uses) is ~5x faster per scan (about 1.5-2.5x for the whole U-Mamba models, see
benchmarks/export_report.py). It runs inside onnxruntime through onnxruntime-extensions, a real
ORT custom-op library whose *Python* ops call back into Python once per node execution: the
trampoline costs one call per scan node per ``run``, never one per time step, so the loop itself
is all machine code. The callback holds the GIL, so sessions run from several Python threads take
turns in the kernel.

Domain: onnxruntime-extensions' Python ops always live in the fixed domain ``"ai.onnx.contrib"``,
so :func:`use_fused_kernel` rewrites an in-memory copy of the model to that domain just before the
session is built. The file on disk keeps ``seismag::SelectiveScan`` and its standard-op function.
numba, onnxruntime-extensions and onnx (for that rewrite) are optional and imported lazily; without
them the plain session computes the same scan from the function.

Not built here, and why: a C++ ORT custom-op library (onnxruntime's C/C++ headers are not on PyPI
and were not installable in this environment).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from seismag.models import scan_kernel
from seismag.models.artifact import ArtifactError, card_from_metadata
from seismag.models.scan_kernel import OP_DOMAIN, OP_TYPE, fused_selective_scan
from seismag.serving.executor.backend import (
    BackendOptions,
    ModelLoadError,
    ModelRows,
    TensorSpec,
    served_outputs,
)

log = logging.getLogger(__name__)

KERNEL_DOMAIN = "ai.onnx.contrib"  # fixed by onnxruntime-extensions for Python custom ops
KERNEL_DOMAIN_VERSION = 1
_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}

_lock = threading.Lock()
_op_registered = False  # onnxruntime-extensions keeps ops in a process-wide table: add ours once
_PROTOBUF_ENV = "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"


def available() -> tuple[bool, str]:
    return True, f"onnxruntime {ort.__version__}"


def resolve_providers(requested: list[str] | tuple[str, ...] | None) -> list[str]:
    """Requested providers that this onnxruntime build has, in order, CPU always last.

    Accepts ORT names or the short forms cpu / cuda / tensorrt. Unavailable ones are skipped with a
    log line, so a GPU config still starts on a CPU-only host.
    """
    have = ort.get_available_providers()
    chosen: list[str] = []
    for name in requested or []:
        full = _PROVIDER_ALIASES.get(name.lower(), name)
        if full not in have:
            log.warning("execution provider %s is not available here (have %s)", full, have)
        elif full not in chosen:
            chosen.append(full)
    if "CPUExecutionProvider" in chosen:
        chosen.remove("CPUExecutionProvider")
    return [*chosen, "CPUExecutionProvider"]


def session_options(threads: int) -> ort.SessionOptions:
    """The options of the server's plain CPU sessions (``threads`` intra-op threads)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(int(threads), 1)
    opts.inter_op_num_threads = 1  # one graph at a time; the batcher provides the concurrency
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


def carded_session(
    path: str | Path, threads: int | None, card_key: str, what: str, hint: str
) -> tuple[Path, ort.InferenceSession, dict[str, str]]:
    """An inline model's file (picker, encoder, field model): the path checked, a quiet CPU
    session (``threads`` intra-op threads; None: ONNX Runtime's default, every core) and the
    file's metadata, which must hold its card under ``card_key`` (else ModelLoadError naming
    ``what`` and ``hint``, how to make such a file)."""
    from seismag.models.artifact import ArtifactError, check_file

    try:
        checked = check_file(path)
    except ArtifactError as exc:
        raise ModelLoadError(str(exc)) from None
    opts = ort.SessionOptions() if threads is None else session_options(threads)
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(checked), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own load errors (not ONNX, truncated, ...)
        raise ModelLoadError(f"{checked}: ONNX Runtime cannot load it: {exc}") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if card_key not in meta:
        raise ModelLoadError(
            f"{checked}: no {what} card in its metadata (key {card_key!r}); {hint}"
        )
    return checked, session, meta


def plain_session(path: Path, threads: int, providers: list[str]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=providers)
    except Exception as exc:  # ORT raises its own Fail / InvalidProtobuf / RuntimeException
        raise ModelLoadError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc


# -- the fused SelectiveScan kernel as an ORT custom op ------------------------------------------


def import_extensions():
    """``import onnxruntime_extensions`` without its side effect on the environment.

    Importing it sets ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python`` in ``os.environ``
    (onnxruntime_extensions.cvt, "to avoid protobuf version mismatch"). This process keeps the
    protobuf it has already loaded, but every process it starts afterwards inherits the variable
    and falls back to pure-Python protobuf: a `seismag serve` spawned by the benchmark report
    after its runtime table served a 1000-station stream at p99 1.5-1.9 s instead of ~50 ms.
    The variable is put back as it was.
    """
    before = os.environ.get(_PROTOBUF_ENV)
    try:
        import onnxruntime_extensions

        return onnxruntime_extensions
    finally:
        if before is None:
            os.environ.pop(_PROTOBUF_ENV, None)
        else:
            os.environ[_PROTOBUF_ENV] = before


def kernel_available() -> tuple[bool, str]:
    """Whether the fused kernel can run in ONNX Runtime here; when not, a reason for a log line."""
    missing = []
    if not scan_kernel.kernel_available():
        missing.append(scan_kernel.unavailable_reason())
    for module in ("onnxruntime_extensions", "onnx"):
        try:
            import_extensions() if module == "onnxruntime_extensions" else __import__(module)
        except ImportError as exc:  # a broken install raises ImportError subclasses too
            missing.append(f"{module} ({exc})")
    if missing:
        return False, "not importable: " + "; ".join(missing) + " (pip install 'seismag[kernels]')"
    return True, "numba, onnxruntime-extensions and onnx import"


def _register_op() -> None:
    """Add the Python op to onnxruntime-extensions' process-wide table, exactly once.

    Registering twice would add a second kernel for the same op type, hence the module guard.
    The stock invocation hook hands outputs back as ``y.flatten().tolist()``, which the C++ side
    turns back into an array with ``np.ascontiguousarray``: ~50 ms per call at batch 32, three
    times the kernel. That C++ side (nanobind, extensions 0.15) reads any buffer, so for our op
    the hook below returns the array itself; every other Python op keeps the stock hook.
    """
    global _op_registered
    with _lock:
        if _op_registered:
            return
        import_extensions()
        from onnxruntime_extensions import PyCustomOpDef, _ocos, onnx_op

        @onnx_op(
            op_type=OP_TYPE,
            inputs=[PyCustomOpDef.dt_float] * 7,
            outputs=[PyCustomOpDef.dt_float],
            attrs={"chunk": PyCustomOpDef.dt_int64},
        )
        def selective_scan_op(u, delta, A, B, C, D, z, **_attrs):
            # `chunk` only shapes the standard-op fallback; the fused loop has no chunks.
            return fused_selective_scan(u, delta, A, B, C, D, z)

        stock_hook = getattr(_ocos, "_on_pyop_invocation", None)
        if stock_hook is not None:  # a private name: without it, the stock (slower) path runs

            def hook(op_id: int, feed: list, attrs: dict) -> tuple:
                if op_id != id(selective_scan_op):
                    return stock_hook(op_id, feed, attrs)
                y = fused_selective_scan(*feed)
                return op_id, y.shape, y

            PyCustomOpDef.install_hooker(hook)
        _op_registered = True


def session_options_with_kernel(opts: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """``opts`` (or fresh options) with the extensions library and our op registered.

    Building a session from these yourself? Turn off intra-op spinning as :func:`fused_session`
    does, or ORT's idle threads compete with the kernel's for the cores.
    """
    import_extensions()
    from onnxruntime_extensions import get_library_path

    _register_op()
    opts = opts if opts is not None else ort.SessionOptions()
    opts.register_custom_ops_library(get_library_path())
    return opts


def use_fused_kernel(model):
    """A copy of ``model`` (an ``onnx.ModelProto``) whose SelectiveScan nodes run the kernel.

    Each ``seismag::SelectiveScan`` node moves to ``ai.onnx.contrib`` (the only domain
    onnxruntime-extensions serves Python ops in), the seismag function, now unused, is dropped so
    the session holds no dead standard-op body, and the contrib opset is imported. A model without
    such nodes comes back as an unchanged copy.
    """
    import onnx

    out = copy.deepcopy(model)
    nodes = [n for n in out.graph.node if n.domain == OP_DOMAIN and n.op_type == OP_TYPE]
    if not nodes:
        return out
    for node in nodes:
        node.domain = KERNEL_DOMAIN
    keep = [f for f in out.functions if not (f.domain == OP_DOMAIN and f.name == OP_TYPE)]
    del out.functions[:]
    out.functions.extend(keep)
    if not any(op.domain == KERNEL_DOMAIN for op in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(KERNEL_DOMAIN, KERNEL_DOMAIN_VERSION))
    return out


def fused_session(path_or_proto, *, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session on the model (a path or an ``onnx.ModelProto``) with every SelectiveScan
    node on the fused kernel.

    ``threads`` sets ORT's intra-op threads; the kernel's own parallelism is numba's thread pool
    (``NUMBA_NUM_THREADS`` / ``numba.set_num_threads``), which is separate. The two pools share
    the cores, so ORT's idle workers must not spin-wait: with spinning on, they took the cores
    from numba's workers while the kernel ran, and the fused model was 1.4-5x slower (measured on
    2 cores: UMambaMagV2 batch 1, 16 ms vs 3.3 ms; batch 32, 114 ms vs 77 ms).
    """
    import onnx

    proto = (
        path_or_proto
        if isinstance(path_or_proto, onnx.ModelProto)
        else onnx.load(str(path_or_proto))
    )
    opts = session_options_with_kernel()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        use_fused_kernel(proto).SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )


def fused_scan_session(path: Path, threads: int | None) -> ort.InferenceSession | None:
    """A session with the fused kernel when the file has scans and the kernel can run, else None.

    Any failure falls back (None) to the plain session, whose standard-op function computes the
    same scan.
    """
    try:
        import onnx
    except ImportError:  # a serving-only install: no kernel either (it needs onnx), no warning
        return None
    try:
        proto = onnx.load(str(path))
        # Graph first: a model without scans (ViTMag, PhaseNetMag) must not pay the kernel's
        # availability check, which imports and compiles numba and the ORT extensions (~4 s).
        if not any(n.domain == OP_DOMAIN and n.op_type == OP_TYPE for n in proto.graph.node):
            return None
        if not kernel_available()[0]:
            return None
        return fused_session(proto, threads=threads)
    except Exception as exc:
        log.warning("%s: fused SelectiveScan kernel unusable, plain session instead: %s", path, exc)
        return None


def server_session(path: Path, threads: int, providers: list[str] | None = None):
    """The session the server builds for ``path``: fused scan kernel where the model has scans
    and runs on CPU only, else a plain session. Returns ``(session, kernel_name)``."""
    providers = providers or ["CPUExecutionProvider"]
    if providers == ["CPUExecutionProvider"]:
        session = fused_scan_session(path, threads)
        if session is not None:
            return session, "fused-scan"
    return plain_session(path, threads, providers), "onnxruntime"


# -- the backend ---------------------------------------------------------------------------------


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


class OrtBackend:
    """An exported model in an ONNX Runtime session (see :mod:`.backend` for the protocol)."""

    name = "ort"

    def __init__(self, path: Path, options: BackendOptions) -> None:
        self.path = Path(path)
        self.providers = resolve_providers(list(options.providers))
        if options.fused_kernel:
            self._session, self.kernel = server_session(self.path, options.threads, self.providers)
        else:
            self._session = plain_session(self.path, options.threads, self.providers)
            self.kernel = "onnxruntime"
        self.device = "cpu" if self.providers == ["CPUExecutionProvider"] else "gpu"
        meta = self._session.get_modelmeta().custom_metadata_map
        try:
            self.card, self.weights = card_from_metadata(meta, self.path)
        except ArtifactError as exc:
            raise ModelLoadError(str(exc)) from exc
        self.inputs = tuple(_spec(i) for i in self._session.get_inputs())
        outputs = {o.name: _spec(o) for o in self._session.get_outputs()}
        self._fetch = served_outputs(list(outputs))
        self.outputs = tuple(outputs[n] for n in self._fetch)

    @property
    def session(self) -> ort.InferenceSession:
        return self._session

    def run(self, waveform: np.ndarray, log_amp: np.ndarray) -> ModelRows:
        outs = self._session.run(self._fetch, {"waveform": waveform, "log_amp": log_amp})
        return ModelRows(outs[0], outs[1] if len(outs) > 1 else None)

    def close(self) -> None:
        self._session = None  # ORT frees the session when the last reference goes


def load(path: Path, options: BackendOptions) -> OrtBackend:
    return OrtBackend(path, options)
