"""Where archive data come from, cut into units of work: one station over one UTC day.

Sources are files and folders (miniSEED, SAC, anything ObsPy reads; folders are searched
recursively) or an SDS archive read with ObsPy's SDS client. A unit's data are the samples of
its station in ``[max(day, start), min(day + 1 day, end))``; annotating a unit is a Predict of
exactly those samples (:mod:`~seismag.serving.archive.annotate`), so units are independent: they
run in any order, on any worker, and a re-run skips the ones already done.
"""

from __future__ import annotations

import fnmatch
import itertools
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from obspy import Stream, UTCDateTime, read

DAY = 86400.0


class SourceError(ValueError):
    """The sources cannot be read as asked (the message says which and why)."""


@dataclass(frozen=True)
class Unit:
    """One station over one UTC day (clipped to the requested range)."""

    network: str
    station: str
    location: str
    day: UTCDateTime
    start: UTCDateTime
    end: UTCDateTime
    """Exclusive: the unit holds samples at times t with start <= t < end."""
    files: tuple[str, ...] = ()
    sds_root: str | None = None
    channels: str = "*"

    @property
    def station_id(self) -> str:
        return f"{self.network}.{self.station}.{self.location}"

    @property
    def name(self) -> str:
        """``NET.STA.LOC.YYYY.DDD``: the unit's key in the output folder."""
        return f"{self.station_id}.{self.day.year}.{self.day.julday:03d}"


@dataclass
class Scan:
    """What a source scan found: the units in order, and the files it could not read."""

    units: list[Unit]
    unreadable: list[str] = field(default_factory=list)


def _day_floor(t: UTCDateTime) -> UTCDateTime:
    return UTCDateTime(t.year, t.month, t.day)


def _days(t0: UTCDateTime, t1: UTCDateTime) -> list[UTCDateTime]:
    days, d = [], _day_floor(t0)
    while d < t1:
        days.append(d)
        d += DAY
    return days


def station_selected(sid: str, patterns: Sequence[str]) -> bool:
    """``sid`` = NET.STA.LOC; a pattern matches NET.STA.LOC or NET.STA (shell wildcards)."""
    if not patterns:
        return True
    short = sid.rsplit(".", 1)[0]
    return any(fnmatch.fnmatchcase(sid, p) or fnmatch.fnmatchcase(short, p) for p in patterns)


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = (f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            out.extend(sorted(found))
        elif p.is_file():
            out.append(p)
        else:
            raise SourceError(f"{p}: no such file or folder")
    return out


def scan_files(
    paths: Sequence[str | Path],
    *,
    start: UTCDateTime | None = None,
    end: UTCDateTime | None = None,
    stations: Sequence[str] = (),
    channels: str = "*",
) -> Scan:
    """Read every file's headers and cut what they hold into station-day units."""
    spans: dict[tuple[str, str, str], dict[str, list[UTCDateTime]]] = {}
    unreadable: list[str] = []
    for f in _files(paths):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                st = read(str(f), headonly=True)
        except Exception as exc:  # ObsPy raises many types for a file it cannot parse
            unreadable.append(f"{f}: {type(exc).__name__}: {exc}")
            continue
        for tr in st:
            s = tr.stats
            key = (s.network, s.station, s.location)
            if not fnmatch.fnmatchcase(s.channel, channels):
                continue
            if not station_selected(".".join(key), stations):
                continue
            t0, t1 = s.starttime, s.endtime + s.delta
            span = spans.setdefault(key, {}).setdefault(str(f), [t0, t1])
            span[0], span[1] = min(span[0], t0), max(span[1], t1)
    units = []
    for key in sorted(spans):
        files = spans[key]
        t0 = min(v[0] for v in files.values())
        t1 = max(v[1] for v in files.values())
        t0 = max(t0, start) if start is not None else t0
        t1 = min(t1, end) if end is not None else t1
        for day in _days(t0, t1):
            u0, u1 = max(day, t0), min(day + DAY, t1)
            held = tuple(sorted(f for f, (a, b) in files.items() if a < u1 and b > u0))
            if held:
                units.append(Unit(*key, day=day, start=u0, end=u1, files=held, channels=channels))
    return Scan(units, unreadable)


def scan_sds(
    root: str | Path,
    *,
    start: UTCDateTime,
    end: UTCDateTime,
    stations: Sequence[str] = (),
    channels: str = "*",
) -> Scan:
    """The station-days of an SDS archive between ``start`` and ``end`` that hold data."""
    from obspy.clients.filesystem.sds import Client

    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"SDS root {root} is not a folder")
    if end <= start:
        raise SourceError(f"--end {end} is not after --start {start}")
    client = Client(str(root))
    found: set[tuple[tuple[str, str, str], int]] = set()  # UTCDateTime is not hashable
    for day in _days(start, end):
        # get_all_nslc(datetime=...) lists the channels with a file for that day.
        for net, sta, loc, cha in client.get_all_nslc(datetime=day + DAY / 2):
            sid = f"{net}.{sta}.{loc}"
            if fnmatch.fnmatchcase(cha, channels) and station_selected(sid, stations):
                found.add(((net, sta, loc), day.ns))
    units = []
    for key, ns in sorted(found):
        day = UTCDateTime(ns=ns)
        u0, u1 = max(day, start), min(day + DAY, end)
        units.append(Unit(*key, day=day, start=u0, end=u1, sds_root=str(root), channels=channels))
    return Scan(units)


def read_unit(unit: Unit) -> Stream:
    """The unit's samples: times in ``[unit.start, unit.end)``, its channels only."""
    if unit.sds_root is not None:
        from obspy.clients.filesystem.sds import Client

        st = Client(unit.sds_root).get_waveforms(
            unit.network, unit.station, unit.location, unit.channels, unit.start, unit.end
        )
    else:
        st = Stream()
        for f in unit.files:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                st += read(f, starttime=unit.start, endtime=unit.end, nearest_sample=False)
        st = st.select(
            network=unit.network, station=unit.station, location=unit.location,
            channel=unit.channels,
        )  # fmt: skip
    out = Stream()
    for tr in st:
        # Exclusive end: the sample at unit.end belongs to the next day's unit.
        tr.trim(unit.start, unit.end - 0.5 * tr.stats.delta, nearest_sample=False)
        if tr.stats.npts:
            out.append(tr)
    check_overlaps(out)
    return out


def check_overlaps(st: Stream) -> None:
    """Overlapping pieces of one channel must hold the same samples (an archive with a record
    twice is common; two files with different data for one channel and time, e.g. counts and
    velocity, are an error that a merge would hide)."""
    by_id: dict[str, list] = {}
    for tr in st:
        by_id.setdefault(tr.id, []).append(tr)
    for sid, traces in by_id.items():
        traces.sort(key=lambda tr: tr.stats.starttime)
        for a, b in itertools.pairwise(traces):
            if b.stats.starttime > a.stats.endtime:
                continue
            ov = a.slice(b.stats.starttime, min(a.stats.endtime, b.stats.endtime))
            other = b.slice(ov.stats.starttime, ov.stats.endtime)
            n = min(ov.stats.npts, other.stats.npts)
            if n and not np.array_equal(ov.data[:n], other.data[:n]):
                raise SourceError(
                    f"{sid}: two pieces hold different samples for {ov.stats.starttime} - "
                    f"{ov.stats.endtime} (the same channel from two files with other data?)"
                )


def one_band(st: Stream) -> tuple[Stream, list[str]]:
    """A station with several instruments (HH?, BH?, HN?, ...) at one location: keep the band
    with the highest sampling rate (ties: the first in name order) and say so."""
    bands: dict[str, float] = {}
    for tr in st:
        code = tr.stats.channel[:2]
        bands[code] = max(bands.get(code, 0.0), tr.stats.sampling_rate)
    if len(bands) <= 1:
        return st, []
    keep = sorted(bands, key=lambda b: (-bands[b], b))[0]
    others = ", ".join(f"{b}?" for b in sorted(bands) if b != keep)
    kept = Stream([tr for tr in st if tr.stats.channel[:2] == keep])
    return kept, [f"{keep}? used; {others} left out (one instrument per station)"]
