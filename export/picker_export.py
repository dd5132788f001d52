"""``seismag export-picker``: the P picker network to ONNX, parity-checked against PyTorch.

The file holds the network with its softmax (input ``waveform`` (batch, C, in_samples), normalised
by :func:`seismag.models.preprocess.picker_inputs`; output ``probabilities`` (batch, 3,
in_samples): noise, P, S) and the :class:`~seismag.models.picker_card.PickerCard` in its metadata,
which is all the server's :class:`~seismag.serving.executor.picker_runtime.PickerRuntime` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from seismag import __version__
from seismag.export.onnx_export import DEFAULT_OPSET, ExportError, quiet_tracer
from seismag.models.picker import PickerProbabilities, load_picker
from seismag.models.picker_card import PICKER_CARD_KEY
from seismag.models.preprocess import picker_inputs

PARITY_TOLERANCE = 1e-4
"""Largest |ONNX Runtime - PyTorch| probability accepted."""


@dataclass
class PickerExport:
    path: Path
    max_abs_diff: float


def export_picker(out: str | Path, *, weights: str | Path | None = None) -> PickerExport:
    """Export the shipped (or the given) picker weights to ``out``; raises ExportError when the
    ONNX Runtime outputs differ from PyTorch's by more than :data:`PARITY_TOLERANCE`."""
    import onnxruntime as ort

    model, card = load_picker(weights=weights)
    wrapper = PickerProbabilities(model).eval()
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((4, len(card.component_order), card.in_samples))
    raw[:, :, card.in_samples // 2 :] *= 20.0  # an onset-like step, so P is not zero everywhere
    x = torch.from_numpy(picker_inputs(raw, card))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    try:
        with quiet_tracer():
            torch.onnx.export(
                wrapper,
                (x[:2],),
                str(tmp),
                input_names=["waveform"],
                output_names=["probabilities"],
                dynamic_axes={"waveform": {0: "batch"}, "probabilities": {0: "batch"}},
                opset_version=DEFAULT_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    del proto.metadata_props[:]
    proto.metadata_props.add(key=PICKER_CARD_KEY, value=card.to_json())
    proto.metadata_props.add(key="seismag.version", value=__version__)
    proto.producer_name = "seismag"
    proto.producer_version = __version__
    proto.doc_string = f"{card.name} {card.version}: {card.description}"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out))
    with torch.no_grad():
        expected = wrapper(x).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"waveform": x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > PARITY_TOLERANCE:
        out.unlink()
        raise ExportError(f"{card.name}: ONNX Runtime differs from PyTorch by {diff:.2e}")
    return PickerExport(out, diff)
