"""Seeded random mutations of valid requests against a real server on a loopback port.

The corpus of ``test_inputs.py`` names each awkward input and its status; this goes wide instead:
mutated miniSEED records (rates, lengths, times, codes, gaps, overlaps, dtypes, amplitudes,
flipped or cut bytes), odd raw arrays, picks, intervals and units, mutated StreamPredict
sequences, and mutated Open Inference Protocol tensors. Whatever comes in, the answer is a
magnitude that could be one, or a client error with a message; never INTERNAL or UNKNOWN, and
the server stays healthy. Such fuzzers found four INTERNAL errors and a magnitude of -14
(docs/serving.md, inputs), and NaN magnitudes from ModelInfer.
"""

from __future__ import annotations

import io
import math
import random
import re
from pathlib import Path

import grpc
import numpy as np
import obspy
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from obspy import Stream, UTCDateTime

from seismag.serving.oip import grpc_service_pb2 as oip_pb
from seismag.serving.oip import grpc_service_pb2_grpc as oip_grpc
from seismag.serving.v1 import seismag_pb2 as pb

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # ObsPy writing odd records

CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
}
ODD = [0.0, -1.0, math.nan, math.inf, 1e-12, 1e300, 1e9, 3.0, 99.99999, 2.0**31]
T0 = UTCDateTime(2024, 1, 1).timestamp


@pytest.fixture(scope="module")
def velocity_record() -> Stream:
    st = obspy.read().remove_sensitivity(obspy.read_inventory())
    for tr in st:
        tr.data = tr.data.astype(np.float32)
    return st


def _mseed(st: Stream, encoding: str | None) -> bytes:
    buf = io.BytesIO()
    if encoding in ("STEIM1", "STEIM2", "INT32"):
        for tr in st:
            tr.data = np.clip(np.nan_to_num(tr.data * 1e9), -(2**30), 2**30).astype(np.int32)
    st.write(buf, format="MSEED", **({"encoding": encoding} if encoding else {}))
    return buf.getvalue()


def _mutate(st: Stream, r: random.Random) -> Stream:
    st = st.copy()
    if not st:
        return st
    tr = r.choice(st)
    op = r.randrange(11)
    if op == 0:
        tr.stats.sampling_rate = r.choice([20.0, 40.0, 200.0, 1000.0, 2000.0, 10000.0, 19.0])
    elif op == 1:
        tr.data = tr.data[: r.choice([0, 1, 10, 150, 1000])]
    elif op == 2:
        tr.stats.starttime += r.choice([-30.0, 0.5, 1e-3, 3600.0 * 24 * 365 * 50])
    elif op == 3:
        tr.stats.channel = r.choice(["BHZ", "HH1", "EHX", "BDF", "LHZ", "HNZ"])
    elif op == 4:
        st.append(tr.copy())
    elif op == 5:
        st.remove(tr)
    elif op == 6:
        tr.data = (tr.data * r.choice([0.0, 1e30, 1e-30, -1.0, 1e10])).astype(tr.data.dtype)
    elif op == 7:
        n = tr.stats.npts
        a, b = tr.copy(), tr.copy()
        a.data, b.data = a.data[: n // 3], b.data[2 * n // 3 :]
        b.stats.starttime = tr.stats.starttime + (2 * n // 3) * tr.stats.delta
        st.remove(tr)
        st += Stream([a, b])
    elif op == 8:
        b = tr.copy()
        b.stats.starttime -= r.uniform(0.0, 20.0)
        st.append(b)
    elif op == 9:
        tr.stats.network, tr.stats.location = r.choice([("", "00"), ("XXX", "--"), ("Q", "")])
    else:
        for t in st:
            t.data = t.data.astype(r.choice([np.float32, np.float64]))
    return st


def _request(r: random.Random, st0: Stream) -> pb.PredictRequest:
    req = pb.PredictRequest(input_units="m/s", series_interval=30.0)
    req.p_picks.add(station_id="BW.RJOB", time=st0[0].stats.starttime.timestamp + 5.0)
    kind = r.randrange(6)
    if kind <= 2:
        st = st0
        for _ in range(r.randrange(1, 4)):
            st = _mutate(st, r)
        try:
            req.miniseed = _mseed(st, r.choice([None, "FLOAT64", "STEIM2", "INT32"]))
        except Exception:  # ObsPy cannot write it: a dead end of the mutations, not a case
            req.miniseed = _mseed(st0.copy(), None)
    elif kind == 3:
        data = bytearray(_mseed(st0.copy(), None))
        if r.random() < 0.5:
            for _ in range(r.choice([1, 5, 50])):
                data[r.randrange(len(data))] = r.randrange(256)
        else:
            data = data[: r.randrange(len(data))]
        req.miniseed = bytes(data)
    elif kind == 4:
        for comp in "ZNE"[: r.choice([1, 3, 3])]:
            n = r.choice([0, 1, 50, 3000])
            x = np.random.default_rng(r.randrange(2**31)).normal(0, 1e-6, n).astype(np.float32)
            if n and r.random() < 0.3:
                x[r.randrange(n)] = r.choice([np.nan, np.inf, 3e38])
            req.raw.traces.add(network="XX", station="S", channel="HH" + comp, samples=x,
                               sampling_rate=r.choice([100.0, *ODD]),
                               starttime=r.choice([T0, *ODD]))  # fmt: skip
    else:
        req.miniseed = _mseed(st0.copy(), None)
        which = r.randrange(3)  # one thing at a time, or the first refusal hides the others
        if which == 0:
            req.series_interval = r.choice([1.0, *ODD])
        elif which == 1:
            req.input_units = r.choice(["m/s", "counts", "nm/s", ""])
        else:
            req.p_picks[0].time = r.choice([req.p_picks[0].time, *ODD])
    return req


def _check_answer(reply: pb.PredictResponse) -> None:
    for s in reply.results:
        values = [s.magnitude, *s.series.values]
        assert all(math.isfinite(v) and -3.0 < v < 11.0 for v in values), values[:5]
        assert not s.has_sigma or (math.isfinite(s.magnitude_sigma) and s.magnitude_sigma > 0)
    if reply.has_event:
        assert math.isfinite(reply.event.magnitude)


def _stream_messages(r: random.Random) -> list[pb.StreamRequest]:
    hop = r.choice(ODD) if r.random() < 0.1 else r.choice([1.0, 0.5, 2.0])
    config = pb.StreamConfig(input_units="m/s", hop_seconds=hop)
    msgs = [pb.StreamRequest(config=config)]
    t, rate = 0.0, 100.0
    rng = np.random.default_rng(r.randrange(2**31))
    for _ in range(r.choice([5, 20, 40])):
        op = r.randrange(60)  # 0-4: a mutation; the rest: the next second of data
        if op == 0:
            t += r.choice([-5.0, -0.5, 3600.0])
        elif op == 1:
            rate = r.choice([40.0, 200.0, 19.0, 20_001.0, math.nan])
        n = max(1, int(100 * (rate / 100.0 if 0 < rate < 1e5 else 1)))
        traces = pb.RawTraces()
        for comp in "ZNE":
            x = (1e-7 * rng.normal(size=n) * (30.0 if t > 15 else 1.0)).astype(np.float32)
            if op == 2:
                x[0] = np.nan
            traces.traces.add(network="XX", station="S", channel="HH" + comp,
                              sampling_rate=rate, starttime=T0 + t, samples=x)  # fmt: skip
        if op == 3:
            msgs.append(pb.StreamRequest(pick=pb.PPick(station_id="XX.S", time=r.choice(ODD))))
        elif op == 4:
            msgs.append(pb.StreamRequest(config=config))
        else:
            msgs.append(pb.StreamRequest(raw_chunks=traces))
        if math.isfinite(rate) and rate > 0:
            t += n / rate
    return msgs


def _outcomes(call, requests, check) -> dict[str, int]:
    """Send each request: a client error with a message (counted by code) or a reply that
    ``check`` accepts (counted OK); anything else fails the test."""
    codes: dict[str, int] = {}
    for request in requests:
        try:
            reply = call(request, timeout=30)
        except grpc.RpcError as exc:
            assert exc.code() in CLIENT_ERRORS and exc.details(), (exc.code(), exc.details())
            codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
            continue
        codes["OK"] = codes.get("OK", 0) + 1
        check(reply)
    return codes


def test_mutated_predicts_get_magnitudes_or_client_errors(server, stub, velocity_record):
    r = random.Random(20261129)
    requests = (_request(r, velocity_record) for _ in range(150))
    codes = _outcomes(stub.Predict, requests, _check_answer)
    assert codes.get("OK", 0) >= 15 and codes.get("INVALID_ARGUMENT", 0) >= 15, codes
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1  # SERVING


def test_mutated_streams_get_updates_or_client_errors(stub):
    r = random.Random(7)
    codes: dict[str, int] = {}
    updates = 0
    for _ in range(40):
        try:
            for reply in stub.StreamPredict(iter(_stream_messages(r)), timeout=30):
                for u in reply.updates:
                    assert math.isfinite(u.magnitude) and -3.0 < u.magnitude < 11.0
                    updates += 1
            codes["OK"] = codes.get("OK", 0) + 1
        except grpc.RpcError as exc:
            assert exc.code() in CLIENT_ERRORS and exc.details(), (exc.code(), exc.details())
            codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
    # how many updates a fast replay gets depends on timing (coalescing): some, not a count
    assert codes.get("OK", 0) >= 5 and updates >= 5, (codes, updates)


def _infer_request(r: random.Random) -> oip_pb.ModelInferRequest:
    """A valid ModelInfer (batch 1-3 of normalised noise) with one to three mutations."""
    batch = r.choice([1, 3])
    rng = np.random.default_rng(r.randrange(2**31))
    wave = np.clip(rng.normal(0, 0.3, (batch, 3, 3001)), -1, 1).astype(np.float32)
    req = oip_pb.ModelInferRequest(model_name="PhaseNetMag")
    req.inputs.add(name="waveform", datatype="FP32", shape=[batch, 3, 3001])
    req.inputs.add(name="log_amp", datatype="FP32", shape=[batch, 1])
    req.raw_input_contents.extend([wave.tobytes(), np.full((batch, 1), -6, np.float32).tobytes()])
    for _ in range(r.randrange(1, 4)):
        t, op = r.randrange(len(req.inputs)) if req.inputs else 0, r.randrange(10)
        if op == 0 and req.inputs:
            req.inputs[t].datatype = r.choice(["FP64", "FP16", "INT32", "BYTES", "BF16", ""])
        elif op == 1 and req.inputs and req.inputs[t].shape:
            dims = req.inputs[t].shape
            dims[r.randrange(len(dims))] = r.choice([0, -1, 2, 3000, 2**31, 2**63 - 1])
        elif op == 2 and t < len(req.raw_input_contents):
            data = req.raw_input_contents[t]
            req.raw_input_contents[t] = data[: r.randrange(len(data) + 1)]
        elif op == 3 and t < len(req.raw_input_contents):
            x = np.frombuffer(req.raw_input_contents[t][: len(req.raw_input_contents[t]) // 4 * 4],
                              np.float32).copy()  # fmt: skip
            if x.size:
                x[r.randrange(x.size)] = r.choice([np.nan, np.inf, 3e38, -3e38, 1e20])
            req.raw_input_contents[t] = x.tobytes()
        elif op == 4:
            req.raw_input_contents.append(b"\0" * r.choice([0, 4, 12]))
        elif op == 5:
            req.inputs.add(name=r.choice(["waveform", "log_amp", "x"]), datatype="FP32", shape=[1])
        elif op == 6 and req.inputs:
            req.inputs[t].name = r.choice(["", "x", "waveform", "log_amp"])
        elif op == 7:
            req.outputs.add(name=r.choice(["magnitude", "sigma", "nope", ""]))
        elif op == 8:
            req.model_version = r.choice(["", "1", "nope", "9" * 40])
        else:
            del req.raw_input_contents[:]  # typed contents instead (the slow path)
            for tensor, n in zip(req.inputs, (batch * 3 * 3001, batch), strict=False):
                tensor.contents.fp32_contents.extend([0.1] * (n - r.choice([0, 0, 1])))
    return req


def test_mutated_model_infers_get_outputs_or_client_errors(server):
    """The Open Inference Protocol's tensors, mutated: finite outputs or a client error (this
    found NaN magnitudes for a finite 3e38 sample)."""
    oip = oip_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    r = random.Random(20261130)

    def finite(reply) -> None:
        for out, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
            assert np.all(np.isfinite(np.frombuffer(raw, "<f4"))), out.name

    codes = _outcomes(oip.ModelInfer, (_infer_request(r) for _ in range(200)), finite)
    assert codes.get("OK", 0) >= 15 and codes.get("INVALID_ARGUMENT", 0) >= 50, codes


_NUMBERS = ["0.0", "-1.0", "NaN", "INF", "1e-30", "1e30", "abc", "", "1e308"]
_UNITS = ["M/S", "M/S**2", "M", "COUNTS", "V", "NM/S", "", "M/S/S"]


def _mutated_stationxml(r: random.Random, xml: str) -> str:
    """RJOB's StationXML with one to three text edits: values, units, roots, stages, epochs."""
    for _ in range(r.randrange(1, 4)):
        op = r.randrange(8)
        tag = ["Value", "Name", "Real", "Imaginary", "NormalizationFactor"][min(op, 4)]
        spots = list(re.finditer(rf"<{tag}>[^<]*</{tag}>", xml))
        if op <= 4 and spots:
            m = r.choice(spots)
            new = r.choice(_UNITS if tag == "Name" else _NUMBERS)
            xml = xml[: m.start()] + f"<{tag}>{new}</{tag}>" + xml[m.end() :]
        elif op == 5:
            stages = list(re.finditer(r"<Stage number=\"\d+\">.*?</Stage>", xml, re.S))
            if stages:
                m = r.choice(stages)
                xml = xml[: m.start()] + xml[m.end() :]
        elif op == 6:
            sens = r"<InstrumentSensitivity>.*?</InstrumentSensitivity>"
            xml = re.sub(sens, "", xml, count=1, flags=re.S)
        else:
            xml = xml[: r.randrange(len(xml))]
    return xml


def test_mutated_stationxml_gets_magnitudes_or_client_errors(stub):
    """Counts with edited responses (a typo in a pole, a unit, a cut file): a magnitude that could
    be one, or a client error naming the problem. This found scipy's filter design failing on
    unpaired or NaN poles as INTERNAL errors."""
    st = obspy.read()  # RJOB in counts
    miniseed = _mseed(st, None)
    xml = (Path(__file__).parents[1] / "examples" / "event.xml").read_text()  # RJOB's alone
    r = random.Random(20261130)
    pick = pb.PPick(station_id="BW.RJOB", time=st[0].stats.starttime.timestamp + 5.0)
    requests = (
        pb.PredictRequest(
            miniseed=miniseed,
            stationxml=_mutated_stationxml(r, xml).encode(),
            input_units="",
            p_picks=[pick],
        )
        for _ in range(120)
    )
    codes = _outcomes(stub.Predict, requests, _check_answer)
    assert codes.get("OK", 0) >= 10 and codes.get("INVALID_ARGUMENT", 0) >= 30, codes
