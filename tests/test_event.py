"""Event magnitudes: stations combined with their sigmas, outliers rejected, station corrections,
a causal evolving event series; through the real gRPC server with synthetic multi-station events."""

import io
import math

import grpc
import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime

from seismag.serving.oip import grpc_service_pb2 as oip_pb2
from seismag.serving.oip import grpc_service_pb2_grpc as oip_grpc
from seismag.serving.pipeline.event import (
    EVENT_AFTER_ONSET_SECONDS,
    EventTracker,
    StationEstimate,
    associate,
    combine,
    event_magnitude,
    event_values,
)
from seismag.serving.pipeline.predict import predict
from seismag.serving.pipeline.station_table import StationTable, fit, shared_fraction
from seismag.serving.protocols.server import build_server
from seismag.serving.v1 import seismag_pb2 as pb
from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc
from seismag.training.synthetic import SyntheticConfig, simulate_event


def est(name, m, s=0.3):
    return StationEstimate(name, m, s)


def test_combine_is_the_weighted_mean_with_a_shared_error():
    w = np.array([25.0, 6.25])
    close = combine([est("A", 4.0, 0.2), est("B", 4.4, 0.4)], shared=0.0)
    assert close.magnitude == pytest.approx((4.0 * 25 + 4.4 * 6.25) / w.sum())
    # chi2 = sum w (m - mean)^2 = 0.16 * 25 * 6.25 / 31.25 = 0.8 < n - 1: as independent.
    assert close.sigma == pytest.approx(math.sqrt(1 / w.sum()))
    # chi2 = 1.0 * 25 * 6.25 / 31.25 = 5 > n - 1: the Birge ratio inflates the sigma.
    apart = combine([est("A", 4.0, 0.2), est("B", 5.0, 0.4)], shared=0.0)
    assert apart.sigma == pytest.approx(math.sqrt(5 / w.sum()))
    same = [est(c, 5.0, 0.3) for c in "ABCD"]
    assert combine(same, shared=0.0).sigma == pytest.approx(0.3 / 2)
    assert combine(same, shared=1.0).sigma == pytest.approx(0.3)
    assert combine(same, shared=0.5).sigma == pytest.approx(0.3 * math.sqrt(0.5 + 0.5 / 4))


def test_combine_rejects_an_outlier_but_keeps_two():
    e = combine([est("A", 4.0), est("B", 4.1), est("C", 3.9), est("D", 6.0)])
    assert e.rejected == ("D",) and e.magnitude == pytest.approx(4.0)
    two = combine([est("A", 4.0), est("B", 6.0)])
    assert two.rejected == () and two.magnitude == pytest.approx(5.0)


def test_combine_without_sigmas_does_not_guess_one():
    e = combine([est("A", 4.0, math.nan), est("B", 4.2, math.nan)])
    assert e.magnitude == pytest.approx(4.1) and math.isnan(e.sigma)
    with pytest.raises(ValueError):
        combine([])


def test_association_keeps_the_largest_group_of_onsets():
    t = UTCDateTime(2024, 1, 1)
    first, members = associate(
        {"early.noise": t - 500, "A": t, "B": t + 5, "C": t + 40, "late": t + 300, "none": None}
    )
    assert first == t and members == ["A", "B", "C"]
    assert associate({"A": None}) == (None, [])


def test_station_table_fit_recovers_corrections_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    offsets = {"XX.A.": 0.3, "XX.B.": -0.2, "XX.C.": 0.0}
    rows = []
    for ev in range(200):
        mag, shared = rng.uniform(2, 5), rng.normal(0, 0.2)
        for sta, off in offsets.items():
            pred = mag + off + shared + rng.normal(0, 0.2)
            rows.append(
                dict(source_id=str(ev), station_id=sta, magnitude=str(pred),
                     catalogue_magnitude=str(mag))
            )  # fmt: skip
    table = fit(rows, model="M")
    for sta, off in offsets.items():  # shrinkage of 3 pseudo-events out of 200 is 1.5 %
        assert table.corrections[sta] == pytest.approx(-off, abs=0.06)
    assert table.shared_error_fraction == pytest.approx(0.5, abs=0.1)
    table.write(tmp_path / "t.toml")
    back = StationTable.read(tmp_path / "t.toml")
    assert back.corrections == pytest.approx(table.corrections, abs=1e-4)
    assert back.events == 200 and back.model == "M"
    (tmp_path / "bad.toml").write_text("[corrections]\n'XX.A.' = 'high'\n")
    with pytest.raises(ValueError, match="within"):
        StationTable.read(tmp_path / "bad.toml")
    for text, says in (  # a typed-in table's slips: messages, not tracebacks or guesses
        ("corrections = 3\n", r"\[corrections\] must be a table"),
        ("events = 'x'\n", "events must be a count"),
        ("network_correction = true\n", "within"),  # TOML's true is no magnitude
        ("[corrections]\n'XX.A.' = false\n", "within"),
    ):
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(ValueError, match=says):
            StationTable.read(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="columns"):
        fit([{"station": "A"}])
    assert shared_fraction([np.array([1.0])]) > 0  # no multi-station event: the default


def test_station_table_fits_the_network_offset_and_a_sigma_scale_left_out_of_its_own_fit():
    # 300 stations in 3 events each (9 stations an event), all reading 0.25 high, with
    # independent errors of 0.2 that claim a sigma of 0.2.
    rng = np.random.default_rng(1)
    rows = []
    for ev in range(100):
        for k in range(9):
            rows.append(
                dict(source_id=str(ev), station_id=f"XX.S{(3 * ev + k) % 300}.",
                     magnitude=str(3.0 + 0.25 + rng.normal(0, 0.2)), catalogue_magnitude="3.0",
                     sigma="0.2")
            )  # fmt: skip
    table = fit(rows)
    assert table.network_correction == pytest.approx(-0.25 * 100 / 103, abs=0.02)
    assert len(table.corrections) == 300
    # A station term from 3 events (3 pseudo-events) absorbs 1/6 of each of its residuals: in
    # sample the scale would be sqrt((5/6)**2 + 2/36) = 0.87; each residual left out of its own
    # term gives sqrt(1 + 2/25) = 1.04.
    assert 0.97 < table.sigma_scale < 1.12
    assert table.shared_error_fraction < 0.1  # nothing is common to an event here


def test_series_rows_join_the_sigma_scale_only():
    rng = np.random.default_rng(2)
    final, early = [], []
    for ev in range(60):
        for k in range(4):
            base = dict(source_id=str(ev), station_id=f"XX.S{k}.", catalogue_magnitude="3.0")
            final.append(dict(base, magnitude=str(3.0 + rng.normal(0, 0.2)), sigma="0.2"))
            # 3 s after P the values err twice as much as their sigma says
            early.append(dict(base, magnitude=str(3.0 + rng.normal(0, 0.4)), sigma="0.2",
                              seconds_after_first_p="3"))  # fmt: skip
    alone, both = fit(final), fit(final + early)
    assert both.network_correction == alone.network_correction
    assert both.corrections == alone.corrections
    assert both.shared_error_fraction == alone.shared_error_fraction
    assert 0.9 < alone.sigma_scale < 1.15
    assert both.sigma_scale > 1.4  # sqrt((1 + 4) / 2) = 1.58 for these
    with pytest.raises(ValueError, match="final"):
        fit(early)


def _one_station_events(seed: int, events: int, early_sd: dict[int, float]) -> list[dict]:
    """Past events of one station each (three stations in turn), catalogue M 3, sigma 0.2: final
    values that err as their sigma says, values ``t`` s after the first P with sd
    ``early_sd[t]``."""
    rng = np.random.default_rng(seed)
    rows = []
    for ev in range(events):
        base = dict(source_id=str(ev), station_id=f"XX.S{ev % 3}.", catalogue_magnitude="3.0",
                    sigma="0.2")  # fmt: skip
        rows.append(dict(base, magnitude=str(3.0 + rng.normal(0, 0.2))))
        for t, sd in early_sd.items():
            value = 3.0 + rng.normal(0, sd)
            rows.append(dict(base, magnitude=str(value), seconds_after_first_p=str(t)))
    return rows


def test_station_table_fits_the_event_sigma_scale_per_time(tmp_path):
    # One station per event: its values 3 s after the first P err twice as much as their sigma
    # says, its final values as much as it says. One scale for both (1.58) would make the final
    # band too wide and the early one too narrow.
    from seismag.serving.pipeline.event import EventEstimate

    table = fit(_one_station_events(5, 60, {3: 0.4}))
    assert table.sigma_scale > 1.4  # station values of both times
    (s3,) = table.early_sigma_scale
    assert 1.7 < s3 < 2.3 and 0.85 < table.final_sigma_scale < 1.2
    for t, scale in ((3.0, s3), (60.0, table.final_sigma_scale)):
        got = table.calibrate(EventEstimate(3.0, 0.2, ("XX.S0.",), ()), t)
        assert got.sigma == pytest.approx(0.2 * scale)
    table.write(tmp_path / "t.toml")
    back = StationTable.read(tmp_path / "t.toml")
    assert back.early_sigma_scale == pytest.approx((s3,), abs=1e-4)
    assert back.final_sigma_scale == pytest.approx(table.final_sigma_scale, abs=1e-4)
    assert "sd x" in table.describe_event_terms()
    # A table written before the scales by time uses sigma_scale at every time.
    path = tmp_path / "old.toml"
    path.write_text("sigma_scale = 1.3\nearly_seconds = [3]\nearly_correction = [0.1]\n")
    old = StationTable.read(path)
    np.testing.assert_allclose(old.sigma_scale_at(np.array([1.0, 3.0, 60.0])), 1.3)
    for text in ("early_sigma_scale = [1, 2]\n", "early_sigma_scale = [0]\n",
                 "final_sigma_scale = 50\n"):  # fmt: skip
        path.write_text("early_seconds = [3]\nearly_correction = [0.1]\n" + text)
        with pytest.raises(ValueError, match="sigma_scale"):
            StationTable.read(path)


def test_sigma_scales_by_time_are_averaged_with_their_neighbours(monkeypatch):
    # Values at 3 and 10 s err twice as much as their sigma says, at 5 s as much as it says:
    # one knot's own scale is noisy (a network's few past events), so each knot's scale is the
    # geometric mean of its own and its neighbours'.
    import seismag.serving.pipeline.station_table as station_table

    rows = _one_station_events(6, 80, {3: 0.4, 5: 0.2, 10: 0.4})
    smoothed = fit(rows).early_sigma_scale
    monkeypatch.setattr(station_table, "SMOOTH_KNOTS", 0)
    own = fit(rows).early_sigma_scale
    assert 1.7 < own[0] < 2.3 and 0.8 < own[1] < 1.2 and 1.7 < own[2] < 2.3
    geometric = [np.exp(np.mean(np.log(own[max(0, i - 1) : i + 2]))) for i in range(3)]
    assert smoothed == pytest.approx(geometric, rel=1e-9)
    assert fit(rows).final_sigma_scale == pytest.approx(1.0, abs=0.2)  # its own, unsmoothed


def test_station_table_fits_an_early_correction_per_time_after_the_first_p(tmp_path):
    # Final values right on average; 3 s after the first P they read 0.3 low and 10 s after 0.1
    # low, with the scatter their sigma claims.
    rng = np.random.default_rng(3)
    rows = []
    for ev in range(60):
        for k in range(4):
            base = dict(source_id=str(ev), station_id=f"XX.S{k}.", catalogue_magnitude="3.0",
                        sigma="0.2")  # fmt: skip
            rows.append(dict(base, magnitude=str(3.0 + rng.normal(0, 0.2))))
            for t, low in ((3, 0.3), (10, 0.1)):
                value = 3.0 - low + rng.normal(0, 0.2)
                rows.append(dict(base, magnitude=str(value), seconds_after_first_p=str(t)))
    table = fit(rows)
    (t3, c3), (t10, c10) = table.early
    assert (t3, t10) == (3.0, 10.0)
    assert c3 == pytest.approx(0.3 * 60 / 63, abs=0.04)
    assert c10 == pytest.approx(0.1 * 60 / 63, abs=0.04)
    # The scale sees the early values after their correction: the sigma was right everywhere.
    assert 0.9 < table.sigma_scale < 1.2
    # Finals right on average: a final correction near zero; one catalogue magnitude: no gain.
    assert abs(table.final_correction) < 0.04
    assert table.early_gain == (1.0, 1.0) and table.final_gain == 1.0
    table.write(tmp_path / "t.toml")
    back = np.array(StationTable.read(tmp_path / "t.toml").early)
    np.testing.assert_allclose(back, np.array(table.early), atol=1e-4)
    # Linear between the knots, the first knot's before the first, the final's after the last.
    got = table.early_correction(np.array([2.0, 3.0, 6.5, 10.0, 10.5]))
    np.testing.assert_allclose(got, [c3, c3, (c3 + c10) / 2, c10, table.final_correction])
    bad = {"seconds_after_first_p": "soon", "source_id": "1", "station_id": "XX.S0.",
           "magnitude": "3", "catalogue_magnitude": "3"}  # fmt: skip
    with pytest.raises(ValueError, match=r"line 3: .*seconds_after_first_p"):
        fit([rows[0], bad])
    # The column of the first release timed values from each station's own P: refused by name.
    old = [
        {**{k: v for k, v in r.items() if k != "seconds_after_first_p"},
         "seconds_after_p": r.get("seconds_after_first_p", "")}
        for r in rows
    ]  # fmt: skip
    with pytest.raises(ValueError, match="seconds_after_p column"):
        fit(old)


def test_station_table_fits_a_magnitude_scale_gain_per_time(tmp_path):
    # A network whose final values run on a scale 1.25 times as wide as the catalogue's about
    # M 3.5, and whose values 3 s after the first P are compressed to 0.8 of it (an early
    # estimate of a large event saturates).
    from seismag.serving.pipeline.event import EventEstimate

    rng = np.random.default_rng(4)
    rows = []
    for ev in range(80):
        cat = rng.uniform(2.0, 5.0)
        for k in range(4):
            base = dict(source_id=str(ev), station_id=f"XX.S{k}.", catalogue_magnitude=str(cat),
                        sigma="0.1")  # fmt: skip
            final = 3.5 + 1.25 * (cat - 3.5) + rng.normal(0, 0.1)
            early = 3.5 + 0.8 * (cat - 3.5) + rng.normal(0, 0.1)
            rows.append(dict(base, magnitude=str(final)))
            rows.append(dict(base, magnitude=str(early), seconds_after_first_p="3"))
    table = fit(rows)
    # Regression slopes +0.25 and -0.2, shrunk by 80 / 83, inverted.
    assert table.final_gain == pytest.approx(1 / (1 + 0.25 * 80 / 83), abs=0.02)
    assert table.early_gain[0] == pytest.approx(1 / (1 - 0.2 * 80 / 83), abs=0.02)
    # The calibrated event magnitude of a M 5 event's values lands near 5 at both times.
    for value, t in ((3.5 + 1.25 * 1.5, 60.0), (3.5 + 0.8 * 1.5, 3.0)):
        got = table.calibrate(EventEstimate(value, 0.1, ("XX.S0.",), ()), t)
        assert got.magnitude == pytest.approx(5.0, abs=0.12)
        assert got.sigma == pytest.approx(0.1 * float(table.sigma_scale_at(t) * table.gain(t)))
    # Beyond the past events' magnitudes (2-5) the gain's shift is held, not extrapolated.
    lo, hi = table.magnitude_range
    assert 2.0 <= lo < 2.1 and 4.9 < hi <= 5.0
    at_end = table.calibrate(EventEstimate(3.5 + 1.25 * (hi - 3.5), 0.1, (), ()), 60.0)
    beyond = table.calibrate(EventEstimate(3.5 + 1.25 * (hi - 3.5) + 2.0, 0.1, (), ()), 60.0)
    assert at_end.magnitude == pytest.approx(hi, abs=0.1)
    assert beyond.magnitude - at_end.magnitude == pytest.approx(2.0)
    table.write(tmp_path / "t.toml")
    back = StationTable.read(tmp_path / "t.toml")
    assert back.magnitude_range == pytest.approx(table.magnitude_range, abs=1e-4)
    assert back.final_gain == pytest.approx(table.final_gain, abs=1e-4)
    assert back.early_gain == pytest.approx(table.early_gain, abs=1e-4)
    assert back.magnitude_pivot == pytest.approx(table.magnitude_pivot, abs=1e-4)
    # A table without gains (written before them) reads with gain 1 everywhere.
    path = tmp_path / "old.toml"
    path.write_text("early_seconds = [3]\nearly_correction = [0.1]\n")
    old = StationTable.read(path)
    assert old.early_gain == (1.0,) and old.final_gain == 1.0 and old.final_correction == 0.0
    for text, match in (
        ("final_gain = 3.0\n", "final_gain"),
        ("final_gain = 0\n", "final_gain"),
        ("final_correction = 5\n", "final_gain"),
        ("magnitude_pivot = 1e9\n", "final_gain"),
        ("early_seconds = [3]\nearly_correction = [0.1]\nearly_gain = [0.1]\n", "early_gain"),
        ("final_gain = 0.9\n", "magnitude_pivot"),
        ("magnitude_range = [5, 2]\n", "magnitude_range"),
        ("magnitude_range = 3\n", "magnitude_range"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            StationTable.read(path)


def test_a_station_table_with_bad_early_corrections_is_refused(tmp_path):
    path = tmp_path / "t.toml"
    for text in (
        "early_seconds = [3, 5]\nearly_correction = [0.1]\n",
        "early_seconds = [5, 3]\nearly_correction = [0.1, 0.2]\n",
        "early_seconds = [3]\nearly_correction = [9.0]\n",
        "early_seconds = 3\nearly_correction = 0.1\n",
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match="early_seconds"):
            StationTable.read(path)


def test_live_early_correction_follows_the_time_after_the_event_s_first_p():
    from seismag.serving.pipeline.event import Calibration, EventTracker

    cal = Calibration(network_correction=0.1, early=((3.0, 0.2), (10.0, 0.0)))
    t = UTCDateTime(2024, 1, 1)
    tracker = EventTracker(calibration=cal)
    # 3 s after the first P: +0.2 on the event magnitude; 11 s after, none (past the last knot).
    early = tracker.add([station_update("A", t + 3, t, 4.0)])[0].estimate
    assert early.magnitude == pytest.approx(4.0 + 0.1 + 0.2)
    late = tracker.add([station_update("C", t + 11, t + 1, 4.2)])[0].estimate
    plain = combine([est("XX.A.", 4.1, 0.3), est("XX.C.", 4.3, 0.3)])
    assert late.magnitude == pytest.approx(plain.magnitude)
    # Past the last knot the final terms hold: m -> pivot + gain * (m + correction - pivot).
    cal = Calibration(early=((3.0, 0.2),), final_correction=-0.1, final_gain=0.8,
                      magnitude_pivot=3.0)  # fmt: skip
    tracker = EventTracker(calibration=cal)
    tracker.add([station_update("A", t + 3, t, 4.0)])
    late = tracker.add([station_update("C", t + 11, t + 1, 4.2)])[0].estimate
    plain = combine([est("XX.A.", 4.0, 0.3), est("XX.C.", 4.2, 0.3)])
    assert late.magnitude == pytest.approx(3.0 + 0.8 * (plain.magnitude - 0.1 - 3.0))
    assert late.sigma == pytest.approx(0.8 * plain.sigma)


def test_calibration_corrects_by_station_then_network_and_scales_the_sigma():
    from seismag.serving.pipeline.event import Calibration, EventTracker

    cal = Calibration(
        corrections={"XX.A.": 0.3, "XX.B": -0.1}, network_correction=0.05, sigma_scale=2.0
    )
    assert cal.correction("XX.A.") == 0.3 and cal.correction("XX.B.00") == -0.1
    assert cal.correction("XX.C.") == 0.05
    t = UTCDateTime(2024, 1, 1)
    updates = [station_update("A", t + 3, t, 4.0), station_update("C", t + 4, t + 1, 4.2)]
    got = EventTracker(calibration=cal).add(updates)[0].estimate
    plain = combine([est("XX.A.", 4.3, 0.3), est("XX.C.", 4.25, 0.3)])
    assert got.magnitude == pytest.approx(plain.magnitude)
    assert got.sigma == pytest.approx(2.0 * plain.sigma)


def test_a_station_counts_for_its_event_from_2_to_20_s_after_its_p():
    after = np.array([1.0, 2.0, 10.0, 20.0, 25.0, 30.0])
    assert event_values(after).tolist() == [False, True, True, True, False, False]
    finite = np.array([True, True, True, False, True, True])
    assert event_values(after, finite).tolist() == [False, True, True, False, False, False]
    # Values that all come later: the station counts with its first one.
    assert event_values(np.array([1.0, 25.0, 30.0])).tolist() == [False, True, False]
    assert not event_values(np.array([0.5, 1.5])).any()


def test_live_event_keeps_a_stations_estimate_from_20_s_after_its_p():
    from types import SimpleNamespace

    onset = UTCDateTime(2024, 1, 1)

    def update(station, seconds, m):
        return SimpleNamespace(
            network="XX", station=station, location="", onset=onset,
            time=onset + seconds, magnitude=m, magnitude_sigma=0.3,
        )  # fmt: skip

    tracker = EventTracker()
    tracker.add([update("A", 10.0, 4.0), update("B", 10.0, 4.2)])
    assert tracker.add([update("A", 25.0, 5.0)]) == []  # past 20 s: nothing changes
    (ev,) = tracker.add([update("B", 12.0, 4.3)])  # A still counts with its 4.0
    assert ev.estimate.magnitude == pytest.approx(combine([est("A", 4.0), est("B", 4.3)]).magnitude)
    (first,) = tracker.add([update("C", 25.0, 4.4)])  # C's first value is late: it counts
    assert "XX.C." in first.estimate.used


def test_a_station_table_with_a_bad_scale_or_network_correction_is_refused(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("sigma_scale = 0\n")
    with pytest.raises(ValueError, match="sigma_scale"):
        StationTable.read(path)
    path.write_text("network_correction = 7.5\n")
    with pytest.raises(ValueError, match="network_correction"):
        StationTable.read(path)


def synthetic_event(index: int = 3, seed: int = 11):
    """A multi-station synthetic event as an ObsPy stream in m/s, its P picks and magnitude."""
    ev = simulate_event(seed, index, SyntheticConfig(p_window_s=(4.0, 8.0)))
    st, picks = Stream(), {}
    for wave, meta in zip(ev.waveforms, ev.metadata, strict=True):
        start = UTCDateTime(meta["trace_start_time"])
        for comp, data in zip("ZNE", wave, strict=True):
            st += Trace(
                data.astype(np.float64),
                dict(network="SY", station=meta["station_code"], channel=f"HH{comp}",
                     sampling_rate=100.0, starttime=start),
            )  # fmt: skip
        picks[f"SY.{meta['station_code']}"] = start + meta["trace_p_arrival_sample"] / 100.0
    return st, picks, ev.metadata[0]["source_magnitude"]


def counted_value(r) -> tuple[float, float]:
    """A station's value and sigma in its event's final magnitude: its last value within
    ``EVENT_AFTER_ONSET_SECONDS`` of its own P."""
    after = r.series_offsets() + float(UTCDateTime(r.series_start) - r.onset)
    k = np.flatnonzero(event_values(after, np.isfinite(r.series)))[-1]
    assert after[k] <= EVENT_AFTER_ONSET_SECONDS + 1e-6
    return float(r.series[k]), float(r.sigma_series[k])


def test_event_of_a_predict_is_causal_and_combines_its_stations(registry):
    st, picks, _ = synthetic_event()
    results = predict(registry, st, units="m/s", p_picks=picks)
    ev = event_magnitude(results)
    assert len(results) >= 3 and set(ev.final.used) | set(ev.final.rejected) == {
        f"SY.{r.station}." for r in results
    }
    used = [r for r in results if f"SY.{r.station}." in ev.final.used]
    assert any(  # the records run past it: the rule matters here
        float(UTCDateTime(r.series_end) - r.onset) > EVENT_AFTER_ONSET_SECONDS for r in used
    )
    again = combine([est(f"SY.{r.station}.", *counted_value(r)) for r in used])
    assert ev.final.magnitude == pytest.approx(again.magnitude)
    assert ev.series[-1] == pytest.approx(ev.final.magnitude)
    assert ev.first_onset == min(picks.values())
    assert ev.series_start >= ev.first_onset + 2.0 - 1e-6
    assert np.all(np.diff(ev.station_counts) >= -1)  # stations join (a rejection may drop one)
    # Causal: with every trace cut 6 s after the first onset, the event series up to the cut is
    # the same (the values at the cut itself come from each station's data end, off the grid).
    cut = ev.first_onset + 6.0
    short = event_magnitude(predict(registry, st.slice(endtime=cut), units="m/s", p_picks=picks))
    assert short.series_start == ev.series_start
    offsets = np.arange(len(short.series)) * ev.series_interval
    before = offsets < (cut - ev.series_start) - 0.05
    assert before.sum() >= 2
    np.testing.assert_allclose(short.series[before], ev.series[: len(before)][before], atol=1e-5)
    np.testing.assert_allclose(
        short.sigma_series[before], ev.sigma_series[: len(before)][before], atol=1e-5
    )
    # An early correction shifts the event magnitude by its time after the first P: one knot past
    # the record's end shifts every value; one before the first value, none.
    from seismag.serving.pipeline.event import Calibration

    late = event_magnitude(results, Calibration(early=((500.0, 0.5),)))
    np.testing.assert_allclose(late.series, ev.series + 0.5, atol=1e-9)
    none = event_magnitude(results, Calibration(early=((1.0, 0.5),)))
    np.testing.assert_allclose(none.series, ev.series, atol=1e-9)


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "stations.toml"
    st, _, _ = synthetic_event()
    first = st[0].stats.station
    StationTable(
        corrections={f"SY.{first}": 0.25},
        shared_error_fraction=0.3,
        early=((3.0, 0.1), (6.0, 0.05)),  # the records run well past 6 s: finals unchanged
        model="PhaseNetMag",
        events=10,
    ).write(path)
    return path


@pytest.fixture(scope="module")
def server(registry, table_path):
    srv = build_server(registry, address="127.0.0.1:0", station_table=str(table_path)).start()
    yield srv
    srv.stop(1)


def test_predict_returns_the_event_over_grpc(stub, registry):
    st, picks, true_m = synthetic_event()
    buf = io.BytesIO()
    st.write(buf, format="MSEED", encoding="FLOAT64")
    request = pb.PredictRequest(
        miniseed=buf.getvalue(),
        input_units="m/s",
        p_picks=[pb.PPick(station_id=k, time=float(t.timestamp)) for k, t in picks.items()],
    )
    reply = stub.Predict(request, timeout=60)
    assert reply.has_event
    e = reply.event
    first = f"SY.{st[0].stats.station}."
    assert dict(e.corrections) == {first: 0.25}
    # The server's station results are the pipeline's (tests/test_server.py); each counts with
    # its value from 20 s after its P.
    results = predict(registry, st, units="m/s", p_picks=picks)
    assert {f"SY.{r.station}." for r in reply.results} == {f"SY.{r.station}." for r in results}
    corrected = []
    for r in results:
        k = f"SY.{r.station}."
        value, sigma = counted_value(r)
        corrected.append(est(k, value + (0.25 if k == first else 0.0), sigma))
    expect = combine(corrected, shared=0.3)
    assert e.magnitude == pytest.approx(expect.magnitude, abs=1e-5)
    assert e.magnitude_sigma == pytest.approx(expect.sigma, abs=1e-5) and e.has_sigma
    assert set(e.stations) == set(expect.used) and not e.not_associated
    assert len(e.series.values) == len(e.station_counts) == len(e.series.sigmas)
    # The early correction is in the early values: 0.1 on the first (2 s after the first P).
    plain = event_magnitude(results, StationTable(corrections={first: 0.25}))
    assert e.series.values[0] - plain.series[0] == pytest.approx(0.1, abs=1e-5)
    assert e.series.values[-1] == pytest.approx(plain.series[-1], abs=1e-5)
    assert abs(e.magnitude - true_m) < 1.0  # a sanity bound, not an accuracy claim


def test_predict_without_onsets_has_no_event(stub):
    st, picks, _ = synthetic_event()
    one = st.select(station=st[0].stats.station)
    p = picks[f"SY.{st[0].stats.station}"]
    noise = one.slice(endtime=p - 0.5)  # only noise: no onset, so no value and no event
    buf = io.BytesIO()
    noise.write(buf, format="MSEED", encoding="FLOAT64")
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb.PredictRequest(miniseed=buf.getvalue(), input_units="m/s"), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_bad_station_table_stops_the_server_with_a_message(registry, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("shared_error_fraction = 3\n")
    with pytest.raises(ValueError, match="shared_error_fraction"):
        build_server(registry, address="127.0.0.1:0", station_table=str(bad))


# -- ensembles ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_models(model_dir):
    from seismag.serving.executor.runtime import ModelRegistry

    reg = ModelRegistry.from_paths([model_dir], default="PhaseNetMag", max_queue_delay_ms=1.0)
    yield reg
    reg.close()


def test_ensemble_station_is_the_members_mean_with_their_spread(two_models):
    from seismag.serving.pipeline.ensemble import predict_ensemble

    st, picks, _ = synthetic_event()
    members = ["PhaseNetMag", "ViTMag"]
    got = predict_ensemble(two_models, st, members, "E", units="m/s", p_picks=picks)
    alone = {m: predict(two_models, st, model=m, units="m/s", p_picks=picks) for m in members}
    assert [r.station for r in got] == [r.station for r in alone["PhaseNetMag"]]
    for i, r in enumerate(got):
        a, b = alone["PhaseNetMag"][i], alone["ViTMag"][i]
        assert r.model == "E" and r.onset == a.onset and r.series_end == a.series_end
        assert r.magnitude == pytest.approx((a.magnitude + b.magnitude) / 2)
        spread = ((a.magnitude - b.magnitude) / 2) ** 2
        mean_var = (a.magnitude_sigma**2 + b.magnitude_sigma**2) / 2
        assert r.magnitude_sigma == pytest.approx(math.sqrt(mean_var + spread))
        # The series starts where both members have values: the series model's start.
        assert r.series_start == max(a.series_start, b.series_start)


def test_an_ensemble_is_served_by_predict_and_listed(two_models):
    srv = build_server(
        two_models, address="127.0.0.1:0", ensemble=("E=PhaseNetMag,ViTMag",)
    ).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = pb_grpc.MagnitudeServiceStub(ch)
            st, picks, _ = synthetic_event()
            buf = io.BytesIO()
            st.write(buf, format="MSEED", encoding="FLOAT64")
            picks_pb = [pb.PPick(station_id=k, time=float(t.timestamp)) for k, t in picks.items()]
            request = pb.PredictRequest(
                miniseed=buf.getvalue(), input_units="m/s", p_picks=picks_pb, model="E"
            )
            reply = stub.Predict(request, timeout=60)
            assert {r.model for r in reply.results} == {"E"} and reply.has_event
            assert all(r.has_sigma for r in reply.results)
            listed = {m.name: m for m in stub.ListModels(pb.ListModelsRequest()).models}
            assert '"ensemble": ["PhaseNetMag", "ViTMag"]' in listed["E"].card_json
            assert stub.GetModel(pb.GetModelRequest(name="E")).name == "E"
            # The ensemble's requests count under its name; its members ran the windows.
            oip = oip_grpc.GRPCInferenceServiceStub(ch)
            stats = oip.ModelStatistics(oip_pb2.ModelStatisticsRequest(name="E")).model_stats[0]
            assert stats.version == listed["E"].version
            assert stats.inference_stats.success.count == 1 and stats.inference_count == 0
            chunk = pb.RawTrace(
                network="SY", station="A", channel="HHZ", sampling_rate=100.0,
                starttime=1.7e9, samples=[0.0] * 100,
            )  # fmt: skip
            first = pb.StreamRequest(config=pb.StreamConfig(model="E"), raw_chunk=chunk)
            stream = stub.StreamPredict(iter([first]), timeout=10)
            with pytest.raises(grpc.RpcError) as err:
                list(stream)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "Predict only" in err.value.details()
    finally:
        srv.stop(1)
    with pytest.raises(ValueError, match="not loaded"):
        build_server(two_models, address="127.0.0.1:0", ensemble=("E=PhaseNetMag,Nope",))
    with pytest.raises(ValueError, match="two or more"):
        build_server(two_models, address="127.0.0.1:0", ensemble=("E=PhaseNetMag",))


def test_station_table_cli_fits_and_the_server_reads_it(tmp_path, capsys):
    from seismag.cli import main

    csv = tmp_path / "past.csv"
    csv.write_text(
        "source_id,station_id,magnitude,catalogue_magnitude\n"
        "e1,XX.A.,3.3,3.0\ne1,XX.B.,2.9,3.0\ne2,XX.A.,4.3,4.0\ne2,XX.B.,4.0,4.0\n"
    )
    out = tmp_path / "table.toml"
    assert main(["station-table", str(csv), "--out", str(out), "--model", "M"]) == 0
    table = StationTable.read(out)
    # Event mean residuals 0.1 and 0.15, 2 events + 3 pseudo-events; no station has 3 events.
    assert table.network_correction == pytest.approx(-0.25 / 5, abs=1e-4)
    assert table.corrections == {} and table.sigma_scale == 1.0  # no sigma column
    assert main(["station-table", str(tmp_path / "none.csv"), "--out", str(out)]) == 2
    assert "none.csv" in capsys.readouterr().err
    csv.write_text("source_id,station_id,magnitude,catalogue_magnitude\ne1,XX.A.,high,3.0\n")
    assert main(["station-table", str(csv), "--out", str(out)]) == 2
    assert "line 2" in capsys.readouterr().err


# -- live events in StreamPredict -----------------------------------------------------------------


def station_update(sta, time, onset, magnitude, sigma=0.3):
    from seismag.serving.pipeline.results import StationUpdate

    return StationUpdate("XX", sta, "", time, magnitude, onset, "M", 0.0, magnitude_sigma=sigma)


def test_tracker_associates_by_onset_and_follows_a_station_to_its_next_event():
    from seismag.serving.pipeline.event import Calibration, EventTracker

    t = UTCDateTime(2024, 1, 1)
    tracker = EventTracker(calibration=Calibration(shared_error_fraction=0.0))
    out = tracker.add([station_update("A", t + 3, t, 4.0), station_update("B", t + 12, t + 9, 4.2)])
    assert [e.event_id for e in out] == ["ev1"] and out[0].estimate.used == ("XX.A.", "XX.B.")
    assert out[0].time == t + 12 and out[0].first_onset == t
    assert tracker.add([station_update("C", t + 1.5, t, 9.0)]) == []  # P seen for < 2 s
    later = tracker.add([station_update("A", t + 303, t + 300, 2.0)])  # A's next event
    assert [e.event_id for e in later] == ["ev2"] and later[0].estimate.used == ("XX.A.",)
    again = tracker.add([station_update("B", t + 13, t + 9, 4.4)])
    assert again[0].event_id == "ev1" and again[0].estimate.used == ("XX.B.",)
    fixed = EventTracker(event_id="quake")
    got = fixed.add([station_update("A", t + 3, t, 4.0), station_update("B", t + 503, t + 500, 4)])
    assert {e.event_id for e in got} == {"quake"} and len(got[0].estimate.used) == 2


def test_stream_events_end_at_the_predict_event(stub, registry, table_path):
    st, picks, _ = synthetic_event()
    start = min(tr.stats.starttime for tr in st)
    end = max(tr.stats.endtime for tr in st)
    config = pb.StreamConfig(input_units="m/s", hop_seconds=1.0, events=True)
    requests = [pb.StreamRequest(config=config)]
    requests += [
        pb.StreamRequest(pick=pb.PPick(station_id=k, time=float(t.timestamp)))
        for k, t in picks.items()
    ]
    t = start
    while t < end:  # one message per second of data, every station's components in it
        piece = st.slice(t, t + 1 - 0.005)
        chunks = [
            pb.RawTrace(
                network=tr.stats.network,
                station=tr.stats.station,
                channel=tr.stats.channel,
                sampling_rate=100.0,
                starttime=float(tr.stats.starttime.timestamp),
                samples=tr.data.astype(np.float32).tolist(),
            )
            for tr in piece
            if tr.stats.npts
        ]
        requests.append(pb.StreamRequest(raw_chunks=pb.RawTraces(traces=chunks)))
        t += 1
    events = [e for reply in stub.StreamPredict(iter(requests), timeout=120) for e in reply.events]
    assert events and {e.event_id for e in events} == {"ev1"}
    table = StationTable.read(table_path)
    st32 = st.copy()
    for tr in st32:  # the stream carried float32 samples: compare with the same samples
        tr.data = tr.data.astype(np.float32).astype(np.float64)
    expect = event_magnitude(predict(registry, st32, units="m/s", p_picks=picks), table)
    last = events[-1]
    assert last.magnitude == pytest.approx(expect.final.magnitude, abs=1e-4)
    assert last.magnitude_sigma == pytest.approx(expect.final.sigma, abs=1e-4)
    assert set(last.stations) == set(expect.final.used)
    assert last.first_onset == pytest.approx(float(min(picks.values()).timestamp))
