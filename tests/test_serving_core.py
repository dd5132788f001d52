"""Serving core without gRPC: model registry, dynamic batcher, ingest, causal predict, streams.

ObsPy's RJOB record is in counts: it is sent with its StationXML (``inventory=INV``); the
synthetic records are ground velocity and say so (``units="m/s"``).
"""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime, read, read_inventory
from obspy.signal.trigger import recursive_sta_lta
from scipy.signal import butter, sosfilt, sosfilt_zi
from station_metadata import rjob_inventory

from seismag.serving.errors import (
    InvalidInput,
    MissingResponse,
    ModelNotFound,
    NotReady,
    Overloaded,
)
from seismag.serving.executor.batcher import DynamicBatcher
from seismag.serving.executor.runtime import (
    ModelLoadError,
    ModelRegistry,
    ModelRuntime,
    default_model_path,
    read_card_from_onnx,
)
from seismag.serving.pipeline import ingest
from seismag.serving.pipeline.onset import OnsetPicker
from seismag.serving.pipeline.predict import predict
from seismag.serving.pipeline.stream_session import StreamSession

SCALAR_MODEL = "ViTMag"


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def registry(model_dir):
    reg = ModelRegistry.from_paths([model_dir], default="PhaseNetMag", max_queue_delay_ms=1.0)
    reg.warm_up()
    yield reg
    reg.close()


def rjob() -> Stream:
    return read()  # ObsPy's example: BW.RJOB, 3 x 30 s at 100 Hz, P at about 4.8 s


RJOB_P = UTCDateTime(2009, 8, 24, 0, 20, 7, 800000)
INV = read_inventory()  # holds BW.RJOB's response


def three_stations() -> Stream:
    st = Stream()
    for code in ("RJOB", "RJOC", "RJOD"):
        copy = rjob()
        for tr in copy:
            tr.stats.station = code
        st += copy
    return st


def synthetic(seconds: float = 40.0, onset: float = 15.0, seed: int = 1, rate=100.0) -> Stream:
    """Noise with a P-like burst at ``onset`` s: STA/LTA picks it (it has 10 s of noise first)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    envelope = np.where(t >= onset, 30.0 * np.exp(-(t - onset) / 8.0), 0.0)
    start = UTCDateTime(2024, 1, 1, 0, 0, 0)
    st = Stream()
    for comp in "ZNE":
        data = 1e-7 * (rng.normal(size=n) * (1.0 + envelope) + 3.0)
        header = {"network": "XX", "station": "SYN", "channel": f"HH{comp}"}
        st.append(Trace(data, header={**header, "sampling_rate": rate, "starttime": start}))
    return st


def to_mseed(st: Stream, reclen: int | None = None) -> bytes:
    buf = io.BytesIO()
    kw = {"reclen": reclen} if reclen else {}
    st.write(buf, format="MSEED", **kw)
    return buf.getvalue()


# -- registry and runtime --------------------------------------------------------------------------


def test_registry_from_directory_default_and_unknown(registry):
    assert sorted(registry.names()) == sorted(["PhaseNetMag", SCALAR_MODEL])
    assert registry.default_name == "PhaseNetMag"
    assert registry.get().name == "PhaseNetMag"
    assert registry.get(SCALAR_MODEL).card.output == "scalar"
    with pytest.raises(ModelNotFound, match="PhaseNetMag"):
        registry.get("NoSuchModel")


def test_registry_from_file_and_default_model_file():
    path = default_model_path()
    assert path.name == "PhaseNetMag.onnx" and path.is_file()
    reg = ModelRegistry.from_paths([path])
    try:
        rt = reg.get("")
        assert rt.name == "PhaseNetMag" and rt.version == rt.card.version
        assert rt.weights  # provenance string from the metadata
        assert read_card_from_onnx(path) == rt.card
        assert rt.input_specs() == [
            ("waveform", "FP32", [-1, 3, 3001]),
            ("log_amp", "FP32", [-1, 1]),
        ]
        # The shipped weights carry a Gaussian sigma head: both outputs, same shape.
        assert rt.output_specs() == [
            ("magnitude", "FP32", [-1, 3001]),
            ("sigma", "FP32", [-1, 3001]),
        ]
    finally:
        reg.close()


def test_load_errors_name_the_file(tmp_path, model_dir):
    with pytest.raises(ModelLoadError, match="does not exist"):
        ModelRegistry.from_paths([tmp_path / "missing.onnx"])
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelLoadError, match=r"corrupt\.onnx"):
        ModelRegistry.from_paths([bad])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"no \.onnx"):
        ModelRegistry.from_paths([empty])
    with pytest.raises(ModelLoadError, match="default model"):
        ModelRegistry.from_paths([model_dir / "PhaseNetMag.onnx"], default=SCALAR_MODEL)


def test_onnx_without_card_is_a_load_error(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("waveform", TensorProto.FLOAT, [None, 3, 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 3, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["waveform"], ["out"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "nocard.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="no seismag card"):
        read_card_from_onnx(path)
    with pytest.raises(ModelLoadError, match=r"nocard\.onnx"):
        ModelRuntime(path)


def test_infer_and_infer_raw(registry):
    rt = registry.get()
    wave, amp = rt.example_inputs(3)
    rows, timings = rt.infer(wave, amp)
    assert rows.magnitude.shape == (3, 3001) and set(timings) == {"queue", "compute"}
    assert rt.has_sigma and rows.sigma.shape == (3, 3001) and np.all(rows.sigma > 0)
    out = rt.infer_raw({"waveform": wave, "log_amp": amp})
    assert set(out) == {"magnitude", "sigma"}
    np.testing.assert_allclose(out["magnitude"], rows.magnitude, atol=1e-6)
    np.testing.assert_allclose(out["sigma"], rows.sigma, atol=1e-6)
    scalar = registry.get(SCALAR_MODEL)  # freshly exported: its card has a Gaussian sigma
    rows, _ = scalar.infer(wave, amp)
    assert rows.magnitude.shape == rows.sigma.shape == (3,) and np.all(rows.sigma > 0)
    out = scalar.infer_raw({"waveform": wave, "log_amp": amp})
    assert out["magnitude"].shape == out["sigma"].shape == (3,)
    np.testing.assert_allclose(out["sigma"], rows.sigma, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda w, a: {"waveform": w}, "missing"),
        (lambda w, a: {"waveform": w, "log_amp": a, "x": a}, "unknown"),
        (lambda w, a: {"waveform": w.astype(np.float64), "log_amp": a}, "FP32"),
        (lambda w, a: {"waveform": w[:, :2], "log_amp": a}, "shape"),
        (lambda w, a: {"waveform": w, "log_amp": a[:1]}, "batch"),
        (lambda w, a: {"waveform": np.full_like(w, np.nan), "log_amp": a}, "NaN"),
    ],
)
def test_infer_raw_rejects_bad_tensors(registry, change, message):
    wave, amp = registry.get().example_inputs(2)
    with pytest.raises(InvalidInput, match=message):
        registry.get().infer_raw(change(wave, amp))


# -- batcher ---------------------------------------------------------------------------------------


class _Recorder:
    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.delay = delay
        self.gate = gate

    def __call__(self, wave: np.ndarray, amp: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(5)
        if self.delay:
            time.sleep(self.delay)
        self.batches.append(wave.shape[0])
        return wave[:, 0, 0] * 2.0


def _rows(k: int, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    wave = np.zeros((k, 1, 2), np.float32)
    wave[:, 0, 0] = np.arange(first, first + k)
    return wave, np.zeros((k, 1), np.float32)


def test_batcher_groups_concurrent_submissions():
    rec = _Recorder()
    hook: list[tuple] = []
    b = DynamicBatcher(
        rec,
        max_batch=64,
        max_queue_delay_ms=150,
        max_queue=100,
        name="m",
        on_batch=lambda *a: hook.append(a),
    )
    futures = []
    threads = [
        threading.Thread(target=lambda i=i: futures.append((i, b.submit(*_rows(1, i)))))
        for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, f in futures:
        rows, timings = f.result(5)
        assert rows.tolist() == [2.0 * i]
        assert timings["queue"] >= 0 and timings["compute"] >= 0
    b.close()
    assert rec.batches == [6]
    assert hook[0][:2] == ("m", 6)
    assert b.stats().batches == 1 and b.stats().rows == 6


def test_batcher_splits_and_respects_max_batch():
    rec = _Recorder()
    b = DynamicBatcher(rec, max_batch=4, max_queue_delay_ms=1, max_queue=100)
    rows, _ = b.submit(*_rows(10)).result(5)
    b.close()
    assert rows.tolist() == [2.0 * i for i in range(10)]
    assert rec.batches == [4, 4, 2]


def test_batcher_splits_every_output_and_keeps_their_form():
    """A tuple of outputs (magnitude and sigma from one call) is split like one array; each job
    gets the same NamedTuple back, None outputs stay None, also across batches."""
    from seismag.serving.executor.runtime import ModelRows

    calls: list[int] = []

    def run(wave, amp):
        calls.append(wave.shape[0])
        return ModelRows(wave[:, 0, 0] * 2.0, wave[:, 0, 0] + 0.5)

    b = DynamicBatcher(run, max_batch=4, max_queue_delay_ms=50, max_queue=100)
    whole, part = b.submit(*_rows(3)), b.submit(*_rows(3, 10))  # the second spans 2 batches
    (rows, _), (split, _) = whole.result(5), part.result(5)
    assert isinstance(rows, ModelRows) and rows.magnitude.tolist() == [0.0, 2.0, 4.0]
    assert rows.sigma.tolist() == [0.5, 1.5, 2.5]
    assert split.magnitude.tolist() == [20.0, 22.0, 24.0]
    assert split.sigma.tolist() == [10.5, 11.5, 12.5]
    assert calls == [4, 2]
    none = DynamicBatcher(
        lambda w, a: ModelRows(w[:, 0, 0], None), max_batch=2, max_queue_delay_ms=1, max_queue=9
    )
    rows, _ = none.submit(*_rows(3)).result(5)
    assert rows.magnitude.tolist() == [0.0, 1.0, 2.0] and rows.sigma is None
    b.close()
    none.close()


def test_batcher_delay_bound_and_full_batch_goes_at_once():
    rec = _Recorder()
    b = DynamicBatcher(rec, max_batch=4, max_queue_delay_ms=60, max_queue=100)
    t0 = time.perf_counter()
    _, timings = b.submit(*_rows(1)).result(5)
    waited = time.perf_counter() - t0
    assert 0.05 <= waited < 1.0 and timings["queue"] >= 50
    slow = DynamicBatcher(rec, max_batch=4, max_queue_delay_ms=5000, max_queue=100)
    t0 = time.perf_counter()
    slow.submit(*_rows(4)).result(5)
    assert time.perf_counter() - t0 < 1.0  # a full batch does not wait for the delay
    b.close()
    slow.close()


def test_batcher_overload_errors_and_close():
    gate = threading.Event()
    b = DynamicBatcher(_Recorder(gate=gate), max_batch=2, max_queue_delay_ms=0, max_queue=4)
    first = b.submit(*_rows(2))  # taken by the worker, which blocks on the gate
    time.sleep(0.05)
    queued = b.submit(*_rows(4))
    with pytest.raises(Overloaded, match="queue full"):
        b.submit(*_rows(1))
    b.close(drain=False, timeout=0.1)
    assert queued.cancelled()
    gate.set()
    assert first.result(5)[0].shape == (2,)
    with pytest.raises(NotReady):
        b.submit(*_rows(1))

    def boom(wave, amp):
        raise RuntimeError("model exploded")

    failing = DynamicBatcher(boom, max_batch=2, max_queue_delay_ms=0, max_queue=10)
    with pytest.raises(RuntimeError, match="exploded"):
        failing.submit(*_rows(3)).result(5)
    assert failing.submit(*_rows(1)).exception(5) is not None  # the worker survives
    failing.close()


class _Owner:
    def __init__(self) -> None:
        self.closed = False
        self.calls: list[list] = []
        self.errors: list[tuple[list, BaseException]] = []

    def on_rows(self, results):
        self.calls.append([(tag, rows.tolist()) for tag, rows, _ in results])

    def on_error(self, tags, exc):
        self.errors.append((tags, exc))


def test_batcher_owner_gets_a_batch_in_one_call_and_closed_owners_are_skipped():
    gate = threading.Event()
    rec = _Recorder(gate=gate)
    b = DynamicBatcher(
        rec, max_batch=8, max_queue_delay_ms=0, max_queue=100, prepare=lambda w: (w, w[:, 0, :1])
    )
    a, gone = _Owner(), _Owner()
    b.submit_raw(_rows(1, 100)[0], owner=a, tag="first")  # taken at once; waits on the gate
    time.sleep(0.05)
    for i in range(3):
        assert b.submit_raw(_rows(1, i)[0], owner=a, tag=i) is None
    b.submit_raw(_rows(1, 9)[0], owner=gone, tag="x")
    gone.closed = True  # e.g. its client went away: its queued window is never computed
    gate.set()
    b.close()
    assert a.calls == [[("first", [200.0])], [(0, [0.0]), (1, [2.0]), (2, [4.0])]]
    assert gone.calls == [] and rec.batches == [1, 3]

    def boom(wave, amp):
        raise RuntimeError("model exploded")

    failing = DynamicBatcher(
        boom, max_batch=4, max_queue_delay_ms=0, max_queue=10, prepare=lambda w: (w, w[:, 0, :1])
    )
    owner = _Owner()
    failing.submit_raw(_rows(1)[0], owner=owner, tag="t")
    failing.close()
    assert owner.errors and owner.errors[0][0] == ["t"]
    assert "exploded" in str(owner.errors[0][1])


def test_batcher_workers_run_batches_in_parallel_and_drain():
    running, peak, lock = [0], [0], threading.Lock()
    release = threading.Event()

    def run(wave, amp):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(5)  # hold every run until both workers are inside one
        with lock:
            running[0] -= 1
        return wave[:, 0, 0] * 2.0

    b = DynamicBatcher(run, max_batch=2, max_queue_delay_ms=0, max_queue=100, workers=2)
    assert b.workers == 2
    futures = [b.submit(*_rows(2, 2 * i)) for i in range(5)]
    deadline = time.monotonic() + 5
    while peak[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert peak[0] == 2  # two batches in the model at once
    release.set()
    b.close()  # drains: every queued row is computed
    got = np.concatenate([f.result(5)[0] for f in futures])
    assert got.tolist() == [2.0 * i for i in range(10)]
    assert b.stats().rows == 10
    with pytest.raises(ValueError, match="workers"):
        DynamicBatcher(run, max_batch=2, max_queue_delay_ms=0, max_queue=10, workers=0)


# -- ingest ----------------------------------------------------------------------------------------


def test_read_miniseed_roundtrip_and_bad_bytes():
    data = to_mseed(rjob(), reclen=512)
    st = ingest.read_miniseed(data)
    assert len(st) == 3 and st[0].stats.npts == 3000
    for bad, message in [
        (b"", "empty"),
        (data[:100], "not valid miniSEED"),
        (data[:700], "truncated"),
        (b"\x00" * 4096, "not valid miniSEED"),
        (np.random.default_rng(0).bytes(4096), "not valid miniSEED"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            ingest.read_miniseed(bad)


def test_miniseed_counts_are_checked_before_decompression_where_they_could_be_exceeded(
    monkeypatch,
):
    from seismag.serving.errors import Overloaded

    # An ordinary request is decoded once: it cannot hold more than the limits allow.
    data = to_mseed(rjob(), reclen=512)
    assert not ingest._may_exceed_limits(len(data))
    calls = []
    decode = ingest._decode_miniseed
    monkeypatch.setattr(
        ingest,
        "_decode_miniseed",
        lambda d, headonly=False: calls.append(headonly) or decode(d, headonly),
    )
    ingest.read_miniseed(data)
    assert calls == [False]
    # Past the bound (here: more records than MAX_TRACES could come from) the headers are read
    # first and the request refused before any record is decompressed.
    t0 = UTCDateTime(2024, 1, 1)
    many = Stream(
        [
            Trace(np.zeros(1, np.int32), {"station": f"S{i}", "channel": "HHZ", "starttime": t0})
            for i in range(ingest.MAX_TRACES + 1)
        ]
    )
    payload = to_mseed(many, reclen=256)
    assert ingest._may_exceed_limits(len(payload))
    calls.clear()
    with pytest.raises(Overloaded, match="traces"):
        ingest.read_miniseed(payload)
    assert calls == [True]


def test_trace_from_array_validates():
    t0 = UTCDateTime(2024, 1, 1)
    tr = ingest.trace_from_array("XX", "A", "", "HHZ", 100.0, t0, np.arange(10))
    assert tr.id == "XX.A..HHZ" and tr.stats.npts == 10 and tr.data.dtype == np.float64
    for rate in (0.0, -1.0, np.nan, np.inf, 20000.0):
        with pytest.raises(InvalidInput, match="sampling rate"):
            ingest.trace_from_array("XX", "A", "", "HHZ", rate, t0, np.arange(10))
    with pytest.raises(InvalidInput, match="NaN"):
        ingest.trace_from_array("XX", "A", "", "HHZ", 100.0, t0, np.array([1.0, np.nan]))
    with pytest.raises(InvalidInput, match="no samples"):
        ingest.trace_from_array("XX", "A", "", "HHZ", 100.0, t0, np.array([]))


def test_stationxml_and_response_removal():
    buf = io.BytesIO()
    read_inventory().write(buf, format="STATIONXML")
    inv = ingest.read_stationxml(buf.getvalue())
    vel = ingest.remove_response(rjob(), inv)
    assert np.abs(vel[0].data).max() < 1e-3  # counts (~1e3) -> m/s (~1e-6)
    flat = ingest.remove_sensitivity(rjob(), inv)
    np.testing.assert_allclose(flat[0].data, rjob()[0].data / 2.5168e9, rtol=1e-3)
    with pytest.raises(InvalidInput, match="StationXML"):
        ingest.read_stationxml(b"<xml>nope</xml>")
    other = rjob()
    for tr in other:
        tr.stats.station = "NOPE"
    with pytest.raises(InvalidInput, match=r"BW\.NOPE\.\.EH"):
        ingest.remove_response(other, inv)


# -- onset -----------------------------------------------------------------------------------------


def test_picker_matches_obspy_and_is_chunk_independent():
    z = synthetic()[0].data
    whole = OnsetPicker(100.0)
    cft = whole.feed(z)
    sos = butter(2, 1.0, btype="highpass", fs=100.0, output="sos")
    filtered = sosfilt(sos, z, zi=sosfilt_zi(sos) * z[0])[0]
    ref = recursive_sta_lta(filtered, 50, 1000)
    np.testing.assert_allclose(cft[1000:], ref[1000:], rtol=1e-9)
    assert whole.accepted and abs(whole.accepted[0] - 1500) < 50
    chunked = OnsetPicker(100.0)
    parts = [chunked.feed(z[i : i + 57]) for i in range(0, z.size, 57)]
    assert np.array_equal(np.concatenate(parts), cft)
    assert chunked.accepted == whole.accepted


# -- predict ---------------------------------------------------------------------------------------


def test_predict_one_result_per_station_with_request_picks(registry):
    picks = {"BW.RJOB": RJOB_P, "BW.RJOC.": RJOB_P, "BW.RJOD": RJOB_P}
    inv = rjob_inventory(["RJOC", "RJOD"])
    results = predict(registry, three_stations(), p_picks=picks, inventory=inv)
    assert [r.station for r in results] == ["RJOB", "RJOC", "RJOD"]
    for r in results:
        assert r.onset_source == "request" and abs(r.onset - RJOB_P) < 0.011
        assert r.model == "PhaseNetMag" and r.series_interval == 1.0
        assert np.all(np.isfinite(r.series)) and r.magnitude == r.series[-1]
        # first value: the first 1 s grid point at least 2 s after the pick
        assert r.series_start == UTCDateTime(2009, 8, 24, 0, 20, 9, 990000)
        assert r.series_start + (len(r.series) - 1) * r.series_interval == rjob()[0].stats.endtime
        assert {"preprocess", "queue", "compute", "total"} <= set(r.timings_ms)
        assert "after the client's P pick" in r.derivation
    np.testing.assert_allclose(results[1].series, results[0].series, atol=1e-6)


def test_predict_series_is_causal(registry):
    picks = {"BW.RJOB": RJOB_P}
    full = predict(registry, rjob(), p_picks=picks, inventory=INV)[0]
    cut_at = full.series_start + 9 * full.series_interval  # a grid point
    short = predict(registry, rjob().slice(endtime=cut_at), p_picks=picks, inventory=INV)[0]
    assert short.series_start == full.series_start
    assert len(short.series) == 10
    np.testing.assert_allclose(short.series, full.series[:10], atol=1e-5)


def test_predict_final_value_alone_matches_series_end(registry):
    picks = {"BW.RJOB": RJOB_P}
    series = predict(registry, rjob(), p_picks=picks, inventory=INV)[0]
    single = predict(registry, rjob(), p_picks=picks, series_interval=30.0, inventory=INV)[0]
    assert len(single.series) == 1
    assert single.magnitude == pytest.approx(series.magnitude, abs=1e-5)


def test_predict_picks_onset_without_a_pick(registry):
    r = predict(registry, synthetic(), units="m/s")[0]
    assert r.onset_source in ("phasenet", "sta_lta_aic")  # whichever of the two came first
    assert abs(r.onset - UTCDateTime(2024, 1, 1, 0, 0, 15)) < 0.5
    assert r.series_start >= r.onset + 2.0


def test_predict_errors_name_the_station(registry):
    # RJOB cut 0.5 s before its P holds only noise: without a pick there is no onset.
    with pytest.raises(InvalidInput, match=r"BW\.RJOB\..*no P onset"):
        predict(registry, rjob().slice(endtime=RJOB_P - 0.5), inventory=INV)
    with pytest.raises(InvalidInput, match="match no station"):
        predict(registry, rjob(), p_picks={"XX.NONE": RJOB_P}, inventory=INV)
    with pytest.raises(InvalidInput, match="less than 2 s"):
        predict(registry, rjob(), p_picks={"BW.RJOB": rjob()[0].stats.endtime - 1}, inventory=INV)
    nan = rjob()
    nan[1].data[100] = np.nan
    with pytest.raises(InvalidInput, match="NaN"):
        predict(registry, nan, p_picks={"BW.RJOB": RJOB_P}, inventory=INV)
    with pytest.raises(InvalidInput, match=r"only 0\.50 s"):
        predict(registry, rjob().slice(endtime=rjob()[0].stats.starttime + 0.495), inventory=INV)
    with pytest.raises(InvalidInput, match="no traces"):
        predict(registry, Stream())
    with pytest.raises(InvalidInput, match="series_interval"):
        predict(registry, rjob(), series_interval=0.0, inventory=INV)
    with pytest.raises(ModelNotFound):
        predict(registry, rjob(), model="Nope", inventory=INV)
    with pytest.raises(MissingResponse, match=r"BW\.RJOB\.\.EH.*--stationxml"):
        predict(registry, rjob(), p_picks={"BW.RJOB": RJOB_P})


def test_single_component_is_zero_filled_and_reported(registry):
    z_only = rjob().select(component="Z")
    r = predict(registry, z_only, p_picks={"BW.RJOB": RJOB_P}, inventory=INV)[0]
    assert r.missing_components == ("N", "E")
    with pytest.raises(InvalidInput, match="missing components"):
        predict(registry, z_only, p_picks={"BW.RJOB": RJOB_P}, missing="error", inventory=INV)


def test_scalar_model_series_starts_after_one_second(registry):
    r = predict(registry, rjob(), model=SCALAR_MODEL, inventory=INV)[0]
    assert len(r.series) == 30 and r.series_start == rjob()[0].stats.starttime + 0.99
    assert r.series_end == rjob()[0].stats.endtime
    # The model does not use the onset, but the picker's is reported (the event needs it).
    assert r.onset_source == "phasenet" and abs(r.onset - RJOB_P) < 0.5


# -- stream session --------------------------------------------------------------------------------


def records(st: Stream) -> list[Stream]:
    """The stream as a SeedLink client sees it: 512-byte records, channels interleaved in time."""
    data = to_mseed(st, reclen=512)
    recs = [ingest.read_miniseed(data[i : i + 512]) for i in range(0, len(data), 512)]
    return sorted(recs, key=lambda r: (r[0].stats.endtime, r[0].stats.channel))


def replay(registry, st: Stream, **kw) -> tuple[list, StreamSession]:
    session = StreamSession(registry, **kw)
    for rec in records(st):
        session.add(rec)
    session.finish()
    updates = list(session.updates(poll=0.1))
    return updates, session


def _assert_matches(updates, result, end: UTCDateTime, *, all_points: bool) -> None:
    """Updates carry predict's values at predict's times: the interval grid, then the data end."""
    n = len(result.series)
    times = [result.series_start + k * result.series_interval for k in range(n - 1)] + [end]
    expected = {round(t.timestamp, 3): v for t, v in zip(times, result.series, strict=True)}
    got = {round(u.time.timestamp, 3): u.magnitude for u in updates}
    assert len(got) == len(updates)  # one update per time
    assert set(got) <= set(expected)
    if all_points:
        assert len(got) == len(expected)
    for t, value in got.items():
        assert value == pytest.approx(expected[t], abs=1e-5)


def test_stream_replay_equals_predict_sta_lta(registry):
    st = synthetic()
    updates, session = replay(registry, st, hop=1.0, coalesce=False, units="m/s")
    expected = predict(registry, synthetic(), series_interval=1.0, units="m/s")[0]
    _assert_matches(updates, expected, st[0].stats.endtime, all_points=True)
    assert updates[-1].onset == expected.onset and updates[-1].lag_s > 0
    assert session.done and session.stats.late_samples == 0


def test_stream_replay_equals_predict_with_client_pick(registry):
    session = StreamSession(registry, hop=2.0, coalesce=False, inventory=INV)
    session.set_pick("BW.RJOB", RJOB_P)
    for rec in records(rjob()):
        session.add(rec)
    session.finish()
    updates = list(session.updates(poll=0.1))
    picks = {"BW.RJOB": RJOB_P}
    expected = predict(registry, rjob(), p_picks=picks, series_interval=2.0, inventory=INV)[0]
    _assert_matches(updates, expected, rjob()[0].stats.endtime, all_points=True)


def test_stream_replay_equals_predict_with_stationxml(registry):
    """Both RPCs correct counts with the same causal instrument filter, so a replay of a record
    in counts with its StationXML gives Predict's magnitudes (it used to divide by the gain only,
    while Predict deconvolved the full response)."""
    inv = read_inventory()
    session = StreamSession(registry, hop=2.0, coalesce=False, inventory=inv)
    session.set_pick("BW.RJOB", RJOB_P)
    for rec in records(rjob()):
        session.add(rec)
    session.finish()
    updates = list(session.updates(poll=0.1))
    expected = predict(
        registry, rjob(), inventory=inv, p_picks={"BW.RJOB": RJOB_P}, series_interval=2.0
    )[0]
    _assert_matches(updates, expected, rjob()[0].stats.endtime, all_points=True)
    # Counts without a response are never read as m/s (they once answered M 8 for this M 2).
    with pytest.raises(MissingResponse):
        predict(registry, rjob(), p_picks={"BW.RJOB": RJOB_P})
    with pytest.raises(MissingResponse):
        StreamSession(registry).add(records(rjob())[0])
    with pytest.raises(InvalidInput, match="look like counts"):
        predict(registry, rjob(), p_picks={"BW.RJOB": RJOB_P}, units="m/s")


def test_causal_correction_matches_deconvolution_and_any_chunking():
    """The stream's instrument correction: the amplitudes of ObsPy's full deconvolution in the
    models' band (1-20 Hz RMS within 2 %), for a short-period and a broadband sensor, and the same
    samples whatever the chunking."""
    from scipy.signal import sosfiltfilt

    from seismag.serving.pipeline.response import CausalCorrection, correct_trace

    inv = read_inventory()
    band = butter(4, [1.0, 20.0], "bandpass", fs=100.0, output="sos")
    broadband = rjob()[0].copy()
    broadband.stats.update({"network": "GR", "station": "FUR", "channel": "HHZ"})
    broadband.stats.starttime = UTCDateTime(2010, 1, 1)
    for tr in [*rjob(), broadband]:
        causal = sosfiltfilt(band, correct_trace(tr, inv).data)[500:-500]
        full = sosfiltfilt(band, ingest.remove_response(Stream([tr]), inv)[0].data)[500:-500]
        assert causal.std() / full.std() == pytest.approx(1.0, abs=0.02), tr.id
        corr = CausalCorrection(inv, tr.id, tr.stats.starttime, tr.stats.sampling_rate)
        parts = [corr(tr.data[i : i + 137]) for i in range(0, tr.stats.npts, 137)]
        np.testing.assert_array_equal(np.concatenate(parts), correct_trace(tr, inv).data)
    accel = rjob()[0].copy()
    accel.stats.station = "NOPE"
    with pytest.raises(InvalidInput, match="no response"):
        correct_trace(accel, inv)


def test_stream_out_of_order_packets(registry):
    recs = records(synthetic())
    rng = np.random.default_rng(3)
    for i in range(0, len(recs) - 4, 4):  # shuffle within small groups, as a network would
        block = recs[i : i + 4]
        rng.shuffle(block)
        recs[i : i + 4] = block
    session = StreamSession(registry, hop=1.0, coalesce=False, units="m/s")
    for rec in recs:
        session.add(rec)
    session.finish()
    updates = list(session.updates(poll=0.1))
    end = synthetic()[0].stats.endtime
    expected = predict(registry, synthetic(), units="m/s")[0]
    _assert_matches(updates, expected, end, all_points=True)


def _raw_chunks(st: Stream, seconds: float = 1.3) -> list[tuple]:
    """RawTrace-like packets (float32 samples): reordered in small groups, one resent twice."""
    chunks = []
    for tr in st:
        per = round(seconds * tr.stats.sampling_rate)
        for i in range(0, tr.stats.npts, per):
            start = (tr.stats.starttime + i / tr.stats.sampling_rate).timestamp
            data = np.asarray(tr.data[i : i + per], dtype=np.float32)
            s = tr.stats
            chunks.append((s.network, s.station, s.location, s.channel, 100.0, start, data))
    chunks.sort(key=lambda c: (c[5], c[3]))
    rng = np.random.default_rng(5)
    for i in range(0, len(chunks) - 6, 6):
        block = chunks[i : i + 6]
        rng.shuffle(block)
        chunks[i : i + 6] = block
    chunks.insert(40, chunks[20])  # a repeated (overlapping) packet
    return chunks


def test_stream_raw_fast_path_equals_trace_path(registry):
    """add_raw (StreamPredict raw chunks, no ObsPy) gives add(Trace)'s updates exactly."""
    results, late = [], []
    for fast in (False, True):
        session = StreamSession(registry, hop=1.0, coalesce=False, units="m/s")
        for net, sta, loc, cha, rate, start, data in _raw_chunks(synthetic()):
            if fast:
                session.add_raw(net, sta, loc, cha, rate, start, data.tolist())
            else:
                t0 = UTCDateTime(start)
                session.add(ingest.trace_from_array(net, sta, loc, cha, rate, t0, data))
        session.finish()
        results.append(sorted((u.time.timestamp, u.magnitude) for u in session.updates(0.1)))
        late.append(session.stats.late_samples)  # the resent packet's samples
    assert late[0] == late[1] > 0
    assert len(results[0]) == len(results[1]) > 20
    for (t_a, m_a), (t_b, m_b) in zip(*results, strict=True):
        assert t_a == t_b and m_a == pytest.approx(m_b, abs=1e-6)
    bad = StreamSession(registry, units="m/s")
    with pytest.raises(InvalidInput, match="NaN"):
        bad.add_raw("XX", "SYN", "", "HHZ", 100.0, 0.0, [0.0, float("nan")])
    with pytest.raises(InvalidInput, match="sampling rate"):
        bad.add_raw("XX", "SYN", "", "HHZ", -1.0, 0.0, [0.0])
    with pytest.raises(InvalidInput, match=r"start: time inf s .* not plausible"):
        bad.add_raw("XX", "SYN", "", "HHZ", 100.0, float("inf"), [0.0])


def test_batched_raw_windows_normalise_like_single_ones(registry):
    """submit_raw normalises a whole batch in one call: row for row model_inputs' numbers."""
    from seismag.models.preprocess import model_inputs

    rt = registry.get("PhaseNetMag")
    rng = np.random.default_rng(2)
    raw = rng.normal(size=(5, rt.card.in_channels, rt.card.in_samples)) * 1e-6
    x, amp = model_inputs(raw, rt.card)
    for i in range(len(raw)):
        xi, ai = model_inputs(raw[i], rt.card)
        assert np.array_equal(x[i], xi) and np.array_equal(amp[i], ai)
    rows, timings = rt.submit_raw(raw).result(10)
    expected, _ = rt.infer(x, amp)
    np.testing.assert_allclose(rows.magnitude, expected.magnitude, atol=1e-6)
    assert timings["prepare"] >= 0


def test_stream_coalesces_under_load(model_dir):
    slow = ModelRegistry.from_paths([model_dir / "PhaseNetMag.onnx"], max_queue_delay_ms=300.0)
    try:
        updates, session = replay(slow, synthetic(), hop=1.0, units="m/s")
        assert session.stats.coalesced > 0
        assert session.stats.submitted < session.stats.evaluations
        assert slow.get().stats().rows == session.stats.submitted
        end = synthetic()[0].stats.endtime
        expected = predict(slow, synthetic(), units="m/s")[0]
        _assert_matches(updates, expected, end, all_points=False)
        assert updates[-1].time == synthetic()[0].stats.endtime  # the newest always arrives
    finally:
        slow.close()


def test_stream_close_frees_state_and_limits(registry):
    session = StreamSession(registry, hop=1.0, max_pending=1, inventory=INV)
    recs = records(rjob())
    session.add(recs[0])
    assert session.n_stations == 1
    other = recs[1].copy()
    other[0].stats.station = "OTHER"
    with pytest.raises(Overloaded, match="limit 1"):
        session.add(other)
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(session.updates(poll=5.0)))
    reader.start()
    session.close()
    reader.join(2)
    assert not reader.is_alive() and seen == []  # close() unblocks the iterator
    assert session.n_stations == 0 and session.done
    with pytest.raises(NotReady):
        session.add(recs[1])


def test_stream_callback_and_rejects_bad_packets(registry):
    got = []
    session = StreamSession(registry, hop=5.0, on_update=got.append, inventory=INV)
    session.set_pick("BW.RJOB.", RJOB_P)
    bad = rjob()[:1]
    bad[0].data[5] = np.inf
    with pytest.raises(InvalidInput, match="NaN or Inf"):
        session.add(bad)
    session.add(rjob())
    session.finish()
    deadline = time.time() + 5
    while not session.done and time.time() < deadline:
        time.sleep(0.01)
    assert got and got[-1].time == rjob()[0].stats.endtime
    session.close()
