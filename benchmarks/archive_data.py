"""Continuous synthetic station records for archive benchmarks and tests: Peterson-level noise
for the whole span with events of the project's synthetic physics inserted at given times.

Ground velocity in m/s, 3 components (HHZ, HHN, HHE), one trace per component.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from obspy import Stream, Trace, UTCDateTime


@dataclass(frozen=True)
class InsertedEvent:
    time: UTCDateTime
    """Where the event record's first sample goes; its P lies ``p_offset_s`` later."""
    magnitude: float
    p_time: UTCDateTime
    distance_km: float


def station_record(
    seconds: float = 86400.0,
    *,
    events: int = 6,
    seed: int = 0,
    start: str = "2024-03-01T00:00:00",
    network: str = "XX",
    station: str = "SYN01",
    sampling_rate: float = 100.0,
    noise_level: float = 0.3,
) -> tuple[Stream, list[InsertedEvent]]:
    """``seconds`` of one station's velocity with ``events`` synthetic events spread over it."""
    from seismag.training.synthetic import (
        SyntheticConfig,
        peterson_noise,
        regime_config,
        simulate_event,
    )

    rng = np.random.default_rng([seed, 0xA2C])
    n = round(seconds * sampling_rate)
    data = peterson_noise(rng, np.array([noise_level]), n, sampling_rate)[0]
    t0 = UTCDateTime(start)
    config: SyntheticConfig = regime_config(("wna",))
    inserted: list[InsertedEvent] = []
    if events:
        slots = np.linspace(0, seconds, events + 1)[:-1] + seconds / events * 0.3
        for k, at in enumerate(slots):
            rec = simulate_event(seed + 1000, k, config, stations_per_event=(1, 1))
            if not len(rec.waveforms):
                continue
            wave, meta = rec.waveforms[0], rec.metadata[0]
            i0 = round(at * sampling_rate)
            m = min(wave.shape[1], n - i0)
            if m <= 0:
                continue
            data[:, i0 : i0 + m] += wave[:, :m]
            p = float(meta["trace_p_arrival_sample"]) / sampling_rate
            mag, dist = float(meta["source_magnitude"]), float(meta["path_ep_distance_km"])
            inserted.append(InsertedEvent(t0 + at, mag, t0 + at + p, dist))
    header = {"network": network, "station": station, "starttime": t0}
    header["sampling_rate"] = sampling_rate
    st = Stream(
        [
            Trace(data[i].astype(np.float32), header={**header, "channel": f"HH{c}"})
            for i, c in enumerate("ZNE")
        ]
    )
    return st, inserted


KW1_SENSITIVITY = 2516778400.0
"""Counts per m/s of BW.KW1..EHZ, from the poles-and-zeros ObsPy's PPSD tests give with it."""


def obspy_kw1_record() -> Stream:
    """The one real continuous record a plain install carries: 2.6 hours (2011-03-31
    00:00-02:36 UTC, night in Bavaria) of the short-period vertical BW.KW1..EHZ, downsampled to
    100 Hz, that ObsPy ships for its PPSD tests (``obspy/signal/tests/data``; BayernNetz). Ground
    velocity in m/s by the sensitivity alone (flat above ~1 Hz). Vertical only: the STA/LTA that
    gates the picker network triggers on Z, so this measures the gate on real noise."""
    import gzip
    from importlib import resources

    name = "BW.KW1._.EHZ.D.2011.090_downsampled.asc.gz"
    path = resources.files("obspy.signal") / "tests" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not in this ObsPy install")
    with gzip.open(str(path)) as f:
        counts = np.loadtxt(f)
    header = {"network": "BW", "station": "KW1", "channel": "EHZ", "sampling_rate": 100.0,
              "starttime": UTCDateTime(2011, 3, 31, 0, 0, 0, 180000)}  # fmt: skip
    return Stream([Trace(counts / KW1_SENSITIVITY, header)])
