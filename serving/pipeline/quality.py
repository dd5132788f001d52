"""What the samples of one component say about themselves: dead, flat, clipped, not ground motion.

A model asked about an all-zero or constant component still answers with a magnitude (the
per-window normalisation makes any input look like a waveform), so such components are found
here, per component, and either left out (the station then goes on with the others, or is
refused when none is left) or reported with the answer.
"""

from __future__ import annotations

import numpy as np

from seismag.models.preprocess import COMPONENT_ALIASES
from seismag.serving.errors import InvalidInput

MAX_GROUND_VELOCITY = 5.0
"""m/s. The largest peak ground velocities recorded are about 3 m/s (near-fault records of the
1999 Chi-Chi earthquake, e.g. station TCU068; Boore 2001, BSSA 91(5)); more is not ground motion
but counts labelled m/s or a response that does not belong to the data."""
MIN_PEAK_VELOCITY = 1e-11
"""m/s. A record's peak is never below this: ground noise at the quietest sites (Peterson's
1993 low-noise model, about 1e-9 m/s over 1-10 Hz) and the least significant bit of a sensitive
broadband station (an STS-2 on a 24-bit digitiser: 1.6e-9 m/s per count) both lie two orders
above. Less is data already in m/s corrected again by the response (a factor of ~1e9 too small),
not ground motion; a model would answer it with a magnitude near -10."""
MIN_PEAK_SAMPLES = 100
"""The lower bound is judged on at least this many samples (a packet of a few samples may sit
at a zero crossing)."""
CLIP_RUN = 5
"""Samples held at the record's extreme value that make a plateau."""
CLIP_STEPS = 100
"""A plateau counts as clipping only this many quantisation steps (the smallest change between
samples) away from the median: integer counts of quiet noise sit at their extremes for several
samples too."""


def component(channel: str) -> str:
    """The card component ("Z", "N", "E") a channel code stands for, or "" (e.g. EHX, BDF)."""
    return COMPONENT_ALIASES.get(channel[-1:].upper(), "")


def read_by(component_order: str, channel: str) -> str | None:
    """The component of ``channel`` if the card reads it, else None.

    (``"" in "ZNE"`` is True: a bare membership test once let EHX, EHY and EHW through as a
    station whose every component was then zero-filled, answered with a magnitude.)
    """
    comp = component(channel)
    return comp if comp and comp in component_order else None


def unusable(data: np.ndarray) -> str | None:
    """Why a component carries no signal ("dead", "flat"), or None."""
    lo, hi = float(np.min(data)), float(np.max(data))
    if lo != hi:
        return None
    return "dead (every sample is 0)" if hi == 0 else f"flat (every sample is {hi:g})"


def _runs(mask: np.ndarray) -> np.ndarray:
    edges = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def clipped(data: np.ndarray) -> str | None:
    """A warning when the record sits at its extreme value in plateaus (the digitiser or sensor
    saturated: the true peak was larger, so a magnitude from it is a lower bound), else None."""
    x = np.asarray(data)
    if x.size < 2 * CLIP_RUN:
        return None
    hi, lo = float(x.max()), float(x.min())
    # Natural records reach their extremes once: only a plateau candidate costs more than this.
    if np.count_nonzero(x == hi) < CLIP_RUN and np.count_nonzero(x == lo) < CLIP_RUN:
        return None
    steps = np.abs(np.diff(x))
    steps = steps[steps > 0]
    if steps.size == 0:
        return None
    quantum = float(steps.min())
    middle = float(np.median(x))
    for extreme in (hi, lo):
        if abs(extreme - middle) < CLIP_STEPS * quantum:
            continue
        runs = _runs(x == extreme)
        if np.count_nonzero(runs >= CLIP_RUN) >= 2 or runs.max() >= 3 * CLIP_RUN:
            held = int(runs.sum())
            return (
                f"clipped ({held} samples held at {extreme:g}): the true peak was larger, "
                "so the magnitude is a lower bound"
            )
    return None


def check_velocity(sid: str, data: np.ndarray, *, declared: bool) -> None:
    """Refuse samples that cannot be ground velocity in m/s.

    ``declared``: the client said the samples are m/s (no response applied), so counts labelled
    m/s are the likely mistake; otherwise they came out of the instrument correction.
    """
    x = np.asarray(data)
    if x.size == 0:
        return
    peak = max(float(x.max()), -float(x.min()))
    if 0 < peak < MIN_PEAK_VELOCITY and x.size >= MIN_PEAK_SAMPLES:
        raise InvalidInput(
            f"{sid}: the samples peak at {peak:.3g} m/s, below any ground noise or digitiser "
            f"step ({MIN_PEAK_VELOCITY:g} m/s): "
            + (
                "not ground velocity in m/s (check the units)"
                if declared
                else 'were they in m/s already? Then send input_units "m/s" without a response'
            )
        )
    if declared:
        if peak > MAX_GROUND_VELOCITY:
            raise InvalidInput(
                f"{sid}: the samples reach {peak:.4g} m/s, but ground velocity beyond "
                f"{MAX_GROUND_VELOCITY:g} m/s has never been recorded: these look like counts, "
                'not m/s; send the channel\'s StationXML instead of input_units "m/s"'
            )
        head = x[:64]  # real velocities are fractions: their first samples settle it
        if peak > 0 and np.array_equal(head, np.rint(head)) and np.array_equal(x, np.rint(x)):
            raise InvalidInput(
                f"{sid}: every sample is a whole number of m/s (up to {peak:.4g}), as counts "
                'are: send the channel\'s StationXML instead of input_units "m/s"'
            )
    elif peak > MAX_GROUND_VELOCITY:
        raise InvalidInput(
            f"{sid}: after the instrument correction the samples reach {peak:.4g} m/s, beyond "
            f"any recorded ground velocity ({MAX_GROUND_VELOCITY:g} m/s): the response does "
            "not belong to these data (or they are not counts)"
        )
