"""The Open Inference Protocol's HTTP/REST binding (``--http-port``) against the real server:
tritonclient.http as Triton's users run it, plain HTTP (urllib) for JSON tensors, the
binary-data extension and error statuses, and the gRPC port's tokens and TLS on the HTTP port.
Answers are compared with the same request over gRPC (tritonclient.grpc), which must agree."""

from __future__ import annotations

import gc
import json
import ssl
import urllib.error
import urllib.request

import numpy as np
import obspy
import pytest

from seismag.models.preprocess import last_window, model_inputs, stream_to_array
from seismag.serving.protocols.server import build_server

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from test_server import pki  # noqa: E402, F401  (the TLS fixture: a CA, server and client)

MODEL = "PhaseNetMag"


@pytest.fixture(scope="module")
def server(registry):
    srv = build_server(registry, address="127.0.0.1:0", http_port=0).start()
    yield srv
    srv.stop(1)


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.http_port}")
    yield c
    c.close()
    del c
    # Its gevent pool must be collected on this thread: collected on another (the server's),
    # tritonclient's __del__ closes it again and gevent raises InvalidThreadUseError.
    gc.collect()


@pytest.fixture(scope="module")
def base(server) -> str:
    return f"http://127.0.0.1:{server.http_port}"


@pytest.fixture(scope="module")
def windows(registry) -> tuple[np.ndarray, np.ndarray]:
    """Three model inputs cut from ObsPy's example record, normalised the card's way."""
    card = registry.get().card
    data = stream_to_array(obspy.read(), card).data
    step = int(5 * card.sampling_rate)
    raw = np.stack([last_window(data[:, : (i + 2) * step], card.in_samples) for i in range(3)])
    waveform, log_amp = model_inputs(raw, card)
    return waveform.astype(np.float32), log_amp.astype(np.float32)


def _request(url: str, body: bytes | None = None, headers: dict | None = None, method=None):
    """(status, headers, body) of one plain HTTP request; error statuses are returned too."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _inputs(module, waveform, log_amp, binary: bool) -> list:
    inputs = [module.InferInput("waveform", list(waveform.shape), "FP32"),
              module.InferInput("log_amp", list(log_amp.shape), "FP32")]  # fmt: skip
    for tensor, array in zip(inputs, (waveform, log_amp), strict=True):
        if module is httpclient:
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
    return inputs


def _grpc_outputs(server, waveform, log_amp) -> dict[str, np.ndarray]:
    client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        result = client.infer(MODEL, _inputs(grpcclient, waveform, log_amp, True))
        return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}
    finally:
        client.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_infer_equals_grpc(server, client, windows, binary):
    waveform, log_amp = windows
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.get_server_metadata()["name"] == "seismag"
    meta = client.get_model_metadata(MODEL)
    assert [i["name"] for i in meta["inputs"]] == ["waveform", "log_amp"]
    assert meta["inputs"][0]["shape"] == [-1, 3, 3001]  # numbers, as Triton writes them
    outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=binary)
               for o in meta["outputs"]]  # fmt: skip
    result = client.infer(MODEL, _inputs(httpclient, waveform, log_amp, binary), outputs=outputs)
    expected = _grpc_outputs(server, waveform, log_amp)
    assert set(expected) == {o["name"] for o in meta["outputs"]}
    for name, array in expected.items():
        got = result.as_numpy(name)
        assert got.shape == array.shape and got.shape[0] == len(waveform)
        np.testing.assert_array_equal(got, array)
    assert np.all(np.isfinite(result.as_numpy("magnitude")))


def test_http_infers_count_in_the_model_statistics(server, client, windows):
    def successes() -> int:
        [stats] = client.get_inference_statistics(MODEL)["model_stats"]
        return stats["inference_stats"]["success"]["count"]

    before = successes()
    client.infer(MODEL, _inputs(httpclient, *windows, True))
    assert successes() == before + 1


def test_tritonclient_http_config_stats_repository(server, client):
    config = client.get_model_config(MODEL)
    assert config["name"] == MODEL and config["platform"] == "onnxruntime_onnx"
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["max_batch_size"] >= 1 and config["dynamic_batching"]
    stats = client.get_inference_statistics(MODEL)["model_stats"]
    assert [s["name"] for s in stats] == [MODEL]
    assert stats[0]["inference_stats"]["success"]["count"] >= 1  # the infers above
    index = client.get_model_repository_index()
    assert [(m["name"], m["state"]) for m in index] == [(MODEL, "READY")]
    client.load_model(MODEL)  # served already: succeeds, as over gRPC
    with pytest.raises(httpclient.InferenceServerException, match="cannot be unloaded"):
        client.unload_model(MODEL)
    with pytest.raises(httpclient.InferenceServerException, match="NoSuchModel"):
        client.get_model_metadata("NoSuchModel")


def test_plain_http_json_and_binary_infer(base, server, windows):
    waveform, log_amp = windows
    expected = _grpc_outputs(server, waveform, log_amp)
    url = f"{base}/v2/models/{MODEL}/infer"
    # JSON tensors in, JSON tensors out.
    doc = {"id": "a1", "inputs": [
        {"name": "waveform", "shape": list(waveform.shape), "datatype": "FP32",
         "data": waveform.tolist()},
        {"name": "log_amp", "shape": list(log_amp.shape), "datatype": "FP32",
         "data": log_amp.ravel().tolist()}]}  # fmt: skip
    status, headers, body = _request(
        url, json.dumps(doc).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, body
    reply = json.loads(body)
    assert reply["id"] == "a1" and reply["model_name"] == MODEL
    for out in reply["outputs"]:
        np.testing.assert_array_equal(
            np.asarray(out["data"], np.float32).reshape(out["shape"]), expected[out["name"]]
        )
    # Binary-data extension both ways: JSON header, then the tensors' little-endian bytes.
    raw = [waveform.astype("<f4").tobytes(), log_amp.astype("<f4").tobytes()]
    head = json.dumps({"inputs": [
        {"name": "waveform", "shape": list(waveform.shape), "datatype": "FP32",
         "parameters": {"binary_data_size": len(raw[0])}},
        {"name": "log_amp", "shape": list(log_amp.shape), "datatype": "FP32",
         "parameters": {"binary_data_size": len(raw[1])}}],
        "outputs": [{"name": "magnitude", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    status, headers, body = _request(
        url, head + b"".join(raw), {"Inference-Header-Content-Length": str(len(head))}
    )
    assert status == 200, body
    n = int(headers["Inference-Header-Content-Length"])
    reply = json.loads(body[:n])
    [out] = reply["outputs"]
    assert out["name"] == "magnitude" and out["parameters"]["binary_data_size"] == len(body) - n
    got = np.frombuffer(body[n:], "<f4").reshape(out["shape"])
    np.testing.assert_array_equal(got, expected["magnitude"])


def test_plain_http_routes_and_errors(base):
    def error(status_expected: int, url: str, body: bytes | None = None, headers=None) -> str:
        status, headers_back, reply = _request(url, body, headers)
        assert status == status_expected, reply
        assert headers_back["Content-Type"].startswith("application/json")
        return json.loads(reply)["error"]

    assert _request(f"{base}/v2/health/live")[0] == 200
    assert _request(f"{base}/v2/health/ready")[0] == 200
    assert _request(f"{base}/v2/models/{MODEL}/ready")[0] == 200
    assert _request(f"{base}/v2/models/{MODEL}/versions/nope/ready")[0] == 503
    status, _, body = _request(f"{base}/v2/models/{MODEL}")
    [version] = json.loads(body)["versions"]
    status, _, body = _request(f"{base}/v2/models/{MODEL}/versions/{version}")
    assert status == 200 and json.loads(body)["name"] == MODEL
    assert "version" in error(404, f"{base}/v2/models/{MODEL}/versions/nope/config")
    status, _, body = _request(f"{base}/v2/models/stats")
    assert status == 200 and json.loads(body)["model_stats"][0]["name"] == MODEL
    status, _, body = _request(f"{base}/v2/repository/index", b"{}")
    assert status == 200 and json.loads(body)[0]["name"] == MODEL

    infer = f"{base}/v2/models/{MODEL}/infer"
    assert "NoSuchModel" in error(404, f"{base}/v2/models/NoSuchModel")
    assert "NoSuchModel" in error(404, f"{base}/v2/models/NoSuchModel/infer", b'{"inputs": []}')
    assert "not JSON" in error(400, infer, b"{not json")
    assert "JSON object" in error(400, infer, b"[1, 2]")
    no_data = {"inputs": [{"name": "waveform", "shape": [1, 3, 3001], "datatype": "FP32"}]}
    assert "neither data" in error(400, infer, json.dumps(no_data).encode())
    int64 = {"inputs": [{"name": "waveform", "shape": [1], "datatype": "INT64", "data": [1]}]}
    assert "datatype must be FP32" in error(400, infer, json.dumps(int64).encode())
    short = {"inputs": [
        {"name": "waveform", "shape": [1, 3, 3001], "datatype": "FP32", "data": [0.5]},
        {"name": "log_amp", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}  # fmt: skip
    assert "needs 36012" in error(400, infer, json.dumps(short).encode())
    head = b'{"inputs": [{"name": "log_amp", "shape": [1, 1], "datatype": "FP32", ' \
           b'"parameters": {"binary_data_size": 8}}]}'  # fmt: skip
    assert "exceeds" in error(
        400, infer, head + b"\0" * 4, {"Inference-Header-Content-Length": str(len(head))}
    )
    assert "outside" in error(400, infer, head, {"Inference-Header-Content-Length": "99999"})
    # Objects where Triton's JSON has objects, integers where it has integers (a fuzzer's finds:
    # a list as parameters was an INTERNAL error, 1.5 a silently truncated dimension).
    one = {"name": "log_amp", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}
    for body, says in (
        ({"inputs": [one], "parameters": [1]}, "the request: parameters must be a JSON object"),
        ({"inputs": [{**one, "parameters": "x"}]}, "input 'log_amp': parameters must be"),
        ({"inputs": [one], "outputs": [{"name": "magnitude", "parameters": [1]}]}, "output"),
        ({"inputs": [{**one, "shape": [1.5, 1]}]}, "integer shape"),
        ({"inputs": [{**one, "shape": [True, 1]}]}, "integer shape"),
        ({"inputs": [one], "parameters": {"binary_data_output": "no"}}, "true or false"),
    ):
        assert says in error(400, infer, json.dumps(body).encode())
    bool_size = b'{"inputs": [{"name": "log_amp", "shape": [1, 1], "datatype": "FP32", ' \
                b'"parameters": {"binary_data_size": true}}]}'  # fmt: skip
    assert "binary_data_size True" in error(
        400, infer, bool_size + b"\0", {"Inference-Header-Content-Length": str(len(bool_size))}
    )
    assert "Not Found" in error(404, f"{base}/v3/nothing")
    assert "Method Not Allowed" in error(405, f"{base}/v2/health/live", b"{}")
    assert "cannot be unloaded" in error(400, f"{base}/v2/repository/models/{MODEL}/unload", b"")


def test_http_port_tokens_and_tls(registry, pki):  # noqa: F811
    key, cert = pki["server"]
    srv = build_server(
        registry, address="127.0.0.1:0", http_port=0, tokens=["s3cret"], tls_cert=cert, tls_key=key
    ).start(warm_up=False)
    try:
        context = ssl.create_default_context(cadata=pki["ca"].decode())
        base = f"https://localhost:{srv.http_port}"

        def get(path: str, headers=None) -> int:
            req = urllib.request.Request(base + path, headers=headers or {})
            try:
                with urllib.request.urlopen(req, timeout=10, context=context) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert get("/v2/health/live") == 200  # health needs no token, as over gRPC
        assert get("/v2/health/ready") == 503  # not warmed up
        assert get("/v2") == 401
        assert get("/v2", {"Authorization": "Bearer wrong"}) == 401
        assert get("/v2", {"Authorization": "Bearer s3cret"}) == 200
        with pytest.raises(OSError):  # plain HTTP on the TLS port: refused or disconnected
            urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/v2/health/live", timeout=5)
    finally:
        srv.stop(0)


def test_http_port_is_off_by_default_and_validated(registry):
    srv = build_server(registry, address="127.0.0.1:0")
    try:
        assert srv.http_port is None
    finally:
        srv.stop(0)
    with pytest.raises(ValueError, match="http_port"):
        build_server(registry, address="127.0.0.1:0", http_port=70000)
