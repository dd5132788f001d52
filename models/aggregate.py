"""From a per-sample magnitude series to one magnitude per waveform.

A series model is trained on a label that is zero before the P onset and the magnitude after it.
Averaging over the whole window (the original design's mistake) mixes in the pre-P zeros and
returns roughly magnitude x (fraction of the window after P). The scalar is therefore
aggregated after the onset only, the way the card says.
"""

from __future__ import annotations

import numpy as np

from seismag.models.card import ModelCard


def series_to_scalar(
    series: np.ndarray, onset: int | np.ndarray, method: str = "mean_after_onset"
) -> np.ndarray:
    """Aggregate a (B, N) or (N,) magnitude series over the samples from ``onset`` on.

    ``onset`` is one sample index or one per waveform; ``method`` is a card's
    ``scalar_from_series``. An onset at or past the end of the window is an error: there is
    nothing after P to aggregate.
    """
    if method not in ("mean_after_onset", "median_after_onset"):
        raise ValueError(f"unknown aggregation {method!r}")
    if np.ndim(series) == 1 and np.ndim(onset) == 0:
        # One window (a stream update): slicing is ~10x cheaper than masking the whole row.
        n, start = len(series), int(onset)
        if not 0 <= start < n:
            raise ValueError(f"onset must lie inside the window [0, {n}), got [{start}]")
        tail = np.asarray(series[start:], dtype=np.float64)
        return np.float64(np.nanmedian(tail) if method == "median_after_onset" else tail.mean())
    s = np.atleast_2d(np.asarray(series, dtype=np.float64))
    n = s.shape[-1]
    onsets = np.broadcast_to(np.asarray(onset, dtype=np.int64), (s.shape[0],))
    if np.any(onsets < 0) or np.any(onsets >= n):
        raise ValueError(f"onset must lie inside the window [0, {n}), got {onsets.tolist()}")
    after = np.arange(n)[None, :] >= onsets[:, None]
    masked = np.where(after, s, np.nan)
    if method == "median_after_onset":
        out = np.nanmedian(masked, axis=-1)
    else:
        out = np.nanmean(masked, axis=-1)
    return out if np.ndim(series) > 1 else out[0]


def to_magnitude(output: np.ndarray, card: ModelCard, onset: int | np.ndarray | None = None):
    """Model output (magnitudes) -> one magnitude per waveform, for either output kind.

    Outputs are already magnitudes: the model removes the card's ``label_offset`` itself.
    """
    magnitudes = np.asarray(output, dtype=np.float64)
    if card.output == "scalar":
        return magnitudes
    if onset is None:
        raise ValueError(f"{card.name} outputs a series: the P onset is needed to aggregate it")
    return series_to_scalar(magnitudes, onset, card.scalar_from_series)
