"""Model weights as safetensors files that carry their card: no pickle, provenance travels along.

The file's metadata holds the card as JSON (``seismag.card``), so a weights file says which model
and version it belongs to; loading checks that against the card in hand.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from seismag.models.card import CARD_KEY, ModelCard


class WeightsError(ValueError):
    """A weights file is missing, unreadable or belongs to another model."""


def save_weights(model, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    if model.card is None:
        raise WeightsError("the model has no card; build it with seismag.models.build_model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {CARD_KEY: json.dumps(model.card.to_dict()), **(extra or {})}
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_card(path: str | Path) -> ModelCard:
    """The card stored in a weights file, without loading any tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    if CARD_KEY not in meta:
        raise WeightsError(f"{path}: no seismag card in the file's metadata")
    return ModelCard.from_dict(json.loads(meta[CARD_KEY]))


def load_weights(model, path: str | Path) -> None:
    """Load a weights file into ``model`` after checking it belongs to the same model."""
    import torch
    from safetensors.torch import load_file

    from seismag.models.base import SIGMA_SCALE

    stored = read_card(path)
    if model.card is not None and stored.name != model.card.name:
        raise WeightsError(f"{path} holds weights for {stored.name}, not {model.card.name}")
    if model.card is not None and stored.input_contract() != model.card.input_contract():
        # Same architecture, other preprocessing: the weights would load and silently mislead.
        theirs, ours = stored.input_contract(), model.card.input_contract()
        diff = {k: (theirs[k], ours[k]) for k in ours if theirs[k] != ours[k]}
        raise WeightsError(f"{path} was trained with other inputs (file, model): {diff}")
    try:
        state = load_file(str(path))
        scale = getattr(model, SIGMA_SCALE, None)
        if scale is not None and SIGMA_SCALE not in state:
            state[SIGMA_SCALE] = torch.ones_like(scale)  # weights saved before calibration existed
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: does not fit {stored.name}: {exc}") from exc


def model_from_weights(path: str | Path, name: str | None = None):
    """The model a weights file holds, built from the card stored in it (the card it was trained
    with, e.g. an amplitude ablation) with the weights loaded; ``name``, when given, must be that
    model's (weights for another model are an error, not a silent mismatch). Imports torch."""
    from seismag.models import build_model

    card = read_card(path)
    if name is not None and name != card.name:
        raise WeightsError(f"{path} holds weights for {card.name}, not {name}")
    model = build_model(card)
    load_weights(model, path)
    return model


def file_digest(path: str | Path) -> str:
    """sha256 of a file, recorded in exported artifacts as the weights' provenance."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_weights(card: ModelCard) -> Path | None:
    """The default weights shipped in the package for this card, if there are any."""
    from importlib import resources

    path = Path(str(resources.files("seismag.models") / "weights" / f"{card.name}.safetensors"))
    return path if path.is_file() else None
