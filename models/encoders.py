"""Self-supervised pretraining encoders: waveform (B, C, N) -> one embedding per 4 samples.

Two encoders from the design documents, each trained without labels by
:mod:`seismag.training.pretrain` and then put under a magnitude head
(:class:`seismag.models.encoder_mag.EncoderMag`):

* :class:`ConvDownEncoderContrastive`, wav2vec 2.0 (Baevski et al. 2020) as SeisLM (Liu et al.
  2024) applies it to seismograms: two k=3 stride-2 convolutions to 256 channels with LayerNorm +
  GELU (4x fewer steps), a projection to the context width, span masking (p 0.65, span 10) with a
  learned mask embedding, an mLSTM U-Net context network, and Gumbel product quantisation (2 groups
  x 320 codes) of the *unmasked* features as targets. Loss: InfoNCE of each masked step's context
  against its own quantised target and 100 distractors from other steps of the same window
  (cosine similarity / 0.1), plus 0.1 x the codebook diversity loss; the Gumbel temperature is
  annealed from 2 to 0.5.
* :class:`BidirAutoregEncoder`, masked autoencoding (He et al. 2022): 4x convolutional subsampling
  (ReLU), span masking (p 0.75, span 10) by zeroing, a bidirectional mLSTM stack, and a linear
  decoder. Loss: MSE on masked steps only. The target is the log spectral envelope under each
  step: log10 power of a 64-sample STFT (hop 4, so one frame per step) in three bands (1.6-4.7,
  4.7-12.5 and 12.5-50 Hz at 100 Hz) per component, as Audio-MAE (Huang et al. 2022)
  reconstructs spectrogram patches. Two other targets fail: the design document's (the
  subsampling's own output) can be driven to a constant by the same gradient, a zero loss that
  learns nothing; the raw waveform was tried first and, after 200 steps, the reconstruction
  still explained only 1 % of the masked signal's energy, because the phase of a stochastic
  seismogram cannot be predicted from its context (zeros are near-optimal) while its envelope
  can.

``forward`` is the embedding used after pretraining (no masking, no quantiser): (B, T, D) with
``T = ceil(ceil(N / 2) / 2)``. :meth:`pretrain_loss` is the pretraining objective.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from seismag.models.mlstm import MLSTMStack, MLSTMUNet

DOWNSAMPLING = 4
ENVELOPE_FFT = 64
ENVELOPE_BANDS = ((1, 3), (3, 8), (8, 33))
"""STFT bins [lo, hi) of the reconstruction target's bands (bin width fs / 64)."""


def span_mask(
    batch: int,
    steps: int,
    prob: float,
    span: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """wav2vec 2.0 span masking: ``prob * steps / span`` random starts, each masking ``span``
    steps (overlaps merge, so about 1 - exp(-prob) of the steps end up masked). (B, T) bool."""
    n_spans = max(int(prob * steps / span + 0.5), 1)
    starts = torch.randint(0, max(steps - span, 1), (batch, n_spans), generator=generator)
    idx = (starts.unsqueeze(-1) + torch.arange(span)).reshape(batch, -1).clamp(max=steps - 1)
    mask = torch.zeros(batch, steps, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask.to(device)


class GumbelQuantizer(nn.Module):
    """Product quantisation with Gumbel-softmax (wav2vec 2.0 section 2): ``groups`` codebooks of
    ``codes`` entries; the straight-through hard sample in training, the argmax otherwise."""

    def __init__(self, dim: int, groups: int = 2, codes: int = 320, code_dim: int = 256):
        super().__init__()
        if code_dim % groups:
            raise ValueError("code_dim must be divisible by groups")
        self.groups, self.codes = groups, codes
        self.logits = nn.Linear(dim, groups * codes)
        self.codebook = nn.Parameter(torch.empty(groups * codes, code_dim // groups).uniform_())
        # Logits of order one on LayerNorm-ed features: with wav2vec 2.0's unit-variance weights
        # (std 16 here) every step picked the same code from the first steps on (perplexity 2 of
        # 640) and the diversity loss, through saturated softmaxes, had no gradient to undo it.
        nn.init.normal_(self.logits.weight, 0.0, dim**-0.5)
        nn.init.zeros_(self.logits.bias)

    def forward(self, x: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(quantised (B, T, code_dim), perplexity summed over groups)."""
        b, t, _ = x.shape
        logits = self.logits(x).reshape(b * t, self.groups, self.codes)
        soft = logits.float().softmax(-1).mean(0)  # (G, V): codebook use in this batch
        perplexity = torch.exp(-(soft * torch.log(soft + 1e-7)).sum(-1)).sum()
        if self.training:
            onehot = F.gumbel_softmax(logits.float(), tau=tau, hard=True).type_as(x)
        else:
            onehot = F.one_hot(logits.argmax(-1), self.codes).type_as(x)
        books = self.codebook.reshape(self.groups, self.codes, -1)
        q = torch.einsum("ngv,gvd->ngd", onehot, books).reshape(b, t, -1)
        return q, perplexity


def contrastive_logits(
    context: torch.Tensor,
    targets: torch.Tensor,
    negatives: int,
    temperature: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, T, 1 + K) cosine-similarity logits: the own target first, then K distractors drawn from
    the other steps of the same window (a distractor never equals its own step)."""
    b, t, _ = context.shape
    sim = F.normalize(context, dim=-1) @ F.normalize(targets, dim=-1).transpose(1, 2)  # (B, T, T)
    draw = torch.randint(0, t - 1, (b, t, negatives), generator=generator).to(context.device)
    own = torch.arange(t, device=context.device).view(1, t, 1)
    draw = draw + (draw >= own).long()  # skip the step itself
    positive = sim.diagonal(dim1=1, dim2=2).unsqueeze(-1)
    return torch.cat([positive, sim.gather(-1, draw)], dim=-1) / temperature


class ConvDownEncoderContrastive(nn.Module):
    """wav2vec 2.0-style encoder; see the module doc."""

    def __init__(
        self,
        in_channels: int = 3,
        feature_dim: int = 256,
        dim: int = 128,
        levels: int = 3,
        heads: int = 4,
        groups: int = 2,
        codes: int = 320,
        final_dim: int = 128,
        mask_prob: float = 0.65,
        mask_length: int = 10,
        negatives: int = 100,
        temperature: float = 0.1,
        diversity_weight: float = 0.1,
    ):
        super().__init__()
        self.mask_prob, self.mask_length = mask_prob, mask_length
        self.negatives, self.temperature = negatives, temperature
        self.diversity_weight = diversity_weight
        self.codes_total = groups * codes
        # No bias before the first norm (as wav2vec 2.0): a bias would dominate quiet stretches
        # and the LayerNorm would then map every quiet step to the same feature vector.
        self.conv1 = nn.Conv1d(in_channels, feature_dim, 3, stride=2, padding=1, bias=False)
        self.norm1 = nn.LayerNorm(feature_dim)
        self.conv2 = nn.Conv1d(feature_dim, feature_dim, 3, stride=2, padding=1)
        self.norm2 = nn.LayerNorm(feature_dim)
        self.feature_norm = nn.LayerNorm(feature_dim)
        self.project = nn.Linear(feature_dim, dim)
        self.mask_emb = nn.Parameter(torch.empty(dim).uniform_())
        self.context = MLSTMUNet(dim, levels=levels, heads=heads)
        self.quantizer = GumbelQuantizer(feature_dim, groups, codes, feature_dim)
        self.project_q = nn.Linear(feature_dim, final_dim)
        self.final = nn.Linear(dim, final_dim)
        self.embed_dim = dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, N) -> normalised conv features (B, T, feature_dim)."""
        y = F.gelu(self.norm1(self.conv1(x).transpose(1, 2)))
        y = F.gelu(self.norm2(self.conv2(y.transpose(1, 2)).transpose(1, 2)))
        return self.feature_norm(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.context(self.project(self.features(x)))

    def pretrain_loss(
        self, x: torch.Tensor, tau: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        feats = self.features(x)
        b, t, _ = feats.shape
        mask = span_mask(b, t, self.mask_prob, self.mask_length, generator, x.device)
        hidden = self.project(feats)
        hidden = torch.where(mask.unsqueeze(-1), self.mask_emb.to(hidden.dtype), hidden)
        context = self.final(self.context(hidden))
        quantised, perplexity = self.quantizer(feats, tau)
        targets = self.project_q(quantised)
        logits = contrastive_logits(context, targets, self.negatives, self.temperature, generator)
        picked = logits[mask]  # (M, 1 + K), masked steps only
        zeros = torch.zeros(picked.shape[0], dtype=torch.long, device=x.device)
        contrastive = F.cross_entropy(picked.float(), zeros)
        diversity = (self.codes_total - perplexity) / self.codes_total
        loss = contrastive + self.diversity_weight * diversity
        accuracy = (picked.argmax(-1) == 0).float().mean()
        return loss, {
            "contrastive": float(contrastive.detach()),
            "diversity": float(diversity.detach()),
            "perplexity": float(perplexity.detach()),
            "accuracy": float(accuracy),
            "masked": float(mask.float().mean()),
        }


def log_envelope(x: torch.Tensor) -> torch.Tensor:
    """(B, C, N) -> (B, ceil(N / 4) + ..., C * bands): log10 band power of a hop-4 STFT, one frame
    per embedding step (frame t is centred on sample 4t, as step t is)."""
    b, c, n = x.shape
    spec = torch.stft(
        x.reshape(b * c, n).float(),
        n_fft=ENVELOPE_FFT,
        hop_length=DOWNSAMPLING,
        window=torch.hann_window(ENVELOPE_FFT, device=x.device),
        center=True,
        return_complex=True,
    )
    power = spec.real**2 + spec.imag**2  # (B * C, bins, frames)
    bands = torch.stack([power[:, lo:hi].mean(1) for lo, hi in ENVELOPE_BANDS], dim=1)
    out = torch.log10(bands + 1e-10).reshape(b, c * len(ENVELOPE_BANDS), -1)
    # Relative to each band's mean over the window: the shape of the envelope (onsets, coda
    # decay, spectral content), not the window's level, which the context alone cannot know.
    out = out - out.mean(-1, keepdim=True)
    return out.transpose(1, 2)


class BidirAutoregEncoder(nn.Module):
    """Masked-reconstruction encoder; see the module doc."""

    def __init__(
        self,
        in_channels: int = 3,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mask_prob: float = 0.75,
        mask_length: int = 10,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.mask_prob, self.mask_length = mask_prob, mask_length
        self.conv1 = nn.Conv1d(in_channels, dim, 3, stride=2, padding=1, bias=False)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.project = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.context = MLSTMStack(dim, depth=depth, heads=heads)
        self.decoder = nn.Linear(dim, in_channels * len(ENVELOPE_BANDS))
        self.embed_dim = dim

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x))
        y = F.relu(self.conv2(y))
        return self.dropout(self.project(y.transpose(1, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.context(self.tokens(x))

    def pretrain_loss(
        self, x: torch.Tensor, tau: float = 0.0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        del tau  # no quantiser
        tokens = self.tokens(x)
        b, t, _ = tokens.shape
        mask = span_mask(b, t, self.mask_prob, self.mask_length, generator, x.device)
        hidden = tokens.masked_fill(mask.unsqueeze(-1), 0.0)
        recon = self.decoder(self.context(hidden))  # (B, T, C * bands)
        target = log_envelope(x)[:, :t]
        err = ((recon - target) ** 2).mean(-1)
        loss = (err * mask).sum() / mask.sum().clamp(min=1)
        # Share of the masked targets' variance left unexplained: 1 = no better than their mean.
        sel = target[mask]
        spread = ((sel - sel.mean(0)) ** 2).mean()
        return loss, {
            "mse": float(loss.detach()),
            "unexplained": float(loss.detach() / spread.clamp(min=1e-12)),
            "masked": float(mask.float().mean()),
        }


def build_encoder(card) -> nn.Module:
    """The PyTorch encoder an :class:`~seismag.models.encoder_card.EncoderCard` describes."""
    import importlib

    from seismag.models.card import CardError

    module_name, _, class_name = card.architecture.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise CardError(f"{card.name}: cannot import {card.architecture!r}") from exc
    model = cls(in_channels=card.in_channels, **card.kwargs)
    if model.embed_dim != card.embed_dim:
        raise CardError(
            f"{card.name}: embed_dim {card.embed_dim} but the network gives {model.embed_dim}"
        )
    model.card = card
    return model


def save_encoder(model: nn.Module, path, extra: dict[str, str] | None = None):
    """Encoder weights as safetensors with the card in the metadata (no pickle)."""
    from pathlib import Path

    from safetensors.torch import save_file

    from seismag.models.encoder_card import ENCODER_CARD_KEY

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(
        tensors, str(path), metadata={ENCODER_CARD_KEY: model.card.to_json(), **(extra or {})}
    )
    return path


def read_encoder_card(path):
    """The encoder card stored in a safetensors file (no tensor loaded)."""
    from safetensors import safe_open

    from seismag.models.encoder_card import ENCODER_CARD_KEY, EncoderCard
    from seismag.models.weights import WeightsError

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise WeightsError(f"encoder weights not found: {path}") from None
    except Exception as exc:  # safetensors raises its own types for corrupt headers
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    if ENCODER_CARD_KEY not in meta:
        raise WeightsError(f"{path}: not a seismag encoder checkpoint (no encoder card)")
    return EncoderCard.from_json(meta[ENCODER_CARD_KEY])


def load_encoder(path) -> nn.Module:
    """The encoder a safetensors file holds, built from its stored card, weights loaded."""
    from safetensors.torch import load_file

    from seismag.models.weights import WeightsError

    card = read_encoder_card(path)
    model = build_encoder(card)
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: does not fit {card.name}: {exc}") from exc
    return model
