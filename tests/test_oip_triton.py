"""The Open Inference Protocol as Triton's tools use it: tritonclient.grpc against the real server.

ModelConfig (what perf_analyzer asks first), the model repository extension and ModelStreamInfer,
with real windows cut from ObsPy's example record (RJOB), normalised the card's way.
"""

from __future__ import annotations

import queue
from functools import partial

import grpc
import numpy as np
import obspy
import pytest
from google.protobuf import text_format

from seismag.export.triton import config_pbtxt
from seismag.models.preprocess import last_window, model_inputs, stream_to_array
from seismag.serving.config import DEFAULTS
from seismag.serving.oip import grpc_service_pb2 as oip_pb2
from seismag.serving.oip import grpc_service_pb2_grpc as oip_grpc
from seismag.serving.oip import model_config_pb2 as oip_config_pb2
from seismag.serving.protocols.server import build_server

tc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import model_config_pb2 as triton_config_pb2  # noqa: E402
from tritonclient.grpc import service_pb2 as triton_service_pb2  # noqa: E402


@pytest.fixture(scope="module")
def server(registry):
    srv = build_server(registry, address="127.0.0.1:0").start()
    yield srv
    srv.stop(1)


@pytest.fixture
def client(server):
    c = tc.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def windows(registry) -> tuple[np.ndarray, np.ndarray]:
    """Five model inputs from RJOB: windows ending 2, 7, 12, 17 and 22 s into the record."""
    card = registry.get().card
    data = stream_to_array(obspy.read(), card).data
    step = int(5 * card.sampling_rate)
    raw = np.stack([last_window(data[:, : 2 * step // 5 + i * step], card.in_samples)
                    for i in range(5)])  # fmt: skip
    waveform, log_amp = model_inputs(raw, card)
    return waveform.astype(np.float32), log_amp.astype(np.float32)


def _inputs(waveform: np.ndarray, log_amp: np.ndarray) -> list:
    inputs = [tc.InferInput("waveform", list(waveform.shape), "FP32"),
              tc.InferInput("log_amp", list(log_amp.shape), "FP32")]  # fmt: skip
    inputs[0].set_data_from_numpy(waveform)
    inputs[1].set_data_from_numpy(log_amp)
    return inputs


def _code(err: pytest.ExceptionInfo) -> str:
    return str(err.value.status())


def test_messages_have_tritons_field_numbers():
    """Every field we declare has Triton's number and type, so each side decodes the other."""
    checked = 0
    for ours_file in (oip_config_pb2.DESCRIPTOR, oip_pb2.DESCRIPTOR):
        stack, enums = list(ours_file.message_types_by_name.values()), []
        while stack:
            ours = stack.pop()
            theirs = triton_service_pb2.DESCRIPTOR.pool.FindMessageTypeByName(ours.full_name)
            for f in ours.fields:
                t = theirs.fields_by_name[f.name]
                assert (f.number, f.type, f.is_repeated) == (t.number, t.type, t.is_repeated), (
                    f"{ours.full_name}.{f.name}"
                )
                checked += 1
            stack.extend(m for m in ours.nested_types if not m.GetOptions().map_entry)
            enums.extend(ours.enum_types)
        enums.extend(ours_file.enum_types_by_name.values())
        for enum in enums:
            theirs = triton_service_pb2.DESCRIPTOR.pool.FindEnumTypeByName(enum.full_name)
            assert {v.name: v.number for v in enum.values} == {
                v.name: v.number for v in theirs.values
            }
    ours_rpcs = oip_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    theirs_rpcs = triton_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for m in ours_rpcs:
        t = theirs_rpcs.methods_by_name[m.name]
        assert (m.input_type.full_name, m.output_type.full_name) == (
            t.input_type.full_name,
            t.output_type.full_name,
        )
    assert checked > 60


def test_model_config_is_the_exported_configuration(client, registry):
    rt = registry.get()
    got = client.get_model_config(rt.name).config
    written = text_format.Parse(config_pbtxt(rt.card), triton_config_pb2.ModelConfig())
    assert got == written
    assert got.name == rt.name and got.platform == "onnxruntime_onnx"
    assert [(i.name, list(i.dims)) for i in got.input] == [
        ("waveform", [rt.card.in_channels, rt.card.in_samples]),
        ("log_amp", [1]),
    ]
    # The exported config repeats seismag serve's batcher wait; the two must agree.
    assert got.dynamic_batching.max_queue_delay_microseconds == round(
        DEFAULTS.max_queue_delay_ms * 1000
    )
    as_json = client.get_model_config(rt.name, as_json=True)
    assert as_json["config"]["max_batch_size"] == got.max_batch_size > 0
    assert client.get_model_config(rt.name, str(rt.version)).config == written

    for name, version in (("NoSuchModel", ""), (rt.name, "999")):
        with pytest.raises(tc.InferenceServerException) as err:
            client.get_model_config(name, version)
        assert "NOT_FOUND" in _code(err)


def test_every_cards_config_message_equals_its_config_pbtxt():
    """Scalar cards too (outputs declared [1], reshaped to []): the served message and the
    exported text are one configuration for every model seismag ships."""
    from seismag.models import load_cards
    from seismag.models.triton_config import TENSORRT_PLATFORM, model_config
    from seismag.serving.protocols.oip_service import _config_message

    cards = list(load_cards().values())
    assert {c.output for c in cards} == {"series", "scalar"}
    for card in cards:
        for platform in ("onnxruntime_onnx", TENSORRT_PLATFORM):
            served = triton_config_pb2.ModelConfig.FromString(
                _config_message(model_config(card, platform=platform)).SerializeToString()
            )
            text = config_pbtxt(card, platform=platform)
            assert served == text_format.Parse(text, triton_config_pb2.ModelConfig()), card.name
            if card.output == "scalar":
                assert served.output[0].HasField("reshape") and not served.output[0].reshape.shape


def test_repository_index_and_model_control(client, registry, windows):
    rt = registry.get()
    index = client.get_model_repository_index().models
    assert [(m.name, m.version, m.state) for m in index] == [
        (r.name, str(r.version), "READY") for r in registry
    ]
    assert len(client.get_model_repository_index().models) == len(registry)

    client.load_model(rt.name)  # served already: loading it is a no-op that succeeds
    with pytest.raises(tc.InferenceServerException) as err:
        client.load_model("NoSuchModel")
    assert "NOT_FOUND" in _code(err) and "NoSuchModel" in err.value.message()
    with pytest.raises(tc.InferenceServerException) as err:
        client.load_model(rt.name, config='{"max_batch_size": 8}')
    assert "FAILED_PRECONDITION" in _code(err) and "config" in err.value.message()
    with pytest.raises(tc.InferenceServerException) as err:
        client.unload_model(rt.name)
    assert "FAILED_PRECONDITION" in _code(err) and "cannot be unloaded" in err.value.message()
    with pytest.raises(tc.InferenceServerException) as err:
        client.unload_model("NoSuchModel")
    assert "NOT_FOUND" in _code(err)

    assert client.is_model_ready(rt.name)  # the refused unload left the model serving
    result = client.infer(rt.name, _inputs(windows[0][:1], windows[1][:1]))
    assert np.isfinite(result.as_numpy("magnitude")).all()


def test_repository_index_while_not_ready(registry):
    srv = build_server(registry, address="127.0.0.1:0").start(warm_up=False)
    try:
        c = tc.InferenceServerClient(url=f"127.0.0.1:{srv.port}")
        (model,) = c.get_model_repository_index().models
        assert (model.state, model.reason) == ("UNAVAILABLE", "warming up or draining")
        c.close()
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            only_ready = stub.RepositoryIndex(
                oip_pb2.RepositoryIndexRequest(ready=True), timeout=10
            )
        assert not only_ready.models
    finally:
        srv.stop(0)


def test_stream_infer_gives_the_outputs_of_infer(client, registry, windows):
    rt = registry.get()
    waveform, log_amp = windows
    batches = [(0, 1), (1, 3), (3, 5), (0, 5)]
    expected = []
    for a, b in batches:
        r = client.infer(rt.name, _inputs(waveform[a:b], log_amp[a:b]))
        expected.append({n: r.as_numpy(n) for n in ("magnitude", "sigma")})
    before = client.get_inference_statistics(rt.name).model_stats[0].inference_stats

    replies: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    for i, (a, b) in enumerate(batches):
        client.async_stream_infer(rt.name, _inputs(waveform[a:b], log_amp[a:b]), request_id=str(i))
        if i == 1:  # a bad request in the middle: an error reply, and the stream goes on
            bad = _inputs(waveform[:1, :, :100], log_amp[:1])
            client.async_stream_infer(rt.name, bad, request_id="bad")
    got = [replies.get(timeout=30) for _ in range(len(batches) + 1)]
    client.stop_stream()

    errors = [e for _, e in got if e is not None]
    assert len(errors) == 1 and "must have shape" in errors[0].message()
    results = [r for r, e in got if e is None]
    assert [r.get_response().id for r in results] == [str(i) for i in range(len(batches))]
    for result, want in zip(results, expected, strict=True):
        for name, value in want.items():
            np.testing.assert_allclose(result.as_numpy(name), value, rtol=1e-5, atol=1e-5)

    # Each request of the stream counts in the model's statistics, as a ModelInfer would.
    after = client.get_inference_statistics(rt.name).model_stats[0].inference_stats
    assert after.success.count - before.success.count == len(batches)
    assert after.fail.count - before.fail.count == 1


def test_stream_infer_errors_are_per_request(server, client):
    replies: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    client.async_stream_infer("NoSuchModel", _inputs(*(np.zeros((1, 3, 3001), np.float32),
                                                      np.zeros((1, 1), np.float32))))  # fmt: skip
    result, error = replies.get(timeout=30)
    client.stop_stream()
    assert result is None and "NoSuchModel" in error.message()

    # Bytes that are not a ModelInferRequest: an error reply for that message, not a broken call.
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=bytes,
            response_deserializer=oip_pb2.ModelStreamInferResponse.FromString,
        )
        (reply,) = list(call(iter([b"\xff\xff\xff"]), timeout=10))
    assert "not a valid message" in reply.error_message and not reply.HasField("infer_response")


def test_stream_of_many_requests_keeps_order(client, registry, windows):
    """More requests than run at once (STREAM_IN_FLIGHT): every reply comes, in request order."""
    from seismag.serving.protocols.oip_service import STREAM_IN_FLIGHT

    rt = registry.get()
    replies: queue.Queue = queue.Queue()
    client.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), replies))
    n = STREAM_IN_FLIGHT + 16
    inputs = _inputs(windows[0][:1], windows[1][:1])
    for i in range(n):
        client.async_stream_infer(rt.name, inputs, request_id=str(i))
    got = [replies.get(timeout=60) for _ in range(n)]
    client.stop_stream()
    assert all(e is None for _, e in got)
    assert [r.get_response().id for r, _ in got] == [str(i) for i in range(n)]
