"""P onset when the client sends none: a recursive STA/LTA trigger, fed sample by sample.

The recursion is ObsPy's :func:`obspy.signal.trigger.recursive_sta_lta` (Withers 1998), with the
same zeroed first LTA window, and triggers switch on at ``>= TRIGGER_ON`` and off below
``TRIGGER_OFF`` as in :func:`obspy.signal.trigger.trigger_onset`. It is re-implemented with carried
filter state because ObsPy's functions restart from zero on every call: a live feed arrives in
packets, and the pick must not depend on how the data were cut. Feeding a record in one piece or in
any number of chunks gives the same triggers, which is what lets ``StreamSession`` reproduce
``predict`` exactly. Every step is causal: a trigger at sample i depends on samples <= i only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.signal import butter, lfilter, sosfilt, sosfilt_zi

STA_SECONDS = 0.5
"""Short window: a local P onset rises within a few tenths of a second."""
LTA_SECONDS = 10.0
"""Long window: the noise level over several microseism periods. No trigger can occur during the
first LTA_SECONDS of a record (the LTA is not yet meaningful), as in ObsPy."""
TRIGGER_ON = 3.5
"""STA/LTA ratio that declares an onset: high enough that ordinary noise bursts stay below."""
TRIGGER_OFF = 1.0
"""Ratio below which the trigger ends; a new onset can only start after that."""
KEEP_ONSETS = 64
HIGHPASS_HZ = 1.0
"""Causal 2nd-order Butterworth high-pass before STA/LTA: removes the DC offset of raw counts and
microseism energy, either of which would swamp the short-window average."""


@lru_cache(maxsize=32)
def _highpass(rate: float) -> tuple[np.ndarray, np.ndarray]:
    """The high-pass SOS and its unit-step initial state for one sampling rate.

    Designing the filter took longer than filtering a 30 s record (0.3 ms per request); it only
    depends on the rate, so it is designed once. Shared: callers must not modify the arrays.
    """
    corner = min(HIGHPASS_HZ, 0.25 * rate)
    sos = butter(2, corner, btype="highpass", fs=rate, output="sos")
    return sos, sosfilt_zi(sos)  # not made read-only: scipy's sosfilt refuses read-only input


class OnsetPicker:
    """Incremental recursive STA/LTA on one component; absolute sample indices from 0.

    ``refractory`` (samples): a trigger closer than this to the previously accepted onset is the
    same event's coda or S wave, not a new event; ``None`` accepts only the first trigger.
    """

    def __init__(self, sampling_rate: float, *, refractory: int | None = None) -> None:
        self.rate = float(sampling_rate)
        self.nsta = max(round(STA_SECONDS * self.rate), 1)
        self.nlta = max(round(LTA_SECONDS * self.rate), self.nsta + 1)
        self.refractory = refractory
        self._sos, self._zi_unit = _highpass(self.rate)
        self._hp_state: np.ndarray | None = None
        self._csta = 1.0 / self.nsta
        self._clta = 1.0 / self.nlta
        self._sta_state = np.zeros(1)
        self._lta_state = np.array([(1.0 - self._clta) * np.finfo(0.0).tiny])
        self._triggered = False
        self.n = 0
        """Samples fed so far."""
        self.accepted: list[int] = []
        """Accepted onsets, oldest first; only the last ``KEEP_ONSETS`` are kept (events are at
        least ``refractory`` apart, so these span far more than any window looks back)."""

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Process the next samples; returns their STA/LTA ratio (for tests and plots)."""
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return np.zeros(0)
        if self._hp_state is None:
            # Start the filter in its steady state for the first value: no step transient.
            self._hp_state = self._zi_unit * x[0]
        y, self._hp_state = sosfilt(self._sos, x, zi=self._hp_state)
        sq = y * y
        if self.n == 0:
            sq[0] = 0.0  # ObsPy's recursion starts at sample 1
        sta, self._sta_state = lfilter(
            [self._csta], [1.0, self._csta - 1.0], sq, zi=self._sta_state
        )
        lta, self._lta_state = lfilter(
            [self._clta], [1.0, self._clta - 1.0], sq, zi=self._lta_state
        )
        cft = sta / lta
        start = self.n
        warm = self.nlta - start
        if warm > 0:
            cft[:warm] = 0.0
        self._trigger(cft, start)
        self.n += x.size
        return cft

    def _trigger(self, cft: np.ndarray, start: int) -> None:
        i = 0
        while i < cft.size:
            if self._triggered:
                below = np.flatnonzero(cft[i:] < TRIGGER_OFF)
                if below.size == 0:
                    return
                i += int(below[0])
                self._triggered = False
            else:
                above = np.flatnonzero(cft[i:] >= TRIGGER_ON)
                if above.size == 0:
                    return
                i += int(above[0])
                self._triggered = True
                self._accept(start + i)
            i += 1

    def _accept(self, index: int) -> None:
        last = self.accepted[-1] if self.accepted else None
        if last is not None and (self.refractory is None or index - last < self.refractory):
            return
        self.accepted = [*self.accepted[-(KEEP_ONSETS - 1) :], index]

    def onset_at(self, index: int) -> int | None:
        """The latest accepted onset at or before sample ``index`` (causal), or None."""
        for onset in reversed(self.accepted):
            if onset <= index:
                return onset
        return None


def first_onset(data: np.ndarray, sampling_rate: float) -> int | None:
    """The first STA/LTA trigger sample of a whole record (1-D, one component), or None."""
    picker = OnsetPicker(sampling_rate)
    picker.feed(data)
    return picker.accepted[0] if picker.accepted else None
