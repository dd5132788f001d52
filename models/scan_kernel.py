"""A compiled CPU selective scan with its backward pass, for training and torch inference.

The chunked scan in :mod:`seismag.models.selective_scan` is built from standard tensor ops so it
exports to ONNX, but on CPU under autograd it is memory-bound: every one of its ~Q steps
materialises (batch, d_inner, d_state, L/Q) tensors and keeps them for the backward pass. The
recurrence itself is cheap (~6 flops per state per step), so a plain loop compiled by numba is
several times faster, forward and backward, and stores nothing between the two passes: the
backward recomputes each channel's states (L x d_state floats, cache-sized) and runs the adjoint
recurrence in reverse time::

    G_t = C_t * gy_t + exp(dt_{t+1} A) * G_{t+1}          (G_t = dLoss/dh_t)
    h_t = exp(dt_t A) * h_{t-1} + dt_t u_t B_t  =>  gradients of dt, u, A, B from G_t; C from h_t

The same math as the reference loop (to float32 rounding; tests compare values and gradients).
numba is optional (the ``kernels`` extra); :func:`kernel_available` says whether it imports.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

_lock = threading.Lock()
_kernels: tuple[Callable, Callable] | None = None
_import_error: str | None = None

# Replaced by numba.prange before compiling (module-level functions: numba caches them by name).
_prange = range


def _forward_loop(u, delta, A, Bt, Ct):  # pragma: no cover - runs as numba machine code
    """u, delta: (b, d, L); A: (d, n); Bt, Ct: (b, L, n) -> y (b, d, L), without D and gate."""
    b, d, length = u.shape
    n = A.shape[1]
    y = np.empty_like(u)
    for bd in _prange(b * d):
        i, c = bd // d, bd % d
        h = np.zeros(n, np.float32)
        for t in range(length):
            dt = delta[i, c, t]
            dtu = dt * u[i, c, t]
            acc = np.float32(0.0)
            for k in range(n):
                h[k] = np.exp(dt * A[c, k]) * h[k] + dtu * Bt[i, t, k]
                acc += h[k] * Ct[i, t, k]
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
                    prev[k] = np.exp(dt * A[c, k]) * prev[k] + dtu * Bt[i, t, k]
                    hs[t, k] = prev[k]
            for t in range(length - 1, -1, -1):
                dt = delta[i, c, t]
                ut = u[i, c, t]
                gyt = gy[i, c, t]
                gdt = np.float32(0.0)
                gut = np.float32(0.0)
                for k in range(n):
                    a = np.exp(dt * A[c, k])
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


def _compile() -> tuple[Callable, Callable]:
    global _prange
    import numba

    _prange = numba.prange
    # No fastmath: the backward sums many small terms and must match autograd closely.
    out = []
    for fn in (_forward_loop, _backward_loop):
        try:
            out.append(numba.njit(parallel=True, cache=True)(fn))
        except RuntimeError:  # no writable cache dir: compile in every process instead
            out.append(numba.njit(parallel=True, cache=False)(fn))
    return out[0], out[1]


def kernel_available() -> bool:
    """True when numba imports (the kernels compile on first use)."""
    global _import_error
    if _import_error is None:
        try:
            import numba  # noqa: F401

            _import_error = ""
        except ImportError as exc:
            _import_error = f"numba not importable ({exc}): pip install 'seismag[kernels]'"
    return not _import_error


def _get() -> tuple[Callable, Callable]:
    global _kernels
    if not kernel_available():
        raise RuntimeError(_import_error)
    with _lock:
        if _kernels is None:
            _kernels = _compile()
        return _kernels


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float32).contiguous().numpy()


def _set_threads() -> None:
    """Follow torch's thread setting (``--threads``), within numba's pool size."""
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class KernelScan(torch.autograd.Function):
    """scan(u, delta, A, B, C) without D and gate; CPU float32 tensors, shapes as selective_scan."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        forward_loop, _ = _get()
        _set_threads()
        ctx.save_for_backward(u, delta, A, B, C)
        Bt, Ct = (_numpy(x.transpose(1, 2)) for x in (B, C))
        return torch.from_numpy(forward_loop(_numpy(u), _numpy(delta), _numpy(A), Bt, Ct))

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


def kernel_scan(u, delta, A, B, C) -> torch.Tensor:
    """The scan without D and gate, through the compiled kernel (differentiable)."""
    return KernelScan.apply(u, delta, A, B, C)
