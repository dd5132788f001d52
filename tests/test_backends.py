"""Runtime backends of the executor: real sessions on real exports, compared with ONNX Runtime.

The conv model is the packaged PhaseNetMag (trained weights: where OpenVINO's bf16 default moved
magnitudes by ~0.1); the Mamba model is a fresh UMambaMagV2 export, whose SelectiveScan nodes
OpenVINO cannot read without help (the compiled-kernel extension or inlined functions).
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from seismag.models.artifact import ArtifactError, read_artifact, read_card_from_onnx
from seismag.serving.executor import openvino_backend
from seismag.serving.executor.backend import (
    BACKEND_CHOICES,
    BackendOptions,
    BackendUnavailable,
    backend_available,
    comparison_inputs,
    load_backend,
    max_abs_difference,
    select_fastest,
)
from seismag.serving.executor.runtime import ModelRegistry, ModelRuntime, default_model_path

ROOT = Path(__file__).resolve().parents[1]
CONV = default_model_path()
OPTIONS = BackendOptions(threads=2)


def needs_openvino():
    ok, why = backend_available("openvino")
    if not ok:
        pytest.skip(f"OpenVINO backend not testable here: {why}")


@pytest.fixture(scope="module")
def mamba(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch", reason="exporting a Mamba model needs the 'export' extra")
    pytest.importorskip("onnx", reason="exporting a Mamba model needs the 'export' extra")
    from seismag.export.onnx_export import export_onnx
    from seismag.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("backends") / "UMambaMagV2.onnx"
    return export_onnx(build_model("UMambaMagV2").eval(), path).path


def reference(path: Path, batch: int = 8):
    ort = load_backend("ort", path, OPTIONS)
    wave, amp = comparison_inputs(ort.card, batch, seed=batch)
    return ort, wave, amp, ort.run(wave, amp)


# -- OpenVINO against ONNX Runtime -----------------------------------------------------------------


def test_openvino_matches_ort_on_a_conv_model():
    needs_openvino()
    ort, wave, amp, expected = reference(CONV)
    ov = load_backend("openvino", CONV, OPTIONS)
    got = ov.run(wave, amp)
    assert got.magnitude.shape == expected.magnitude.shape == (8, 3001)
    assert got.sigma is not None and got.sigma.shape == expected.sigma.shape
    assert [o.name for o in ov.outputs] == [o.name for o in ort.outputs] == ["magnitude", "sigma"]
    assert max_abs_difference(got, expected) <= ov.card.tolerance == 1e-4


@pytest.mark.parametrize("fused_kernel", [True, False], ids=["kernel-extension", "inlined"])
def test_openvino_runs_mamba_models(mamba, fused_kernel, monkeypatch):
    needs_openvino()
    if fused_kernel:
        pytest.importorskip("numba", reason="the scan kernel needs the 'kernels' extra")
    else:
        pytest.importorskip("onnx", reason="inlining the scan functions needs onnx")
    calls = []
    real = openvino_backend.fused_selective_scan
    monkeypatch.setattr(
        openvino_backend, "fused_selective_scan", lambda *a: calls.append(1) or real(*a)
    )
    _, wave, amp, expected = reference(mamba)
    ov = load_backend("openvino", mamba, BackendOptions(threads=2, fused_kernel=fused_kernel))
    assert ov.scan == ("kernel" if fused_kernel else "inline")
    assert ov.kernel == "openvino-f32" + ("+fused-scan" if fused_kernel else "")
    got = ov.run(wave, amp)
    assert got.magnitude.shape == (8,) and got.sigma.shape == (8,)
    assert max_abs_difference(got, expected) <= ov.card.tolerance
    # The extension really runs the compiled scan at inference time (not folded at compile).
    assert bool(calls) == fused_kernel


def test_openvino_mamba_without_kernel_or_onnx_says_what_is_missing(mamba, monkeypatch):
    # Neither numba nor onnx: the file cannot be read, and the error says what would fix it.
    needs_openvino()
    monkeypatch.setattr(openvino_backend.scan_kernel, "kernel_available", lambda: False)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(Exception, match=r"needs onnx.*seismag\[kernels\]"):
        load_backend("openvino", mamba, OPTIONS)


def test_openvino_is_f32_unless_bf16_is_asked_for():
    needs_openvino()
    assert BackendOptions().precision == "f32"
    rt = ModelRuntime(CONV, backend="openvino")
    try:
        assert rt.backend_name == "openvino" and rt.backend.precision == "f32"
        assert rt.kernel == "openvino-f32"
    finally:
        rt.close()
    bf16 = load_backend("openvino", CONV, BackendOptions(precision="bf16"))
    # The hint is honoured where the CPU has bf16 units; elsewhere the plugin stays in f32.
    assert bf16.precision in ("bf16", "f32")
    with pytest.raises(ValueError, match="precision"):
        load_backend("openvino", CONV, BackendOptions(precision="f16"))


def test_openvino_serves_through_the_batcher_with_parallel_workers():
    needs_openvino()
    registry = ModelRegistry.from_paths([CONV], backend="openvino", workers=2, threads=1)
    try:
        rt = registry.get()
        assert rt.backend_name == "openvino" and rt.backend_choice == "openvino: asked for"
        assert rt.has_sigma
        assert rt.output_specs() == [
            ("magnitude", "FP32", [-1, 3001]),
            ("sigma", "FP32", [-1, 3001]),
        ]
        _, wave, amp, expected = reference(CONV, batch=6)
        # Six one-window requests at once: both workers run, each with its own infer request.
        futures = [rt.submit(wave[i : i + 1], amp[i : i + 1]) for i in range(6)]
        rows = [f.result(30)[0] for f in futures]
        magnitude = np.concatenate([r.magnitude for r in rows])
        np.testing.assert_allclose(magnitude, expected.magnitude, atol=rt.card.tolerance)
    finally:
        registry.close()


# -- auto ------------------------------------------------------------------------------------------


def test_auto_picks_a_backend_at_warm_up_and_says_why():
    rt = ModelRuntime(CONV, backend="auto", threads=2)
    try:
        assert rt.backend_name == "ort"  # the reference serves until warm-up has measured
        assert rt.backend_choice.startswith("auto: ort until warm_up()")
        rt.warm_up()
        sel = rt.selection
        assert sel is not None and rt.backend_name in sel.ms_per_window
        assert rt.backend_name == min(sel.ms_per_window, key=sel.ms_per_window.__getitem__)
        assert rt.backend_choice.startswith(f"auto: {rt.backend_name} fastest at batch 32")
        assert "ms/window" in rt.backend_choice and "tolerance 1e-04" in rt.backend_choice
        for name in ("ort", "openvino", "tensorrt"):
            ok, why = backend_available(name)
            assert (name in sel.ms_per_window) == ok or name in sel.rejected
            if not ok:
                assert sel.rejected[name] == why
        _, wave, amp, expected = reference(CONV)
        rows, _ = rt.infer(wave, amp)
        assert max_abs_difference(rows, expected) <= rt.card.tolerance
    finally:
        rt.close()


def test_auto_rejects_a_backend_outside_the_cards_tolerance():
    needs_openvino()
    ort = load_backend("ort", CONV, OPTIONS)
    # The same file with a tolerance no second runtime meets: OpenVINO must lose on accuracy.
    ort.card = dataclasses.replace(ort.card, tolerance=1e-12)
    wave, amp = comparison_inputs(ort.card, 8)
    sel = select_fastest(ort, wave, amp, OPTIONS, candidates=("ort", "openvino"), repeats=1)
    assert sel.backend is ort and list(sel.ms_per_window) == ["ort"]
    assert "> tolerance 1e-12" in sel.rejected["openvino"]
    assert sel.max_abs_diff["openvino"] > 1e-12
    assert "openvino rejected" in sel.reason


# -- missing backends and bad names ----------------------------------------------------------------


def test_a_backend_that_is_not_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(
        BackendUnavailable, match=r"'openvino' is not available.*seismag\[openvino\]"
    ):
        ModelRuntime(CONV, backend="openvino")
    with pytest.raises(ValueError, match="backend must be one of"):
        ModelRuntime(CONV, backend="onnx")
    assert BACKEND_CHOICES == ("ort", "openvino", "tensorrt", "auto")


def test_tensorrt_backend():
    ok, why = backend_available("tensorrt")
    if not ok:
        with pytest.raises(BackendUnavailable, match="'tensorrt' is not available"):
            ModelRuntime(CONV, backend="tensorrt")
        pytest.skip(f"TensorRT backend not testable here (needs TensorRT and a CUDA GPU): {why}")
    _, wave, amp, expected = reference(CONV)
    trt = load_backend("tensorrt", CONV, OPTIONS)
    got = trt.run(wave, amp)
    assert trt.kernel == "tensorrt-fp32"
    assert max_abs_difference(got, expected) <= trt.card.tolerance


# -- one artifact reader, one-way imports ----------------------------------------------------------


def test_one_artifact_reader(tmp_path):
    card, weights = read_artifact(CONV)
    assert read_card_from_onnx(CONV) == card == load_backend("ort", CONV, OPTIONS).card
    assert weights and card.name == "PhaseNetMag"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf" * 10)
    with pytest.raises(ArtifactError, match=r"bad\.onnx"):
        read_card_from_onnx(bad)
    with pytest.raises(ArtifactError, match="does not exist"):
        read_card_from_onnx(tmp_path / "missing.onnx")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


EXECUTOR_MUST_NOT = ("seismag.serving.pipeline", "seismag.serving.protocols", "seismag.export")


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("serving/executor", (*EXECUTOR_MUST_NOT, "seismag.training")),
        ("models", ("seismag.serving", "seismag.export", "seismag.training")),
    ],
)
def test_imports_point_one_way(folder, forbidden):
    for path in sorted((ROOT / folder).glob("*.py")):
        bad = [m for m in _imports(path) if m.startswith(forbidden)]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    evaluate = _imports(ROOT / "training" / "evaluate.py")
    assert not [m for m in evaluate if m.startswith("seismag.serving")]
