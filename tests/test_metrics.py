"""Prometheus metrics and Triton-style model statistics, on a real server after real traffic.

The scrape comes from the server's own /metrics endpoint and is checked with Prometheus's
``promtool check metrics`` (skipped only where promtool is not installed; ``.ci/run`` installs
it where apt-get is available). The per-model numbers must be the same through Prometheus and
through the Open Inference Protocol's ModelStatistics RPC, read with tritonclient: one source.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import urllib.request

import grpc
import numpy as np
import obspy
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from seismag.serving.client import SeismagClient
from seismag.serving.protocols.server import build_server
from seismag.serving.v1 import seismag_pb2 as pb

PREDICT = "MagnitudeService/Predict"
STREAM = "MagnitudeService/StreamPredict"


@pytest.fixture(scope="module")
def rjob() -> tuple[obspy.Stream, bytes]:
    """ObsPy's example record (counts) and its StationXML."""
    xml = io.BytesIO()
    obspy.read_inventory().write(xml, format="STATIONXML")
    return obspy.read(), xml.getvalue()


def _scrape(server) -> str:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    return urllib.request.urlopen(url, timeout=5).read().decode()


def _values(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def _get(values, name: str, **labels) -> float:
    return values.get((name, frozenset(labels.items())), 0.0)


def _model(values, name: str, model: str, version: str) -> float:
    return _get(values, name, model=model, version=version)


def _tensors(batch: int):
    import tritonclient.grpc as tc

    rng = np.random.default_rng(7)
    waveform = rng.normal(size=(batch, 3, 3001)).astype(np.float32)
    log_amp = np.full((batch, 1), -6.0, dtype=np.float32)
    inputs = [tc.InferInput("waveform", list(waveform.shape), "FP32"),
              tc.InferInput("log_amp", list(log_amp.shape), "FP32")]  # fmt: skip
    inputs[0].set_data_from_numpy(waveform)
    inputs[1].set_data_from_numpy(log_amp)
    return inputs


def test_scrape_passes_promtool_and_counts_every_rpc(server, channel, registry, rjob):
    st, xml = rjob
    rt = registry.get()
    model = {"model": rt.name, "version": str(rt.version)}
    before = _values(_scrape(server))

    with SeismagClient(f"127.0.0.1:{server.port}") as client:
        assert np.isfinite(client.predict(st, stationxml=xml)[0].magnitude)  # Predict OK
        with pytest.raises(grpc.RpcError) as err:  # counts without a response: refused
            client.predict(st)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        start = st[0].stats.starttime
        packets = [st.slice(start + t, start + t + 1 - 1e-3) for t in range(30)]
        updates = list(client.stream(packets, stationxml=xml))  # a stream, to its end
    assert updates
    with pytest.raises(grpc.RpcError) as err:  # a method no service has
        channel.unary_unary("/seismag.v1.MagnitudeService/NoSuchMethod")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    text = _scrape(server)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; .ci/run does)")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "_ms" not in "".join(line.split("{")[0] for line in text.splitlines())

    after = _values(text)

    def delta(name: str, **labels) -> float:
        return _get(after, name, **labels) - _get(before, name, **labels)

    requests = "seismag_requests_total"
    assert delta(requests, method=PREDICT, code="OK") == 1
    assert delta(requests, method=PREDICT, code="FAILED_PRECONDITION") == 1
    assert delta(requests, method=STREAM, code="OK") == 1
    assert delta(requests, method="unknown", code="UNIMPLEMENTED") == 1
    assert delta(requests, method="Health/Check", code="OK") == 1
    failures = "seismag_request_failures_total"
    assert delta(failures, method=PREDICT, code="FAILED_PRECONDITION") == 1
    assert delta(failures, method="unknown", code="UNIMPLEMENTED") == 1
    assert delta(failures, method=PREDICT, code="OK") == 0

    # Per model: both Predicts named the default model; the stream's windows ran on it too.
    assert delta("seismag_inference_request_success_total", **model) == 1
    assert delta("seismag_inference_request_failure_total", **model) == 1
    assert delta("seismag_inference_request_duration_seconds_total", **model) > 0
    inferences = delta("seismag_inference_count_total", **model)
    executions = delta("seismag_inference_exec_count_total", **model)
    assert inferences >= 1 + len(updates)  # the Predict's windows, and one per stream update
    assert 1 <= executions <= inferences
    # The batch histograms are the same executions, the counters' same windows.
    assert delta("seismag_batch_size_count", **model) == executions
    assert delta("seismag_batch_size_sum", **model) == inferences
    assert delta("seismag_batch_compute_duration_seconds_count", **model) == executions
    assert delta("seismag_inference_compute_infer_duration_seconds_total", **model) > 0
    assert delta("seismag_inference_queue_duration_seconds_total", **model) > 0


def test_model_statistics_rpc_matches_prometheus(server, registry):
    import tritonclient.grpc as tc

    rt = registry.get()
    client = tc.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    assert "statistics" in client.get_server_metadata().extensions

    def stats():
        (one,) = client.get_inference_statistics(model_name=rt.name).model_stats
        return one

    first = stats()
    client.infer(rt.name, _tensors(3))
    bad = _tensors(1)
    bad[0] = tc.InferInput("waveform", [1, 3, 100], "FP32")
    bad[0].set_data_from_numpy(np.zeros((1, 3, 100), np.float32))
    with pytest.raises(tc.InferenceServerException):
        client.infer(rt.name, bad)  # INVALID_ARGUMENT: a failure of this model
    now = stats()
    scraped = _values(_scrape(server))

    assert (now.name, now.version) == (rt.name, str(rt.version))
    s0, s1 = first.inference_stats, now.inference_stats
    assert s1.success.count - s0.success.count == 1
    assert s1.fail.count - s0.fail.count == 1
    assert s1.success.ns > s0.success.ns and s1.fail.ns > s0.fail.ns
    assert now.inference_count - first.inference_count == 3  # one batch of 3 windows
    assert now.execution_count - first.execution_count == 1
    assert s1.queue.count - s0.queue.count == 1  # one submission
    assert s1.compute_infer.count - s0.compute_infer.count == 1
    assert s1.compute_infer.ns > s0.compute_infer.ns
    assert now.last_inference >= first.last_inference > 0
    assert any(b.batch_size == 3 and b.compute_infer.count >= 1 for b in now.batch_stats)

    # Prometheus renders the same numbers (no traffic in between).
    labels = (rt.name, str(rt.version))
    assert _model(scraped, "seismag_inference_count_total", *labels) == now.inference_count
    assert _model(scraped, "seismag_inference_exec_count_total", *labels) == now.execution_count
    assert _model(scraped, "seismag_inference_request_success_total", *labels) == s1.success.count
    assert _model(scraped, "seismag_inference_request_failure_total", *labels) == s1.fail.count
    queue_s = _model(scraped, "seismag_inference_queue_duration_seconds_total", *labels)
    assert queue_s == pytest.approx(s1.queue.ns / 1e9, rel=1e-9)

    # No name: every model; an unknown model is an error naming the served ones.
    assert [m.name for m in client.get_inference_statistics().model_stats] == registry.names()
    with pytest.raises(tc.InferenceServerException) as err:
        client.get_inference_statistics(model_name="NoSuchModel")
    assert "NOT_FOUND" in str(err.value.status()) and rt.name in err.value.message()
    with pytest.raises(tc.InferenceServerException):
        client.get_inference_statistics(model_name=rt.name, model_version="999")
    client.close()


def test_unknown_method_without_token_is_counted_unauthenticated(registry):
    srv = build_server(registry, address="127.0.0.1:0", tokens=["s3cret"], metrics_port=0)
    srv.start(warm_up=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
            with pytest.raises(grpc.RpcError) as err:
                call(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                call(b"", timeout=5, metadata=(("authorization", "Bearer s3cret"),))
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            stub = ch.unary_unary(
                "/seismag.v1.MagnitudeService/ListModels",
                request_serializer=pb.ListModelsRequest.SerializeToString,
                response_deserializer=pb.ListModelsResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as err:
                stub(pb.ListModelsRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        values = _values(_scrape(srv))
        requests = "seismag_requests_total"
        assert _get(values, requests, method="unknown", code="UNAUTHENTICATED") == 1
        assert _get(values, requests, method="unknown", code="UNIMPLEMENTED") == 1
        listed = {"method": "MagnitudeService/ListModels", "code": "UNAUTHENTICATED"}
        assert _get(values, requests, **listed) == 1
    finally:
        srv.stop(0)


def test_a_stream_that_ends_quietly_after_its_client_cancelled_counts_as_cancelled():
    """A StreamPredict whose reader saw the requests end before the cancel reached the handler
    returns without an exception: it was counted OK, which made a CI run's check for CANCELLED
    fail. The call's state decides; an explicit status still wins."""
    from seismag.serving.protocols.interceptor import _code_name

    class Call:  # the two questions the interceptor asks a grpc.aio ServicerContext
        def __init__(self, code, cancelled):
            self._code, self._cancelled = code, cancelled

        def code(self):
            return self._code

        def cancelled(self):
            return self._cancelled

    assert _code_name(Call(None, True), None) == "CANCELLED"
    assert _code_name(Call(None, False), None) == "OK"
    assert _code_name(Call(grpc.StatusCode.DEADLINE_EXCEEDED, True), None) == "DEADLINE_EXCEEDED"
    assert _code_name(Call(None, False), ValueError()) == "UNKNOWN"
