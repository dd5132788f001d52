"""The fused SelectiveScan kernel: same numbers as the reference scan, in a real ORT session."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the reference scan needs the 'torch' extra")
onnx = pytest.importorskip("onnx", reason="export needs the 'export' extra")
ort = pytest.importorskip("onnxruntime", reason="export needs the 'export' extra")
pytest.importorskip("numba", reason="the fused kernel needs the 'kernels' extra (numba)")
pytest.importorskip(
    "onnxruntime_extensions", reason="the fused kernel needs the 'kernels' extra (ORT extensions)"
)

from seismag.export.onnx_export import example_inputs, export_onnx  # noqa: E402
from seismag.export.parity import torch_output  # noqa: E402
from seismag.export.scan_function import DOMAIN, OP_TYPE  # noqa: E402
from seismag.models import build_model, get_card  # noqa: E402
from seismag.models.scan_kernel import fused_selective_scan  # noqa: E402
from seismag.models.selective_scan import selective_scan  # noqa: E402
from seismag.serving.executor.ort_backend import (  # noqa: E402
    KERNEL_DOMAIN,
    fused_session,
    kernel_available,
    use_fused_kernel,
)

D_STATE = 16
TOLERANCE = 1e-4  # model outputs vs torch, magnitude units (as seismag.export.parity)


def scan_inputs(
    batch: int, d_inner: int, length: int, dt_scale: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, ...]:
    """Mamba-like float32 inputs: A = -exp(randn), delta log-uniform in 1e-3..1e-1 (x dt_scale)."""
    rng = np.random.default_rng(seed)
    delta = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), (batch, d_inner, length)))
    arrays = (
        rng.standard_normal((batch, d_inner, length)),  # u
        delta * dt_scale,
        -np.exp(rng.standard_normal((d_inner, D_STATE))),  # A <= 0
        rng.standard_normal((batch, D_STATE, length)),  # B
        rng.standard_normal((batch, D_STATE, length)),  # C
        rng.standard_normal(d_inner),  # D
        3.0 * rng.standard_normal((batch, d_inner, length)),  # z
    )
    return tuple(a.astype(np.float32) for a in arrays)


def test_kernel_is_available():
    ok, reason = kernel_available()
    assert ok, reason


@pytest.mark.parametrize("dt_scale", [1.0, 100.0])
@pytest.mark.parametrize(("batch", "d_inner", "length"), [(1, 3, 1), (2, 5, 33), (3, 8, 751)])
def test_kernel_matches_reference(batch, d_inner, length, dt_scale):
    inputs = scan_inputs(batch, d_inner, length, dt_scale)
    y = fused_selective_scan(*inputs)
    ref = selective_scan(*(torch.from_numpy(a) for a in inputs), impl="reference").numpy()
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert np.all(np.isfinite(y))
    # Relative to the output's scale: elementwise relative error is meaningless where y ~ 0.
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(ref))))


def test_decay_exp_is_float32_exp_over_the_scans_arguments():
    import numba

    from seismag.models.scan_exp import decay_exp

    @numba.njit
    def evaluate(xs):
        out = np.empty_like(xs)
        for i in range(xs.size):
            out[i] = decay_exp(xs[i])
        return out

    xs = -np.linspace(0.0, 100.0, 1_000_001).astype(np.float32)
    got = evaluate(xs).astype(np.float64)
    want = np.exp(xs.astype(np.float64))
    exact = xs >= -87.0
    assert got[0] == 1.0
    assert np.max(np.abs(got[exact] - want[exact]) / want[exact]) <= 3e-7
    # Below -87 a decay is 0 for every purpose: the result is tiny, never garbage.
    assert np.all((got[~exact] >= 0) & (got[~exact] < 2e-38))


def test_kernel_propagates_nan():
    # A NaN step must not turn into a plausible magnitude (the server refuses NaN outputs).
    u, delta, A, B, C, D, z = scan_inputs(1, 2, 16)
    delta[0, 0, 5] = np.nan
    y = fused_selective_scan(u, delta, A, B, C, D, z)
    assert np.all(np.isnan(y[0, 0, 5:])) and np.all(np.isfinite(y[0, 1]))


def test_kernel_is_stable_at_extremes():
    # dt * |A| up to ~1e5 (decay exp(-1e5) = 0) and |z| = 200 (exp(200) = inf in float32).
    u, delta, A, B, C, D, z = scan_inputs(2, 4, 64, dt_scale=1e4)
    z = np.where(z > 0, 200.0, -200.0).astype(np.float32)
    y = fused_selective_scan(u, delta, A, B, C, D, z)
    ref = selective_scan(
        *(torch.from_numpy(a) for a in (u, delta, A, B, C, D, z)), impl="reference"
    )
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-5, atol=1e-5 * float(np.max(np.abs(y))))


def test_kernel_accepts_non_contiguous_inputs():
    inputs = scan_inputs(2, 4, 40)
    expected = fused_selective_scan(*inputs)
    # Same values, other memory layouts: B and C as transposed views, u as a strided view.
    u = np.asfortranarray(inputs[0])
    B = np.ascontiguousarray(np.swapaxes(inputs[3], 1, 2)).swapaxes(1, 2)
    C = np.ascontiguousarray(np.swapaxes(inputs[4], 1, 2)).swapaxes(1, 2)
    y = fused_selective_scan(u, inputs[1], inputs[2], B, C, inputs[5], inputs[6])
    np.testing.assert_array_equal(y, expected)


@pytest.fixture(scope="module", params=["UMambaMagV1", "UMambaMagV2"])
def exported(request, tmp_path_factory):
    torch.manual_seed(3)
    model = build_model(request.param).eval()
    path = tmp_path_factory.mktemp("fused") / f"{request.param}.onnx"
    export_onnx(model, path)
    return model, path


def test_rewrite_leaves_no_seismag_function(exported):
    _, path = exported
    proto = onnx.load(str(path))
    n_scans = sum(n.domain == DOMAIN and n.op_type == OP_TYPE for n in proto.graph.node)
    assert n_scans > 0
    fused = use_fused_kernel(proto)
    assert not [f for f in fused.functions if f.domain == DOMAIN]
    assert not [n for n in fused.graph.node if n.domain == DOMAIN]
    assert sum(n.domain == KERNEL_DOMAIN for n in fused.graph.node) == n_scans
    assert any(op.domain == KERNEL_DOMAIN for op in fused.opset_import)
    # The input model (and so the file on disk) keeps the portable form.
    assert any(f.domain == DOMAIN for f in proto.functions)


@pytest.mark.parametrize("batch", [1, 4])
def test_fused_session_matches_torch_and_stock_ort(exported, batch):
    model, path = exported
    waveform, log_amp = example_inputs(model.card, batch, seed=batch)
    feeds = {"waveform": waveform, "log_amp": log_amp}
    expected = torch_output(model, waveform, log_amp)  # magnitude and sigma, side by side

    def both(session) -> np.ndarray:
        return np.concatenate([o.reshape(batch, -1) for o in session.run(None, feeds)], -1)

    fused = both(fused_session(path, threads=2))
    plain = both(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    assert fused.shape == plain.shape == expected.shape
    assert float(np.max(np.abs(fused - expected))) <= TOLERANCE
    assert float(np.max(np.abs(plain - expected))) <= TOLERANCE


def test_model_without_scans_is_unchanged(tmp_path):
    torch.manual_seed(0)
    path = export_onnx(build_model("PhaseNetMag").eval(), tmp_path / "phasenet.onnx").path
    proto = onnx.load(str(path))
    fused = use_fused_kernel(proto)
    assert fused == proto and fused is not proto
    # And it still runs through the fused-session path.
    waveform, log_amp = example_inputs(get_card("PhaseNetMag"), 1)
    (out,) = fused_session(proto).run(["magnitude"], {"waveform": waveform, "log_amp": log_amp})
    assert np.all(np.isfinite(out))


def test_loading_the_kernel_leaves_the_protobuf_setting_of_child_processes_alone():
    # onnxruntime-extensions sets PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python on import, which
    # would make every process started afterwards (a spawned server) use pure-Python protobuf.
    import subprocess
    import sys

    code = (
        "import os, onnxruntime as ort; os.environ.pop('PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION', "
        "None); from seismag.serving.executor import ort_backend; ort_backend.kernel_available(); "
        "ort_backend.session_options_with_kernel(); "
        "assert 'PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION' not in os.environ, os.environ"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_model_without_scans_skips_the_kernel_check(tmp_path, monkeypatch):
    # The check imports and compiles numba and the ORT extensions (seconds): a model without
    # SelectiveScan nodes must get its plain session without paying for it.
    from seismag.serving.executor import ort_backend

    path = export_onnx(build_model("PhaseNetMag").eval(), tmp_path / "phasenet.onnx").path
    calls = []
    monkeypatch.setattr(ort_backend, "kernel_available", lambda: calls.append(1) or (True, ""))
    session, kernel = ort_backend.server_session(path, threads=1)
    assert calls == [] and kernel == "onnxruntime"
    assert session.get_inputs()[0].name == "waveform"
