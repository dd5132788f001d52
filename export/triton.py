"""A Triton Inference Server model repository from exported files.

Layout (Triton's own): ``<repo>/<model>/config.pbtxt`` and ``<repo>/<model>/1/model.onnx``; a
TensorRT engine, when built, becomes a second model ``<model>_trt`` with ``1/model.plan``, since
one Triton model has one platform. The configuration lives beside the artifact and names inputs
and outputs exactly as the ONNX file does, with dynamic batching, so users who outgrow one machine
serve the same files on a Triton cluster.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from seismag.models.card import ModelCard
from seismag.models.triton_config import ONNX_PLATFORM, TENSORRT_PLATFORM, model_config, to_pbtxt


def config_pbtxt(card: ModelCard, *, platform: str = ONNX_PLATFORM, name: str = "") -> str:
    """Triton's model_config in protobuf text format for one exported model (the same
    configuration the server's OIP ``ModelConfig`` RPC returns; see models/triton_config.py)."""
    return to_pbtxt(model_config(card, platform=platform, name=name))


def write_model(
    repo: str | Path, card: ModelCard, onnx_path: str | Path, plan_path: str | Path | None = None
) -> list[Path]:
    """Add one exported model (and its engine, if any) to a Triton repository."""
    repo = Path(repo)
    written = []
    entries = [(card.name, ONNX_PLATFORM, Path(onnx_path), "model.onnx")]
    if plan_path is not None:
        entries.append((f"{card.name}_trt", TENSORRT_PLATFORM, Path(plan_path), "model.plan"))
    for name, platform, source, filename in entries:
        version_dir = repo / name / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, version_dir / filename)
        config = repo / name / "config.pbtxt"
        config.write_text(config_pbtxt(card, platform=platform, name=name), encoding="utf-8")
        written += [config, version_dir / filename]
    return written
