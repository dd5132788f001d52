"""Station corrections and the shared error fraction, learnt from a network's past events.

A station that always reads high (a site amplification the model did not see, a wrong gain) gets
a correction: minus its mean residual against the catalogue, shrunk towards zero when it has few
events (``PRIOR_EVENTS`` pseudo-events at zero), as station terms are estimated for local
magnitude scales (Hutton & Boore 1987). The residuals left after the corrections give the share of
the error variance common to an event (``rho`` of :mod:`.event`).

The table is a small TOML file, read by ``seismag serve --station-table`` and written by
``seismag station-table PREDICTIONS.csv``::

    model = "PhaseNetMag"
    events = 250
    shared_error_fraction = 0.33

    [corrections]
    "SY.S0166." = 0.12
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seismag.serving.pipeline.event import SHARED_ERROR_FRACTION

PRIOR_EVENTS = 3.0
"""Shrinkage: a station with n events gets n / (n + PRIOR_EVENTS) of its mean residual."""
COLUMNS = ("source_id", "station_id", "magnitude", "catalogue_magnitude")
"""Required columns of the predictions CSV (``sigma`` is optional)."""


@dataclass
class StationTable:
    corrections: dict[str, float] = field(default_factory=dict)
    shared_error_fraction: float = SHARED_ERROR_FRACTION
    model: str = ""
    events: int = 0

    @classmethod
    def read(cls, path: str | Path) -> StationTable:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"station table {path}: {exc}") from None
        corrections = raw.get("corrections", {})
        rho = raw.get("shared_error_fraction", SHARED_ERROR_FRACTION)
        bad = [k for k, v in corrections.items() if not _finite(v) or abs(v) > 2.0]
        if bad:
            raise ValueError(
                f"station table {path}: corrections must be numbers within +-2 magnitude units "
                f"(bad: {bad[:5]})"
            )
        if not _finite(rho) or not 0.0 <= rho <= 1.0:
            raise ValueError(
                f"station table {path}: shared_error_fraction must be within [0, 1], got {rho!r}"
            )
        return cls(
            {str(k): float(v) for k, v in corrections.items()},
            float(rho),
            str(raw.get("model", "")),
            int(raw.get("events", 0)),
        )

    def write(self, path: str | Path) -> None:
        lines = [
            "# seismag station table: corrections are added to the station magnitudes",
            f"model = {json.dumps(self.model)}",
            f"events = {self.events}",
            f"shared_error_fraction = {self.shared_error_fraction:.4f}",
            "",
            "[corrections]",
        ]
        lines += [f"{json.dumps(k)} = {v:.4f}" for k, v in sorted(self.corrections.items())]
        Path(path).write_text("\n".join(lines) + "\n")


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def fit(rows: list[dict[str, str]], model: str = "") -> StationTable:
    """Corrections and the shared fraction from per-station predictions of past events."""
    if not rows:
        raise ValueError("no predictions to fit a station table from")
    missing = [c for c in COLUMNS if c not in rows[0]]
    if missing:
        raise ValueError(f"the predictions CSV lacks the columns {missing} (needs {COLUMNS})")
    res = defaultdict(list)
    events: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for r in rows:
        m, cat = float(r["magnitude"]), float(r["catalogue_magnitude"])
        if math.isfinite(m) and math.isfinite(cat):
            res[r["station_id"]].append(m - cat)
            events[r["source_id"]].append((r["station_id"], m - cat))
    corrections = {
        s: -float(np.sum(v)) / (len(v) + PRIOR_EVENTS) for s, v in res.items() if len(v) > 0
    }
    corrected = {e: np.array([v + corrections[s] for s, v in pairs]) for e, pairs in events.items()}
    return StationTable(corrections, shared_fraction(list(corrected.values())), model, len(events))


def shared_fraction(residuals_by_event: list[np.ndarray]) -> float:
    """Share of the residual variance common to an event: 1 - (within-event variance, with the
    n / (n - 1) correction) / (total variance), over events with two or more stations."""
    multi = [r for r in residuals_by_event if r.size > 1]
    if not multi:
        return SHARED_ERROR_FRACTION
    within = np.concatenate([(r - r.mean()) ** 2 * r.size / (r.size - 1) for r in multi])
    total = np.concatenate(multi)
    var = float(np.var(total))
    return float(np.clip(1.0 - within.mean() / var, 0.0, 1.0)) if var > 0 else 0.0


def read_predictions(path: str | Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
