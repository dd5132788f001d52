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
