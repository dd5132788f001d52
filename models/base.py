"""The PyTorch side of the model contract, shared by all six magnitude models.

Every model is called as ``model(waveform, log_amp)``:

* ``waveform``: (B, C, N) float32, already normalised per window by
  :func:`seismag.models.preprocess.normalise` (C = len(card.component_order), N = card.in_samples);
* ``log_amp``: (B, 1) float32, log10 of the scale that normalisation divided out.

Per-window normalisation erases absolute amplitude, the main magnitude cue (MagNet, Mousavi &
Beroza 2020, keeps it; TEAM-LM, Münchmeyer et al. 2021, feeds log10 of the scale).
The one mechanism that gives it back: ``log_amp`` is broadcast along time as an extra input channel,
so each architecture's first layer sees C + 1 channels. It exports as a plain second ONNX input.

Outputs are magnitudes: (B, N) for series models, (B,) for scalar models. A card's
``label_offset`` (AMAG trains on magnitude + 1) is a constant outside the learned weights and is
subtracted here, in :meth:`MagnitudeModel.forward`, and nowhere else: export, parity, evaluation,
aggregation and serving see magnitudes only; the training target
(:func:`seismag.training.windows.target`) is the one other reader of the offset.

A card with ``amplitude_additive`` adds ``log_amp`` to the magnitude instead (the body's
amplitude channel then gets zeros): the body learns magnitude minus log10 amplitude from the
waveform's shape, as the local-magnitude formula corrects log A for distance.

A card with ``uncertainty = "gaussian"`` builds the architecture with a second output channel:
:meth:`MagnitudeModel.forward_with_sigma` returns the magnitude and its standard deviation
(magnitude units, same shape); ``forward`` still returns the magnitude alone. The head's sigma is
multiplied by the ``sigma_scale`` buffer, a calibration stored with the weights (1 until
:mod:`seismag.training.calibrate` fits it on held-out data; a training resets it to 1), so every
runtime the weights are exported to serves the calibrated sigma.
"""

from __future__ import annotations

import importlib
import math

import torch
from torch import nn

from seismag.models.card import CardError, ModelCard

SIGMA_RANGE = (0.02, 3.0)
"""Bounds of the head's standard deviation, before the calibration scale: below 0.02 magnitude
units no single station is that good (and the likelihood would diverge); above 3 the estimate
says nothing."""


SIGMA_SCALE = "sigma_scale"
"""Name of the calibration buffer of a model with a sigma output (see the module docstring)."""


class MagnitudeModel(nn.Module):
    """Base class: checks the inputs, appends the amplitude channel, calls :meth:`body`."""

    card: ModelCard | None = None
    n_outputs: int = 1

    def __init__(self, in_channels: int = 3, in_samples: int = 3001) -> None:
        super().__init__()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if not isinstance(in_samples, int) or in_samples < 16:
            raise ValueError(f"in_samples must be an int >= 16, got {in_samples!r}")
        self.in_channels = in_channels
        self.in_samples = in_samples

    @property
    def body_channels(self) -> int:
        """Channels the architecture's first layer sees: the components plus ``log_amp``."""
        return self.in_channels + 1

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Architecture-specific forward on (B, C + 1, N); returns (B, N) or (B,)."""
        raise NotImplementedError

    def _body_output(self, waveform: torch.Tensor, log_amp: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        expected = (self.in_channels, self.in_samples)
        if waveform.dim() != 3 or tuple(waveform.shape[1:]) != expected:
            raise ValueError(
                f"{name} expects waveform of shape (batch, {expected[0]}, {expected[1]}), "
                f"got {tuple(waveform.shape)}"
            )
        if log_amp.dim() != 2 or log_amp.shape[1] != 1 or log_amp.shape[0] != waveform.shape[0]:
            raise ValueError(
                f"{name} expects log_amp of shape ({waveform.shape[0]}, 1), "
                f"got {tuple(log_amp.shape)}"
            )
        if self.additive:  # the amplitude is added at the output, never seen by the body
            log_amp = torch.zeros_like(log_amp)
        amp = log_amp.to(waveform.dtype).unsqueeze(-1).expand(-1, -1, waveform.shape[-1])
        return self.body(torch.cat([waveform, amp], dim=1))

    @property
    def additive(self) -> bool:
        return self.card is not None and self.card.amplitude_additive

    @property
    def label_offset(self) -> float:
        """The card's label shift: the body learns ``magnitude + label_offset``."""
        return float(self.card.label_offset) if self.card is not None else 0.0

    def _magnitude(self, body_out: torch.Tensor, log_amp: torch.Tensor) -> torch.Tensor:
        offset = self.label_offset
        # No Sub node in the exported graph of the models without an offset.
        out = body_out - offset if offset else body_out
        if self.additive:  # (B, N) + (B, 1) for series, (B,) + (B,) for scalars
            out = out + (log_amp if out.dim() == 2 else log_amp[:, 0]).to(out.dtype)
        return out

    def forward(self, waveform: torch.Tensor, log_amp: torch.Tensor) -> torch.Tensor:
        out = self._body_output(waveform, log_amp)
        return self._magnitude(out[:, 0] if self.n_outputs == 2 else out, log_amp)

    def forward_with_sigma(
        self, waveform: torch.Tensor, log_amp: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(magnitude, its standard deviation), both in magnitude units."""
        if self.n_outputs != 2:
            raise ValueError(f"{type(self).__name__} was built without an uncertainty output")
        out = self._body_output(waveform, log_amp)
        lo, hi = SIGMA_RANGE
        # A sigmoid between the bounds in log space: smooth, bounded, no exp overflow.
        log_sigma = math.log(lo) + (math.log(hi) - math.log(lo)) * torch.sigmoid(out[:, 1])
        sigma = torch.exp(log_sigma)
        scale = getattr(self, SIGMA_SCALE, None)  # absent in a model built without its card
        return self._magnitude(out[:, 0], log_amp), sigma if scale is None else sigma * scale


def reset_sigma_calibration(model: nn.Module) -> float | None:
    """Set the sigma calibration back to 1 (training changes the sigma head, so a scale fitted to
    the old head no longer applies); returns the scale it had, None for a model without one."""
    scale = getattr(model, SIGMA_SCALE, None)
    if scale is None:
        return None
    old = float(scale)
    with torch.no_grad():
        scale.fill_(1.0)
    return old


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_from_card(card: ModelCard, **overrides) -> MagnitudeModel:
    module_name, _, class_name = card.architecture.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise CardError(f"{card.name}: cannot import architecture {card.architecture!r}") from exc
    kwargs = {"in_channels": card.in_channels, "in_samples": card.in_samples, **card.kwargs}
    if card.uncertainty == "gaussian":
        kwargs["n_outputs"] = 2
    kwargs.update(overrides)
    model = cls(**kwargs)
    model.card = card
    model.n_outputs = int(kwargs.get("n_outputs", 1))
    if model.n_outputs == 2:
        # A buffer, not a parameter: saved and exported with the weights, never trained.
        model.register_buffer(SIGMA_SCALE, torch.ones(()))
    return model
