"""The sparse-field reconstruction model's card and grid geometry.

One TOML file in ``models/cards/fields/`` read by training (:mod:`seismag.training.field_train`),
export (:mod:`seismag.export.field_export`) and serving (the field runtime), and embedded in the
exported ONNX file's metadata. Torch-free, like :mod:`seismag.models.card`.

Conventions, written once here: a field is an (H, W) array; a point's coordinates are
(row, column) scaled to [0, 1] with pixel centres at ``(i + 0.5) / H``; the network sees values
centred to [-1, 1] (``value_low`` -> -1, ``value_high`` -> 1).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from typing import Any

import numpy as np

from seismag.models.card import CardError
from seismag.models.field_sampler import SAMPLERS

FIELD_CARD_KEY = "seismag_field_card"
"""ONNX metadata key holding the card as JSON."""
DEFAULT_FIELD_MODEL = "FieldFlow"
OBJECTIVES = ("flow", "regress")
INPUT_NAMES = ("ctx_coords", "ctx_values", "query_coords", "x_t", "t")
"""The exported network's inputs, in the order the sampler passes them (the ONNX contract)."""
PRIOR_INPUT_NAMES = ("prior_mean", "prior_std")
"""Two more inputs of a model with a prior (``kwargs.prior``), after :data:`INPUT_NAMES`."""
OUTPUT_NAME = "x1"
SOURCE_PRIORS = ("shakemap",)
"""Priors that need each field's event source (:data:`seismag.models.ground_motion.SOURCE_COLUMNS`:
magnitude, epicentre row and column in the field's [0, 1] frame, depth in km)."""


@dataclass(frozen=True)
class FieldCard:
    name: str
    version: str
    description: str
    citation: str
    architecture: str
    # "flow": conditional flow matching, sampled with an ODE; "regress": one pass, no sampling.
    objective: str
    value_low: float
    value_high: float
    # Sampler defaults (the RPC and CLI may override them per request).
    steps: int
    samples: int
    max_points: int
    max_grid: int
    tolerance: float
    training: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)
    prior_params: dict[str, Any] = field(default_factory=dict)
    """Numbers a prior was fitted to at training (the ``shakemap`` prior's), empty otherwise."""
    sampler: str = "euler"
    """The ODE steps of :mod:`seismag.models.field_sampler`: ``euler`` or ``heun``."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise CardError(f"field model {self.name}: objective must be one of {OBJECTIVES}")
        if self.sampler not in SAMPLERS:
            raise CardError(f"field model {self.name}: sampler must be one of {SAMPLERS}")
        if not self.value_high > self.value_low:
            raise CardError(f"field model {self.name}: value_high must exceed value_low")
        for name in ("steps", "samples", "max_points", "max_grid"):
            if getattr(self, name) < 1:
                raise CardError(f"field model {self.name}: {name} must be >= 1")

    @property
    def prior(self) -> str:
        return str(self.kwargs.get("prior", "none"))

    @property
    def needs_source(self) -> bool:
        """Whether each field comes with its event's source (the ``shakemap`` prior)."""
        return self.prior in SOURCE_PRIORS

    def input_names(self) -> tuple[str, ...]:
        return INPUT_NAMES + (PRIOR_INPUT_NAMES if self.prior != "none" else ())

    def to_unit(self, values: np.ndarray) -> np.ndarray:
        """Field values -> the network's centred scale [-1, 1]."""
        span = self.value_high - self.value_low
        return (2.0 * (np.asarray(values, np.float32) - self.value_low) / span - 1.0).astype(
            np.float32
        )

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        span = self.value_high - self.value_low
        return ((np.asarray(unit, np.float32) + 1.0) * 0.5 * span + self.value_low).astype(
            np.float32
        )

    def spread_from_unit(self, std: np.ndarray) -> np.ndarray:
        """A standard deviation in unit scale -> field units (the scale only, no offset)."""
        return (np.asarray(std, np.float32) * 0.5 * (self.value_high - self.value_low)).astype(
            np.float32
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FieldCard:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise CardError(f"field card: unknown keys {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise CardError(f"bad field card {data.get('name', '?')!r}: {exc}") from exc


def load_field_cards() -> dict[str, FieldCard]:
    folder = resources.files("seismag.models") / "cards" / "fields"
    cards = {}
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name.endswith(".toml"):
            card = FieldCard.from_dict(tomllib.loads(path.read_text(encoding="utf-8")))
            cards[card.name] = card
    return cards


def get_field_card(name: str = DEFAULT_FIELD_MODEL) -> FieldCard:
    cards = load_field_cards()
    try:
        return cards[name]
    except KeyError:
        raise CardError(f"unknown field model {name!r}; known: {', '.join(cards)}") from None


def grid_coords(height: int, width: int) -> np.ndarray:
    """(H * W, 2) float32 pixel-centre coordinates in [0, 1], row-major."""
    rows = (np.arange(height, dtype=np.float32) + 0.5) / height
    cols = (np.arange(width, dtype=np.float32) + 0.5) / width
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], axis=-1).astype(np.float32)
