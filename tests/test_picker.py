"""The server's P picker (serving/pipeline/onset.py PPicker): accuracy on short records, S
rejection, chunk invariance, causality, bounded state, missing components, and its fields end to
end."""

from __future__ import annotations

import io

import grpc
import numpy as np
import obspy
import pytest
from obspy import Stream, UTCDateTime
from station_metadata import rjob_inventory, write_inventory

from seismag.serving.client import raw_trace
from seismag.serving.pipeline.onset import (
    KEEP_ONSETS,
    NETWORK_PICKER_NAME,
    PICKER_NAME,
    PPicker,
    first_p_onset,
)
from seismag.serving.pipeline.predict import StationTrack, predict
from seismag.serving.protocols.server import build_server
from seismag.serving.v1 import seismag_pb2 as pb
from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc
from seismag.training.synthetic import SyntheticConfig, simulate_event

RATE = 100.0
RJOB_P = UTCDateTime(2009, 8, 24, 0, 20, 7, 800000)  # the pick the other tests send for RJOB
INV = rjob_inventory()  # RJOB's record is in counts: its response


@pytest.fixture(scope="module")
def short_records() -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic ZNE records with 2-3 s of noise before P (seed 7: not the tuning seed 1)."""
    config = SyntheticConfig(p_window_s=(2.0, 3.0))
    waves, p, s, snr = [], [], [], []
    for i in range(12):
        ev = simulate_event(7, i, config, trace_seconds=40.0)
        waves += list(ev.waveforms.astype(np.float64))
        p += [m["trace_p_arrival_sample"] for m in ev.metadata]
        s += [m["trace_s_arrival_sample"] for m in ev.metadata]
        snr += [m["trace_snr_db"] for m in ev.metadata]
    return waves, np.array(p), np.array(s), np.array(snr)


def rjob_zne() -> np.ndarray:
    st = obspy.read()
    return np.stack([st.select(component=c)[0].data for c in "ZNE"]).astype(np.float64)


def test_short_records_onset_within_half_a_second_and_never_s(short_records):
    waves, p, s, snr = short_records
    assert np.all(p <= 3 * RATE)
    picks = [first_p_onset(w, RATE) for w in waves]
    clear = snr >= 20.0  # P is visible on these; weaker ones may legitimately get no pick
    assert clear.sum() >= 30
    ok = [
        o is not None and abs(o.sample - pp) <= 0.5 * RATE for o, pp in zip(picks, p, strict=True)
    ]
    assert np.mean(np.array(ok)[clear]) >= 0.95
    taken_s = [
        o is not None and abs(o.sample - ss) < abs(o.sample - pp)
        for o, pp, ss in zip(picks, p, s, strict=True)
    ]
    assert not any(taken_s)
    for o in picks:
        assert o is None or 0.0 <= o.confidence <= 1.0


def _noise_and_burst(seed: int, burst_on: tuple[float, float, float]) -> np.ndarray:
    """12 s of white noise with a 5-15 Hz burst from 4 s on, scaled per component (Z, N, E)."""
    rng = np.random.default_rng(seed)
    n = int(12 * RATE)
    t = np.arange(n) / RATE
    x = rng.normal(size=(3, n))
    burst = np.where(t >= 4.0, np.exp(-(t - 4.0) / 2.0), 0.0)
    for c, gain in enumerate(burst_on):
        wiggle = np.sin(2 * np.pi * (7.0 + c) * t + c) * rng.normal(1.0, 0.3, n)
        x[c] += gain * burst * wiggle
    return x


def test_an_arrival_strongest_on_the_horizontals_is_not_taken_for_p():
    p_like = first_p_onset(_noise_and_burst(1, (30.0, 8.0, 8.0)), RATE)
    assert p_like is not None and abs(p_like.sample - 400) <= 10
    s_like = _noise_and_burst(1, (8.0, 30.0, 30.0))
    assert first_p_onset(s_like, RATE) is None
    # Without horizontals there is nothing to compare with: the same arrival is kept.
    assert first_p_onset(s_like[:1], RATE, vertical=0, horizontal=()) is not None


def test_same_onsets_whatever_the_chunking(short_records, rng):
    waves = short_records[0][:8]
    for w in waves:
        whole = PPicker(RATE, refractory=500)
        ratio = whole.feed(w)
        chunked = PPicker(RATE, refractory=500)
        parts, i = [], 0
        while i < w.shape[1]:
            k = int(rng.integers(1, 400))
            parts.append(chunked.feed(w[:, i : i + k]))
            i += k
        assert np.array_equal(np.concatenate(parts), ratio)
        assert chunked.accepted == whole.accepted


def test_onsets_are_decided_within_max_delay(short_records):
    """Cut anywhere, the picker knows every onset that lies max_delay before the cut, and the
    same ones as with the whole record: onsets never depend on data far after them."""
    w = short_records[0][0]
    full = PPicker(RATE, refractory=500)
    full.feed(w)
    assert full.accepted
    for cut in range(300, w.shape[1], 137):
        part = PPicker(RATE, refractory=500)
        part.feed(w[:, :cut])
        settled = [o for o in full.accepted if o.sample <= cut - 1 - part.max_delay]
        assert [o for o in part.accepted if o.sample <= cut - 1 - part.max_delay] == settled
        assert set(part.accepted) <= set(full.accepted)


def test_state_is_bounded_on_an_endless_feed():
    picker = PPicker(RATE, refractory=300)
    block = _noise_and_burst(3, (30.0, 5.0, 5.0))  # one P-like arrival every 12 s
    for _ in range(120):  # 24 minutes of data, 120 arrivals
        picker.feed(block)
        assert picker._hist.shape[1] <= picker._keep
    assert len(picker.accepted) == KEEP_ONSETS
    assert picker.n == 120 * block.shape[1]
    gaps = np.diff([o.sample for o in picker.accepted])
    assert np.all(np.abs(gaps - block.shape[1]) <= 10)  # each arrival once, none missed


def test_picker_works_on_z_or_on_horizontals_alone():
    w = rjob_zne()
    z = first_p_onset(w, RATE)
    assert z is not None and abs(z.sample - 480) <= 50  # RJOB's P at 4.8 s
    assert first_p_onset(w[:1], RATE, vertical=0, horizontal=()) == z
    h = first_p_onset(w[1:], RATE, vertical=None, horizontal=(0, 1))
    assert h is not None and abs(h.sample - 480) <= 50


def test_station_track_uses_an_onset_only_once_it_is_decided(registry):
    card = registry.get("").card
    w = rjob_zne()
    track = StationTrack(card, UTCDateTime(0))
    o = first_p_onset(w, RATE)
    usable_from = o.sample + max(track.min_after, track.picker.max_delay)
    track.extend(w[:, :usable_from])  # newest sample is usable_from - 1: one short
    assert track.onset()[0] is None
    track.extend(w[:, usable_from : usable_from + 1])
    assert track.onset() == (o.sample, PICKER_NAME, o.confidence)


def test_predict_without_pick_on_a_record_starting_5_s_before_p(registry):
    r = predict(registry, obspy.read(), inventory=INV)[0]
    # The served default: the picker network beside the STA/LTA; here the network is first.
    assert r.onset_source == NETWORK_PICKER_NAME and abs(r.onset - RJOB_P) < 0.5
    assert 0.0 < r.onset_confidence <= 1.0
    z_only = predict(registry, obspy.read().select(component="Z"), inventory=INV)[0]
    assert z_only.missing_components == ("N", "E") and abs(z_only.onset - RJOB_P) < 0.5
    picked = predict(registry, obspy.read(), p_picks={"BW.RJOB": RJOB_P}, inventory=INV)[0]
    assert picked.onset_source == "request" and picked.onset_confidence == 1.0


# -- end to end through the gRPC server -----------------------------------------------------------


@pytest.fixture(scope="module")
def stub(registry, tmp_path_factory):
    inventory = write_inventory(tmp_path_factory.mktemp("inventory") / "rjob.xml")
    srv = build_server(
        registry, address="127.0.0.1:0", metrics_port=0, inventory=str(inventory)
    ).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    yield pb_grpc.MagnitudeServiceStub(channel)
    channel.close()
    srv.stop(1)


def _miniseed(st: Stream) -> bytes:
    buf = io.BytesIO()
    st.write(buf, format="MSEED")
    return buf.getvalue()


def test_grpc_predict_and_stream_carry_the_onset_source_and_confidence(stub, registry):
    st = obspy.read()
    reply = stub.Predict(pb.PredictRequest(miniseed=_miniseed(st)), timeout=30)
    r = reply.results[0]
    expected = predict(registry, obspy.read(), inventory=INV)[0]
    assert r.has_onset and r.onset_source == NETWORK_PICKER_NAME
    assert r.onset == pytest.approx(expected.onset.timestamp, abs=1e-6)
    assert r.onset_confidence == pytest.approx(expected.onset_confidence)
    assert 0.0 < r.onset_confidence <= 1.0

    def requests():
        yield pb.StreamRequest(config=pb.StreamConfig(hop_seconds=1.0))
        for k in range(30):
            for tr in st:
                raw = raw_trace(tr.slice(tr.stats.starttime + k, tr.stats.starttime + k + 0.999))
                yield pb.StreamRequest(raw_chunk=raw)

    updates = [u for m in stub.StreamPredict(requests(), timeout=30) for u in m.updates]
    assert updates and all(u.has_onset for u in updates)
    assert {u.onset_source for u in updates} == {NETWORK_PICKER_NAME}
    # Raw chunks travel as float32 (the miniSEED as integers): equal to float32 precision.
    for u in updates:
        assert u.onset_confidence == pytest.approx(r.onset_confidence, rel=1e-5)
    assert updates[-1].onset == pytest.approx(r.onset, abs=1e-6)
    noise_only = _miniseed(st.slice(endtime=RJOB_P - 0.5))
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb.PredictRequest(miniseed=noise_only), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BW.RJOB" in err.value.details() and "no P onset" in err.value.details()
