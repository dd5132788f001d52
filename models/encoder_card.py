"""Pretraining encoders' cards: what an encoder eats, how it is pretrained, what it returns.

One TOML file per encoder in ``models/cards/encoders/`` read by pretraining
(:mod:`seismag.training.pretrain`), fine-tuning (:class:`seismag.models.encoder_mag.EncoderMag`),
export and serving (the ``Embed`` RPC), and embedded in weights and ONNX metadata. Torch-free,
like :mod:`seismag.models.card`.

An encoder maps a normalised window (B, C, N), prepared by the magnitude models' one
preprocessing path (:func:`seismag.models.preprocess.normalise` with this card's
``normalisation`` and ``highpass_hz``), to one embedding per ``downsampling`` samples:
(B, T, D) with ``T = steps(N)``; step t describes the samples around ``t * downsampling``, so
its time is ``window start + t * downsampling / sampling_rate``.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from typing import Any

from seismag.models.card import CardError

ENCODER_CARD_KEY = "seismag_encoder_card"
"""Metadata key (safetensors and ONNX) holding the encoder card as JSON."""
INPUT_NAME = "waveform"
OUTPUT_NAME = "embedding"
ENCODER_NAMES = ("ConvDownEncoderContrastive", "BidirAutoregEncoder")


@dataclass(frozen=True)
class EncoderCard:
    name: str
    version: str
    description: str
    citation: str
    architecture: str
    objective: str
    """``contrastive`` (InfoNCE on quantised targets) or ``masked_reconstruction``."""
    in_samples: int
    sampling_rate: float
    component_order: str
    normalisation: str
    highpass_hz: float
    downsampling: int
    embed_dim: int
    tolerance: float = 1e-4
    """Largest embedding difference accepted between PyTorch and an exported runtime, absolute or
    relative to the largest value (as the magnitude export's parity check)."""
    pretraining: dict[str, Any] = field(default_factory=dict)
    """Recipe of ``seismag pretrain``: learning_rate, batch_size, gumbel temperatures..."""
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.objective not in ("contrastive", "masked_reconstruction"):
            raise CardError(f"encoder {self.name}: unknown objective {self.objective!r}")
        if self.in_samples < 64:
            raise CardError(f"encoder {self.name}: in_samples must be >= 64")
        if self.downsampling != 4:
            raise CardError(f"encoder {self.name}: the encoders subsample by 4")
        if ":" not in self.architecture:
            raise CardError(f"encoder {self.name}: architecture must be 'module:Class'")

    @property
    def in_channels(self) -> int:
        return len(self.component_order)

    def steps(self, n_samples: int | None = None) -> int:
        """Embedding steps for a window of ``n_samples`` (default: the card's)."""
        n = self.in_samples if n_samples is None else int(n_samples)
        half = (n - 1) // 2 + 1
        return (half - 1) // 2 + 1

    @property
    def step_seconds(self) -> float:
        return self.downsampling / self.sampling_rate

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderCard:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise CardError(f"encoder card: unknown keys {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise CardError(f"bad encoder card {data.get('name', '?')!r}: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> EncoderCard:
        return cls.from_dict(json.loads(text))


def get_encoder_card(name: str) -> EncoderCard:
    """A shipped encoder card by name."""
    path = resources.files("seismag.models") / "cards" / "encoders" / f"{name}.toml"
    if not path.is_file():
        raise CardError(f"unknown encoder {name!r}; known encoders: {', '.join(ENCODER_NAMES)}")
    return EncoderCard.from_dict(tomllib.loads(path.read_text(encoding="utf-8")))
