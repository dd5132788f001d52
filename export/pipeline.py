"""`seismag export`: weights -> ONNX (checked, parity-verified) -> int8 / TensorRT / Triton."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from seismag.models import build_model, get_card
from seismag.models.card import ModelCard
from seismag.models.weights import file_digest, load_weights, model_from_weights, shipped_weights

TARGETS = ("onnx", "triton", "tensorrt")


@dataclass
class ModelExport:
    card: ModelCard
    onnx: Path
    weights: str
    seconds: float
    parity: list = field(default_factory=list)
    extra: list[Path] = field(default_factory=list)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_model(name: str | None, weights: str | Path | None):
    """Build a model from its card and load weights: given, shipped, or none (says which)."""
    if weights is not None:
        model = model_from_weights(weights, name)  # the card the weights were trained with
    else:
        card = get_card(name)  # shipped weights serve the card as it is now
        model = build_model(card)
        weights = shipped_weights(card)
        if weights is None:
            return model, "untrained (random initialisation)"
        load_weights(model, weights)
    return model, f"{Path(weights).name} sha256:{file_digest(weights)}"


def export_model(
    name: str | None,
    out_dir: str | Path,
    *,
    to: str = "onnx",
    weights: str | Path | None = None,
    opset: int = 17,
    int8: bool = False,
    precisions: tuple[str, ...] = ("fp32", "fp16"),
    parity: bool = True,
) -> ModelExport:
    from seismag.export.onnx_export import export_onnx

    if to not in TARGETS:
        raise ValueError(f"--to must be one of {TARGETS}, got {to!r}")
    out_dir = Path(out_dir)
    model, provenance = load_model(name, weights)
    card = model.card
    if provenance.startswith("untrained"):
        _say(f"{card.name}: no trained weights given or shipped; exporting random initialisation")
    onnx_path = out_dir / f"{card.name}.onnx"
    _say(f"{card.name}: exporting to ONNX ...")
    result = export_onnx(model, onnx_path, opset=opset, weights=provenance)
    _say(
        f"{card.name}: {onnx_path} ({result.size_bytes / 1e6:.2f} MB, {result.n_nodes} nodes, "
        f"{result.custom_nodes} SelectiveScan) in {result.seconds:.1f} s"
    )
    done = ModelExport(card, onnx_path, provenance, result.seconds)
    if parity:
        done.parity = check_parity(model, onnx_path)
    if int8:
        from seismag.export.quantize import quantize_int8

        done.extra.append(quantize_int8(onnx_path, out_dir / f"{card.name}.int8.onnx"))
        _say(f"{card.name}: int8 model {done.extra[-1]}")
    plan = None
    if to == "tensorrt" or (to == "triton" and precisions and _has_tensorrt()):
        from seismag.export.tensorrt import build_engine

        for precision in precisions:
            _say(f"{card.name}: building TensorRT {precision} engine (minutes) ...")
            engine = build_engine(
                onnx_path, out_dir / f"{card.name}.{precision}.plan", precision=precision
            )
            done.extra.append(engine.path)
            plan = plan or engine.path
    if to == "triton":
        from seismag.export.triton import write_model

        done.extra += write_model(out_dir / "triton", card, onnx_path, plan)
        _say(f"{card.name}: Triton model repository entry in {out_dir / 'triton'}")
    return done


def _has_tensorrt() -> bool:
    from seismag.export.tensorrt import TensorRTUnavailable, require_tensorrt

    try:
        require_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


def check_parity(model, onnx_path: Path) -> list:
    """ONNX Runtime vs PyTorch at batch 1 and 32, random and recorded inputs; raises on failure."""
    import onnxruntime as ort

    from seismag.export.parity import compare

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    results = [
        compare(model, session, batch, source)
        for batch in (1, 32)
        for source in ("random", "recordings")
    ]
    worst = max(results, key=lambda r: r.max_abs)
    _say(
        f"{model.card.name}: parity vs PyTorch max abs {worst.max_abs:.2e} "
        f"(rel {worst.max_rel:.2e}) over batch 1 and 32, random and recorded inputs"
    )
    for r in results:
        if r.export_vs_fp64 is not None:
            _say(
                f"{model.card.name}: batch {r.batch} {r.source} beyond tolerance "
                f"{r.tolerance:g}; against PyTorch in float64: ONNX {r.export_vs_fp64:.2e}, "
                f"PyTorch float32 {r.torch_vs_fp64:.2e} "
                f"({'accepted: no further' if r.ok else 'REJECTED: further'} than PyTorch's own "
                "float32 rounding)"
            )
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{model.card.name}: ONNX output differs from PyTorch: {failed}")
    return results
