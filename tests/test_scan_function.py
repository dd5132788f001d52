"""The ONNX SelectiveScan function bodies must reproduce the PyTorch reference in stock ORT."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the reference scan needs the 'torch' extra")
onnx = pytest.importorskip("onnx", reason="the ONNX export needs the 'export' extra")
ort = pytest.importorskip("onnxruntime", reason="the ONNX export needs the 'export' extra")

from seismag.export.scan_function import (  # noqa: E402
    DOMAIN,
    INPUTS,
    KINDS,
    OP_TYPE,
    scan_node_model,
    selective_scan_function,
)
from seismag.models.selective_scan import selective_scan  # noqa: E402

LENGTHS = [1, 7, 33, 100, 751]
D_STATE = 16


def make_feeds(
    batch: int, d_inner: int, length: int, dt_scale: float = 1.0, seed: int = 0
) -> dict[str, np.ndarray]:
    """Mamba-like float32 inputs: A = -exp(randn), delta = softplus(x) with delta ~ 1e-3..1e-1."""
    rng = np.random.default_rng(seed)
    target = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), (batch, d_inner, length)))
    pre_softplus = torch.from_numpy(np.log(np.expm1(target)))
    delta = torch.nn.functional.softplus(pre_softplus).numpy() * dt_scale
    feeds = {
        "u": rng.standard_normal((batch, d_inner, length)),
        "delta": delta,
        "A": -np.exp(rng.standard_normal((d_inner, D_STATE))),
        "B": rng.standard_normal((batch, D_STATE, length)),
        "C": rng.standard_normal((batch, D_STATE, length)),
        "D": rng.standard_normal(d_inner),
        "z": rng.standard_normal((batch, d_inner, length)),
    }
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}


def reference(feeds: dict[str, np.ndarray]) -> np.ndarray:
    args = [torch.from_numpy(feeds[k]) for k in INPUTS]
    return selective_scan(*args, impl="reference").numpy()


def session(model: "onnx.ModelProto") -> "ort.InferenceSession":
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


@pytest.fixture(scope="module")
def sessions() -> dict[str, "ort.InferenceSession"]:
    """One session per kind, reused for every L: the models must be shape-generic anyway."""
    return {kind: session(scan_node_model(kind)) for kind in KINDS}


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("kind", ["chunked", "scan"])
@pytest.mark.parametrize("dt_scale", [1.0, 100.0])  # 100x: dt up to ~10
@pytest.mark.parametrize("length", LENGTHS)
def test_matches_torch_reference(sessions, kind, dt_scale, length):
    feeds = make_feeds(2, 8, length, dt_scale, seed=length)
    (out,) = sessions[kind].run(None, feeds)
    ref = reference(feeds)
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert relative_error(out, ref) <= 1e-5


def test_chunked_stays_finite_for_huge_delta(sessions):
    # Every Exp argument is <= 0 by construction: huge dt * |A| underflows to 0, never overflows.
    feeds = make_feeds(2, 8, 200, dt_scale=1e5, seed=3)
    (out,) = sessions["chunked"].run(None, feeds)
    assert np.isfinite(out).all()
    assert relative_error(out, reference(feeds)) <= 1e-5


@pytest.mark.parametrize("length", [1, 33, 751])
def test_none_matches_its_formula(sessions, length):
    feeds = make_feeds(2, 8, length, seed=length)
    (out,) = sessions["none"].run(None, feeds)
    u, delta, B, C, D, z = (feeds[k].astype(np.float64) for k in ("u", "delta", "B", "C", "D", "z"))
    h = (delta * u)[:, :, None, :] * B[:, None]  # no carry from t - 1
    expected = ((h * C[:, None]).sum(axis=2) + D[:, None] * u) * z / (1 + np.exp(-z))
    assert np.isfinite(out).all()
    assert relative_error(out, expected) <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_function_and_model_check(kind):
    function = selective_scan_function(kind, chunk=8)
    assert (function.domain, function.name) == (DOMAIN, OP_TYPE)
    assert list(function.input) == list(INPUTS) and list(function.output) == ["y"]
    onnx.checker.check_function(function)
    model = scan_node_model(kind, chunk=8)
    onnx.checker.check_model(model, full_check=True)
    internal = {o for n in function.node for o in n.output} - {"y"}
    assert all(name.startswith("ss__") for name in internal)


def test_every_exp_in_the_chunked_body_is_floored():
    # Exp only ever sees Clip(x, EXP_FLOOR): no subnormal results, no ORT denormal slow path.
    function = selective_scan_function("chunked", chunk=32)
    producers = {o: n for n in function.node for o in n.output}
    exps = [n for n in function.node if n.op_type == "Exp"]
    assert len(exps) == 2 * 32  # per-step decay (Q - 1), carry decay (Q), segsum (1)
    assert all(producers[n.input[0]].op_type == "Clip" for n in exps)


def test_same_file_runs_for_two_lengths(tmp_path):
    path = tmp_path / "scan.onnx"
    onnx.save(scan_node_model("chunked", chunk=16), path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for length, batch, d_inner in ((20, 1, 4), (301, 3, 5)):
        feeds = make_feeds(batch, d_inner, length, seed=length)
        (out,) = sess.run(None, feeds)
        assert out.shape == (batch, d_inner, length)
        assert relative_error(out, reference(feeds)) <= 1e-5


def test_chunk_attribute_must_match_the_unrolled_body():
    # The body reads Q from the node attribute; a mismatch must fail, not silently mis-compute.
    model = scan_node_model("chunked", chunk=8)
    model.graph.node[0].attribute[0].i = 16
    with pytest.raises(Exception, match=r"(?i)split"):
        session(model).run(None, make_feeds(1, 2, 40))


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        selective_scan_function("loop")
    with pytest.raises(ValueError, match="chunk"):
        selective_scan_function(chunk=0)
    with pytest.raises(ValueError, match="opset"):
        selective_scan_function(opset=13)
