"""How one training or evaluation example is cut from a trace: a window that *ends* at a time.

A live feed sees data up to "now", so every window here is the ``card.in_samples`` samples that end
at a chosen sample, left-padded by :func:`seismag.models.preprocess.last_window` when "now" is
closer to the trace start than a window length. Training and evaluation draw windows the same way,
only the choice of the end differs:

* training (:func:`training_ends`): with probability 0.5 the window ends 1-20 s after P (the early
  part of the evaluator's "seconds after P" curve); otherwise anywhere that puts P at 5-95 % of the
  window. Without the early half a model only ever sees P near the window start and is then scored
  on windows where P sits near the end.
* evaluation (:func:`evaluation_end`): the full-information window ends 25 s after P (or at the
  trace end), and one window ends k seconds after P for each k on the curve.

Index conventions (one place): the P onset sample is ``round(p_sample)``; ``end`` is exclusive, so
a window ending k s after P holds samples ``onset .. onset + k*fs - 1`` after P and nothing later
(the causality test pins this). The onset inside the window is ``onset - (end - in_samples)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seismag.models.card import ModelCard
from seismag.models.preprocess import last_window, model_inputs

EARLY_PROBABILITY = 0.5
EARLY_SECONDS = (1.0, 20.0)
P_FRACTION = (0.05, 0.95)
FULL_AFTER_P_SECONDS = 25.0
DEFAULT_SECONDS_AFTER_P = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0)


def onset_sample(p_sample: float | np.ndarray) -> np.ndarray:
    """The integer P onset sample of a trace (metadata picks may be fractional)."""
    return np.rint(np.asarray(p_sample, dtype=np.float64)).astype(np.int64)


def cut_window(trace: np.ndarray, end: int, n_samples: int) -> np.ndarray:
    """The ``n_samples`` of (C, N) ``trace`` that end just before sample ``end`` (exclusive).

    Only ``trace[:, :end]`` is looked at, exactly what a live feed would hold at that time.
    """
    if end < 1:
        raise ValueError(f"a window must end after the trace start, got end={end}")
    return last_window(np.asarray(trace)[..., :end], n_samples)


def onset_in_window(onset: int | np.ndarray, end: int | np.ndarray, n_samples: int):
    """Where the trace's onset sample lands in the window that ends at ``end``."""
    return np.asarray(onset) - (np.asarray(end) - n_samples)


def training_ends(
    p_samples: np.ndarray,
    trace_lengths: np.ndarray,
    card: ModelCard,
    *,
    seed: int,
    epoch: int,
) -> np.ndarray:
    """One window end per trace, drawn from the training distribution; same (seed, epoch), same
    ends, whatever order the batches are visited in."""
    rng = np.random.default_rng([int(seed), int(epoch), 0x5E15])
    onset = onset_sample(p_samples)
    lengths = np.asarray(trace_lengths, dtype=np.int64)
    n = card.in_samples
    fs = card.sampling_rate
    early = rng.random(onset.shape) < EARLY_PROBABILITY
    early_end = onset + np.rint(rng.uniform(*EARLY_SECONDS, size=onset.shape) * fs)
    p_pos = np.rint(rng.uniform(*P_FRACTION, size=onset.shape) * n)
    anywhere_end = onset - p_pos + n
    end = np.where(early, early_end, anywhere_end).astype(np.int64)
    # At least one sample after P, P inside the window, never past the trace end.
    high = np.minimum(lengths, onset + n)
    return np.clip(end, onset + 1, high)


def evaluation_end(
    p_sample: float, trace_length: int, card: ModelCard, seconds_after_p: float | None
) -> int | None:
    """The end of an evaluation window, or None when the trace cannot provide it.

    ``seconds_after_p=None`` is the full-information window: ``FULL_AFTER_P_SECONDS`` after P or
    the trace end, whichever is first (and never so late that P leaves the window).
    """
    onset = int(onset_sample(p_sample))
    if onset < 0 or onset >= trace_length:
        return None
    n = card.in_samples
    if seconds_after_p is None:
        full = onset + round(FULL_AFTER_P_SECONDS * card.sampling_rate)
        return int(min(full, trace_length, onset + n))
    end = onset + round(seconds_after_p * card.sampling_rate)
    if end > trace_length or end - onset > n or end <= onset:
        return None
    return int(end)


def target(n_samples: int, onset: int, magnitude: float, card: ModelCard) -> np.ndarray:
    """The training target in the model's output units: a series for series cards, a scalar
    otherwise.

    The one place in training that reads the card's ``label_offset``. A series label is zero
    before P and ``magnitude + label_offset`` from it (AMAG's +1 keeps "nothing seen yet" apart
    from small magnitudes); the model's forward subtracts the offset, so the target in its output
    units is that label minus the offset: ``-label_offset`` before P, the magnitude from P. The
    loss (MSE, beta-NLL) only sees differences, so this is the same loss as on the label itself.

    The scalar target is the catalogue magnitude itself, never the mean of the series label
    (which would be magnitude x the fraction of the window after P, the original design's mistake).
    """
    if card.output == "series":
        from seismag.training.labels import magnitude_label

        offset = card.label_offset
        label = np.asarray(
            magnitude_label(n_samples, onset, magnitude, label_offset=offset) - offset,
            dtype=np.float32,
        )
        if card.amplitude_additive:
            # Before P the output is log_amp plus what the body infers from noise alone: no
            # constant is right there, and those samples are never read (the scalar is taken
            # after the onset). NaN marks them out of the loss.
            label[: max(int(onset), 0)] = np.nan
        return label
    return np.float32(magnitude)


@dataclass(frozen=True)
class Batch:
    """A batch of model-ready examples; ``onset`` is the P sample inside each window."""

    waveform: np.ndarray  # (B, C, N) float32, normalised
    log_amp: np.ndarray  # (B, 1) float32
    target: np.ndarray  # (B, N) or (B,) float32, the model's output units (see target)
    onset: np.ndarray  # (B,) int64
    magnitude: np.ndarray  # (B,) float64, catalogue magnitude
    raw: np.ndarray  # (B, C, N) the windows before normalisation (velocity)


def make_batch(
    traces: list[np.ndarray],
    p_samples: np.ndarray,
    magnitudes: np.ndarray,
    ends: np.ndarray,
    card: ModelCard,
) -> Batch:
    """Cut, label and normalise a batch through the one preprocessing path (model_inputs)."""
    n = card.in_samples
    onsets = onset_in_window(onset_sample(p_samples), ends, n).astype(np.int64)
    if np.any(onsets < 0) or np.any(onsets >= n):
        raise ValueError("every window must contain its P onset")
    raw = np.stack([cut_window(t, int(e), n) for t, e in zip(traces, ends, strict=True)])
    waveform, log_amp = model_inputs(raw, card)
    targets = np.stack(
        [target(n, int(o), float(m), card) for o, m in zip(onsets, magnitudes, strict=True)]
    )
    return Batch(
        waveform=waveform,
        log_amp=log_amp,
        target=targets.astype(np.float32),
        onset=onsets,
        magnitude=np.asarray(magnitudes, dtype=np.float64),
        raw=raw,
    )
