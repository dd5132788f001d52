"""``seismag export-encoder``: a pretraining encoder to ONNX, parity-checked against PyTorch.

The file maps ``waveform`` (batch, C, in_samples), normalised by
:func:`seismag.models.preprocess.normalise` with the card's settings, to ``embedding``
(batch, T, D) with ``T = card.steps()`` and ``D = card.embed_dim``; only the batch axis is
dynamic. The :class:`~seismag.models.encoder_card.EncoderCard` rides in the metadata
(``ENCODER_CARD_KEY``), which is all the server's
:class:`~seismag.serving.executor.encoder_runtime.EncoderRuntime` reads. Like the picker export
(and unlike the magnitude export) the graph is not run through onnxscript's optimizer: it took
20 s for an encoder's unrolled mLSTM chunks and ONNX Runtime folds the same constants at load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from seismag import __version__
from seismag.export.onnx_export import DEFAULT_OPSET, ExportError, finish_onnx, quiet_tracer
from seismag.models.card import WEIGHTS_KEY
from seismag.models.encoder_card import ENCODER_CARD_KEY, INPUT_NAME, OUTPUT_NAME, EncoderCard
from seismag.models.encoders import load_encoder
from seismag.models.preprocess import normalise
from seismag.models.weights import file_digest

PARITY_BATCHES = (1, 4)
"""Batch sizes run through both PyTorch and ONNX Runtime (the batch axis is dynamic)."""


@dataclass(frozen=True)
class EncoderExport:
    path: Path
    card: EncoderCard
    max_abs_diff: float
    """Largest |ONNX Runtime - PyTorch| embedding value over the parity windows."""
    max_rel_diff: float
    """``max_abs_diff`` over the largest |PyTorch| embedding value."""


def parity_windows(card: EncoderCard, batch: int, seed: int = 0) -> np.ndarray:
    """``batch`` encoder inputs: noise with an onset-like burst at a random place and a random
    amplitude (m/s), normalised the card's way, as the server prepares a station's window."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((batch, card.in_channels, card.in_samples))
    for row in raw:
        onset = int(rng.integers(card.in_samples // 10, card.in_samples * 9 // 10))
        row[:, onset:] *= 1.0 + 20.0 * rng.random()
    raw *= 10.0 ** rng.uniform(-8, -3, size=(batch, 1, 1))
    x, _ = normalise(
        raw, card.normalisation, highpass_hz=card.highpass_hz, sampling_rate=card.sampling_rate
    )
    return x


def _parity(model: torch.nn.Module, card: EncoderCard, path: Path) -> tuple[float, float]:
    """The largest absolute difference and that difference relative to the largest value."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = top = 0.0
    for i, batch in enumerate(PARITY_BATCHES):
        x = parity_windows(card, batch, seed=1 + i)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        want = (batch, card.steps(), card.embed_dim)
        if got.shape != want:
            raise ExportError(f"{card.name}: the ONNX embedding is {got.shape}, expected {want}")
        diff = max(diff, float(np.abs(got - expected).max()))
        top = max(top, float(np.abs(expected).max()))
    return diff, diff / max(top, 1e-30)


def export_encoder(weights_path: str | Path, out_dir: str | Path) -> EncoderExport:
    """Export the encoder a safetensors file holds (:func:`~seismag.models.encoders.save_encoder`)
    to ``<out_dir>/<card.name>.onnx``; raises ExportError (and writes nothing) when the ONNX
    Runtime embedding differs from PyTorch's by more than the card's ``tolerance``, absolute or
    relative to the largest value (the tolerance rule of the magnitude export's
    :class:`~seismag.export.parity.Parity`, without its float64 comparison beyond the tolerance:
    an untrained BidirAutoregEncoder's float32 PyTorch output is itself 1e-4 from float64 on
    values up to 4, its LayerNorms amplifying rounding).

    ``load_encoder`` raises :class:`~seismag.models.weights.WeightsError` for a missing file or
    one that holds no encoder.
    """
    weights_path = Path(weights_path)
    model = load_encoder(weights_path).eval()
    card: EncoderCard = model.card
    out = Path(out_dir) / f"{card.name}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    example = torch.from_numpy(parity_windows(card, 2))
    try:
        with quiet_tracer():
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=DEFAULT_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    meta = {
        ENCODER_CARD_KEY: card.to_json(),
        WEIGHTS_KEY: f"{weights_path.name} sha256:{file_digest(weights_path)}",
        "seismag.version": __version__,
        "seismag.output": f"{OUTPUT_NAME}: (batch, T, {card.embed_dim}), step t at window "
        f"start + t * {card.step_seconds:g} s",
    }
    finish_onnx(proto, card, meta, out)
    try:
        diff, rel = _parity(model, card, out)
        if diff > card.tolerance and rel > card.tolerance:
            raise ExportError(
                f"{card.name}: ONNX Runtime differs from PyTorch by {diff:.2e} ({rel:.2e} of the "
                f"largest value; tolerance {card.tolerance:g})"
            )
    except BaseException:
        out.unlink(missing_ok=True)  # a file that failed its check must not be served
        raise
    return EncoderExport(out, card, diff, rel)
