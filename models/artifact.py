"""Reading an exported model file (``.onnx``): its card and provenance from the ONNX metadata.

The one reader of exported files for everything downstream of export: the serving executor and
its backends, and the evaluator's ``--onnx`` path. It needs no torch and no onnx package:
onnxruntime (a core dependency) parses the file, imported on first use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from seismag.models.card import CARD_KEY, WEIGHTS_KEY, CardError, ModelCard


class ArtifactError(RuntimeError):
    """An exported file is missing, unreadable or carries no (readable) seismag card."""


def check_file(path: str | Path) -> Path:
    """``path`` as a Path, or an :class:`ArtifactError` naming it when it is not a file."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"model file {path} does not exist")
    if not path.is_file():
        raise ArtifactError(f"model path {path} is not a file")
    return path


def card_from_metadata(meta: Mapping[str, str], source: str | Path) -> tuple[ModelCard, str]:
    """The card and the weights' provenance string from an ONNX file's metadata properties.

    ``source`` only names the file in errors. The provenance is "unknown" in files without it.
    """
    if CARD_KEY not in meta:
        raise ArtifactError(
            f"{source}: no seismag card in the ONNX metadata (key {CARD_KEY!r}); export the model "
            "with `seismag export`"
        )
    try:
        card = ModelCard.from_dict(json.loads(meta[CARD_KEY]))
    except (json.JSONDecodeError, CardError, TypeError) as exc:
        raise ArtifactError(f"{source}: the embedded model card is unreadable: {exc}") from exc
    return card, meta.get(WEIGHTS_KEY, "unknown")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata properties of an ONNX file (custom_metadata_map)."""
    import onnxruntime as ort

    path = check_file(path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # metadata only
    opts.log_severity_level = 3  # a reader: no warnings about unused initialisers and the like
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail / InvalidProtobuf / RuntimeException
        raise ArtifactError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
    return dict(session.get_modelmeta().custom_metadata_map)


def read_artifact(path: str | Path) -> tuple[ModelCard, str]:
    """The card embedded in an exported file and the weights' provenance string."""
    return card_from_metadata(read_metadata(path), path)


def read_card_from_onnx(path: str | Path) -> ModelCard:
    """The card embedded in an exported file."""
    return read_artifact(path)[0]
