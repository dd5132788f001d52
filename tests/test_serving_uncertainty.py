"""The per-station sigma end to end: freshly exported models with a sigma output, a real gRPC
server on a loopback port, ONNX Runtime and the evaluator's aggregation as the reference.

Three models share one server: a series model (PhaseNetMag) and a scalar one (ViTMag), both
exported with their Gaussian sigma, and an old-style export without sigma (PhaseNetMag's card
with ``uncertainty = "none"``, renamed), which must still serve with ``has_sigma`` false.
Randomly initialised weights are enough: the check is that serving carries what the model says.
"""

from __future__ import annotations

import dataclasses
import json
import math

import grpc
import numpy as np
import obspy
import onnxruntime as ort
import pytest
from obspy import Stream
from station_metadata import rjob_inventory, write_inventory

from seismag.cli import main
from seismag.models.card import OUTPUT_NAME, SIGMA_NAME
from seismag.models.preprocess import last_window, model_inputs, stream_to_array
from seismag.serving.client import SeismagClient, raw_trace
from seismag.serving.executor.runtime import ModelRegistry
from seismag.serving.pipeline.response import correct_trace
from seismag.serving.protocols.server import build_server
from seismag.serving.v1 import seismag_pb2 as pb
from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc

torch = pytest.importorskip("torch")

SERIES, SCALAR, NO_SIGMA = "PhaseNetMag", "ViTMag", "PhaseNetMagNoSigma"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from seismag.export.onnx_export import export_onnx
    from seismag.models import build_model
    from seismag.models.card import get_card

    def varied(model):
        # Doubled weights make the sigma vary along the window (0.02-3 instead of ~0.19
        # everywhere at initialisation), so an aggregation over the wrong samples would show.
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(2.0)
        return model.eval()

    folder = tmp_path_factory.mktemp("sigma_models")
    torch.manual_seed(0)
    for name in (SERIES, SCALAR):
        export_onnx(varied(build_model(name)), folder / f"{name}.onnx")
    old = dataclasses.replace(get_card(SERIES), name=NO_SIGMA, uncertainty="none")
    export_onnx(varied(build_model(old)), folder / f"{NO_SIGMA}.onnx")
    return folder


@pytest.fixture(scope="module")
def registry(model_dir):
    reg = ModelRegistry.from_paths([model_dir], default=SERIES, max_queue_delay_ms=1.0)
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory):
    # RJOB's record is in counts: the server converts it with its StationXML (--inventory).
    inventory = write_inventory(tmp_path_factory.mktemp("inventory") / "rjob.xml")
    srv = build_server(registry, address="127.0.0.1:0", inventory=str(inventory)).start()
    yield srv
    srv.stop(1)


@pytest.fixture(scope="module")
def stub(server):
    ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield pb_grpc.MagnitudeServiceStub(ch)
    ch.close()


def rjob() -> Stream:
    """ObsPy's BW.RJOB example as float32 samples (what RawTrace carries, so every path below
    sees the same numbers)."""
    st = obspy.read()
    for tr in st:
        tr.data = tr.data.astype(np.float32)
    return st


def _pick(st: Stream) -> float:
    return (st[0].stats.starttime + 5.0).timestamp


def _session(model_dir, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"])


def _predict(stub, st: Stream, model: str = "", interval: float = 1.0) -> pb.StationMagnitude:
    request = pb.PredictRequest(
        raw=pb.RawTraces(traces=[raw_trace(tr) for tr in st]),
        p_picks=[pb.PPick(station_id="BW.RJOB", time=_pick(st))],
        model=model,
        series_interval=interval,
    )
    (result,) = stub.Predict(request, timeout=60).results
    return result


def _stream(stub, st: Stream, model: str = "", hop: float = 1.0) -> list[pb.StreamUpdate]:
    """Replay ``st`` as 1 s raw chunks (the three components of a second per message)."""

    def requests():
        yield pb.StreamRequest(
            config=pb.StreamConfig(model=model, hop_seconds=hop),
            pick=pb.PPick(station_id="BW.RJOB", time=_pick(st)),
        )
        t0, end = st[0].stats.starttime, st[0].stats.endtime
        for k in range(math.ceil(end - t0 + 0.01)):
            sec = st.slice(t0 + k, t0 + k + 1 - 1e-3)
            if len(sec):
                yield pb.StreamRequest(raw_chunks=pb.RawTraces(traces=[raw_trace(t) for t in sec]))

    return [u for msg in stub.StreamPredict(requests(), timeout=60) for u in msg.updates]


# -- Predict --------------------------------------------------------------------------------------


def test_predict_sigma_matches_onnxruntime_and_the_evaluator(stub, registry, model_dir):
    from seismag.training.evaluate import window_magnitudes, window_sigmas

    st = rjob()
    r = _predict(stub, st)
    assert r.has_sigma and math.isfinite(r.magnitude_sigma) and r.magnitude_sigma > 0
    assert len(r.series.sigmas) == len(r.series.values) > 1
    assert all(s > 0 and math.isfinite(s) for s in r.series.sigmas)
    assert r.series.sigmas[-1] == pytest.approx(r.magnitude_sigma, abs=1e-6)

    # The reference: the window ending at the data end (in m/s through the instrument
    # correction the server runs), run by ONNX Runtime directly, and the evaluator's
    # per-window aggregation after the (client's) P onset.
    card = registry.get(SERIES).card
    inv = rjob_inventory()
    arr = stream_to_array(Stream([correct_trace(tr, inv) for tr in st]), card)
    x, log_amp = model_inputs(last_window(arr.data, card.in_samples), card)
    magnitude, sigma = _session(model_dir, SERIES).run(
        [OUTPUT_NAME, SIGMA_NAME], {"waveform": x[None], "log_amp": log_amp[None]}
    )
    n = arr.data.shape[1]
    onset = round((_pick(st) - arr.starttime.timestamp) * card.sampling_rate)
    in_window = np.array([max(0, onset - (n - card.in_samples))])
    want_sigma = window_sigmas(sigma, card, in_window)[0]
    want_magnitude = window_magnitudes(magnitude, card, in_window)[0]
    assert r.magnitude_sigma == pytest.approx(want_sigma, abs=1e-5)
    assert abs(want_sigma - sigma.mean()) > 1e-3  # the onset matters: the check can fail
    assert r.magnitude == pytest.approx(want_magnitude, abs=1e-5)


def test_scalar_model_sigma(stub):
    r = _predict(stub, rjob(), model=SCALAR)
    assert r.has_sigma and r.magnitude_sigma > 0
    assert len(r.series.sigmas) == len(r.series.values)
    assert r.series.sigmas[-1] == pytest.approx(r.magnitude_sigma, abs=1e-6)


# -- StreamPredict --------------------------------------------------------------------------------


def test_stream_replay_gives_predicts_sigma(stub):
    st = rjob()
    result = _predict(stub, st, interval=1.0)
    updates = _stream(stub, st, hop=1.0)
    assert updates and all(u.has_sigma and u.magnitude_sigma > 0 for u in updates)
    # Predict's series times: every interval from its start, then the data end.
    n = len(result.series.values)
    times = [result.series.start + k * result.series.interval for k in range(n - 1)]
    times.append(st[0].stats.endtime.timestamp)
    pairs = zip(result.series.values, result.series.sigmas, strict=True)
    expected = {round(t, 3): pair for t, pair in zip(times, pairs, strict=True)}
    for u in updates:
        value, sigma = expected[round(u.time, 3)]
        assert u.magnitude == pytest.approx(value, abs=1e-5)
        assert u.magnitude_sigma == pytest.approx(sigma, abs=1e-5)
    assert updates[-1].time == pytest.approx(times[-1], abs=1e-3)
    assert updates[-1].magnitude_sigma == pytest.approx(result.magnitude_sigma, abs=1e-5)


# -- Open Inference Protocol ----------------------------------------------------------------------


def test_oip_lists_and_returns_sigma(server, model_dir):
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    series = client.get_model_metadata(SERIES)
    assert [(t.name, t.datatype, list(t.shape)) for t in series.outputs] == [
        (OUTPUT_NAME, "FP32", [-1, 3001]),
        (SIGMA_NAME, "FP32", [-1, 3001]),
    ]
    scalar = client.get_model_metadata(SCALAR)
    assert [(t.name, list(t.shape)) for t in scalar.outputs] == [
        (OUTPUT_NAME, [-1]),
        (SIGMA_NAME, [-1]),
    ]
    old = client.get_model_metadata(NO_SIGMA)
    assert [t.name for t in old.outputs] == [OUTPUT_NAME]

    rng = np.random.default_rng(3)
    waveform = rng.normal(size=(2, 3, 3001)).astype(np.float32)
    log_amp = np.array([[-6.0], [-4.5]], dtype=np.float32)
    inputs = [tc.InferInput("waveform", list(waveform.shape), "FP32"),
              tc.InferInput("log_amp", list(log_amp.shape), "FP32")]  # fmt: skip
    inputs[0].set_data_from_numpy(waveform)
    inputs[1].set_data_from_numpy(log_amp)
    feeds = {"waveform": waveform, "log_amp": log_amp}

    for name, shape in ((SERIES, (2, 3001)), (SCALAR, (2,))):
        want_mag, want_sigma = _session(model_dir, name).run([OUTPUT_NAME, SIGMA_NAME], feeds)
        # No outputs requested: every output comes back, as Triton does.
        both = client.infer(name, inputs)
        assert both.as_numpy(SIGMA_NAME).shape == both.as_numpy(OUTPUT_NAME).shape == shape
        np.testing.assert_allclose(both.as_numpy(SIGMA_NAME), want_sigma, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(both.as_numpy(OUTPUT_NAME), want_mag, rtol=1e-4, atol=1e-4)
        assert np.all(both.as_numpy(SIGMA_NAME) > 0)
        # Only the sigma requested: only the sigma comes back.
        only = client.infer(name, inputs, outputs=[tc.InferRequestedOutput(SIGMA_NAME)])
        assert only.as_numpy(OUTPUT_NAME) is None
        np.testing.assert_allclose(only.as_numpy(SIGMA_NAME), want_sigma, rtol=1e-4, atol=1e-5)

    plain = client.infer(NO_SIGMA, inputs)
    assert plain.as_numpy(OUTPUT_NAME).shape == (2, 3001) and plain.as_numpy(SIGMA_NAME) is None
    with pytest.raises(tc.InferenceServerException) as err:
        client.infer(NO_SIGMA, inputs, outputs=[tc.InferRequestedOutput(SIGMA_NAME)])
    assert "StatusCode.INVALID_ARGUMENT" in str(err.value.status())
    client.close()


# -- an export without sigma ----------------------------------------------------------------------


def test_export_without_sigma_still_serves(stub, registry):
    assert not registry.get(NO_SIGMA).has_sigma and registry.get(SERIES).has_sigma
    st = rjob()
    r = _predict(stub, st, model=NO_SIGMA)
    assert math.isfinite(r.magnitude) and len(r.series.values) > 1
    assert not r.has_sigma and math.isnan(r.magnitude_sigma) and len(r.series.sigmas) == 0
    updates = _stream(stub, st, model=NO_SIGMA)
    assert updates and all(not u.has_sigma and math.isnan(u.magnitude_sigma) for u in updates)
    assert updates[-1].magnitude == pytest.approx(r.magnitude, abs=1e-5)


# -- Python client and CLI ------------------------------------------------------------------------


def test_client_and_cli_carry_sigma(server, stub, tmp_path, capsys):
    st = rjob()
    address = f"127.0.0.1:{server.port}"
    picks = {"BW.RJOB": st[0].stats.starttime + 5.0}
    with SeismagClient(address) as client:
        (r,) = client.predict(st, p_picks=picks, raw=True)
        (old,) = client.predict(st, p_picks=picks, raw=True, model=NO_SIGMA)
    wire = _predict(stub, st)
    assert r.has_sigma and r.magnitude_sigma == pytest.approx(wire.magnitude_sigma, abs=1e-9)
    assert isinstance(r.sigma_series, obspy.Trace)
    assert r.sigma_series.stats.starttime == r.series.stats.starttime
    np.testing.assert_allclose(r.sigma_series.data, wire.series.sigmas, atol=1e-6)
    assert r.to_dict()["magnitude_sigma"] == r.magnitude_sigma
    assert not old.has_sigma and old.sigma_series is None and math.isnan(old.magnitude_sigma)
    assert old.to_dict()["magnitude_sigma"] is None and old.to_dict()["series"]["sigmas"] is None

    path = tmp_path / "rjob.mseed"
    st.write(str(path), format="MSEED")
    pick = f"BW.RJOB={st[0].stats.starttime + 5.0}"
    common = ["--server", address, "--pick", pick]
    assert main(["predict", str(path), *common]) == 0
    out = capsys.readouterr().out
    assert f"M {r.magnitude:5.2f} ± {r.magnitude_sigma:.2f}" in out
    assert main(["predict", str(path), *common, "--model", NO_SIGMA]) == 0
    assert "±" not in capsys.readouterr().out
    assert main(["predict", str(path), *common, "--json"]) == 0
    (station,) = json.loads(capsys.readouterr().out)
    assert station["magnitude_sigma"] == pytest.approx(r.magnitude_sigma, abs=1e-6)
    assert station["series"]["sigmas"][-1] == pytest.approx(station["magnitude_sigma"], abs=1e-6)

    assert main(["stream", str(path), *common, "--speed", "0", "--json"]) == 0
    updates = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert updates and all(u["magnitude_sigma"] > 0 for u in updates)
    assert updates[-1]["magnitude_sigma"] == pytest.approx(r.magnitude_sigma, abs=1e-5)
    assert main(["stream", str(path), *common, "--speed", "0", "--model", NO_SIGMA, "--json"]) == 0
    updates = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert updates and all(u["magnitude_sigma"] is None for u in updates)
