"""Mamba's selective scan as one pure function on tensors (pure PyTorch, exportable to ONNX).

Semantics (mamba_ssm ``selective_scan_fn`` with ``delta`` already softplus-ed)::

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t        h: (batch, d_inner, d_state)
    y_t = sum_n C_t[n] * h_t[:, n] + D * u_t
    y   = y * silu(z)                                          (when z is given)

``impl="reference"`` is the sequential loop over L: slow but obviously right, the ground truth.

``impl="chunked"`` gives the same numbers from standard ONNX ops only (Pad, Reshape, CumSum, Exp,
Mul, Add, MatMul, ReduceSum, Where), and nothing in it grows with L except tensor sizes:

1. Pad L up to T * Q (Q = ``chunk``, a constant). Padded steps have dt = 0 and u = 0, i.e. decay
   exp(0) = 1 and no input, and they sit after every real step, so they change no real output.
2. Within each chunk, run the recurrence from a zero state as a Python loop over the Q positions,
   vectorised across all T chunks at once: Q steps, fixed, whatever L is. This gives the local
   states and each chunk's end state s_c. Because dt >= 0 and A <= 0, every log-decay is a sum
   of dt times A: the within-chunk log-decay is S = A * cumsum(dt) <= 0 and the chunk's total is
   g_c = A * (sum of dt over the chunk), so the cumsums run on (b, d, L)-sized dt, not on states.
3. Carry across chunks in the masked quadratic form: the true state after chunk c is
   H_c = sum_{j<=c} exp(A * seg(c, j)) s_j, with seg(c, j) = dt summed over chunks j+1..c.
   seg is built as a masked cumsum (Mamba-2's "segsum"), not as the difference G_c - G_j of one
   running cumsum G: every entry is a sum of non-negative numbers, so there is no cancellation
   between large values, and the exponent for j > c is set to -inf with ``where`` BEFORE ``exp``,
   so every exp argument is <= 0 and nothing can overflow however large dt * |A| gets.
4. h = h_local + exp(S) * H_{c-1};  y = sum_n C * h + D * u; gate; crop the padding. Steps 2
   and 4 contract with C per step, so no (Q, b, d, n, T) tensor is materialised.

The naive "cumsum shortcut" h = e^S cumsum(e^-S x) is avoided on purpose: e^-S overflows float32
for ordinary parameters. The loops cost ~ batch * d_inner * d_state * L
whatever Q is; the carry costs ~ batch * d_inner * d_state * T^2, so Q trades graph size (about
14 nodes per step) against the carry. Measured on CPU at b=32, d=32, n=16, L=751 (T = 24 at
Q = 32): Q = 32 is about as fast as the reference loop, Q = 64 about 2x faster, Q = 16 2.5x slower.

``impl="kernel"`` is the same recurrence compiled by numba, with its own backward pass
(:mod:`seismag.models.scan_kernel`): several times faster on CPU, for training above all. An
``impl="chunked"`` call on CPU tensors uses it too whenever numba imports (set
``SEISMAG_SCAN_KERNEL=0`` to keep the standard-op path); ONNX export always traces the op.

Everything is computed in float32 with autocast disabled; the result is cast back to u's dtype.
Keep this the single call site of the scan in :class:`seismag.models.mamba.Mamba`, so it can later
be swapped for a custom ONNX op.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from seismag.models import scan_kernel

IMPLS = ("chunked", "reference", "kernel")


def kernel_enabled() -> bool:
    """Whether CPU ``chunked`` scans run through the compiled kernel in this process."""
    return os.environ.get("SEISMAG_SCAN_KERNEL", "1") != "0" and scan_kernel.kernel_available()


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor | None = None,
    *,
    impl: str = "chunked",
    chunk: int = 32,
) -> torch.Tensor:
    """Selective scan; u, delta, z: (b, d, L); A: (d, n); B, C: (b, n, L); D: (d,) -> (b, d, L)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"u and delta must both be (batch, d_inner, L), got {tuple(u.shape)}, "
            f"{tuple(delta.shape)}"
        )
    batch, d_inner, length = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"A must be (d_inner={d_inner}, d_state), got {tuple(A.shape)}")
    expected_bc = (batch, A.shape[1], length)
    if tuple(B.shape) != expected_bc or tuple(C.shape) != expected_bc:
        raise ValueError(f"B and C must be {expected_bc}, got {tuple(B.shape)}, {tuple(C.shape)}")
    if tuple(D.shape) != (d_inner,):
        raise ValueError(f"D must be ({d_inner},), got {tuple(D.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")

    if torch.onnx.is_in_onnx_export():
        # One `seismag::SelectiveScan` node; seismag.export attaches its standard-op function.
        if z is None:
            raise ValueError("ONNX export of the scan needs the gate z (Mamba always has one)")
        return _SelectiveScanOp.apply(u, delta, A, B, C, D, z, chunk)
    return _scan(u, delta, A, B, C, D, z, impl, chunk)


def _scan(u, delta, A, B, C, D, z, impl: str, chunk: int) -> torch.Tensor:
    """The scan itself, in fp32, with the D term and the gate."""
    out_dtype = u.dtype
    # The recurrence compounds rounding over L steps: keep it in fp32 even under autocast.
    with torch.autocast(device_type=u.device.type, enabled=False):
        u, delta, A, B, C, D = (t.float() for t in (u, delta, A, B, C, D))
        on_cpu = u.device.type == "cpu"
        if impl == "kernel" or (impl == "chunked" and on_cpu and kernel_enabled()):
            if not on_cpu:
                raise ValueError("impl='kernel' runs on CPU tensors only")
            y = scan_kernel.kernel_scan(u, delta, A, B, C)
        elif impl == "reference":
            y = _scan_reference(u, delta, A, B, C)
        else:
            y = _scan_chunked(u, delta, A, B, C, chunk)
        y = y + D[:, None] * u
        if z is not None:
            y = y * F.silu(z.float())
    return y.to(out_dtype)


def _scan_reference(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """Sequential loop over time, without the D term: the readable ground truth."""
    decay = torch.exp(delta[:, :, None, :] * A[None, :, :, None])  # (b, d, n, L)
    drive = (delta * u)[:, :, None, :] * B[:, None, :, :]  # (b, d, n, L)
    h = torch.zeros_like(decay[..., 0])
    ys = []
    for t in range(u.shape[-1]):
        h = decay[..., t] * h + drive[..., t]
        ys.append((h * C[:, None, :, t]).sum(-1))  # (b, d)
    return torch.stack(ys, dim=-1)


def _to_chunks(x: torch.Tensor, pad: int, chunk: int) -> torch.Tensor:
    """(b, k, L) -> (Q, b, k, T): zero-pad the tail, chunk position first for cheap slicing."""
    x = F.pad(x, (0, pad))
    return x.reshape(x.shape[0], x.shape[1], -1, chunk).permute(3, 0, 1, 2)


def _scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """Stable chunked scan from standard ops, without the D term (see the module docstring)."""
    length = u.shape[-1]
    pad = (-length) % chunk
    n_chunks = (length + pad) // chunk
    # Chunked layouts with the broadcast axes already in place, so each step below is one Gather:
    # dt, dt*u: (Q, b, d, 1, T); B, C: (Q, b, 1, n, T); A: (1, d, n, 1).
    dt_c = _to_chunks(delta, pad, chunk)[:, :, :, None, :]
    dt_u = dt_c * _to_chunks(u, pad, chunk)[:, :, :, None, :]
    B_c = _to_chunks(B, pad, chunk)[:, :, None, :, :]
    C_c = _to_chunks(C, pad, chunk)[:, :, None, :, :]
    A_ = A[None, :, :, None]
    # Per-step tensors are (b, d, n, T); nothing of size (Q, b, d, n, T) is ever materialised.

    # 2. Local recurrence from a zero state in every chunk: Q steps, all T chunks at once.
    ys = []
    h = dt_u[0] * B_c[0]
    for q in range(chunk):
        if q > 0:
            h = torch.exp(dt_c[q] * A_) * h + dt_u[q] * B_c[q]
        ys.append((h * C_c[q]).sum(dim=2))  # (b, d, T)
    # h now holds every chunk's end state s_c. Log-decays are dt sums times A (dt >= 0, A <= 0),
    # so the cumulative sums run on the small dt tensors, n times smaller than the states.
    dt_cum = torch.cumsum(dt_c, dim=0)  # (Q, b, d, 1, T): within-chunk, S = dt_cum * A <= 0
    dt_chunk = dt_cum[-1, :, :, 0]  # (b, d, T): g_c = dt_chunk * A

    # 3. Carry: H_c = sum_{j<=c} exp(A * seg(c, j)) s_j; seg(c, j) = dt summed over chunks j+1..c.
    idx = torch.arange(n_chunks, device=u.device)
    strictly_lower = idx[:, None] > idx[None, :]  # (T, T): c > j
    lower = idx[:, None] >= idx[None, :]
    rows = dt_chunk[..., :, None].expand(*dt_chunk.shape, n_chunks)  # [..., c, j] = dt_chunk_c
    seg = torch.cumsum(torch.where(strictly_lower, rows, 0.0), dim=-2)
    exponent = seg[:, :, None] * A[None, :, :, None, None]  # (b, d, n, T, T), <= 0
    exponent = torch.where(lower, exponent, float("-inf"))  # masked before exp: exp(-inf) = 0
    carry = torch.matmul(torch.exp(exponent), h[..., None])[..., 0]  # (b, d, n, T)
    carry_in = F.pad(carry, (1, 0))[..., :n_chunks]  # the state entering chunk c is H_{c-1}

    # 4. Add the carried-in state, decayed within the chunk, to each step's output.
    for q in range(chunk):
        carried = torch.exp(dt_cum[q] * A_) * carry_in
        ys[q] = ys[q] + (carried * C_c[q]).sum(dim=2)
    y = torch.stack(ys, dim=-1)  # (b, d, T, Q)
    return y.reshape(u.shape[0], u.shape[1], n_chunks * chunk)[..., :length]


class _SelectiveScanOp(torch.autograd.Function):
    """The scan as seen by the ONNX exporter: computes the chunked scan, exports one node.

    Only used while ``torch.onnx.export`` traces; training and inference call the scan directly.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, chunk: int):
        return _scan(u, delta, A, B, C, D, z, "chunked", chunk)

    @staticmethod
    def symbolic(g, u, delta, A, B, C, D, z, chunk: int):
        out = g.op("seismag::SelectiveScan", u, delta, A, B, C, D, z, chunk_i=chunk)
        return out.setType(u.type())
