"""EncoderMag: a magnitude head on a pretraining encoder (``seismag train MODEL --init-encoder``).

The body drops the (zero) amplitude channel that :class:`~seismag.models.base.MagnitudeModel`
appends for amplitude-additive cards, embeds the normalised window with the encoder named by the
card (:mod:`seismag.models.encoders`), and maps every embedding step to a magnitude and its
sigma, held for the step's 4 samples: a per-sample series like PhaseNetMag's, so training,
evaluation, export and serving treat it like the six magnitude models. ``head = "mlp"`` (one
hidden GELU layer) is the fine-tuning head; ``head = "linear"`` is the linear probe.
"""

from __future__ import annotations

import torch
from torch import nn

from seismag.models.base import MagnitudeModel
from seismag.models.card import CardError
from seismag.models.encoder_card import get_encoder_card
from seismag.models.encoders import build_encoder

HEADS = ("mlp", "linear")


class EncoderMag(MagnitudeModel):
    def __init__(
        self,
        in_channels: int = 3,
        in_samples: int = 3001,
        encoder: str = "BidirAutoregEncoder",
        head: str = "mlp",
        n_outputs: int = 1,
    ) -> None:
        super().__init__(in_channels, in_samples)
        enc_card = get_encoder_card(encoder)
        if (enc_card.in_channels, enc_card.in_samples) != (in_channels, in_samples):
            raise CardError(
                f"encoder {encoder} takes ({enc_card.in_channels}, {enc_card.in_samples}) windows,"
                f" the head's card ({in_channels}, {in_samples})"
            )
        if head not in HEADS:
            raise CardError(f"head must be one of {HEADS}, got {head!r}")
        self.encoder = build_encoder(enc_card)
        self.downsampling = enc_card.downsampling
        d = enc_card.embed_dim
        if head == "mlp":
            self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, n_outputs))
        else:
            self.head = nn.Linear(d, n_outputs)
        self.n_outputs = n_outputs

    def body(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.encoder(x[:, : self.in_channels])  # the amplitude channel is zeros here
        out = self.head(emb).transpose(1, 2)  # (B, n_outputs, T)
        out = out.repeat_interleave(self.downsampling, dim=-1)[..., : self.in_samples]
        return out if self.n_outputs == 2 else out[:, 0]
