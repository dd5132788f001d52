"""The output folder of ``seismag annotate``: series as an SDS archive, per-onset table, markers.

::

    OUT/series/MODEL/YEAR/NET/STA/MAG.D/NET.STA.LOC.MAG.D.YEAR.DAY   magnitude series (miniSEED)
    OUT/series/MODEL/YEAR/NET/STA/MAS.D/...                            its standard deviation
    OUT/onsets/MODEL/UNIT.csv                                          per-onset rows of one unit
    OUT/done/MODEL/UNIT.json                                           the unit is complete
    OUT/onsets-MODEL.csv (or .parquet)                                 every unit's rows, in order

``OUT/series/MODEL`` is itself an SDS root (``obspy.clients.filesystem.sds.Client`` reads it).
A unit's files are written first and its marker last, each through a temporary name and a
rename, so an interrupted run leaves no half-written unit that a re-run would skip.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from seismag.serving.archive.annotate import UnitResult, series_traces

COLUMNS = (
    "network", "station", "location", "onset", "onset_source", "onset_confidence", "magnitude",
    "sigma", "time", "first_time", "values", "model", "model_version", "unit",
)  # fmt: skip
CHANNEL = "MAG"


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)


class OutputError(ValueError):
    """The output folder holds results that must not be mixed with this run's."""


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


class ArchiveOutput:
    def __init__(self, root: str | Path, model: str, key: dict) -> None:
        self.root = Path(root)
        self.model = model
        self.key = key
        self.done_dir = self.root / "done" / model
        self.rows_dir = self.root / "onsets" / model
        self.series_root = self.root / "series" / model

    def check_key(self) -> None:
        """Refuse to resume into results made with other options."""
        path = self.root / "done" / self.model / "options.json"
        if path.exists() and self.markers():  # nothing done yet: any options may start over
            old = json.loads(path.read_text())
            if old != self.key:
                diff = {k: (old.get(k), v) for k, v in self.key.items() if old.get(k) != v}
                raise OutputError(
                    f"{self.root} holds {self.model} results made with other options "
                    f"(was, now: {diff}); use another --out or delete it"
                )
        else:
            _atomic_write(path, lambda p: p.write_text(json.dumps(self.key, indent=1)))

    def is_done(self, unit: str) -> bool:
        return (self.done_dir / f"{unit}.json").exists()

    def write(self, result: UnitResult, version: str) -> None:
        """The unit's series, rows and marker; nothing for a failed unit (a re-run retries it)."""
        if result.failed:
            return
        mags, sigmas = series_traces(result, CHANNEL)
        for st in (mags, sigmas):  # a unit is one day: one SDS file per channel
            if len(st):
                tr0 = st[0].stats
                name = f"{tr0.network}.{tr0.station}.{tr0.location}.{tr0.channel}.D"
                day = f"{tr0.starttime.year}.{tr0.starttime.julday:03d}"
                path = (
                    self.series_root / str(tr0.starttime.year) / tr0.network / tr0.station
                    / f"{tr0.channel}.D" / f"{name}.{day}"
                )  # fmt: skip
                _atomic_write(path, lambda p, st=st: st.write(str(p), format="MSEED"))
        rows = result.onset_rows(self.model, version)
        _atomic_write(self.rows_dir / f"{result.unit}.csv", lambda p: _write_csv(p, rows))
        marker = {
            "unit": result.unit,
            "grid_points": result.grid_points,
            "values": len(result.values),
            "onsets": len(rows),
            "seconds": round(result.seconds, 3),
            "warnings": list(result.warnings),
            "error": result.error,
        }
        _atomic_write(
            self.done_dir / f"{result.unit}.json",
            lambda p: p.write_text(json.dumps(marker, indent=1)),
        )

    def markers(self) -> list[dict]:
        return [
            json.loads(p.read_text())
            for p in sorted(self.done_dir.glob("*.json"))
            if p.name != "options.json"
        ]

    def table(self, units: list[str], fmt: str = "csv") -> Path:
        """Every listed unit's rows in one table, in unit order; ``fmt`` csv or parquet."""
        rows: list[dict] = []
        for unit in units:
            part = self.rows_dir / f"{unit}.csv"
            if part.exists():
                with part.open(newline="") as f:
                    rows.extend(csv.DictReader(f))
        if fmt == "parquet":
            try:
                import pandas as pd
                import pyarrow  # noqa: F401  (pandas' Parquet engine)
            except ImportError as exc:
                raise OutputError(
                    f"--table parquet needs pandas and pyarrow ({exc}); use --table csv"
                ) from None

            frame = pd.DataFrame(rows, columns=list(COLUMNS))
            for col in ("onset_confidence", "magnitude", "sigma"):
                frame[col] = pd.to_numeric(frame[col])
            frame["values"] = pd.to_numeric(frame["values"]).astype("int64")
            path = self.root / f"onsets-{self.model}.parquet"
            _atomic_write(path, lambda p: frame.to_parquet(p, index=False))
            return path
        path = self.root / f"onsets-{self.model}.csv"
        _atomic_write(path, lambda p: _write_csv(p, rows))
        return path
