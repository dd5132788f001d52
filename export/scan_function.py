"""ONNX function bodies for the ``seismag::SelectiveScan`` custom op.

The exported model holds each selective scan as ONE node ``SelectiveScan`` in the custom domain
``"seismag"`` (version 1), with seven float32 inputs and one output::

    u (b, d, L), delta (b, d, L) [softplus-ed], A (d, n), B (b, n, L), C (b, n, L), D (d,),
    z (b, d, L)  ->  y = (scan(u, delta, A, B, C) + D * u) * silu(z)      (b, d, L)

and one int attribute ``chunk``. The file also carries a model-local ``FunctionProto`` with the
same domain and name whose body uses standard ONNX ops only, so the file runs unchanged in stock
onnxruntime (it inlines a function when no kernel claims the op) while a runtime with a fused
kernel (TensorRT plugin, custom EP) can claim the node whole. This module builds those bodies:

``"chunked"`` (what ships)
    :func:`seismag.models.selective_scan._scan_chunked` op for op: pad L to T * Q, split the chunk
    position, unroll the Q-step local recurrence (vectorised over all T chunks, so the node count
    does not depend on L), keep a running within-chunk cumulative dt, carry the chunk end states
    across chunks with the masked "segsum", add the carried-in state per position, crop, + D * u,
    gate. Every ``Exp`` argument is <= 0 by construction (dt >= 0, A <= 0, and the segsum is a
    cumsum of a ``Where``-masked non-negative tensor), so nothing overflows however large
    dt * |A| gets. Two deviations from the torch code, both for onnxruntime's CPU kernels and both
    below float32 resolution: Exp arguments are floored at ``EXP_FLOOR`` (no subnormals), and the
    causal mask of the carry is a 0/1 multiply after Exp rather than a -inf ``Where`` before it
    (exp(-inf) is the slowest Exp input of all); future chunks still get a weight of exactly 0.
``"scan"``
    The plain recurrence as one ONNX ``Scan`` over L: the baseline a generic exporter gives.
``"none"``
    The same graph without the recurrence (h_t = dt_t B_t u_t, nothing carried from t - 1), so
    y = C . (dt B u) + D u, gated: the floor that any scan has to pay for state-sized tensors.

Everything is shape-generic in b, d, n and L: padding, the chunk count T and the masks are
computed at run time from ``Shape``; only Q (``chunk``) is fixed when the body is built. The
body reads Q back from the node's ``chunk`` attribute (a ``Constant`` with ``ref_attr_name``), and
the unrolled ``Split`` has explicit sizes of 1, so a node whose ``chunk`` disagrees with the body
fails loudly at run time instead of silently computing garbage.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from seismag.models.scan_kernel import OP_DOMAIN as DOMAIN
from seismag.models.scan_kernel import OP_TYPE

DOMAIN_VERSION = 1
KINDS = ("chunked", "scan", "none")
INPUTS = ("u", "delta", "A", "B", "C", "D", "z")
OUTPUTS = ("y",)
MIN_OPSET = 17  # Shape(start, end), GreaterOrEqual, ReduceSum/Split with tensor inputs, Scan-16.
IR_VERSION = 10  # model-local functions with attribute defaults; read by ORT >= 1.17

_PREFIX = "ss__"  # internal value names: cannot clash with the function's I/O or an outer graph
# Floor for every Exp argument in the chunked body. Exp of anything below ~-87 (and of -inf) has a
# subnormal result, which sends onnxruntime's CPU Exp (and the MatMul fed by it) down the x86
# denormal slow path, ~15x slower per element: measured, it was a third of the chunked body's time
# at L = 751 and half at L = 3001, and made latency depend on the data (large dt). exp(-60) =
# 8.8e-27 stands in for anything smaller: a weight that is already 2^-86 of the diagonal term
# exp(0) = 1, so far below float32 resolution; the masked (future) entries stay exactly 0.
EXP_FLOOR = -60.0


class _Builder:
    """Accumulates nodes with unique, prefixed value names and caches constants."""

    def __init__(self, prefix: str = _PREFIX) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        """Add a single-output node; return its output name."""
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def ops(self, op_type: str, inputs: list[str], n_out: int, hint: str, **attrs) -> list[str]:
        """Add a multi-output node; return its output names."""
        outs = [self.name(f"{hint}{i}") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs

    def const(self, value: np.ndarray | float | int, dtype: type = np.int64) -> str:
        """A Constant node, shared between all users of the same value."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            out = self.name("const")
            tensor = numpy_helper.from_array(arr, name=out)
            self.nodes.append(helper.make_node("Constant", [], [out], value=tensor))
            self._consts[key] = out
        return self._consts[key]

    def ints(self, *values: int) -> str:
        return self.const(np.array(values, dtype=np.int64))

    def f32(self, value: float) -> str:
        return self.const(value, np.float32)

    # Small conveniences that keep the algorithm below readable.
    def mul(self, a: str, b: str, hint: str = "mul") -> str:
        return self.op("Mul", [a, b], hint)

    def add(self, a: str, b: str, hint: str = "add") -> str:
        return self.op("Add", [a, b], hint)

    def unsqueeze(self, x: str, *axes: int) -> str:
        return self.op("Unsqueeze", [x, self.ints(*axes)], "unsq")

    def reduce_sum(self, x: str, axis: int, hint: str = "sum") -> str:
        return self.op("ReduceSum", [x, self.ints(axis)], hint, keepdims=0)

    def exp_floored(self, x: str, hint: str = "exp") -> str:
        """exp(max(x, EXP_FLOOR)) for x <= 0: no subnormal results (see EXP_FLOOR)."""
        # Clip, not Max: ORT's variadic Max takes a generic broadcasting path, ~3x slower here.
        return self.op("Exp", [self.op("Clip", [x, self.f32(EXP_FLOOR)], f"{hint}_arg")], hint)


def _gate_tail(g: _Builder, scan_y: str) -> None:
    """y = (scan_y + D[:, None] * u) * (z * sigmoid(z)), in the order of ``selective_scan``."""
    du = g.mul(g.unsqueeze("D", 1), "u", "du")
    y = g.add(scan_y, du, "y_d")
    silu = g.mul("z", g.op("Sigmoid", ["z"], "sig_z"), "silu_z")
    g.nodes.append(helper.make_node("Mul", [y, silu], ["y"]))


def _drive(g: _Builder) -> str:
    """dt * u * B as (b, d, n, L): the input term of every step, h_t = decay_t h_{t-1} + drive_t."""
    dtu = g.unsqueeze(g.mul("delta", "u", "dtu"), 2)  # (b, d, 1, L)
    return g.mul(dtu, g.unsqueeze("B", 1), "drive")  # (b, d, n, L)


def _body_none(g: _Builder) -> None:
    """No recurrence: y_t = sum_n C_t[n] * dt_t u_t B_t[n]; the cost floor of state-sized work."""
    hc = g.mul(_drive(g), g.unsqueeze("C", 1), "hc")  # (b, d, n, L)
    _gate_tail(g, g.reduce_sum(hc, 2, "y_scan"))


def _body_scan(g: _Builder) -> None:
    """The sequential recurrence as an ONNX Scan over L (decay and drive precomputed in bulk)."""
    decay = g.op(
        "Exp", [g.mul(g.unsqueeze("delta", 2), g.unsqueeze("A", 2), "dta")], "decay"
    )  # (b, d, n, L), exp argument <= 0
    drive = _drive(g)
    shape_bd = g.op("Shape", ["u"], "shape_bd", start=0, end=2)
    shape_n = g.op("Shape", ["A"], "shape_n", start=1, end=2)
    h0 = g.op(
        "ConstantOfShape",
        [g.op("Concat", [shape_bd, shape_n], "shape_h", axis=0)],
        "h0",
        value=numpy_helper.from_array(np.zeros(1, np.float32)),
    )  # (b, d, n) zeros

    # Body: h = decay_t * h + drive_t; y_t = sum_n h * C_t. Own prefix: body names are scoped,
    # but distinct names keep debugging dumps unambiguous.
    b = _Builder(prefix=f"{_PREFIX}body_")
    names = {k: f"{_PREFIX}body_{k}" for k in ("h_in", "decay_t", "drive_t", "c_t", "h_out", "y_t")}
    h = b.add(b.mul(names["decay_t"], names["h_in"], "dh"), names["drive_t"], "h")
    b.nodes.append(helper.make_node("Identity", [h], [names["h_out"]]))
    hc = b.mul(names["h_out"], b.unsqueeze(names["c_t"], 1), "hc")  # (b, d, n)
    b.nodes.append(
        helper.make_node("ReduceSum", [hc, b.ints(2)], [names["y_t"]], keepdims=0)
    )  # (b, d)
    f32 = TensorProto.FLOAT
    body = helper.make_graph(
        b.nodes,
        f"{_PREFIX}scan_body",
        [
            helper.make_tensor_value_info(names[k], f32, None)
            for k in ("h_in", "decay_t", "drive_t", "c_t")
        ],
        [helper.make_tensor_value_info(names[k], f32, None) for k in ("h_out", "y_t")],
    )
    _h_last, y_scan = g.ops(
        "Scan",
        [h0, decay, drive, "C"],
        2,
        "scan_out",
        body=body,
        num_scan_inputs=3,
        scan_input_axes=[3, 3, 2],
        scan_output_axes=[2],
    )
    _gate_tail(g, y_scan)  # y_scan: (b, d, L)


def _body_chunked(g: _Builder, chunk: int) -> None:
    """``_scan_chunked`` in standard ops; see the module docstring of selective_scan.py.

    Layout: per-position tensors are (b, d, n, 1, T), the chunk index T last. The (b, d, n, T, 1)
    that splitting (.., T, Q) on Q gives is up to ~15x slower in ORT's CPU broadcasting kernels (a
    span of one element per inner loop), so each small split piece is reshaped (free: a size-1
    axis moves) to (.., 1, T). Not a Transpose: ORT's transpose optimiser pushes it through the
    whole unrolled graph and restores the slow layout. The carry is the same masked segsum,
    written transposed ([j, c] instead of [c, j]) so the row of chunk states multiplies from the
    left: carry (.., 1, T) = s (.., 1, T) @ W^T (.., T, T).
    """
    q_count = chunk
    # Q from the node attribute (default: the value this body was unrolled for).
    q_scalar = g.name("chunk")
    q_node = helper.make_node("Constant", [], [q_scalar])
    q_node.attribute.append(
        onnx.AttributeProto(name="value_int", ref_attr_name="chunk", type=onnx.AttributeProto.INT)
    )
    g.nodes.append(q_node)
    q1 = g.unsqueeze(q_scalar, 0)  # [Q]

    # 1. Pad L up to T * Q at run time: T = ceil(L / Q), pad = T * Q - L. Padded steps have
    #    dt = 0 and u = 0 (decay 1, no input) and come after every real step.
    length = g.op("Shape", ["u"], "len", start=2, end=3)  # [L]
    n_chunks = g.op("Div", [g.add(length, g.op("Sub", [q1, g.ints(1)], "qm1")), q1], "t")
    pad = g.op("Sub", [g.mul(n_chunks, q1, "lp"), length], "pad")
    pads4 = g.op("Concat", [g.ints(0, 0, 0, 0, 0, 0, 0), pad], "pads4", axis=0)
    chunk_shape = g.op("Concat", [g.ints(0, 0, 0, -1), q1], "chunk_shape", axis=0)
    ones_q = g.ints(*([1] * q_count))

    row_shape = g.ints(0, 0, 0, 1, -1)

    def to_chunks(x4: str, hint: str) -> list[str]:
        """(b, k1, k2, L) -> Q tensors (b, k1, k2, 1, T): chunk position q of every chunk."""
        x5 = g.op("Reshape", [g.op("Pad", [x4, pads4], f"{hint}_pad"), chunk_shape], f"{hint}5")
        pieces = g.ops("Split", [x5, ones_q], q_count, f"{hint}_q", axis=4)  # (.., T, 1)
        return [g.op("Reshape", [p, row_shape], f"{hint}_row") for p in pieces]  # (.., 1, T)

    dt_c = to_chunks(g.unsqueeze("delta", 2), "dt")  # (b, d, 1, 1, T) each
    dtu_c = to_chunks(g.unsqueeze(g.mul("delta", "u", "dtu"), 2), "dtu")
    b_c = to_chunks(g.unsqueeze("B", 1), "bq")  # (b, 1, n, 1, T) each
    c_c = to_chunks(g.unsqueeze("C", 1), "cq")
    a5 = g.unsqueeze("A", 2, 3)  # (d, n, 1, 1): broadcasts to (b, d, n, 1, T)

    # 2. Local recurrence from a zero state in every chunk, Q steps, all T chunks at once;
    #    with it the running within-chunk cumulative dt (S = dt_cum * A <= 0).
    ys: list[str] = []
    dt_cum: list[str] = []
    h = ""
    for q in range(q_count):
        drive = g.mul(dtu_c[q], b_c[q], f"drive{q}")  # (b, d, n, 1, T)
        if q == 0:
            h = drive
            dt_cum.append(dt_c[0])
        else:
            decay = g.exp_floored(g.mul(dt_c[q], a5, f"dta{q}"), f"decay{q}")
            h = g.add(g.mul(decay, h, f"dh{q}"), drive, f"h{q}")
            dt_cum.append(g.add(dt_cum[-1], dt_c[q], f"dtcum{q}"))
        ys.append(g.reduce_sum(g.mul(h, c_c[q], f"hc{q}"), 2, f"y{q}"))  # (b, d, 1, T)
    # h now holds every chunk's end state s_c: (b, d, n, 1, T).

    # 3. Carry across chunks: H_c = sum_{j<=c} exp(A * seg(c, j)) s_j with
    #    seg(c, j) = dt summed over chunks j+1..c, a masked cumsum of non-negative terms.
    t_scalar = g.op("Squeeze", [n_chunks, g.ints(0)], "t_scalar")
    idx = g.op("Range", [g.const(0), t_scalar, g.const(1)], "idx")
    j_idx, c_idx = g.unsqueeze(idx, 1), g.unsqueeze(idx, 0)  # (T, 1), (1, T): [j, c]
    strictly_later = g.op("Less", [j_idx, c_idx], "strict")  # [j, c]: c > j
    causal = g.op("Cast", [g.op("LessOrEqual", [j_idx, c_idx], "le")], "causal", to=1)  # c >= j
    # cols[..., j, c] = dt of chunk c: the last running cumsum, (b, d, 1, 1, T) broadcast over j.
    # The Where zeroes every entry with c <= j BEFORE the cumsum, so seg >= 0 everywhere and is
    # exactly 0 for c < j: every Exp argument seg * A is <= 0 (A <= 0), nothing can overflow.
    cols = g.op("Where", [strictly_later, dt_cum[-1], g.f32(0.0)], "cols")  # (b, d, 1, T, T)
    seg = g.op("CumSum", [cols, g.const(4)], "seg")  # [.., j, c] = seg(c, j)
    exponent = g.mul(seg, a5, "exponent")  # (b, d, n, T, T), <= 0 everywhere
    # The causal mask is a 0/1 multiply AFTER the floored Exp instead of a -inf Where before it:
    # exp(-inf) is the slowest input of all for ORT's CPU Exp (see EXP_FLOOR), and a full-size
    # broadcasting Where costs ~4x a Mul. Future chunks still get a weight of exactly 0.
    seg_decay = g.mul(g.exp_floored(exponent, "seg_exp"), causal, "seg_decay")
    carry = g.op("MatMul", [h, seg_decay], "carry")  # (b, d, n, 1, T): H_c
    # The state entering chunk c is H_{c-1}: shift by one chunk, zeros into chunk 0.
    carry_pad = g.op("Pad", [carry, g.ints(0, 0, 0, 0, 1, 0, 0, 0, 0, 0)], "carry_pad")
    carry_in = g.op("Slice", [carry_pad, g.ints(0), g.ints(-1), g.ints(4)], "carry_in")

    # 4. Add the carried-in state, decayed within the chunk, to each position's output.
    for q in range(q_count):
        decay = g.exp_floored(g.mul(dt_cum[q], a5, f"sa{q}"), f"cdecay{q}")
        carried = g.mul(decay, carry_in, f"carried{q}")
        extra = g.reduce_sum(g.mul(carried, c_c[q], f"cc{q}"), 2, f"ycarry{q}")
        ys[q] = g.add(ys[q], extra, f"yq{q}")
    col_shape = g.ints(0, 0, -1, 1)
    ys = [g.op("Reshape", [y_q, col_shape], "y_col") for y_q in ys]  # (b, d, T, 1)
    y = g.op("Concat", ys, "y_tq", axis=3)  # (b, d, T, Q)
    y = g.op("Reshape", [y, g.ints(0, 0, -1)], "y_lp")  # (b, d, T * Q)
    y = g.op("Slice", [y, g.ints(0), length, g.ints(2)], "y_scan")  # crop the padding
    _gate_tail(g, y)


def selective_scan_function(
    kind: str = "chunked", *, chunk: int = 32, opset: int = 17
) -> onnx.FunctionProto:
    """The ``seismag::SelectiveScan`` FunctionProto of the given kind (see the module docstring).

    ``chunk`` is the unroll length Q of the "chunked" body and the default of the node attribute
    ``chunk``; "scan" and "none" accept and ignore the attribute, so all kinds are drop-in
    replacements for one another in the same model.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(
            f"opset must be in {MIN_OPSET}..{onnx.defs.onnx_opset_version()}, got {opset}"
        )
    g = _Builder()
    if kind == "chunked":
        _body_chunked(g, chunk)
    elif kind == "scan":
        _body_scan(g)
    else:
        _body_none(g)
    return helper.make_function(
        DOMAIN,
        OP_TYPE,
        list(INPUTS),
        list(OUTPUTS),
        g.nodes,
        [helper.make_opsetid("", opset)],
        attribute_protos=[helper.make_attribute("chunk", chunk)],
        doc_string=f"seismag selective scan, kind={kind!r}, chunk={chunk} (standard ONNX ops).",
    )


def scan_node_model(kind: str = "chunked", *, chunk: int = 32, opset: int = 17) -> onnx.ModelProto:
    """A model of one SelectiveScan node with dynamic dims and its function attached.

    For tests and benchmarks: it exercises exactly what the exporter will emit per scan.
    """
    function = selective_scan_function(kind, chunk=chunk, opset=opset)
    f32 = TensorProto.FLOAT
    bdl, bnl = ["batch", "d_inner", "L"], ["batch", "d_state", "L"]
    shapes = {
        "u": bdl,
        "delta": bdl,
        "A": ["d_inner", "d_state"],
        "B": bnl,
        "C": bnl,
        "D": ["d_inner"],
        "z": bdl,
    }
    node = helper.make_node(
        OP_TYPE, list(INPUTS), list(OUTPUTS), name="selective_scan", domain=DOMAIN, chunk=chunk
    )
    graph = helper.make_graph(
        [node],
        f"selective_scan_{kind}",
        [helper.make_tensor_value_info(k, f32, shapes[k]) for k in INPUTS],
        [helper.make_tensor_value_info("y", f32, bdl)],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
        functions=[function],
        ir_version=IR_VERSION,
        producer_name="seismag",
    )
