"""The P picker's card: what the picker network eats and how the server reads its output.

One TOML file in ``models/cards/pickers/`` read by training (:mod:`seismag.training.picker`),
export (:mod:`seismag.export.picker_export`) and serving
(:mod:`seismag.serving.executor.picker_runtime`), and embedded in the exported ONNX file's
metadata. Torch-free, like :mod:`seismag.models.card`.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from typing import Any

from seismag.models.card import CardError

PICKER_CARD_KEY = "seismag_picker_card"
"""ONNX metadata key holding the card as JSON."""
DEFAULT_PICKER = "PhaseNetPicker"
CLASSES = ("noise", "P", "S")
"""The network's output channels, in order."""


@dataclass(frozen=True)
class PickerCard:
    name: str
    version: str
    description: str
    citation: str
    architecture: str
    in_samples: int
    sampling_rate: float
    component_order: str
    normalisation: str
    highpass_hz: float
    label_sigma_s: float
    threshold: float
    stride_s: float
    lookahead_s: float
    max_run_s: float
    warmup_s: float
    gate: float
    gate_margin_s: float
    training: dict[str, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.in_samples < 64:
            raise CardError(f"picker {self.name}: in_samples must be >= 64, got {self.in_samples}")
        if not 0.0 < self.threshold < 1.0:
            raise CardError(f"picker {self.name}: threshold must be in (0, 1)")
        for name in ("stride_s", "lookahead_s", "max_run_s"):
            if getattr(self, name) <= 0:
                raise CardError(f"picker {self.name}: {name} must be > 0")
        if (self.stride_s + self.lookahead_s) * self.sampling_rate > self.in_samples:
            raise CardError(f"picker {self.name}: stride_s + lookahead_s exceed the window")

    @property
    def stride(self) -> int:
        """Samples between two network calls."""
        return max(round(self.stride_s * self.sampling_rate), 1)

    @property
    def lookahead(self) -> int:
        return max(round(self.lookahead_s * self.sampling_rate), 1)

    @property
    def max_run(self) -> int:
        return max(round(self.max_run_s * self.sampling_rate), 1)

    @property
    def gate_margin(self) -> int:
        return round(self.gate_margin_s * self.sampling_rate)

    @property
    def max_delay(self) -> int:
        """Samples from an onset to the newest sample its decision needs, at most."""
        return self.lookahead + self.stride + self.max_run

    @property
    def warmup(self) -> int:
        return round(self.warmup_s * self.sampling_rate)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PickerCard:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise CardError(f"picker card: unknown keys {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise CardError(f"bad picker card {data.get('name', '?')!r}: {exc}") from exc


def get_picker_card(name: str = DEFAULT_PICKER) -> PickerCard:
    """A shipped picker card by name."""
    path = resources.files("seismag.models") / "cards" / "pickers" / f"{name}.toml"
    if not path.is_file():
        raise CardError(f"unknown picker {name!r}")
    return PickerCard.from_dict(tomllib.loads(path.read_text(encoding="utf-8")))
