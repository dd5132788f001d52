"""What one prediction returns per station, independent of the wire format."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from obspy import UTCDateTime


@dataclass
class StationResult:
    network: str
    station: str
    location: str
    magnitude: float
    """The last value of the evolving series: the estimate with all data up to the end."""
    derivation: str
    """How the scalar was obtained, e.g. 'mean of the per-sample output after the P onset'."""
    series_start: UTCDateTime
    """Time of the first series value; value k is at series_start + k * series_interval."""
    series_interval: float
    series: np.ndarray
    """Causal evolving magnitude: value at time t uses data up to t only; NaN where no value
    exists (a series model between two events of one record)."""
    onset: UTCDateTime | None
    onset_source: str
    """'request' (client's P pick), 'sta_lta_aic' (picked on the data by
    :class:`~seismag.serving.pipeline.onset.PPicker`), or 'none' (scalar model)."""
    model: str
    model_version: str
    missing_components: tuple[str, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)
    """'preprocess', 'queue', 'compute', 'total'."""
    onset_confidence: float = 0.0
    """In [0, 1]: :attr:`~seismag.serving.pipeline.onset.Onset.confidence` for a picked
    onset, 1 for the client's pick, 0 without an onset."""
    magnitude_sigma: float = math.nan
    """One standard deviation of :attr:`magnitude` as the model predicts it (magnitude units):
    the last value of :attr:`sigma_series`; NaN when the model has no sigma output."""
    sigma_series: np.ndarray | None = None
    """The standard deviation of each :attr:`series` value (same times); None when the model has
    no sigma output (files exported before uncertainty)."""
    warnings: tuple[str, ...] = ()
    """What to read the magnitude with: components left out (dead, flat, unknown), clipped or
    upsampled ones."""
    series_end: UTCDateTime | None = None
    """Time of the last series value (the data end; it may follow the previous value by less
    than ``series_interval``)."""

    @property
    def has_sigma(self) -> bool:
        return self.sigma_series is not None

    def series_offsets(self) -> np.ndarray:
        """Seconds after ``series_start`` of each series value (the last one at the data end)."""
        t = np.arange(len(self.series), dtype=np.float64) * self.series_interval
        if self.series_end is not None and len(t):
            t[-1] = float(UTCDateTime(self.series_end) - UTCDateTime(self.series_start))
        return t


@dataclass
class StationUpdate:
    """One StreamPredict update: a new point of a station's evolving series."""

    network: str
    station: str
    location: str
    time: UTCDateTime
    """End time of the window the model saw (data time)."""
    magnitude: float
    onset: UTCDateTime | None
    model: str
    lag_s: float
    """Wall-clock now minus the data time, at the moment the update was produced."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    onset_source: str = "none"
    """As in :attr:`StationResult.onset_source`."""
    onset_confidence: float = 0.0
    """As in :attr:`StationResult.onset_confidence`."""
    magnitude_sigma: float = math.nan
    """As in :attr:`StationResult.magnitude_sigma`, for this update's magnitude."""
    warnings: tuple[str, ...] = ()
    """As in :attr:`StationResult.warnings`, for this update's window."""

    @property
    def has_sigma(self) -> bool:
        return not math.isnan(self.magnitude_sigma)
