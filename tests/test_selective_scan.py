"""The chunked and compiled selective scans must match the sequential reference, values and
gradients, and stay finite for any dt. "chunked" here is the standard-op path (the compiled kernel
is switched off for this module and tested as impl="kernel")."""

import math

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch models need the 'torch' extra")

from seismag.models import scan_kernel  # noqa: E402
from seismag.models.selective_scan import selective_scan  # noqa: E402

D_STATE = 16
KERNEL = pytest.param(
    "kernel",
    marks=pytest.mark.skipif(
        not scan_kernel.kernel_available(), reason="numba not installed (the 'kernels' extra)"
    ),
)


@pytest.fixture(autouse=True)
def _standard_op_path(monkeypatch):
    monkeypatch.setenv("SEISMAG_SCAN_KERNEL", "0")


def make_inputs(batch: int, d_inner: int, length: int, dt_scale: float = 1.0, seed: int = 0):
    """Mamba-like inputs: dt = softplus(.) around 0.001-0.1 (times dt_scale), A = -(1..d_state)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, d_inner, length, generator=g)
    log_dt = torch.empty(batch, d_inner, length).uniform_(
        math.log(1e-3), math.log(1e-1), generator=g
    )
    delta = torch.exp(log_dt) * dt_scale
    a = -torch.arange(1, D_STATE + 1, dtype=torch.float32).repeat(d_inner, 1)
    A = a * torch.empty(d_inner, 1).uniform_(0.5, 1.5, generator=g)
    B = torch.randn(batch, D_STATE, length, generator=g)
    C = torch.randn(batch, D_STATE, length, generator=g)
    D = torch.randn(d_inner, generator=g)
    z = torch.randn(batch, d_inner, length, generator=g)
    return u, delta, A, B, C, D, z


def assert_scans_agree(chunked: torch.Tensor, reference: torch.Tensor) -> None:
    assert torch.isfinite(chunked).all() and torch.isfinite(reference).all()
    scale = reference.abs().max().item()
    assert (chunked - reference).abs().max().item() <= 1e-5 * scale
    torch.testing.assert_close(chunked, reference, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("length", [1, 7, 33, 100, 751])
@pytest.mark.parametrize("dt_scale", [1.0, 100.0])  # 100x: dt up to ~10
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("impl", ["chunked", KERNEL])
def test_matches_reference(length, dt_scale, gated, impl):
    u, delta, A, B, C, D, z = make_inputs(2, 8, length, dt_scale, seed=length)
    z = z if gated else None
    ref = selective_scan(u, delta, A, B, C, D, z, impl="reference")
    out = selective_scan(u, delta, A, B, C, D, z, impl=impl)
    assert out.shape == u.shape and out.dtype == torch.float32
    assert_scans_agree(out, ref)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunk_size_does_not_change_the_result(chunk):
    u, delta, A, B, C, D, z = make_inputs(2, 4, 100, seed=1)
    ref = selective_scan(u, delta, A, B, C, D, z, impl="reference")
    assert_scans_agree(selective_scan(u, delta, A, B, C, D, z, chunk=chunk), ref)


@pytest.mark.parametrize("dt_scale", [1e3, 1e5])
def test_huge_delta_stays_finite(dt_scale):
    # exp arguments are all <= 0 by construction: huge dt * |A| underflows to 0, never overflows.
    u, delta, A, B, C, D, z = make_inputs(2, 4, 200, dt_scale, seed=2)
    impls = ["chunked", "reference"] + ["kernel"] * scan_kernel.kernel_available()
    for impl in impls:
        assert torch.isfinite(selective_scan(u, delta, A, B, C, D, z, impl=impl)).all()
    ref = selective_scan(u, delta, A, B, C, D, z, impl="reference")
    assert_scans_agree(selective_scan(u, delta, A, B, C, D, z), ref)


def test_gradients_flow_through_chunked_scan():
    inputs = [t.requires_grad_() for t in make_inputs(2, 4, 70, dt_scale=100.0, seed=3)]
    selective_scan(*inputs).square().mean().backward()
    for name, t in zip(["u", "delta", "A", "B", "C", "D", "z"], inputs, strict=True):
        assert t.grad is not None and torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name


@pytest.mark.parametrize("impl", ["chunked", KERNEL])
@pytest.mark.parametrize("batch, length, dt_scale", [(1, 45, 1.0), (3, 130, 100.0)])
def test_gradients_match_reference(impl, batch, length, dt_scale):
    inputs = make_inputs(batch, 4, length, dt_scale, seed=4)
    grads = []
    for name in (impl, "reference"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        selective_scan(*leaves, impl=name).square().sum().backward()
        grads.append([t.grad for t in leaves])
    for g_chunked, g_ref in zip(*grads, strict=True):
        torch.testing.assert_close(g_chunked, g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max())


@pytest.mark.parametrize("impl", ["chunked", "reference", KERNEL])
def test_causal_and_independent_of_length(impl):
    # Extending the sequence must not change earlier outputs: no look-ahead, no dt = 1/L.
    u, delta, A, B, C, D, z = make_inputs(2, 4, 300, seed=5)
    full = selective_scan(u, delta, A, B, C, D, z, impl=impl)
    for k in (1, 31, 32, 33, 150):
        head = selective_scan(
            u[..., :k], delta[..., :k], A, B[..., :k], C[..., :k], D, z[..., :k], impl=impl
        )
        torch.testing.assert_close(head, full[..., :k], rtol=1e-5, atol=1e-6)


def test_other_dtypes_are_computed_in_float32_and_cast_back():
    u, delta, A, B, C, D, z = make_inputs(1, 4, 40, seed=6)
    ref = selective_scan(u, delta, A, B, C, D, z, impl="reference")
    out = selective_scan(*(t.double() for t in (u, delta, A, B, C, D, z)))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), ref, rtol=1e-5, atol=1e-6 * ref.abs().max())
    assert selective_scan(u.bfloat16(), delta, A, B, C, D, z).dtype == torch.bfloat16


@pytest.mark.skipif(not scan_kernel.kernel_available(), reason="numba not installed")
def test_cpu_chunked_calls_use_the_kernel_unless_switched_off(monkeypatch):
    calls = []
    real = scan_kernel.kernel_scan
    monkeypatch.setattr(scan_kernel, "kernel_scan", lambda *a: calls.append(1) or real(*a))
    inputs = make_inputs(1, 4, 20, seed=7)
    off = selective_scan(*inputs)
    assert not calls
    monkeypatch.setenv("SEISMAG_SCAN_KERNEL", "1")
    on = selective_scan(*inputs)
    assert calls == [1]
    assert_scans_agree(on, off)


def test_bad_arguments():
    u, delta, A, B, C, D, z = make_inputs(1, 4, 10)
    with pytest.raises(ValueError, match="impl"):
        selective_scan(u, delta, A, B, C, D, impl="cuda")
    with pytest.raises(ValueError, match="chunk"):
        selective_scan(u, delta, A, B, C, D, chunk=0)
    with pytest.raises(ValueError, match="B and C"):
        selective_scan(u, delta, A, B[:, :3], C, D)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:2], B, C, D)
    with pytest.raises(ValueError, match="z must"):
        selective_scan(u, delta, A, B, C, D, z[..., :5])
