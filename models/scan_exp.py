"""A float32 ``exp`` for the selective scan's decays that the compiler can vectorise.

The scan spends ~80% of its time in ``exp(dt * A)``: one per state per step. numba has no vector
``exp`` unless Intel's SVML is installed (it is not a dependency of numba, nor of seismag), so
LLVM calls the scalar libm ``expf`` once per element and the loop over the state stays scalar.
This version is plain arithmetic, so the loop over the state vectorises: Cody-Waite range
reduction ``x = n ln2 + r`` (|r| <= ln2 / 2), the degree-7 minimax polynomial of Cephes'
``expf`` for ``e^r`` (Moshier, *Methods and Programs for Mathematical Functions*, 1989), and
``2^n`` written straight into the exponent bits. Relative error <= 3e-7 (2-3 float32 ulp;
measured against float64 over [-100, 0] in tests/test_fused_scan.py).

Only for the scan's arguments, which are never positive (dt >= 0, A < 0): inputs below -87 give
``exp(-87)`` = 1.6e-38 (the smallest normal float32 is 1.2e-38), which is 0 for a decay.
Imports numba: loaded by :mod:`seismag.models.scan_kernel` only when it compiles.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
"""fastmath without "nnan"/"ninf": NaN and inf still propagate."""

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)  # ln 2 split in two so n * LN2_HI is exact
_LN2_LO = np.float32(1.428606765330187e-06)
_FLOOR = np.float32(-87.0)


@intrinsic
def _bits_as_float32(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (a register move, no conversion)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@numba.njit(inline="always", fastmath=FASTMATH, cache=False)
def decay_exp(x):  # pragma: no cover - runs as numba machine code
    """``exp(x)`` for float32 ``x <= 0``; see the module doc."""
    x = max(x, _FLOOR)
    n = np.int32(x * _LOG2E - np.float32(0.5))  # round to nearest (x <= 0: truncation is ceil)
    fn = np.float32(n)
    r = x - fn * _LN2_HI - fn * _LN2_LO
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * _bits_as_float32((n + np.int32(127)) << np.int32(23))
