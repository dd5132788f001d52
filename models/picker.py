"""PhaseNetPicker: the PhaseNet U-Net (Zhu & Beroza 2019) as a picker, (B, 3, N) -> (B, 3, N).

The same encoder/decoder as PhaseNetMag (:class:`~seismag.models.phasenet_mag.UNetLayers`),
without the amplitude channel, with PhaseNet's three outputs per sample: logits of noise, P and
S (softmax them for probabilities; the exported ONNX file outputs the probabilities).
"""

from __future__ import annotations

import torch
from torch import nn

from seismag.models.phasenet_mag import UNetLayers
from seismag.models.picker_card import CLASSES, PickerCard, get_picker_card
from seismag.models.weights import shipped_weights


class PhaseNetPicker(UNetLayers, nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        in_samples: int = 1000,
        filters_root: int = 8,
        depth: int = 5,
        kernel_size: int = 7,
        stride: int = 4,
    ) -> None:
        nn.Module.__init__(self)
        self.in_channels = in_channels
        self.in_samples = in_samples
        self.build_unet(
            in_channels,
            in_samples,
            filters_root,
            depth,
            kernel_size,
            stride,
            n_outputs=len(CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised windows (B, C, N) -> class logits (B, 3, N)."""
        return self.decode(*self.encode(x))


class PickerProbabilities(nn.Module):
    """What the ONNX file holds: the picker with its softmax."""

    def __init__(self, picker: PhaseNetPicker) -> None:
        super().__init__()
        self.picker = picker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.picker(x), dim=1)


def build_picker(card: PickerCard) -> PhaseNetPicker:
    return PhaseNetPicker(len(card.component_order), card.in_samples, **card.kwargs)


def load_picker(name: str = "PhaseNetPicker", weights=None) -> tuple[PhaseNetPicker, PickerCard]:
    """The picker and its card, with the shipped (or the given) safetensors weights, in eval."""
    from safetensors.torch import load_file

    card = get_picker_card(name)
    model = build_picker(card)
    path = shipped_weights(card) if weights is None else weights
    if path is None:
        raise FileNotFoundError(f"no shipped weights for {name}: train them (seismag train-picker)")
    model.load_state_dict(load_file(str(path)))
    return model.eval(), card
