"""``seismag field export``: a FieldFlow network to ONNX, parity-checked against PyTorch.

The graph is one network evaluation (the sampler's loop stays in
:mod:`seismag.models.field_sampler`, shared by every runtime):

- inputs ``ctx_coords`` (N, K, 2), ``ctx_values`` (N, K), ``query_coords`` (N, Q, 2), ``x_t``
  (N, Q), ``t`` (N,), float32, coordinates in [0, 1], values in the card's unit scale;
- with a prior (``kwargs.prior``) also ``prior_mean`` and ``prior_std`` (N, Q), unit scale;
- output ``x1`` (N, Q): the clean-field estimate in unit scale (for a model with a prior, the
  standardised residual).

N, K and Q are dynamic. The :class:`~seismag.models.field_card.FieldCard` rides in the metadata
(``FIELD_CARD_KEY``), which is all the field runtime reads. A Mamba query mixer's scans become
``seismag::SelectiveScan`` nodes with their standard-op function, as in the magnitude export
(:mod:`seismag.export.onnx_export`), so the file runs in any ONNX runtime and the field runtime
puts them on the fused kernel where it can.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from seismag import __version__
from seismag.export.onnx_export import (
    DEFAULT_OPSET,
    ExportError,
    attach_scan_functions,
    finish_onnx,
    quiet_tracer,
)
from seismag.models.card import WEIGHTS_KEY
from seismag.models.field_card import (
    FIELD_CARD_KEY,
    OUTPUT_NAME,
    PRIOR_INPUT_NAMES,
    FieldCard,
    grid_coords,
)
from seismag.models.field_flow import build_field_model, load_field_model
from seismag.models.weights import file_digest

PARITY_SHAPES = ((1, 51, 1024), (3, 10, 64))
"""(N, K, Q) run through both PyTorch and ONNX Runtime (all three axes are dynamic)."""


@dataclass(frozen=True)
class FieldExport:
    path: Path
    card: FieldCard
    max_abs_diff: float
    scan_nodes: int = 0
    """SelectiveScan nodes in the graph (a Mamba query mixer: two per block)."""


def example_inputs(
    n: int, k: int, q: int, seed: int = 0, prior: bool = False
) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(q)))
    grid = grid_coords(side, side)[:q]
    arrays = (
        rng.random((n, k, 2), dtype=np.float32),
        rng.uniform(-1, 1, (n, k)).astype(np.float32),
        np.broadcast_to(grid, (n, q, 2)).copy(),
        rng.standard_normal((n, q)).astype(np.float32),
        rng.random(n, dtype=np.float32),
    )
    if prior:
        arrays += (
            rng.uniform(-1, 1, (n, q)).astype(np.float32),
            (10.0 ** rng.uniform(-3, 0, (n, q))).astype(np.float32),
        )
    return arrays


def export_field_model(
    card: FieldCard | None = None,
    weights: str | Path | None = None,
    out: str | Path = "FieldFlow.onnx",
    seed: int = 0,
) -> FieldExport:
    """Export trained weights (a file from ``seismag field train``, its card inside) or, without
    ``weights``, a randomly initialised network of ``card`` (for tests). Raises ExportError, and
    writes nothing, when ONNX Runtime differs from PyTorch by more than the card's tolerance."""
    if weights is not None:
        model, card = load_field_model(weights)
        provenance = f"{Path(weights).name} sha256:{file_digest(weights)}"
    else:
        if card is None:
            raise ExportError("export_field_model needs a card or a weights file")
        torch.manual_seed(seed)
        model = build_field_model(card).eval()
        provenance = f"untrained (random initialisation, seed {seed})"
    if card.kwargs.get("query_mixer", "none") == "mamba" and card.kwargs.get("seeds_dt", False):
        # dt = 1 / Q would be traced as the example's constant, wrong for every other Q.
        raise ExportError(
            f"{card.name}: the design documents' step (seeds_dt, dt = 1 / number of queries) "
            "is tied to the query count, which the exported graph leaves dynamic; only the "
            "learnt step is exported"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    prior = card.prior != "none"
    names = card.input_names()
    example = tuple(torch.from_numpy(a) for a in example_inputs(2, 7, 16, prior=prior))
    axes = {
        **{name: {0: "n", 1: "q"} for name in PRIOR_INPUT_NAMES if prior},
        "ctx_coords": {0: "n", 1: "k"},
        "ctx_values": {0: "n", 1: "k"},
        "query_coords": {0: "n", 1: "q"},
        "x_t": {0: "n", 1: "q"},
        "t": {0: "n"},
        OUTPUT_NAME: {0: "n", 1: "q"},
    }
    try:
        with quiet_tracer():
            torch.onnx.export(
                model,
                example,
                str(tmp),
                input_names=list(names),
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=DEFAULT_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    scans = attach_scan_functions(proto, DEFAULT_OPSET)
    meta = {
        FIELD_CARD_KEY: card.to_json(),
        WEIGHTS_KEY: provenance,
        "seismag.version": __version__,
        "seismag.output": f"{OUTPUT_NAME}: (N, Q) clean-field estimate in unit scale [-1, 1]",
    }
    finish_onnx(proto, card, meta, out)
    try:
        diff = _parity(model, out, card)
        if diff > card.tolerance:
            raise ExportError(
                f"{card.name}: ONNX Runtime differs from PyTorch by {diff:.2e} "
                f"(tolerance {card.tolerance:g})"
            )
    except BaseException:
        out.unlink(missing_ok=True)  # a file that failed its check must not be served
        raise
    return FieldExport(out, card, diff, scans)


def _parity(model: torch.nn.Module, path: Path, card: FieldCard) -> float:
    """Largest difference from PyTorch over :data:`PARITY_SHAPES` in a plain ONNX Runtime
    session (scans through their standard-op function, what any runtime can run)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = 0.0
    for i, (n, k, q) in enumerate(PARITY_SHAPES):
        inputs = example_inputs(n, k, q, seed=1 + i, prior=card.prior != "none")
        with torch.no_grad():
            expected = model(*(torch.from_numpy(a) for a in inputs)).numpy()
        got = session.run([OUTPUT_NAME], dict(zip(card.input_names(), inputs, strict=True)))[0]
        if got.shape != (n, q):
            raise ExportError(f"the ONNX output is {got.shape}, expected {(n, q)}")
        diff = max(diff, float(np.abs(got - expected).max()))
    return diff
