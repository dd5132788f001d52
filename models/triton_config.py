"""Triton's model configuration for one exported model, as data: the one source of truth.

``seismag export --triton`` renders it as ``config.pbtxt`` (:func:`to_pbtxt`) and the server's
Open Inference Protocol ``ModelConfig`` RPC converts the same object to protobuf, so a Triton
deployment and ``seismag serve`` describe a model identically (tools such as Triton's
``perf_analyzer`` read it). Plain Python, no torch: serving imports it. Field names follow
Triton's model_config.proto (github.com/triton-inference-server/common, protobuf/).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from seismag.models.card import CARD_KEY, INPUT_NAMES, OUTPUT_NAME, SIGMA_NAME, ModelCard
from seismag.models.trt_engine import MAX_BATCH  # the engine profile's: a plan takes no more

ONNX_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
PREFERRED_BATCHES = (8, 32, 64)
MAX_QUEUE_DELAY_US = 2000
"""The wait of ``seismag serve``'s batcher (``ServeConfig.max_queue_delay_ms``); written again
here because models do not import serving (docs/architecture.md)."""


@dataclass(frozen=True)
class TensorConfig:
    """One input or output: Triton's dims exclude the batch axis; ``reshape`` is what the model
    itself sees (a (batch,) output is declared [1] and reshaped to [])."""

    name: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None
    data_type: str = "TYPE_FP32"


@dataclass(frozen=True)
class ModelConfig:
    """The fields of Triton's ModelConfig that a seismag model sets."""

    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    instance_kind: str  # KIND_CPU or KIND_GPU
    instance_count: int
    parameters: dict[str, str]


def model_config(card: ModelCard, *, platform: str = ONNX_PLATFORM, name: str = "") -> ModelConfig:
    """Triton's configuration of the model ``card`` describes, served as ``name`` (default: the
    card's name) on ``platform`` (``onnxruntime_onnx`` or ``tensorrt_plan``)."""
    outputs = (OUTPUT_NAME, *((SIGMA_NAME,) if card.uncertainty == "gaussian" else ()))
    if card.output == "series":
        out = tuple(TensorConfig(o, (card.in_samples,)) for o in outputs)
    else:
        out = tuple(TensorConfig(o, (1,), reshape=()) for o in outputs)
    return ModelConfig(
        name=name or card.name,
        platform=platform,
        max_batch_size=MAX_BATCH,
        inputs=(
            TensorConfig(INPUT_NAMES[0], (card.in_channels, card.in_samples)),
            TensorConfig(INPUT_NAMES[1], (1,)),
        ),
        outputs=out,
        preferred_batch_sizes=PREFERRED_BATCHES,
        max_queue_delay_us=MAX_QUEUE_DELAY_US,
        instance_kind="KIND_GPU" if platform == TENSORRT_PLATFORM else "KIND_CPU",
        instance_count=1,
        parameters={CARD_KEY: json.dumps(card.to_dict())},
    )


def _tensor_text(t: TensorConfig) -> str:
    lines = [f'    name: "{t.name}"', f"    data_type: {t.data_type}", f"    dims: {list(t.dims)}"]
    if t.reshape is not None:
        lines.append(f"    reshape: {{ shape: {list(t.reshape)} }}")
    return "  {\n" + "\n".join(lines) + "\n  }"


def to_pbtxt(config: ModelConfig) -> str:
    """``config`` in protobuf text format, as Triton reads ``config.pbtxt``."""
    inputs = ",\n".join(_tensor_text(t) for t in config.inputs)
    outputs = ",\n".join(_tensor_text(t) for t in config.outputs)
    preferred = ", ".join(str(b) for b in config.preferred_batch_sizes)
    parameters = "".join(
        f"parameters {{\n  key: {json.dumps(k)}\n  value: {{ string_value: {json.dumps(v)} }}\n}}\n"
        for k, v in config.parameters.items()
    )
    return f"""name: "{config.name}"
platform: "{config.platform}"
max_batch_size: {config.max_batch_size}
input [
{inputs}
]
output [
{outputs}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {config.max_queue_delay_us}
}}
instance_group [ {{ kind: {config.instance_kind} count: {config.instance_count} }} ]
{parameters}"""
