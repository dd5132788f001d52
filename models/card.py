"""Model cards: the one contract per model that training, export and serving all read.

A card is a TOML file in ``models/cards/``. It states what a model eats (samples, rate,
component order, normalisation, units), what it returns (a per-sample series or a scalar) and how
a scalar magnitude is derived from a series. Reading a card needs no torch.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

OutputKind = Literal["series", "scalar"]
Uncertainty = Literal["none", "gaussian"]
Normalisation = Literal["peak", "std", "std_per_channel", "std_global_taper"]
Aggregation = Literal["mean_after_onset", "median_after_onset"]

_OUTPUT_KINDS = ("series", "scalar")
_UNCERTAINTIES = ("none", "gaussian")
_NORMALISATIONS = ("peak", "std", "std_per_channel", "std_global_taper")
_AGGREGATIONS = ("mean_after_onset", "median_after_onset")


# The exported model's interface and the metadata keys every artifact carries (ONNX files and
# safetensors weights): defined once here, read by export, serving and training.
INPUT_NAMES = ("waveform", "log_amp")
OUTPUT_NAME = "magnitude"
SIGMA_NAME = "sigma"
"""Second output of cards with ``uncertainty = "gaussian"``: the standard deviation of the
magnitude, in magnitude units, the same shape as ``magnitude``."""
CARD_KEY = "seismag.card"
WEIGHTS_KEY = "seismag.weights"
DEFAULT_TOLERANCE = 1e-4
"""Magnitude units: float32 reorderings stay far below it, a bf16 run (~1e-3 to 1e-1) does not."""


class CardError(ValueError):
    """A model card is missing, malformed or names something that does not exist."""


@dataclass(frozen=True)
class TrainingDefaults:
    """The original design's training recipe for a model; `seismag train` starts from these."""

    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    gradient_clip: float = 1.0
    """Max gradient norm; 0 disables clipping."""
    warmup_epochs: int = 0
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    early_stopping_patience: int = 10


MAX_SAMPLING_RATE = 10_000.0
"""Hz. Above any seismometer's rate; a larger value is a unit mix-up (e.g. a period in us).
The bound of a card's rate and of the data the server accepts."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    description: str
    citation: str
    architecture: str
    """``module:Class`` of the PyTorch implementation, imported only when a model is built."""
    output: OutputKind
    in_samples: int
    sampling_rate: float = 100.0
    component_order: str = "ZNE"
    units: str = "m/s"
    """Physical units the input is expected in (instrument response removed)."""
    normalisation: Normalisation = "peak"
    """Per-window scale: ``peak`` = max |x| over all components, ``std`` = std over all.
    ``std_per_channel`` / ``std_global_taper``: the reference code's preprocessing, for imported
    checkpoints (see :func:`seismag.models.preprocess.normalise`)."""
    highpass_hz: float = 0.0
    """Causal high-pass corner applied to each window before scaling; 0 = none."""
    use_amplitude: bool = True
    """False zeroes ``log_amp`` (the amplitude ablation); the weights' card records it."""
    amplitude_additive: bool = False
    """True: the magnitude is ``log_amp`` plus what the body infers from the normalised waveform
    alone (its amplitude channel gets zeros), the structure of the local-magnitude formula
    (log A plus a correction). A constant gain error then shifts every magnitude by exactly its
    log10: it cannot compress the magnitude scale, and extrapolates in amplitude by construction."""
    label_offset: float = 0.0
    """The model body learns ``magnitude + label_offset`` (AMAG's +1, zero before P); the model's
    ``forward`` subtracts it, so every output (PyTorch, ONNX, serving) is a magnitude."""
    uncertainty: Uncertainty = "none"
    """``gaussian``: the model also outputs a standard deviation per value (trained with a
    Gaussian negative log-likelihood, as MagNet and TEAM-LM do)."""
    scalar_from_series: Aggregation | None = None
    """How a series model's scalar is derived: aggregated over samples after the P onset only."""
    tolerance: float = DEFAULT_TOLERANCE
    """Largest output difference (magnitude and sigma, magnitude units) accepted between two
    runtimes of this model: the export's parity check against PyTorch, and serving backends
    against ONNX Runtime before ``backend="auto"`` may pick them."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments of the architecture."""
    training: TrainingDefaults = field(default_factory=TrainingDefaults)
    seed_parameter_estimate: str | None = None
    """The original design's parameter-count estimate, kept for the docs' comparison table."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise CardError(f"a card needs a name, got {self.name!r}")
        # A card read from an ONNX file or a typed-in TOML: TOML's true is a Python int, and a
        # float sample count would only fail deep inside preprocessing.
        if not _is_int(self.in_samples) or self.in_samples < 16:
            raise CardError(
                f"{self.name}: in_samples must be an integer >= 16, got {self.in_samples!r}"
            )
        for what in ("sampling_rate", "highpass_hz", "label_offset", "tolerance"):
            value = getattr(self, what)
            if not _is_real(value):
                raise CardError(f"{self.name}: {what} must be a finite number, got {value!r}")
        order = self.component_order
        if (
            not isinstance(order, str)
            or not order
            or len(set(order)) != len(order)
            or not set(order) <= set("ZNE")
        ):
            raise CardError(
                f"{self.name}: component_order must be distinct letters of ZNE, got {order!r}"
            )
        if self.output not in _OUTPUT_KINDS:
            raise CardError(
                f"{self.name}: output must be one of {_OUTPUT_KINDS}, got {self.output!r}"
            )
        if self.normalisation not in _NORMALISATIONS:
            raise CardError(
                f"{self.name}: normalisation must be one of {_NORMALISATIONS}, "
                f"got {self.normalisation!r}"
            )
        if self.uncertainty not in _UNCERTAINTIES:
            raise CardError(
                f"{self.name}: uncertainty must be one of {_UNCERTAINTIES}, "
                f"got {self.uncertainty!r}"
            )
        if self.output == "series" and self.scalar_from_series not in _AGGREGATIONS:
            raise CardError(
                f"{self.name}: a series model needs scalar_from_series in {_AGGREGATIONS}"
            )
        if self.output == "scalar" and self.scalar_from_series is not None:
            raise CardError(f"{self.name}: a scalar model takes no scalar_from_series")
        if not self.tolerance > 0:
            raise CardError(f"{self.name}: tolerance must be positive, got {self.tolerance!r}")
        if not 0 < self.sampling_rate <= MAX_SAMPLING_RATE:
            raise CardError(
                f"{self.name}: sampling_rate must be in (0, {MAX_SAMPLING_RATE:g}] Hz, "
                f"got {self.sampling_rate!r}"
            )
        if not 0 <= self.highpass_hz < self.sampling_rate / 2:
            raise CardError(f"{self.name}: highpass_hz must be in [0, Nyquist)")
        if ":" not in self.architecture:
            raise CardError(f"{self.name}: architecture must be 'module:Class'")
        if self.amplitude_additive and not self.use_amplitude:
            raise CardError(f"{self.name}: amplitude_additive needs use_amplitude")

    def input_contract(self) -> dict[str, Any]:
        """Everything that decides what the model's inputs mean: weights are only valid with it."""
        names = (
            "in_samples", "sampling_rate", "component_order", "units", "normalisation",
            "highpass_hz", "use_amplitude", "amplitude_additive", "label_offset", "output",
            "uncertainty",
        )  # fmt: skip
        return {n: getattr(self, n) for n in names}

    @property
    def in_channels(self) -> int:
        return len(self.component_order)

    @property
    def window_seconds(self) -> float:
        return self.in_samples / self.sampling_rate

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CardError(f"unknown card fields: {sorted(unknown)}")
        training = data.pop("training", {}) or {}
        try:
            return cls(training=TrainingDefaults(**training), **data)
        except TypeError as exc:  # missing required field or bad training key
            raise CardError(f"bad model card {data.get('name', '?')!r}: {exc}") from exc


def _card_files(folder_name: str = "") -> dict[str, Any]:
    folder = resources.files("seismag.models") / "cards"
    if folder_name:
        folder = folder / folder_name
    return {p.name: p for p in folder.iterdir() if p.name.endswith(".toml")}


def _read_cards(folder_name: str = "") -> dict[str, ModelCard]:
    cards: dict[str, ModelCard] = {}
    for fname, path in sorted(_card_files(folder_name).items()):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise CardError(f"{fname}: {exc}") from exc
        card = ModelCard.from_dict(data)
        cards[card.name] = card
    return cards


def load_cards() -> dict[str, ModelCard]:
    """The six shipped magnitude models' cards, keyed by model name, in a stable order."""
    return _read_cards()


def load_head_cards() -> dict[str, ModelCard]:
    """Magnitude heads on pretrained encoders (``cards/heads/``): trained with ``seismag train
    MODEL --init-encoder``, not shipped with weights, so not among :func:`load_cards`."""
    return _read_cards("heads")


def get_card(name: str) -> ModelCard:
    cards = {**load_cards(), **load_head_cards()}
    try:
        return cards[name]
    except KeyError:
        raise CardError(f"unknown model {name!r}; known models: {', '.join(cards)}") from None
