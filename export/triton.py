"""A Triton Inference Server model repository from exported files.

Layout (Triton's own): ``<repo>/<model>/config.pbtxt`` and ``<repo>/<model>/1/model.onnx``; a
TensorRT engine, when built, becomes a second model ``<model>_trt`` with ``1/model.plan``, since
one Triton model has one platform. The configuration lives beside the artifact and names inputs
and outputs exactly as the ONNX file does, with dynamic batching, so users who outgrow one machine
serve the same files on a Triton cluster.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from seismag.export.onnx_export import INPUT_NAMES, OUTPUT_NAME, SIGMA_NAME
from seismag.models.card import ModelCard
from seismag.models.trt_engine import MAX_BATCH  # the engine profile's: a plan takes no more

PREFERRED_BATCHES = (8, 32, 64)
MAX_QUEUE_DELAY_US = 2000
"""The wait of ``seismag serve``'s batcher (``ServeConfig.max_queue_delay_ms``); written again
here because export does not import serving (docs/architecture.md)."""


def _tensor(name: str, dims: tuple[int, ...], reshape_to_scalar: bool = False) -> str:
    # Triton's dims exclude the batch axis; a (batch,) output is declared [1] and reshaped to [].
    lines = [f'    name: "{name}"', "    data_type: TYPE_FP32", f"    dims: {list(dims)}"]
    if reshape_to_scalar:
        lines.append("    reshape: { shape: [ ] }")
    return "  {\n" + "\n".join(lines) + "\n  }"


def config_pbtxt(card: ModelCard, *, platform: str = "onnxruntime_onnx", name: str = "") -> str:
    """Triton's model_config in protobuf text format for one exported model."""
    waveform = _tensor(INPUT_NAMES[0], (card.in_channels, card.in_samples))
    log_amp = _tensor(INPUT_NAMES[1], (1,))
    outputs = [OUTPUT_NAME, *([SIGMA_NAME] if card.uncertainty == "gaussian" else [])]
    if card.output == "series":
        output = ",\n".join(_tensor(name, (card.in_samples,)) for name in outputs)
    else:
        output = ",\n".join(_tensor(name, (1,), reshape_to_scalar=True) for name in outputs)
    kind = "KIND_GPU" if platform == "tensorrt_plan" else "KIND_CPU"
    card_json = json.dumps(json.dumps(card.to_dict()))  # a quoted, escaped protobuf string
    preferred = ", ".join(str(b) for b in PREFERRED_BATCHES)
    return f"""name: "{name or card.name}"
platform: "{platform}"
max_batch_size: {MAX_BATCH}
input [
{waveform},
{log_amp}
]
output [
{output}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}
}}
instance_group [ {{ kind: {kind} count: 1 }} ]
parameters {{
  key: "seismag.card"
  value: {{ string_value: {card_json} }}
}}
"""


def write_model(
    repo: str | Path, card: ModelCard, onnx_path: str | Path, plan_path: str | Path | None = None
) -> list[Path]:
    """Add one exported model (and its engine, if any) to a Triton repository."""
    repo = Path(repo)
    written = []
    entries = [(card.name, "onnxruntime_onnx", Path(onnx_path), "model.onnx")]
    if plan_path is not None:
        entries.append((f"{card.name}_trt", "tensorrt_plan", Path(plan_path), "model.plan"))
    for name, platform, source, filename in entries:
        version_dir = repo / name / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, version_dir / filename)
        config = repo / name / "config.pbtxt"
        config.write_text(config_pbtxt(card, platform=platform, name=name), encoding="utf-8")
        written += [config, version_dir / filename]
    return written
