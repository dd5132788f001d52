"""The gRPC server end to end: a real server on a loopback port, real ONNX Runtime, real clients.

One registry (the embedded default model) is shared by every server in this module; servers with
special settings (auth, TLS, small limits, no warm-up) are cheap next to loading the model.

ObsPy's RJOB record is in counts: the module's server loads its StationXML (and copies of it
under the station codes the stream tests give RJOB's record) with ``inventory=``, the
``seismag serve --inventory`` setting, so requests without StationXML are converted.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import obspy
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from obspy import Stream
from station_metadata import write_inventory

from seismag.serving.client import raw_trace
from seismag.serving.executor.runtime import default_model_path
from seismag.serving.protocols.server import build_server
from seismag.serving.v1 import seismag_pb2 as pb
from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parent.parent
STREAM_CODES = [f"S{i:03d}" for i in range(50)]
"""Station codes the stream tests give copies of RJOB's record."""


def _pick_time(st: Stream) -> float:
    """A client P pick for obspy.read()'s RJOB record, 5 s in, so the tests can check that the
    request's pick is the onset used (the sta_lta_aic picker alone would find ~00:20:07.71)."""
    return (st[0].stats.starttime + 5.0).timestamp


def _miniseed(st: Stream) -> bytes:
    buf = io.BytesIO()
    st.write(buf, format="MSEED")
    return buf.getvalue()


def _raw(tr, samples=None) -> pb.RawTrace:
    """The client's RawTrace of ``tr``, with other samples if given (e.g. bad ones)."""
    raw = raw_trace(tr)
    if samples is not None:
        raw.ClearField("samples")
        raw.samples.extend(np.asarray(samples, dtype=np.float32).tolist())
    return raw


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(scope="module")
def inventory(tmp_path_factory) -> Path:
    return write_inventory(tmp_path_factory.mktemp("inventory") / "rjob.xml", STREAM_CODES)


@pytest.fixture(scope="module")
def server(registry, inventory):
    srv = build_server(
        registry, address="127.0.0.1:0", metrics_port=0, inventory=str(inventory)
    ).start()
    yield srv
    srv.stop(1)


@pytest.fixture(scope="module")
def rjob() -> Stream:
    return obspy.read()


def _predict_request(st: Stream, **kw) -> pb.PredictRequest:
    picks = [pb.PPick(station_id="BW.RJOB", time=_pick_time(st))]
    return pb.PredictRequest(miniseed=_miniseed(st), p_picks=picks, **kw)


# -- MagnitudeService -----------------------------------------------------------------------------


def test_predict_miniseed(stub, registry, rjob):
    reply = stub.Predict(_predict_request(rjob), timeout=30)
    assert len(reply.results) == 1
    r = reply.results[0]
    assert (r.network, r.station, r.location) == ("BW", "RJOB", "")
    assert math.isfinite(r.magnitude)
    assert len(r.series.values) > 0 and r.series.interval == pytest.approx(1.0)
    assert r.series.values[-1] == pytest.approx(r.magnitude, abs=1e-5)
    assert r.model == registry.default_name and r.model_version
    assert r.has_onset and r.onset_source == "request"
    assert r.onset == pytest.approx(_pick_time(rjob), abs=0.01)
    assert r.timings.total_ms > 0 and r.timings.compute_ms > 0


def test_predict_raw_traces_matches_miniseed(stub, rjob):
    picks = [pb.PPick(station_id="BW.RJOB.", time=_pick_time(rjob))]
    request = pb.PredictRequest(raw=pb.RawTraces(traces=[_raw(tr) for tr in rjob]), p_picks=picks)
    raw = stub.Predict(request, timeout=30).results
    mseed = stub.Predict(_predict_request(rjob), timeout=30).results
    assert len(raw) == 1
    assert raw[0].magnitude == pytest.approx(mseed[0].magnitude, abs=1e-3)
    assert len(raw[0].series.values) == len(mseed[0].series.values)


def test_one_client_at_a_time_runs_the_model_on_the_loop_with_the_same_answer(
    stub, server, registry, rjob
):
    """Sequential single-window Predicts run the model where they were prepared (queue 0) once
    the server has seen them come one at a time; every eighth still goes through the batcher.
    Same answers, and every run is counted in the model's statistics."""
    from seismag.serving.protocols.loop_policy import PROBE, QUIET

    stats = registry.get().statistics
    before = stats.snapshot()
    n = QUIET + 2 * PROBE
    replies = [
        stub.Predict(_predict_request(rjob, series_interval=30), timeout=30).results[0]
        for _ in range(n)
    ]
    queue = [r.timings.queue_ms for r in replies]
    assert queue.count(0.0) >= PROBE  # on the loop
    assert sum(q > 0 for q in queue[-2 * PROBE :]) >= 1  # a probe through the batcher
    assert max(r.magnitude for r in replies) - min(r.magnitude for r in replies) < 1e-6
    after = stats.snapshot()
    assert after.execution_count - before.execution_count == n
    assert after.inference_count - before.inference_count == n


def test_unknown_model_is_not_found(stub, rjob):
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(_predict_request(rjob, model="NoSuchModel"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "NoSuchModel" in err.value.details()


def test_corrupt_miniseed_is_invalid_and_server_keeps_serving(stub, rjob):
    good = _miniseed(rjob)
    for bad in (b"this is not miniseed at all" * 40, good[: len(good) // 3 + 7]):
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(pb.PredictRequest(miniseed=bad), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "miniSEED" in err.value.details()
    assert len(stub.Predict(_predict_request(rjob), timeout=30).results) == 1


def test_nan_samples_are_invalid(stub, rjob):
    data = np.asarray(rjob[0].data, dtype=np.float32).copy()
    data[100] = np.nan
    traces = [_raw(rjob[0], data), _raw(rjob[1]), _raw(rjob[2])]
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb.PredictRequest(raw=pb.RawTraces(traces=traces)), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NaN" in err.value.details()


def test_no_input_is_invalid(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb.PredictRequest(), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_message_is_resource_exhausted(registry):
    srv = build_server(registry, address="127.0.0.1:0", max_message_mb=1).start(warm_up=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = pb_grpc.MagnitudeServiceStub(ch)
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(pb.PredictRequest(miniseed=b"\0" * (2 << 20)), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        srv.stop(0)


def test_list_and_get_models(stub, registry):
    reply = stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert [m.name for m in reply.models] == registry.names()
    assert reply.default_model == registry.default_name
    info = stub.GetModel(pb.GetModelRequest(name=""), timeout=10)
    assert info.is_default and info.name == registry.default_name
    card = json.loads(info.card_json)
    assert card["name"] == info.name and card["in_samples"] == 3001
    assert info.weights
    assert [(t.name, t.datatype, list(t.shape)) for t in info.inputs] == [
        ("waveform", "FP32", [-1, 3, 3001]),
        ("log_amp", "FP32", [-1, 1]),
    ]
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModel(pb.GetModelRequest(name="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# -- health and reflection ------------------------------------------------------------------------


def _health(ch, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(ch)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_health_gated_on_warm_up(registry, rjob):
    srv = build_server(registry, address="127.0.0.1:0").start(warm_up=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            for service in ("", "seismag.v1.MagnitudeService", "inference.GRPCInferenceService"):
                assert _health(ch, service) == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.MagnitudeServiceStub(ch).Predict(_predict_request(rjob), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            srv.warm_up()
            for service in ("", "seismag.v1.MagnitudeService", "inference.GRPCInferenceService"):
                assert _health(ch, service) == health_pb2.HealthCheckResponse.SERVING
            srv.drain()
            assert _health(ch) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        srv.stop(0)


def test_reflection_lists_services(channel):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {
        "seismag.v1.MagnitudeService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    pool = DescriptorPool(db)
    predict = pool.FindServiceByName("seismag.v1.MagnitudeService").FindMethodByName("Predict")
    assert predict.input_type.full_name == "seismag.v1.PredictRequest"
    infer = pool.FindServiceByName("inference.GRPCInferenceService").FindMethodByName("ModelInfer")
    assert infer.output_type.full_name == "inference.ModelInferResponse"


# -- Open Inference Protocol ----------------------------------------------------------------------


def test_open_inference_protocol_with_tritonclient(server, registry):
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    name = registry.default_name
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name) and not client.is_model_ready("NoSuchModel")
    assert client.get_server_metadata().name == "seismag"
    meta = client.get_model_metadata(name)
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("waveform", "FP32", [-1, 3, 3001]),
        ("log_amp", "FP32", [-1, 1]),
    ]
    assert [(t.name, list(t.shape)) for t in meta.outputs] == [
        ("magnitude", [-1, 3001]),
        ("sigma", [-1, 3001]),
    ]

    rng = np.random.default_rng(3)
    waveform = rng.normal(size=(2, 3, 3001)).astype(np.float32)
    log_amp = np.array([[-6.0], [-4.5]], dtype=np.float32)
    inputs = [tc.InferInput("waveform", list(waveform.shape), "FP32"),
              tc.InferInput("log_amp", list(log_amp.shape), "FP32")]  # fmt: skip
    inputs[0].set_data_from_numpy(waveform)
    inputs[1].set_data_from_numpy(log_amp)
    result = client.infer(name, inputs, outputs=[tc.InferRequestedOutput("magnitude")])
    got = result.as_numpy("magnitude")

    session = ort.InferenceSession(str(default_model_path()), providers=["CPUExecutionProvider"])
    want = session.run(None, {"waveform": waveform, "log_amp": log_amp})[0]
    assert got.shape == want.shape == (2, 3001)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    bad = [tc.InferInput("waveform", [1, 3, 100], "FP32"), inputs[1]]
    bad[0].set_data_from_numpy(np.zeros((1, 3, 100), np.float32))
    with pytest.raises(tc.InferenceServerException) as err:
        client.infer(name, bad)
    assert "StatusCode.INVALID_ARGUMENT" in str(err.value.status())
    with pytest.raises(tc.InferenceServerException):
        client.get_model_metadata("NoSuchModel")
    client.close()


# -- security -------------------------------------------------------------------------------------


def test_bearer_token_auth(registry):
    srv = build_server(registry, address="127.0.0.1:0", tokens=["s3cret"]).start(warm_up=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = pb_grpc.MagnitudeServiceStub(ch)
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.RpcError) as err:
                    stub.ListModels(pb.ListModelsRequest(), timeout=10, metadata=metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:  # streaming RPCs are guarded too
                list(stub.StreamPredict(iter([pb.StreamRequest()]), timeout=10))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = (("authorization", "Bearer s3cret"),)
            assert stub.ListModels(pb.ListModelsRequest(), timeout=10, metadata=ok).models
            assert _health(ch) == health_pb2.HealthCheckResponse.NOT_SERVING  # no token needed
    finally:
        srv.stop(0)


def _cert(subject: str, issuer_key, issuer_name, *, ca: bool, san: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        import ipaddress

        alt = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _pem(key, cert) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization

    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki():
    ca_key, ca_cert = _cert("seismag test CA", None, None, ca=True, san=False)
    srv_key, srv_cert = _cert("localhost", ca_key, ca_cert.subject, ca=False, san=True)
    cli_key, cli_cert = _cert("client", ca_key, ca_cert.subject, ca=False, san=False)
    return {
        "ca": _pem(ca_key, ca_cert)[1],
        "server": _pem(srv_key, srv_cert),
        "client": _pem(cli_key, cli_cert),
    }


def _secure_list_models(port: int, creds) -> pb.ListModelsResponse:
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        return pb_grpc.MagnitudeServiceStub(ch).ListModels(pb.ListModelsRequest(), timeout=10)


def test_tls(registry, pki):
    key, cert = pki["server"]
    srv = build_server(registry, address="127.0.0.1:0", tls_cert=cert, tls_key=key)
    srv.start(warm_up=False)
    try:
        assert _secure_list_models(srv.port, grpc.ssl_channel_credentials(pki["ca"])).models
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch, pytest.raises(grpc.RpcError):
            pb_grpc.MagnitudeServiceStub(ch).ListModels(pb.ListModelsRequest(), timeout=5)
    finally:
        srv.stop(0)


def test_mutual_tls(registry, pki, tmp_path):
    key, cert = pki["server"]
    paths = {}
    for label, data in (("key", key), ("cert", cert), ("ca", pki["ca"])):
        paths[label] = tmp_path / f"{label}.pem"
        paths[label].write_bytes(data)
    srv = build_server(
        registry,
        address="127.0.0.1:0",
        tls_cert=paths["cert"],
        tls_key=paths["key"],
        tls_client_ca=paths["ca"],
    ).start(warm_up=False)
    try:
        with pytest.raises(grpc.RpcError) as err:
            _secure_list_models(srv.port, grpc.ssl_channel_credentials(pki["ca"]))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        cli_key, cli_cert = pki["client"]
        creds = grpc.ssl_channel_credentials(pki["ca"], cli_key, cli_cert)
        assert _secure_list_models(srv.port, creds).models
    finally:
        srv.stop(0)


# -- StreamPredict --------------------------------------------------------------------------------


def _stations(n: int) -> list[Stream]:
    base = obspy.read()
    out = []
    for i in range(n):
        st = base.copy()
        for tr in st:
            tr.stats.station = f"S{i:03d}"
        out.append(st)
    return out


def _chunked_requests(stations: list[Stream], seconds: int, hop: float, grouped: bool = False):
    """Config, one P pick per station, then 1 s raw chunks interleaved across stations; one
    message per chunk, or (``grouped``) one ``raw_chunks`` message per station-second."""
    yield pb.StreamRequest(config=pb.StreamConfig(hop_seconds=hop))
    for st in stations:
        sid = f"{st[0].stats.network}.{st[0].stats.station}"
        yield pb.StreamRequest(pick=pb.PPick(station_id=sid, time=_pick_time(st)))
    for k in range(seconds):
        for st in stations:
            chunks = []
            for tr in st:
                n = int(tr.stats.sampling_rate)
                chunk = tr.data[k * n : (k + 1) * n]
                raw = _raw(tr, chunk)
                raw.starttime = (tr.stats.starttime + k).timestamp
                chunks.append(raw)
            if grouped:
                yield pb.StreamRequest(raw_chunks=pb.RawTraces(traces=chunks))
            else:
                yield from (pb.StreamRequest(raw_chunk=raw) for raw in chunks)


def _flat(responses, sizes: list[int] | None = None) -> list[pb.StreamUpdate]:
    """The updates of every StreamPredict response, in order (a response carries one or more)."""
    out = []
    for message in responses:
        assert message.updates  # never an empty response
        out.extend(message.updates)
        if sizes is not None:
            sizes.append(len(message.updates))
    return out


def test_stream_predict_fifty_stations(stub, server):
    stations = _stations(50)
    sizes: list[int] = []
    updates = _flat(stub.StreamPredict(_chunked_requests(stations, 30, hop=1.0), timeout=50), sizes)
    assert max(sizes) > 1  # a replay faster than real time: ready updates share a response
    per_station: dict[str, list[pb.StreamUpdate]] = {}
    for u in updates:
        per_station.setdefault(u.station, []).append(u)
    assert set(per_station) == {st[0].stats.station for st in stations}
    for ups in per_station.values():
        assert all(math.isfinite(u.magnitude) and u.has_onset for u in ups)
        times = [u.time for u in ups]
        assert times == sorted(times)
    # Identical data at every station gives identical magnitudes at the data end.
    finals = {round(ups[-1].magnitude, 4) for ups in per_station.values()}
    assert len(finals) == 1
    assert _wait_for(lambda: server.open_streams == 0, 5)


def test_grouped_raw_chunks_give_the_same_updates(stub):
    stations = _stations(3)

    def run(grouped: bool) -> dict[tuple, float]:
        reqs = _chunked_requests(stations, 14, hop=1.0, grouped=grouped)
        ups = _flat(stub.StreamPredict(reqs, timeout=30))
        return {(u.station, u.time): u.magnitude for u in ups}

    def last(updates: dict[tuple, float]) -> dict[str, tuple]:
        return {sta: max((t, m) for (s, t), m in updates.items() if s == sta) for sta in names}

    names = {"S000", "S001", "S002"}
    single, grouped = run(False), run(True)
    # A fast replay coalesces windows, and which ones depends on timing: every update both runs
    # made must agree, and so must each station's last one (the data end is always evaluated).
    common = single.keys() & grouped.keys()
    assert all(single[k] == grouped[k] for k in common)
    assert last(single) == last(grouped)


def test_stream_bad_chunk_in_a_group_is_invalid_argument(stub):
    st = obspy.read()
    bad = np.asarray(st[1].data[:100], dtype=np.float32).copy()
    bad[3] = np.nan
    group = pb.RawTraces(traces=[_raw(st[0], st[0].data[:100]), _raw(st[1], bad)])
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamPredict(iter([pb.StreamRequest(raw_chunks=group)]), timeout=20))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "packet 1: chunk 1" in err.value.details()


def test_stream_bad_packet_is_invalid_argument(stub):
    st = obspy.read()
    data = np.asarray(st[0].data[:100], dtype=np.float32).copy()
    data[5] = np.inf

    def requests():
        yield pb.StreamRequest(raw_chunk=_raw(st[0], st[0].data[:100]))
        yield pb.StreamRequest(raw_chunk=_raw(st[0], data))

    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamPredict(requests(), timeout=20))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "packet 2" in err.value.details() and "NaN or Inf" in err.value.details()


def test_cancelled_stream_leaves_nothing_open(stub, server):
    stations = _stations(5)
    release = threading.Event()

    def requests():
        yield from _chunked_requests(stations, 12, hop=1.0)
        release.wait(20)  # keep the stream open, as a live feed would

    call = stub.StreamPredict(requests(), timeout=30)
    first = next(call)
    assert first.updates and first.updates[0].station.startswith("S")
    assert server.open_streams == 1
    assert server.metrics.lag_stations()
    call.cancel()
    release.set()
    assert _wait_for(lambda: server.open_streams == 0, 5)
    assert server.metrics.registry.get_sample_value("seismag_open_streams") == 0
    assert server.metrics.lag_stations() == set()
    assert "seismag_station_lag_seconds{" not in _scrape(server)
    # A client that cancels is not a server failure: CANCELLED, not INTERNAL or UNKNOWN.
    cancelled = {"method": "MagnitudeService/StreamPredict", "code": "CANCELLED"}
    assert _wait_for(
        lambda: server.metrics.registry.get_sample_value("seismag_requests_total", cancelled), 5
    )


def test_thousands_of_idle_streams_leave_health_and_predict_served(server, rjob):
    """Each open StreamPredict used to hold one of 16 pool threads: 16 idle station feeds stopped
    the server. On the asyncio server an idle stream holds no thread."""
    import asyncio

    n = 2000
    threads_before = threading.active_count()

    async def scenario() -> None:
        t0 = time.time() - 1.0
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") for _ in range(4)]
        try:
            calls = []
            for i in range(n):
                call = pb_grpc.MagnitudeServiceStub(channels[i % 4]).StreamPredict()
                chunk = pb.RawTrace(
                    network="XX",
                    station=f"S{i:04d}",
                    channel="HHZ",
                    sampling_rate=100.0,
                    starttime=t0,
                    samples=[0.0] * 100,
                )
                config = pb.StreamConfig(input_units="m/s")
                await call.write(pb.StreamRequest(config=config, raw_chunk=chunk))
                calls.append(call)
            end = time.monotonic() + 30
            while server.open_streams < n and time.monotonic() < end:
                await asyncio.sleep(0.05)
            assert server.open_streams == n
            health = health_pb2_grpc.HealthStub(channels[0])
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stub = pb_grpc.MagnitudeServiceStub(channels[1])
            result = await stub.Predict(_predict_request(rjob), timeout=30)
            assert math.isfinite(result.results[0].magnitude)
            assert threading.active_count() <= threads_before + 20  # no thread per stream
            assert not any(c.done() for c in calls)
            for call in calls:
                call.cancel()
        finally:
            for ch in channels:
                await ch.close()

    asyncio.run(scenario())
    assert _wait_for(lambda: server.open_streams == 0, 20)


def _scrape(server) -> str:
    import urllib.request

    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    return urllib.request.urlopen(url, timeout=5).read().decode()


def test_metrics_endpoint(server, stub, registry, rjob):
    stub.ListModels(pb.ListModelsRequest(), timeout=10)
    stub.Predict(_predict_request(rjob), timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.GetModel(pb.GetModelRequest(name="nope"), timeout=10)
    text = _scrape(server)
    assert 'seismag_requests_total{code="OK",method="MagnitudeService/ListModels"}' in text
    assert (
        'seismag_request_failures_total{code="NOT_FOUND",method="MagnitudeService/GetModel"}'
        in text
    )
    assert "seismag_models_loaded 1.0" in text
    rt = registry.get()
    model = {"model": rt.name, "version": str(rt.version)}
    for family in (
        "seismag_batch_size",
        "seismag_batch_queue_duration_seconds",
        "seismag_batch_compute_duration_seconds",
    ):
        assert server.metrics.registry.get_sample_value(f"{family}_count", model) > 0
    assert "seismag_open_streams 0.0" in text


# -- graceful shutdown ----------------------------------------------------------------------------


def test_sigterm_drains_and_exits_zero(rjob, inventory):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "seismag", "serve", "--port", "0", "--grace", "5"]
    cmd += ["--inventory", str(inventory)]
    proc = subprocess.Popen(cmd, cwd=REPO.parent, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    port = None
    try:
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"serving on [\d.]+:(\d+)", line)
            port = int(m.group(1)) if m else port
            if "health SERVING" in line:
                break
        assert port, "".join(lines)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=30
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            stub = pb_grpc.MagnitudeServiceStub(ch)
            in_flight = stub.Predict.future(_predict_request(rjob), timeout=30)
            time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert len(in_flight.result().results) == 1  # finished within the grace period
            statuses = [u.status for u in watch]  # the server ends open watches when draining
            assert statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
        _, rest = proc.communicate(timeout=10)
        assert proc.returncode == 0, "".join(lines) + rest
        assert "draining" in rest and "model PhaseNetMag" in "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_a_deadline_that_passes_while_a_handler_blocks_is_not_a_server_error(caplog):
    """A handler that reaches its deadline check after the client's deadline passed, without
    having yielded to the loop, cannot send DEADLINE_EXCEEDED any more (the core has ended the
    call): that was logged as a failed Predict plus a second-abort UsageError in a CI run."""
    import asyncio
    import logging

    from seismag.serving.protocols.rpc import check_deadline, rpc

    class Slow(health_pb2_grpc.HealthServicer):
        @rpc
        async def Check(self, request, context):
            time.sleep(0.3)  # blocks the loop past the 50 ms deadline, as a busy machine does
            await check_deadline(context)
            return health_pb2.HealthCheckResponse(status=1)

    async def scenario() -> grpc.StatusCode:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(Slow(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=0.05
                    )
                except grpc.RpcError as exc:
                    code = exc.code()
            await asyncio.sleep(0.5)  # the handler's end, logged or not
            return code
        finally:
            await server.stop(0)

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(scenario()) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-2000:]
