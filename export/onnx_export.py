"""PyTorch magnitude model -> a checked, optimised ONNX file that carries its card.

The exported graph takes the card's two inputs, ``waveform`` (batch, C, N) and ``log_amp``
(batch, 1), and returns ``magnitude``: (batch, N) or (batch,) in magnitude units (the model's
forward removes the card's ``label_offset``), so an Open Inference Protocol client needs no seismag
code to read it. The batch axis is dynamic. Each Mamba selective scan becomes one
``seismag::SelectiveScan`` node whose model-local function (standard ops) makes the file run in
any ONNX runtime.
"""

from __future__ import annotations

import json
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from seismag import __version__
from seismag.export.scan_function import DOMAIN, OP_TYPE, selective_scan_function
from seismag.models.base import SIGMA_SCALE, MagnitudeModel
from seismag.models.card import (
    CARD_KEY,
    INPUT_NAMES,
    OUTPUT_NAME,
    SIGMA_NAME,
    WEIGHTS_KEY,
    ModelCard,
)

DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """The model could not be exported or the exported file failed its checks."""


class _MagnitudeOutput(nn.Module):
    """The exported outputs: the magnitude, and for a model with an uncertainty head its standard
    deviation (``sigma``)."""

    def __init__(self, model: MagnitudeModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, waveform: torch.Tensor, log_amp: torch.Tensor):
        if self.model.n_outputs == 2:
            return self.model.forward_with_sigma(waveform, log_amp)
        return self.model(waveform, log_amp)


def output_names(card: ModelCard) -> list[str]:
    """The exported file's outputs: the magnitude, and its sigma where the card has one."""
    return [OUTPUT_NAME, *([SIGMA_NAME] if card.uncertainty == "gaussian" else [])]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    seconds: float
    size_bytes: int
    n_nodes: int
    custom_nodes: int


def example_inputs(card: ModelCard, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random but realistic-looking model inputs: noise with a P-like burst, normalised."""
    from seismag.models.preprocess import model_inputs

    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(batch, card.in_channels, card.in_samples))
    onset = card.in_samples // 3
    raw[..., onset:] *= 1.0 + 20.0 * rng.random((batch, 1, 1))
    scale = 10.0 ** rng.uniform(-8, -3, size=(batch, 1, 1))  # m/s: micro-events to strong motion
    return model_inputs(raw * scale, card)


@contextmanager
def quiet_tracer():
    # The shape checks in MagnitudeModel.forward and torch's LSTM emit TracerWarnings about
    # Python values being constants; those are the static sizes the card fixes, which is intended.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def attach_scan_functions(proto: onnx.ModelProto, opset: int) -> int:
    """Give the traced graph's SelectiveScan nodes their standard-op function; returns how many
    there are (0: the graph is unchanged)."""
    nodes = [n for n in proto.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]
    if not nodes:
        return 0
    chunks = {a.i for n in nodes for a in n.attribute if a.name == "chunk"}
    if len(chunks) != 1:
        raise ExportError(f"SelectiveScan nodes disagree on their chunk size: {sorted(chunks)}")
    proto.functions.append(selective_scan_function("chunked", chunk=chunks.pop(), opset=opset))
    if not any(op.domain == DOMAIN for op in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
    return len(nodes)


def finish_onnx(proto: onnx.ModelProto, card, meta: dict[str, str], path: Path) -> None:
    """Stamp the card's metadata and provenance on an exported graph, check it, and save it."""
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "seismag"
    proto.producer_version = __version__
    proto.doc_string = f"{card.name} {card.version}: {card.description}"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{card.name}: the exported graph fails onnx.checker: {exc}") from exc
    onnx.save(proto, str(path))


def export_onnx(
    model: MagnitudeModel,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    weights: str = "untrained (random initialisation)",
    optimize: bool = True,
) -> ExportResult:
    """Export ``model`` (built from its card) to ``path``; returns what was written."""
    if model.card is None:
        raise ExportError("the model has no card; build it with seismag.models.build_model")
    if opset < DEFAULT_OPSET:
        raise ExportError(f"opset {opset} is too old; seismag exports opset {DEFAULT_OPSET}+")
    card = model.card
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    was_training = model.training
    # The wrapper itself must be in eval mode too: torch.onnx.export restores the wrapper's own
    # mode afterwards, recursively, which would leave the caller's model in training mode.
    wrapper = _MagnitudeOutput(model).eval()
    args = tuple(torch.from_numpy(a) for a in example_inputs(card, batch=2))
    outputs = output_names(card)
    axes = {name: {0: "batch"} for name in (*INPUT_NAMES, *outputs)}
    tmp = path.with_suffix(".tmp.onnx")
    try:
        # Not under no_grad: nn.MultiheadAttention would take its fused inference fast path,
        # which has no ONNX export.
        with quiet_tracer():
            torch.onnx.export(
                wrapper,
                args,
                str(tmp),
                input_names=list(INPUT_NAMES),
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)

    custom = attach_scan_functions(proto, opset)
    if optimize:
        import onnxscript.optimizer

        # inline=False keeps each scan one node, so a registered native kernel can replace it.
        proto = onnxscript.optimizer.optimize(proto, inline=False)
    sigma_text = ""
    if len(outputs) > 1:
        scale = getattr(model, SIGMA_SCALE, None)
        sigma_text = f"; {SIGMA_NAME}: its standard deviation" + (
            "" if scale is None else f" (the head's times the calibration {float(scale):.4g})"
        )
    meta = {
        CARD_KEY: json.dumps(card.to_dict()),
        "seismag.version": __version__,
        WEIGHTS_KEY: weights,
        "seismag.output": f"{OUTPUT_NAME}: magnitude units, label_offset removed{sigma_text}",
    }
    finish_onnx(proto, card, meta, path)
    return ExportResult(
        path=path,
        seconds=time.perf_counter() - t0,
        size_bytes=path.stat().st_size,
        n_nodes=len(proto.graph.node),
        custom_nodes=custom,
    )
