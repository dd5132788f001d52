"""The one compiled CPU selective scan: for training (with its backward pass), torch inference and
the ``seismag::SelectiveScan`` op of exported files in ONNX Runtime and OpenVINO.

The chunked scan in :mod:`seismag.models.selective_scan` is built from standard tensor ops so it
exports to ONNX, but on CPU it is memory-bound: every one of its ~Q steps materialises (batch,
d_inner, d_state, L/Q) tensors (and keeps them for the backward pass under autograd). The
recurrence itself is cheap (~6 flops per state per step), so a plain loop compiled by numba is
several times faster, forward and backward, and stores nothing between the two passes: the
backward recomputes each channel's states (L x d_state floats, cache-sized) and runs the adjoint
recurrence in reverse time::

    G_t = C_t * gy_t + exp(dt_{t+1} A) * G_{t+1}          (G_t = dLoss/dh_t)
    h_t = exp(dt_t A) * h_{t-1} + dt_t u_t B_t  =>  gradients of dt, u, A, B from G_t; C from h_t

Two entry points share the forward loop: :func:`kernel_scan` (torch tensors, differentiable; D and
the gate stay in torch so autograd covers them) and :func:`fused_selective_scan` (numpy, the whole
op with D and the gate fused into the loop, as serving backends call it). The same math as the
reference loop, to float32 rounding (tests compare values and gradients).

This module imports neither torch nor numba: serving installs have no torch, and numba is
optional (the ``kernels`` extra, :func:`kernel_available`); both are imported on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

OP_DOMAIN = "seismag"
OP_TYPE = "SelectiveScan"
"""The custom ONNX op the exported Mamba models carry (see :mod:`seismag.export.scan_function`):
inputs u, delta, A, B, C, D, z; output (scan + D * u) * silu(z); attribute ``chunk``."""

_lock = threading.Lock()
_kernels: tuple[Callable, Callable] | None = None
_import_error: str | None = None
_autograd: Any = None  # the torch.autograd.Function, built on first use (torch is optional here)

# Replaced by numba.prange and scan_exp.decay_exp before compiling (module-level functions:
# numba caches them by name).
_prange = range
_decay = np.exp


def _forward_loop(u, delta, A, Bt, Ct, D, z, fuse):  # pragma: no cover - numba machine code
    """u, delta, z: (b, d, L); A: (d, n); Bt, Ct: (b, L, n) so step t reads n contiguous floats;
    D: (d,). ``fuse``: y = (scan + D * u) * silu(z), else the bare scan (D and z unread)."""
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
                h[k] = _decay(dt * a[k]) * h[k] + dtu * Bt[i, t, k]
                acc += h[k] * Ct[i, t, k]
            if fuse:
                zt = z[i, c, t]
                y[i, c, t] = (acc + dc * ut) * (zt / (np.float32(1.0) + np.exp(-zt)))
            else:
                y[i, c, t] = acc
    return y


def _backward_loop(u, delta, A, Bt, Ct, gy):  # pragma: no cover - runs as numba machine code
    """Gradients (gu, gdelta, gA per batch item, gBt, gCt); parallel over the batch, so each
    thread owns its item's rows of gBt and gCt (summed over channels) without races."""
    b, d, length = u.shape
    n = A.shape[1]
    gu = np.empty_like(u)
    gdelta = np.empty_like(u)
    gA = np.zeros((b, d, n), np.float32)
    gBt = np.zeros_like(Bt)
    gCt = np.zeros_like(Ct)
    for i in _prange(b):
        hs = np.empty((length, n), np.float32)
        g = np.empty(n, np.float32)
        for c in range(d):
            for k in range(n):
                g[k] = 0.0
            prev = g.copy()  # zeros: the state before the first step
            for t in range(length):
                dt = delta[i, c, t]
                dtu = dt * u[i, c, t]
                for k in range(n):
                    prev[k] = _decay(dt * A[c, k]) * prev[k] + dtu * Bt[i, t, k]
                    hs[t, k] = prev[k]
            for t in range(length - 1, -1, -1):
                dt = delta[i, c, t]
                ut = u[i, c, t]
                gyt = gy[i, c, t]
                gdt = np.float32(0.0)
                gut = np.float32(0.0)
                for k in range(n):
                    a = _decay(dt * A[c, k])
                    h_prev = hs[t - 1, k] if t > 0 else np.float32(0.0)
                    gk = g[k] + Ct[i, t, k] * gyt  # dLoss/dh_t
                    gCt[i, t, k] += gyt * hs[t, k]
                    gdt += gk * (a * A[c, k] * h_prev + ut * Bt[i, t, k])
                    gut += gk * dt * Bt[i, t, k]
                    gBt[i, t, k] += gk * dt * ut
                    gA[i, c, k] += gk * h_prev * a * dt
                    g[k] = gk * a  # carried to h_{t-1}
                gdelta[i, c, t] = gdt
                gu[i, c, t] = gut
    return gu, gdelta, gA, gBt, gCt


def _njit(fn: Callable, **options) -> Callable:
    """``numba.njit(parallel=True, cache=True)``; without the cache where no cache dir is writable.

    numba finds a cache dir itself (``NUMBA_CACHE_DIR``, else next to this file, else a per-user
    dir) and refuses ``cache=True`` when none is writable (a read-only install with no home); the
    kernel then compiles in every process instead of loading in milliseconds.
    """
    import numba

    try:
        return numba.njit(parallel=True, cache=True, **options)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(parallel=True, cache=False, **options)(fn)


def _compile() -> tuple[Callable, Callable]:
    global _prange, _decay
    import numba

    from seismag.models.scan_exp import FASTMATH, decay_exp

    _prange = numba.prange
    # The decays through an exp that vectorises: 2.4x faster forward at batch 32 on 2 cores.
    _decay = decay_exp
    # Forward: fastmath without "nnan"/"ninf" (silu(z) meets exp(-z) = inf for z < -88 and must
    # give -0), ~10% faster at batch 32 and within 5e-6 of the plain build. Backward: no fastmath,
    # it sums many small terms and must match autograd closely.
    forward = _njit(_forward_loop, fastmath=FASTMATH)
    return forward, _njit(_backward_loop)


def kernel_available() -> bool:
    """True when numba imports (the kernels compile, or load from numba's cache, on first use)."""
    global _import_error
    if _import_error is None:
        try:
            import numba  # noqa: F401

            _import_error = ""
        except ImportError as exc:
            _import_error = f"numba not importable ({exc}): pip install 'seismag[kernels]'"
    return not _import_error


def unavailable_reason() -> str:
    """Why :func:`kernel_available` is False ("" when it is True)."""
    kernel_available()
    return _import_error or ""


def _get() -> tuple[Callable, Callable]:
    global _kernels
    if not kernel_available():
        raise RuntimeError(_import_error)
    with _lock:
        if _kernels is None:
            _kernels = _compile()
        return _kernels


def fused_selective_scan(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: np.ndarray,
    z: np.ndarray,
) -> np.ndarray:
    """The ``seismag::SelectiveScan`` op: (scan(u, delta, A, B, C) + D * u) * silu(z), float32.

    Shapes as the op: u, delta, z (b, d, L); A (d, n); B, C (b, n, L); D (d,) -> (b, d, L).
    The state is accumulated in float32, like the torch and ONNX implementations.
    """
    f32 = np.float32
    u, delta, A, D, z = (np.ascontiguousarray(x, dtype=f32) for x in (u, delta, A, D, z))
    # (b, n, L) -> (b, L, n): one copy each, so the inner loop over n is unit-stride.
    Bt = np.ascontiguousarray(np.swapaxes(B, 1, 2), dtype=f32)
    Ct = np.ascontiguousarray(np.swapaxes(C, 1, 2), dtype=f32)
    return _get()[0](u, delta, A, Bt, Ct, D, z, True)


def _numpy(x) -> np.ndarray:
    return x.detach().float().contiguous().numpy()  # .float(): torch.float32


def _set_threads() -> None:
    """Follow torch's thread setting (``--threads``), within numba's pool size."""
    import numba
    import torch

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _autograd_function():
    """The torch.autograd.Function over the kernels, defined on first use (torch is imported
    only by callers that already have it)."""
    global _autograd
    if _autograd is not None:
        return _autograd
    import torch

    class KernelScan(torch.autograd.Function):
        """scan(u, delta, A, B, C) without D and gate; CPU float32 tensors."""

        @staticmethod
        def forward(ctx, u, delta, A, B, C):
            forward_loop, _ = _get()
            _set_threads()
            ctx.save_for_backward(u, delta, A, B, C)
            u_, d_ = _numpy(u), _numpy(delta)
            Bt, Ct = (_numpy(x.transpose(1, 2)) for x in (B, C))
            # fuse=False: D and z are not read; u stands in so the compiled signature is shared.
            D0 = np.zeros(u_.shape[1], np.float32)
            return torch.from_numpy(forward_loop(u_, d_, _numpy(A), Bt, Ct, D0, u_, False))

        @staticmethod
        def backward(ctx, gy):
            _, backward_loop = _get()
            _set_threads()
            u, delta, A, B, C = ctx.saved_tensors
            Bt, Ct = (_numpy(x.transpose(1, 2)) for x in (B, C))
            gu, gdelta, gA, gBt, gCt = backward_loop(
                _numpy(u), _numpy(delta), _numpy(A), Bt, Ct, _numpy(gy)
            )
            as_t = torch.from_numpy
            return (
                as_t(gu),
                as_t(gdelta),
                as_t(gA).sum(0),
                as_t(gBt).transpose(1, 2),
                as_t(gCt).transpose(1, 2),
            )

    _autograd = KernelScan
    return _autograd


def kernel_scan(u, delta, A, B, C):
    """The scan without D and gate, through the compiled kernel (differentiable torch tensors)."""
    return _autograd_function().apply(u, delta, A, B, C)
