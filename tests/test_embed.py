"""Pretraining encoders end to end: export (parity), Embed over gRPC, the OIP, the client and CLI.

A randomly initialised BidirAutoregEncoder with a 10 s window (``in_samples`` 1001 instead of
the card's 3001: export and serving read every size from the card, and the shorter window keeps
the export to a few seconds) is saved, exported and served by a real loopback server
(``encoder=`` is ``seismag serve --encoder``). Served embeddings are compared with ONNX Runtime
run directly on the window the test cuts and normalises itself from examples/velocity.mseed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grpc
import numpy as np
import obspy
import onnx
import onnxruntime as ort
import pytest

from seismag.cli import main
from seismag.models.encoder_card import ENCODER_CARD_KEY, EncoderCard, get_encoder_card
from seismag.models.preprocess import last_window, normalise, stream_to_array
from seismag.serving.client import SeismagClient
from seismag.serving.executor.backend import ModelLoadError
from seismag.serving.protocols.server import build_server
from seismag.serving.v1 import seismag_pb2 as pb
from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc

torch = pytest.importorskip("torch")
tc = pytest.importorskip("tritonclient.grpc")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
VELOCITY = EXAMPLES / "velocity.mseed"  # BW.RJOB in m/s, 30 s at 100 Hz


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from seismag.export.encoder_export import export_encoder
    from seismag.models.encoders import build_encoder, save_encoder

    card = dataclasses.replace(get_encoder_card("BidirAutoregEncoder"), in_samples=1001)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("encoder")
    weights = save_encoder(build_encoder(card), folder / "encoder.safetensors")
    return weights, export_encoder(weights, folder / "onnx")


@pytest.fixture(scope="module")
def server(registry, exported):
    srv = build_server(registry, address="127.0.0.1:0", encoder=[str(exported[1].path)]).start()
    yield srv
    srv.stop(1)


@pytest.fixture(scope="module")
def address(server) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def card(exported) -> EncoderCard:
    return exported[1].card


def _direct(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {"waveform": x})[0]


def _window(st: obspy.Stream, card: EncoderCard) -> tuple[np.ndarray, obspy.UTCDateTime]:
    """The station's latest window, normalised the card's way, and the time of its first sample."""
    arr = stream_to_array(st, card)
    x, _ = normalise(
        last_window(arr.data, card.in_samples)[None],
        card.normalisation,
        highpass_hz=card.highpass_hz,
        sampling_rate=card.sampling_rate,
    )
    end = arr.starttime + (arr.data.shape[1] - 1) / card.sampling_rate
    return x, end - (card.in_samples - 1) / card.sampling_rate


def test_export_is_parity_checked_and_carries_the_card(exported, card):
    _, result = exported
    assert result.path.name == "BidirAutoregEncoder.onnx"
    assert result.max_abs_diff <= card.tolerance, result.max_abs_diff
    model = onnx.load(str(result.path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert EncoderCard.from_json(meta[ENCODER_CARD_KEY]) == card
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [(i.name, dims(i)) for i in model.graph.input] == [("waveform", ["batch", 3, 1001])]
    (out,) = model.graph.output
    assert (out.name, dims(out)) == ("embedding", ["batch", card.steps(), card.embed_dim])


def test_export_encoder_cli_refuses_a_missing_or_wrong_file(tmp_path, capsys):
    assert main(["export-encoder", str(tmp_path / "none.safetensors"), "--out", "x"]) == 2
    assert main(["export-encoder", str(VELOCITY), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("seismag: error: ") for line in err), err
    assert "not found" in err[0] and "velocity.mseed" in err[1]


def test_embed_equals_onnx_runtime_on_the_same_window(address, exported, card):
    st = obspy.read(str(VELOCITY))
    x, start = _window(st, card)
    want = _direct(exported[1].path, x)[0]
    request = pb.EmbedRequest(encoder=card.name, miniseed=VELOCITY.read_bytes(), input_units="m/s")
    with grpc.insecure_channel(address) as ch:
        reply = pb_grpc.MagnitudeServiceStub(ch).Embed(request, timeout=30)
    assert (reply.encoder, reply.encoder_version) == (card.name, card.version)
    (e,) = reply.embeddings
    assert (e.network, e.station, e.location) == ("BW", "RJOB", "")
    assert list(e.shape) == [card.steps(), card.embed_dim] == [251, 64]
    got = np.asarray(e.values, np.float32).reshape(list(e.shape))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert e.step_seconds == pytest.approx(0.04)
    assert e.window_start == pytest.approx(start.timestamp, abs=1e-6)
    assert e.window_end == pytest.approx(st[0].stats.endtime.timestamp, abs=1e-6)
    assert list(e.warnings) == [] and e.timings.total_ms > 0


def test_client_gives_numpy_with_a_time_axis(address, card, exported):
    st = obspy.read(str(VELOCITY))
    x, start = _window(st, card)
    with SeismagClient(address) as client:
        (e,) = client.embed(st, encoder=card.name, units="m/s")
        (raw,) = client.embed(st, units="m/s", raw=True)  # "" = the only encoder
    assert e.embedding.shape == (251, 64) and e.embedding.dtype == np.float32
    np.testing.assert_allclose(e.embedding, _direct(exported[1].path, x)[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(raw.embedding, e.embedding, atol=1e-5, rtol=0)
    assert e.times.dtype == np.dtype("datetime64[ns]") and e.times.shape == (251,)
    assert e.times[0] == np.datetime64(start.ns, "ns")
    assert np.all(np.diff(e.times) == np.timedelta64(40_000_000, "ns"))
    assert e.times[-1] == np.datetime64((start + 250 * 0.04).ns, "ns")


def test_a_short_record_is_padded_and_said(address, card):
    st = obspy.read(str(VELOCITY))
    st.trim(st[0].stats.starttime, st[0].stats.starttime + 4)
    with SeismagClient(address) as client:
        (e,) = client.embed(st, encoder=card.name, units="m/s")
    assert e.window_start == st[0].stats.endtime - 10.0
    assert len(e.warnings) == 1 and "left-padded" in e.warnings[0]


def _slow_raw_request() -> pb.EmbedRequest:
    """Raw samples at 0.5 Hz: below the 20 Hz every RPC accepts."""
    trace = pb.RawTrace(
        network="XX", station="A", channel="HHZ", sampling_rate=0.5, starttime=1.6e9,
        samples=[0.0] * 8,
    )  # fmt: skip
    return pb.EmbedRequest(raw=pb.RawTraces(traces=[trace]), input_units="m/s")


@pytest.mark.parametrize(
    "request_, code",
    [
        (pb.EmbedRequest(encoder="NoSuchEncoder", input_units="m/s"), "NOT_FOUND"),
        (pb.EmbedRequest(input_units="m/s"), "INVALID_ARGUMENT"),  # no input
        (pb.EmbedRequest(miniseed=b"not miniseed", input_units="m/s"), "INVALID_ARGUMENT"),
        (_slow_raw_request(), "INVALID_ARGUMENT"),
        (pb.EmbedRequest(miniseed=VELOCITY.read_bytes()), "FAILED_PRECONDITION"),  # counts
    ],
)
def test_refusals_have_predicts_statuses(address, request_, code):
    if request_.encoder == "NoSuchEncoder":
        request_.miniseed = VELOCITY.read_bytes()
    with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as err:
        pb_grpc.MagnitudeServiceStub(ch).Embed(request_, timeout=30)
    assert err.value.code().name == code, err.value.details()
    if code == "NOT_FOUND":
        assert "BidirAutoregEncoder" in err.value.details()


def test_list_models_names_the_encoder(address, card):
    with SeismagClient(address) as client:
        listed = client.models()
    (enc,) = listed.encoders
    assert enc.name == card.name and EncoderCard.from_json(enc.card_json) == card
    assert [list(s.shape) for s in enc.outputs] == [[-1, 251, 64]]
    assert card.name not in [m.name for m in listed.models]


def test_open_inference_protocol_serves_the_encoder(address, exported, card):
    x, _ = _window(obspy.read(str(VELOCITY)), card)
    batch = np.concatenate([x, x[:, :, ::-1].copy()]).astype(np.float32)
    client = tc.InferenceServerClient(url=address)
    try:
        meta = client.get_model_metadata(card.name)
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("waveform", "FP32", [-1, 3, 1001])
        ]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
            ("embedding", "FP32", [-1, 251, 64])
        ]
        assert client.is_model_ready(card.name)
        inp = tc.InferInput("waveform", list(batch.shape), "FP32")
        inp.set_data_from_numpy(batch)
        got = client.infer(card.name, [inp]).as_numpy("embedding")
        np.testing.assert_allclose(got, _direct(exported[1].path, batch), atol=1e-5, rtol=0)
        config = client.get_model_config(card.name).config
        assert [list(o.dims) for o in config.output] == [[251, 64]]
        assert card.name in [m.name for m in client.get_model_repository_index().models]
        with pytest.raises(tc.InferenceServerException) as err:
            client.infer(card.name, [tc.InferInput("waveform", [1, 3, 10], "FP32")])
        assert "INVALID_ARGUMENT" in str(err.value.status())
    finally:
        client.close()


def test_embed_cli_writes_npz(address, card, tmp_path, capsys):
    out = tmp_path / "e.npz"
    argv = ["embed", str(VELOCITY), "--encoder", card.name, "--units", "m/s", "--out", str(out)]
    assert main([*argv, "--server", address]) == 0
    assert "wrote" in capsys.readouterr().out
    with SeismagClient(address) as client:
        (e,) = client.embed(obspy.read(str(VELOCITY)), encoder=card.name, units="m/s")
    saved = np.load(out)
    assert list(saved["stations"]) == ["BW.RJOB."]
    np.testing.assert_array_equal(saved["BW.RJOB./embedding"], e.embedding)
    np.testing.assert_array_equal(saved["BW.RJOB./times"], e.times)
    assert main([*argv[:3], "Nope", *argv[4:], "--server", address]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err


def test_a_file_that_is_not_an_encoder_stops_the_start(registry, tmp_path):
    from seismag.serving.executor.runtime import default_model_path

    with pytest.raises(ModelLoadError, match="does not exist"):
        build_server(registry, address="127.0.0.1:0", encoder=[str(tmp_path / "none.onnx")])
    with pytest.raises(ModelLoadError, match="no encoder card"):
        build_server(registry, address="127.0.0.1:0", encoder=[str(default_model_path())])


def test_config_reports_whether_encoders_are_served(server):
    assert json.loads(server.config.public_json())["encoder"] is True
