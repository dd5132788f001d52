"""A fused CPU kernel for ``seismag::SelectiveScan`` in ONNX Runtime.

The exported file carries each Mamba scan as one ``seismag::SelectiveScan`` node plus a
model-local function in standard ops (:mod:`seismag.export.scan_function`), so stock onnxruntime
runs it anywhere. On CPU that function is no faster than an ONNX ``Scan``; a fused loop is ~5x
faster per scan (about 1.5-2.5x for the whole U-Mamba models, see benchmarks/export_report.py).
This module supplies that loop and plugs it into an ``InferenceSession``.

What is native here: :func:`fused_selective_scan` is compiled by numba to machine code
(``parallel=True``: a ``prange`` over batch * d_inner, each with its own d_state-sized state). It
runs inside onnxruntime through onnxruntime-extensions, a real ORT custom-op library whose
*Python* ops call back into Python once per node execution: the Python trampoline costs one
call per scan node per ``run``, never one per time step, so the loop itself is all machine code.
The callback holds the GIL, so sessions run from several Python threads take turns in the kernel.

What could not be built here, and why:

* a C++ ORT custom-op library (the usual way to ship a kernel): onnxruntime's C/C++ headers are
  not on PyPI and were not installable in this environment;
* a TensorRT plugin: there is no GPU in this environment to build or test one against.

Domain: onnxruntime-extensions' Python ops always live in the fixed domain ``"ai.onnx.contrib"``,
so :func:`use_fused_kernel` rewrites an in-memory copy of the model to that domain just before the
session is built. The file on disk keeps ``seismag::SelectiveScan`` and its standard-op function,
so it stays portable to any runtime.

numba and onnxruntime-extensions are optional (the ``kernels`` extra) and are imported lazily:
importing this module needs neither.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from seismag.export.scan_function import DOMAIN, OP_TYPE

KERNEL_DOMAIN = "ai.onnx.contrib"  # fixed by onnxruntime-extensions for Python custom ops
KERNEL_DOMAIN_VERSION = 1

_lock = threading.Lock()
_kernel: Callable | None = None  # the compiled numba function, built on first use
_op_registered = False  # onnxruntime-extensions keeps ops in a process-wide table: add ours once


_PROTOBUF_ENV = "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"


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
    """Whether the fused kernel can run here; when not, a reason fit for a log line."""
    missing = []
    for module, extra in (("numba", "numba"), ("onnxruntime_extensions", "onnxruntime-extensions")):
        try:
            import_extensions() if module == "onnxruntime_extensions" else __import__(module)
        except ImportError as exc:  # a broken install raises ImportError subclasses too
            missing.append(f"{extra} ({exc})")
    if missing:
        return False, "not importable: " + "; ".join(missing) + " (pip install 'seismag[kernels]')"
    return True, "numba and onnxruntime-extensions import"


# Stand-in until numba is imported: the loop below reads the global at compile time, so
# _build_kernel swaps in numba.prange first. (A module-level function, not a closure: numba only
# caches functions it can find again by module and name.)
_prange = range


def _scan_loop(u, delta, A, Bt, Ct, D, z):  # pragma: no cover - runs as numba machine code
    """u, delta, z: (b, d, L); A: (d, n); Bt, Ct: (b, L, n) so step t reads n contiguous floats."""
    b, d, length = u.shape
    n = A.shape[1]
    y = np.empty_like(u)
    for bd in _prange(b * d):
        i, c = bd // d, bd % d
        h = np.zeros(n, np.float32)
        a = A[c]
        dc = D[c]
        for t in range(length):
            dt = delta[i, c, t]
            ut = u[i, c, t]
            dtu = dt * ut
            acc = np.float32(0.0)
            for k in range(n):
                # dt >= 0, A <= 0: the decay is in [0, 1], so h stays bounded for any dt.
                h[k] = np.exp(dt * a[k]) * h[k] + dtu * Bt[i, t, k]
                acc += h[k] * Ct[i, t, k]
            zt = z[i, c, t]
            y[i, c, t] = (acc + dc * ut) * (zt / (np.float32(1.0) + np.exp(-zt)))
    return y


def _build_kernel() -> Callable:
    """Compile the loop, or load it from numba's on-disk cache; called once per process.

    ``cache=True`` saves the compile (seconds) in every later process. numba finds a cache dir
    itself (``NUMBA_CACHE_DIR`` if set, else next to this file, else a per-user dir) and refuses
    ``cache=True`` when none is writable, e.g. a read-only install with no home directory; the
    kernel then still works, it just compiles in every process.
    """
    global _prange
    import numba

    _prange = numba.prange
    # fastmath without "nnan"/"ninf": silu(z) meets exp(-z) = inf for z < -88 and must give -0.
    options = {"parallel": True, "fastmath": {"nsz", "arcp", "contract", "afn", "reassoc"}}
    try:
        return numba.njit(cache=True, **options)(_scan_loop)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, **options)(_scan_loop)


def _get_kernel() -> Callable:
    global _kernel
    with _lock:
        if _kernel is None:
            _kernel = _build_kernel()
        return _kernel


def fused_selective_scan(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: np.ndarray,
    z: np.ndarray,
) -> np.ndarray:
    """``seismag::SelectiveScan``: (scan(u, delta, A, B, C) + D * u) * silu(z), float32.

    Shapes as the op: u, delta, z (b, d, L); A (d, n); B, C (b, n, L); D (d,) -> (b, d, L).
    The state is accumulated in float32, like the torch and ONNX implementations.
    """
    f32 = np.float32
    u, delta, A, D, z = (np.ascontiguousarray(x, dtype=f32) for x in (u, delta, A, D, z))
    # (b, n, L) -> (b, L, n): one copy each, so the inner loop over n is unit-stride.
    Bt = np.ascontiguousarray(np.swapaxes(B, 1, 2), dtype=f32)
    Ct = np.ascontiguousarray(np.swapaxes(C, 1, 2), dtype=f32)
    return _get_kernel()(u, delta, A, Bt, Ct, D, z)


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


def use_fused_kernel(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose SelectiveScan nodes run the registered fused kernel.

    Each ``seismag::SelectiveScan`` node moves to ``ai.onnx.contrib`` (the only domain
    onnxruntime-extensions serves Python ops in), the seismag function, now unused, is dropped so
    the session holds no dead standard-op body, and the contrib opset is imported. A model without
    such nodes comes back as an unchanged copy.
    """
    out = copy.deepcopy(model)
    nodes = [n for n in out.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]
    if not nodes:
        return out
    for node in nodes:
        node.domain = KERNEL_DOMAIN
    keep = [f for f in out.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del out.functions[:]
    out.functions.extend(keep)
    if not any(op.domain == KERNEL_DOMAIN for op in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(KERNEL_DOMAIN, KERNEL_DOMAIN_VERSION))
    return out


def fused_session(
    path_or_proto: str | Path | onnx.ModelProto, *, threads: int | None = None
) -> ort.InferenceSession:
    """A CPU session on the model with every SelectiveScan node on the fused kernel.

    ``threads`` sets ORT's intra-op threads; the kernel's own parallelism is numba's thread pool
    (``NUMBA_NUM_THREADS`` / ``numba.set_num_threads``), which is separate. The two pools share
    the cores, so ORT's idle workers must not spin-wait: with spinning on, they took the cores
    from numba's workers while the kernel ran, and the fused model was 1.4-5x slower (measured on
    2 cores: UMambaMagV2 batch 1, 16 ms vs 3.3 ms; batch 32, 114 ms vs 77 ms).
    """
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
