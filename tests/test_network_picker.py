"""The P picker network: its card, training, export, the incremental picker and the server."""

from __future__ import annotations

import numpy as np
import pytest
from obspy import Stream, Trace, UTCDateTime

from seismag.models.card import CardError
from seismag.models.picker_card import PickerCard, get_picker_card
from seismag.serving.executor.backend import ModelLoadError
from seismag.serving.executor.picker_runtime import default_picker, load_picker
from seismag.serving.pipeline.onset import NETWORK_PICKER_NAME, PICKER_NAME, NetworkPicker
from seismag.training.synthetic import SyntheticConfig, simulate_event

CONFIG = SyntheticConfig(p_window_s=(3.0, 8.0))


@pytest.fixture(scope="module")
def runtime():
    return default_picker()


@pytest.fixture(scope="module")
def event():
    """Traces of one held-out synthetic event (not the picker's training data)."""
    ev = simulate_event(5, 3, CONFIG)
    return ev.waveforms, ev.metadata


def _onsets(runtime, w, chunks):
    picker = NetworkPicker(runtime, refractory=3000)
    probs = [picker.feed(c) for c in np.array_split(w, chunks, axis=1)]
    return picker.accepted, np.concatenate(probs)


def test_card_is_checked():
    card = get_picker_card()
    assert card.max_delay == card.lookahead + card.stride + card.max_run
    data = {**card.__dict__, "threshold": 1.5}
    with pytest.raises(CardError, match="threshold"):
        PickerCard.from_dict(data)
    with pytest.raises(CardError, match="unknown keys"):
        PickerCard.from_dict({**card.__dict__, "bogus": 1})
    with pytest.raises(CardError, match="unknown picker"):
        get_picker_card("NoSuchPicker")


def test_packaged_picker_carries_the_card_of_its_toml(runtime):
    # The server reads the card from the ONNX metadata: a card edit needs `seismag export-picker`.
    assert runtime.card == get_picker_card()


def test_any_chunking_gives_the_same_onsets(runtime, event):
    waves, _ = event
    w = waves[0].astype(np.float64)
    whole, p_whole = _onsets(runtime, w, 1)
    for chunks in (7, 60, 613):
        got, p = _onsets(runtime, w, chunks)
        assert got == whole
        np.testing.assert_allclose(p, p_whole, atol=1e-6)


def test_picks_p_not_s_on_clear_traces(runtime, event):
    waves, meta = event
    checked = 0
    for w, m in zip(waves, meta, strict=True):
        if m["trace_snr_db"] < 30:
            continue
        picker = NetworkPicker(runtime)
        picker.feed(w.astype(np.float64))
        assert picker.accepted, "no onset on a clear trace"
        onset = picker.accepted[0]
        assert abs(onset.sample - m["trace_p_arrival_sample"]) <= 50
        assert 0.5 <= onset.confidence <= 1.0
        checked += 1
    assert checked >= 1


def test_onset_is_decided_within_max_delay(runtime, event):
    waves, meta = event
    i = int(np.argmax([m["trace_snr_db"] for m in meta]))
    w = waves[i].astype(np.float64)
    whole, _ = _onsets(runtime, w, 1)
    onset = whole[0].sample
    picker = NetworkPicker(runtime)
    picker.feed(w[:, : onset + picker.max_delay])
    assert picker.accepted and picker.accepted[0] == whole[0]


def test_noise_gives_no_onset(runtime, rng):
    picker = NetworkPicker(runtime)
    picker.feed(rng.standard_normal((3, 6000)) * 1e-8)
    assert picker.accepted == []


def test_picker_threads_do_not_change_its_output(runtime, rng):
    # An archive worker gives the picker its --threads; the onsets must not depend on it.
    two = load_picker("phasenet", 2)
    assert two is not runtime and two.session.get_session_options().intra_op_num_threads == 2
    windows = rng.standard_normal((17, 3, runtime.card.in_samples)) * 1e-7
    np.testing.assert_array_equal(two.p_probability(windows), runtime.p_probability(windows))
    assert load_picker("phasenet", 2) is two  # loaded once per process and thread count


def test_unknown_picker_is_refused():
    with pytest.raises(ModelLoadError, match="unknown picker"):
        load_picker("bogus")
    assert load_picker("sta_lta_aic") is None


def _stream(w: np.ndarray, start: UTCDateTime) -> Stream:
    return Stream(
        [
            Trace(
                w[i].astype(np.float32),
                {
                    "network": "SY",
                    "station": "NP",
                    "channel": f"HH{c}",
                    "sampling_rate": 100.0,
                    "starttime": start,
                },
            )
            for i, c in enumerate("ZNE")
        ]
    )


def test_predict_reports_which_picker_found_the_onset(event, model_dir):
    from seismag.serving.executor.runtime import ModelRegistry
    from seismag.serving.pipeline.predict import predict

    waves, meta = event
    i = int(np.argmax([m["trace_snr_db"] for m in meta]))
    st = _stream(waves[i], UTCDateTime(2024, 1, 1))
    for name, source in (("phasenet", NETWORK_PICKER_NAME), ("sta_lta_aic", PICKER_NAME)):
        reg = ModelRegistry.from_paths([model_dir / "PhaseNetMag.onnx"], picker=name)
        try:
            (res,) = predict(reg, st, units="m/s")
        finally:
            reg.close()
        assert res.onset_source == source
        p = UTCDateTime(2024, 1, 1) + meta[i]["trace_p_arrival_sample"] / 100.0
        assert abs(res.onset - p) <= 0.5


def test_train_export_and_load(tmp_path):
    """train-picker on a tiny synthetic set, export-picker, and the runtime that loads it."""
    from seismag.cli import main
    from seismag.serving.executor.picker_runtime import PickerRuntime
    from seismag.training.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "ds", 6, seed=4, progress=False)
    weights = tmp_path / "picker.safetensors"
    argv = ["train-picker", "--data", str(data), "--out", str(weights), "--minutes", "0.02"]
    assert main([*argv, "--max-traces", "40"]) == 0
    onnx_path = tmp_path / "picker.onnx"
    assert main(["export-picker", "--weights", str(weights), "--out", str(onnx_path)]) == 0
    rt = PickerRuntime(onnx_path)
    p = rt.p_probability(np.random.default_rng(0).standard_normal((2, 3, rt.card.in_samples)))
    assert p.shape == (2, rt.card.in_samples) and np.all((p >= 0) & (p <= 1))
    assert main(["export-picker", "--weights", str(tmp_path / "none"), "--out", "x.onnx"]) == 2
    assert main(["train-picker", "--data", str(tmp_path / "none")]) == 2
    (tmp_path / "no_dataset").mkdir()  # a folder, but no SeisBench files: a message, not a trace
    assert main(["train-picker", "--data", str(tmp_path / "no_dataset")]) == 1

    # Warm start: at a negligible learning rate the weights stay those it started from (only the
    # BatchNorm statistics are recomputed).
    from safetensors.numpy import load_file, save_file

    again = tmp_path / "again.safetensors"
    warm = ["--init-weights", str(weights), "--lr", "1e-12", "--minutes", "0", "--out", str(again)]
    assert main(["train-picker", "--data", str(data), "--max-traces", "40", *warm]) == 0
    before, after = load_file(str(weights)), load_file(str(again))
    convs = [k for k in before if k.endswith("weight") and before[k].ndim == 3]
    assert convs and all(np.allclose(before[k], after[k], atol=1e-8) for k in convs)
    assert main(["train-picker", "--data", str(data), "--init-weights", "nope"]) == 2
    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    other = ["--init-weights", str(tmp_path / "other.safetensors"), "--out", str(again)]
    assert main(["train-picker", "--data", str(data), "--max-traces", "40", *other]) not in (0, 2)


def test_predicts_that_run_the_network_leave_the_event_loop(registry):
    """A small Predict is prepared on the event loop only when no station runs the network."""
    import obspy

    from seismag.serving.protocols.magnitude_service import MagnitudeServicer

    servicer = MagnitudeServicer.__new__(MagnitudeServicer)
    servicer._registry = registry
    st = obspy.read()
    assert registry.picker is not None
    assert servicer._needs_picker_network((st, {}, None))
    assert not servicer._needs_picker_network((st, {"BW.RJOB": UTCDateTime(0)}, None))
    servicer._registry = type("NoNetwork", (), {"picker": None})()
    assert not servicer._needs_picker_network((st, {}, None))
