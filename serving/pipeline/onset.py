"""P onsets when the client sends none, fed in packets.

:class:`PPicker` is what the server uses (``onset_source`` "sta_lta_aic"): a short STA/LTA trigger
on Z, an AIC onset and an S test, working with 2 s of noise before P (docs/serving.md, "P onsets").
:class:`OnsetPicker` is the previous picker, a 10 s recursive STA/LTA on one component, kept as
the baseline that ``benchmarks/pick_accuracy.py`` compares with; the next paragraph is about it.

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
from typing import NamedTuple

import numpy as np
from obspy.signal.trigger import aic_simple
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


# -- the P picker used by the server --------------------------------------------------------------

PICKER_NAME = "sta_lta_aic"
"""``onset_source`` of an onset found by :class:`PPicker`."""
P_BAND_HZ = (3.0, 20.0)
"""Causal 2nd-order Butterworth band-pass: local P is rich above 3 Hz, while microseisms and the
low-frequency part of S codas are not; it beat 1-20 Hz and 2-20 Hz on the tuning traces."""
P_STA_SECONDS = 0.2
P_LTA_SECONDS = 2.0
"""A 2 s noise average: enough noise before P on short records, unlike the 10 s of OnsetPicker."""
P_WARMUP_SECONDS = 1.0
"""No trigger before this: the LTA is a plain running mean over the samples seen until it spans
P_LTA_SECONDS, and one second of it is a usable noise level."""
P_TRIGGER_ON = 4.0
P_TRIGGER_OFF = 1.5
AIC_BEFORE_SECONDS = 1.0
AIC_AFTER_SECONDS = 0.5
"""The onset is the minimum of Maeda's AIC (ObsPy's ``aic_simple``) on the band-passed trace from
1 s before to 0.5 s after the trigger: STA/LTA triggers late on emergent onsets, AIC does not."""
HV_SECONDS = 0.5
"""Energy windows just before and after the onset for the S test."""
MAX_HV = 2.0
"""Reject an onset whose added horizontal energy (N + E) is more than this times the added
vertical energy: P arrives steeply and is strongest on Z, S on the horizontals. A P is kept when
its incidence is under ~55 degrees (tan^2 < 2); S with at most ~0.7 of SV on Z is rejected."""


class Onset(NamedTuple):
    sample: int
    """Absolute sample index (0 = the first sample fed)."""
    confidence: float
    """In [0, 1]. :class:`PPicker`: (peak STA/LTA in the 0.5 s after the trigger - P_TRIGGER_ON)
    / (P_LTA/P_STA - P_TRIGGER_ON), 0 at the trigger threshold, 1 at the largest ratio a
    recursive STA/LTA reaches. :class:`NetworkPicker`: the peak P probability."""
    source: str = PICKER_NAME
    """Which picker found it (the ``onset_source`` reported)."""


@lru_cache(maxsize=32)
def _bandpass(rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Band-pass SOS and unit-step initial state for one rate (shared: do not modify)."""
    high = min(P_BAND_HZ[1], 0.4 * rate)
    low = min(P_BAND_HZ[0], 0.5 * high)
    sos = butter(2, (low, high), btype="bandpass", fs=rate, output="sos")
    return sos, sosfilt_zi(sos)


class PPicker:
    """Incremental 3-component P picker: STA/LTA trigger on Z, AIC onset, S rejection by H/V.

    ``vertical`` and ``horizontal`` are the rows of the (C, k) chunks given to :meth:`feed` that
    hold Z and the horizontals (only the components present: zero-filled ones must not count).
    Without Z the trigger runs on the horizontals and the S test is skipped; without horizontals
    the S test is skipped. Every value depends only on samples up to the decision time and all
    state is carried, so any chunking gives the same onsets; memory is bounded (a few seconds of
    history and the last ``KEEP_ONSETS`` onsets).
    ``refractory`` (samples): triggers closer than this to the last accepted onset are that
    event's S or coda and are ignored; ``None`` accepts only the first onset.
    """

    source = PICKER_NAME

    def __init__(
        self,
        sampling_rate: float,
        *,
        vertical: int | None = 0,
        horizontal: tuple[int, ...] = (1, 2),
        refractory: int | None = None,
    ) -> None:
        if vertical is None and not horizontal:
            raise ValueError("the picker needs at least one component")
        self.rate = float(sampling_rate)
        self.vertical = vertical
        self.horizontal = tuple(horizontal)
        self.rows = ([] if vertical is None else [vertical]) + list(self.horizontal)
        self.refractory = refractory
        self.nsta = max(round(P_STA_SECONDS * self.rate), 1)
        self.nlta = max(round(P_LTA_SECONDS * self.rate), self.nsta + 1)
        self.nwarm = round(P_WARMUP_SECONDS * self.rate)
        self.before = round(AIC_BEFORE_SECONDS * self.rate)
        self.after = max(round(AIC_AFTER_SECONDS * self.rate), 1)
        self.nhv = max(round(HV_SECONDS * self.rate), 1)
        self.max_delay = self.before + self.after + self.nhv
        """Samples from an onset to the sample that decides it, at most: a trigger at t is decided
        once sample t + after + nhv - 1 is in, and its onset lies at most ``before`` ahead of t."""
        self._keep = self.before + self.after + 2 * self.nhv
        self._sos, self._zi_unit = _bandpass(self.rate)
        self._filt: np.ndarray | None = None
        self._csta, self._clta = 1.0 / self.nsta, 1.0 / self.nlta
        self._sta = np.zeros(1)
        self._lta = np.zeros(1)  # a running sum while warming up, then the recursion's state
        # History of the last _keep samples: the AIC trace, Z energy, horizontal energy, ratio.
        self._hist = np.zeros((4, 0))
        self._mode = "idle"  # "idle": looking for a trigger; "on": waiting for the ratio to fall
        self._pending: int | None = None  # trigger sample awaiting its decision
        self.n = 0
        self.accepted: list[Onset] = []

    def feed(self, chunk: np.ndarray) -> np.ndarray:
        """Process the next (C, k) samples; returns their STA/LTA ratio (for tests and plots)."""
        x = np.asarray(chunk, dtype=np.float64)[self.rows]
        k = x.shape[-1]
        if k == 0:
            return np.zeros(0)
        if self._filt is None:  # steady state for the first value: no step transient
            self._filt = self._zi_unit[:, None, :] * x[None, :, 0, None]
        y, self._filt = sosfilt(self._sos, x, axis=-1, zi=self._filt)
        e = y * y
        nz = 0 if self.vertical is None else 1
        ez = e[0] if nz else np.zeros(k)
        eh = e[nz:].sum(axis=0) * (2.0 / max(len(self.horizontal), 1))
        cf = ez if nz else eh
        sta, self._sta = lfilter([self._csta], [1.0, self._csta - 1.0], cf, zi=self._sta)
        ratio = sta / np.maximum(self._lta_of(cf), np.finfo(0.0).tiny)
        warm = self.nwarm - self.n
        if warm > 0:
            ratio[:warm] = 0.0
        rows = np.stack([y[0], ez, eh, ratio])
        self._hist = np.concatenate([self._hist, rows], axis=1)
        start, self.n = self.n, self.n + k
        self._scan(ratio, start)
        self._hist = self._hist[:, -self._keep :]
        return ratio

    def _lta_of(self, cf: np.ndarray) -> np.ndarray:
        """The LTA: running mean while fewer than nlta samples were seen, then recursive."""
        out = np.empty_like(cf)
        w = min(max(self.nlta - self.n, 0), cf.size)
        if w:
            total, self._lta = lfilter([1.0], [1.0, -1.0], cf[:w], zi=self._lta)
            out[:w] = total / np.arange(self.n + 1, self.n + w + 1)
            if self.n + w == self.nlta:  # switch: the recursion continues from the mean
                self._lta = (1.0 - self._clta) * out[w - 1 : w]
        if w < cf.size:
            c = self._clta
            out[w:], self._lta = lfilter([c], [1.0, c - 1.0], cf[w:], zi=self._lta)
        return out

    def _scan(self, ratio: np.ndarray, start: int) -> None:
        """Advance the trigger state machine over the chunk's samples start .. start + k - 1."""
        i = 0  # position in the chunk
        while True:
            if self._pending is not None:
                decide = self._pending + self.after + self.nhv  # first sample not needed
                if decide > self.n:
                    return
                self._decide(self._pending)
                self._pending = None
                self._mode = "on"
                i = max(i, decide - start)
            if i >= ratio.size:
                return
            if self._mode == "on":
                below = np.flatnonzero(ratio[i:] < P_TRIGGER_OFF)
                if below.size == 0:
                    return
                i += int(below[0]) + 1
                self._mode = "idle"
                continue
            above = np.flatnonzero(ratio[i:] >= P_TRIGGER_ON)
            if above.size == 0:
                return
            i += int(above[0])
            t = start + i
            last = self.accepted[-1].sample if self.accepted else None
            if last is not None and (self.refractory is None or t - last < self.refractory):
                self._mode = "on"  # this event's S or coda
            else:
                self._pending = t
            i += 1

    def _decide(self, t: int) -> None:
        """AIC onset and S test for the trigger at sample t; all needed samples are in history."""
        base = self.n - self._hist.shape[1]  # absolute index of the first history sample

        def seg(row: int, a: int, b: int) -> np.ndarray:
            return self._hist[row, max(a, base) - base : b - base]

        a = max(t - self.before, base, 0)
        trace = seg(0, a, t + self.after)
        onset = a + 1 + int(np.argmin(aic_simple(trace)[1:-2])) if trace.size > 4 else t
        peak = float(seg(3, t, t + self.after).max())
        if self.vertical is not None and self.horizontal:
            gain_z = seg(1, onset, onset + self.nhv).mean() - _mean(seg(1, onset - self.nhv, onset))
            gain_h = seg(2, onset, onset + self.nhv).mean() - _mean(seg(2, onset - self.nhv, onset))
            if max(gain_h, 0.0) > MAX_HV * max(gain_z, np.finfo(0.0).tiny):
                return  # S: stronger on the horizontals
        top = self.nlta / self.nsta
        confidence = float(np.clip((peak - P_TRIGGER_ON) / (top - P_TRIGGER_ON), 0.0, 1.0))
        self.accepted = [*self.accepted[-(KEEP_ONSETS - 1) :], Onset(onset, confidence)]

    def onset_at(self, index: int) -> Onset | None:
        """The latest accepted onset at or before sample ``index``, or None.

        Causal when ``index`` is at least ``max_delay`` before the newest sample: every onset
        up to ``index`` has then been decided.
        """
        for onset in reversed(self.accepted):
            if onset.sample <= index:
                return onset
        return None


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else 0.0


def first_p_onset(
    data: np.ndarray, sampling_rate: float, *, vertical: int | None = 0, horizontal=(1, 2)
) -> Onset | None:
    """The first :class:`PPicker` onset of a whole (C, N) record, or None."""
    picker = PPicker(sampling_rate, vertical=vertical, horizontal=tuple(horizontal))
    picker.feed(data)
    return picker.accepted[0] if picker.accepted else None


# -- the picker network ---------------------------------------------------------------------------

NETWORK_PICKER_NAME = "phasenet"
"""``onset_source`` of an onset found by :class:`NetworkPicker`."""


class NetworkPicker:
    """Incremental P picker on a picker network (:class:`PickerRuntime`): the same interface as
    :class:`PPicker` (``feed``, ``n``, ``accepted``, ``onset_at``, ``max_delay``, ``source``).

    The network runs on the window ending at every absolute sample ``e`` with
    ``e % stride == lookahead % stride`` (``e >= lookahead + stride``), left-padded with the
    record's first sample while the record is shorter, and keeps its P probability for the
    ``stride`` samples ending ``lookahead`` before ``e``. Those stitch into one probability
    trace that depends only on absolute sample positions, so any chunking gives the same
    onsets. An onset is the peak of a run of probability >= the card's threshold, decided when
    the run ends or ``max_run`` samples after it starts; its confidence is the peak probability.
    No onset in the first ``warmup`` samples, and none within ``refractory`` of the last one
    (``None``: only the first), as for :class:`PPicker`. ``rows``: the rows of the fed chunks in
    the picker card's component order (default: the same order); components the station lacks
    are zeros, as in training's Z-only windows.
    """

    source = NETWORK_PICKER_NAME

    def __init__(
        self, runtime, *, rows: list[int] | None = None, refractory: int | None = None
    ) -> None:
        card = runtime.card
        self.rows = list(range(len(card.component_order))) if rows is None else list(rows)
        self.runtime = runtime
        self.rate = card.sampling_rate
        self.refractory = refractory
        self.window = card.in_samples
        self.stride = card.stride
        self.lookahead = card.lookahead
        self.threshold = card.threshold
        self.max_run = card.max_run
        self.warmup = card.warmup
        self.max_delay = card.max_delay
        self.n = 0
        self.accepted: list[Onset] = []
        self._hist = np.zeros((len(card.component_order), 0))  # the last `window` samples
        self._next_end = self.lookahead + self.stride
        self.gate = card.gate
        self.gate_margin = card.gate_margin
        self._gates = np.zeros(0)  # the gate values of the samples in _hist
        self.windows_run = 0
        """Network windows evaluated so far (for cost measurements)."""
        self._run: list | None = None  # [start, peak sample, peak probability, last sample]
        self._capped = -2  # last sample of a run cut at max_run, while it stays above

    def feed(self, chunk: np.ndarray, gate: np.ndarray | None = None) -> np.ndarray:
        """Process the next (C, k) samples; returns the P probabilities decided by this chunk.

        ``gate`` (k values, e.g. :class:`PPicker`'s STA/LTA ratio of the same samples): the
        network then runs only on windows where it reached the card's ``gate`` from
        ``gate_margin`` before the kept stretch to the window's end; the probability is 0
        elsewhere. Pass it with every chunk or with none.
        """
        x = np.asarray(chunk, dtype=np.float64)[self.rows]
        k = x.shape[-1]
        if k == 0:
            return np.zeros(0)
        first = self._hist[:, :1] if self.n else x[:, :1]
        hist = np.concatenate([self._hist, x], axis=1)
        gates = None if gate is None else np.concatenate([self._gates, np.asarray(gate)[-k:]])
        base = self.n - self._hist.shape[1]  # absolute index of hist[:, 0]
        self.n += k
        ends = np.arange(self._next_end, self.n + 1, self.stride)
        probs = np.zeros(0)
        if ends.size:
            span = self.lookahead + self.stride
            if gates is None:
                run = np.ones(ends.size, dtype=bool)
            else:
                run = np.array(
                    [
                        gates[max(e - span - self.gate_margin - base, 0) : e - base].max(
                            initial=0.0
                        )
                        >= self.gate
                        for e in ends
                    ]
                )
            p = np.zeros((ends.size, self.window))
            if run.any():
                windows = np.empty((int(run.sum()), hist.shape[0], self.window))
                for j, e in enumerate(ends[run]):
                    seg = hist[:, max(e - self.window - base, 0) : e - base]
                    pad = self.window - seg.shape[1]
                    if pad:  # only while the record is shorter than a window: base is 0
                        windows[j, :, :pad] = first
                    windows[j, :, pad:] = seg
                p[run] = self.runtime.p_probability(windows)
                self.windows_run += int(run.sum())
            probs = p[:, self.window - span : self.window - self.lookahead].reshape(-1)
            self._scan(probs, int(ends[0]) - span)
            self._next_end = int(ends[-1]) + self.stride
        self._hist = hist[:, -self.window :]
        if gates is not None:
            self._gates = gates[-self.window :]
        return probs

    def _scan(self, probs: np.ndarray, start: int) -> None:
        """Advance the run state over the samples start .. start + len(probs) - 1."""
        for i in np.flatnonzero(probs >= self.threshold):
            t, value = start + int(i), float(probs[i])
            if t < self.warmup:
                continue
            if t == self._capped + 1:  # the rest of a run already decided at max_run
                self._capped = t
                continue
            if self._run is not None and t != self._run[3] + 1:
                self._close()  # the run ended below the threshold at _run[3] + 1
            if self._run is None:
                self._run = [t, t, value, t]
            else:
                if value > self._run[2]:
                    self._run[1:3] = [t, value]
                self._run[3] = t
            if t - self._run[0] + 1 >= self.max_run:
                self._close()
                self._capped = t
        end = start + probs.size - 1
        if self._run is not None and self._run[3] < end:
            self._close()

    def _close(self) -> None:
        _, peak, value, _ = self._run
        self._run = None
        last = self.accepted[-1].sample if self.accepted else None
        if last is not None and (self.refractory is None or peak - last < self.refractory):
            return
        self.accepted = [
            *self.accepted[-(KEEP_ONSETS - 1) :],
            Onset(peak, value, NETWORK_PICKER_NAME),
        ]

    def onset_at(self, index: int) -> Onset | None:
        """The latest accepted onset at or before sample ``index``, or None (causal when
        ``index`` is at least ``max_delay`` before the newest sample)."""
        for onset in reversed(self.accepted):
            if onset.sample <= index:
                return onset
        return None


class CombinedPicker:
    """The picker network's onsets and the STA/LTA + AIC picker's together: the earliest onset of
    either, then nothing within ``refractory`` of it (``None``: only the first onset), each onset
    reporting the picker that found it. The network finds weak P that the STA/LTA misses on
    synthetic records; the STA/LTA finds onsets the network (trained on synthetics only) misses
    on real ones (docs/serving.md#p-onsets). Both are fed the same chunks and both are
    chunk-independent, and the merge reads only onsets older than ``max_delay``, so the result is
    chunk-independent too. The network runs only where the STA/LTA's ratio reached the picker
    card's ``gate`` (see :meth:`NetworkPicker.feed`): windows of plain noise cost nothing.
    """

    source = NETWORK_PICKER_NAME

    def __init__(
        self, network: NetworkPicker, sta_lta: PPicker, *, refractory: int | None = None
    ) -> None:
        self.pickers = (network, sta_lta)
        self.refractory = refractory
        self.max_delay = max(network.max_delay, sta_lta.max_delay)
        self.accepted: list[Onset] = []

    @property
    def n(self) -> int:
        return self.pickers[0].n

    def feed(self, chunk: np.ndarray) -> np.ndarray:
        """Feed both pickers; returns the network's P probabilities decided by this chunk."""
        ratio = self.pickers[1].feed(chunk)
        probs = self.pickers[0].feed(chunk, gate=ratio)
        found = sorted(
            (o for p in self.pickers for o in p.accepted),
            key=lambda o: (o.sample, o.source != NETWORK_PICKER_NAME),
        )
        merged: list[Onset] = []
        for o in found:
            if merged and (
                self.refractory is None or o.sample - merged[-1].sample < self.refractory
            ):
                continue
            merged.append(o)
        self.accepted = merged[-KEEP_ONSETS:]
        return probs

    def onset_at(self, index: int) -> Onset | None:
        """The latest onset at or before ``index`` (causal at least ``max_delay`` before the
        newest sample)."""
        for onset in reversed(self.accepted):
            if onset.sample <= index:
                return onset
        return None
