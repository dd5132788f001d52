"""Training and evaluation: the original design's metric mistakes pinned, windows causal, a tiny
end-to-end run (train, resume, evaluate through PyTorch and ONNX) and the ML baseline against known
magnitudes on synthetic traces."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from seismag.models.card import get_card
from seismag.training.baseline import hutton_boore_ml, local_magnitude, wood_anderson_mm
from seismag.training.evaluate import waveform_metrics, window_magnitudes
from seismag.training.labels import magnitude_label
from seismag.training.windows import (
    cut_window,
    evaluation_end,
    make_batch,
    onset_in_window,
    target,
    training_ends,
)

# --- (a) the two mistakes of the original design ------------------------------------------


def _four_waveforms(model: str = "PhaseNetMag"):
    """4 windows of 10 samples: targets in the model's output units (zero before P, or minus the
    card's label offset); the prediction is exact before P and off by a known error per waveform
    after it. An ``amplitude_additive`` card is taken as it was before (no offset, a label
    before P): these tests are about the label the original design averaged."""
    card = get_card(model)
    if card.amplitude_additive:
        card = dataclasses.replace(card, amplitude_additive=False, label_offset=0.0)
    mags = np.array([2.0, 3.0, 4.0, 5.0])
    onsets = np.array([2, 5, 7, 0])
    errors = np.array([0.1, -0.2, 0.3, -0.4])
    n = 10
    labels = np.stack([target(n, o, m, card) for o, m in zip(onsets, mags, strict=True)])
    labels = labels.astype(np.float64)
    after = np.arange(n)[None, :] >= onsets[:, None]
    preds = labels + np.where(after, errors[:, None], 0.0)
    return mags, onsets, errors, labels, preds


@pytest.mark.parametrize("model", ["PhaseNetMag", "AMAG_v2"])
def test_evaluator_is_per_waveform_against_catalogue(model):
    card = get_card(model)
    mags, onsets, errors, _, preds = _four_waveforms(model)
    got = waveform_metrics(mags, window_magnitudes(preds, card, onsets))
    # By hand: one error per waveform, against the catalogue magnitude.
    assert got["n"] == 4
    assert got["mae"] == pytest.approx(np.mean(np.abs(errors)))  # 0.25
    assert got["mse"] == pytest.approx(np.mean(errors**2))  # 0.075
    assert got["rmse"] == pytest.approx(np.sqrt(0.075))
    assert got["bias"] == pytest.approx(-0.05)
    assert got["r2"] == pytest.approx(1 - np.sum(errors**2) / np.sum((mags - 3.5) ** 2))  # 0.94


def test_target_is_the_label_in_the_models_output_units():
    # The seed's AMAG label is 0 before P and M + 1 from it; forward removes the +1, so the target
    # the loss compares the output with is the label minus 1: the offset is read here only.
    amag = dataclasses.replace(get_card("AMAG_v2"), amplitude_additive=False, label_offset=1.0)
    got = target(10, 4, 3.0, amag)
    np.testing.assert_array_equal(got, magnitude_label(10, 4, 3.0, label_offset=1.0) - 1.0)
    assert got[:4].tolist() == [-1.0] * 4 and got[4:].tolist() == [3.0] * 6
    np.testing.assert_array_equal(target(10, 4, 3.0, get_card("PhaseNetMag"))[4:], 3.0)
    assert target(10, 4, 3.0, get_card("ViTMag")) == np.float32(3.0)  # scalar: the magnitude


def test_flattened_evaluation_gives_other_numbers():
    card = get_card("PhaseNetMag")
    mags, onsets, _, labels, preds = _four_waveforms()
    right = waveform_metrics(mags, window_magnitudes(preds, card, onsets))
    flat = waveform_metrics(labels.ravel(), preds.ravel())
    assert flat["n"] == 40 != right["n"]  # sample count inflated by the window length
    # Pre-P zeros predicted "perfectly" dilute the error: 0.1675 instead of 0.25.
    assert flat["mae"] == pytest.approx((0.1 * 8 + 0.2 * 5 + 0.3 * 3 + 0.4 * 10) / 40)
    assert flat["mae"] < right["mae"]
    assert flat["r2"] > right["r2"]  # the 0-vs-M contrast makes R2 look better than it is
    with pytest.raises(ValueError, match="one value per waveform"):
        waveform_metrics(labels, preds)  # 2-D input is refused outright


def test_averaged_label_target_is_not_the_magnitude():
    card = get_card("PhaseNetMag")
    mags, onsets, _, labels, preds = _four_waveforms()
    averaged = labels.mean(axis=1)  # the original scalar target
    assert np.allclose(averaged, mags * (10 - onsets) / 10)  # M x fraction after P
    assert not np.allclose(averaged, mags)
    # A perfect estimate (the catalogue magnitude) is scored as badly wrong against it ...
    wrong = waveform_metrics(averaged, mags)
    assert wrong["mae"] == pytest.approx(np.mean(mags * onsets / 10))  # 0.65
    # ... and the whole-window mean of the prediction has the same flaw.
    whole_mean = waveform_metrics(mags, preds.mean(axis=1))
    right = waveform_metrics(mags, window_magnitudes(preds, card, onsets))
    assert whole_mean["mae"] > 2 * right["mae"]


# --- (d) causality of the windows -----------------------------------------------------------------


@pytest.mark.parametrize("p_sample", [500.0, 2400.4, 4000.0])
def test_window_k_seconds_after_p_holds_nothing_later(p_sample):
    card = get_card("PhaseNetMag")
    n_trace = 6000
    trace = np.tile(np.arange(n_trace, dtype=np.float64), (3, 1))  # value = sample index
    onset = round(p_sample)
    for k in (1, 2, 3, 5, 10, 20):
        end = evaluation_end(p_sample, n_trace, card, k)
        if end is None:  # the trace does not reach P + k s
            assert onset + k * 100 > n_trace
            continue
        window = cut_window(trace, end, card.in_samples)
        assert window.shape == (3, card.in_samples)
        assert window.max() < onset + k * card.sampling_rate  # nothing after P + k s ...
        assert window[0, -1] == onset + k * 100 - 1  # ... and everything up to it
        o = int(onset_in_window(onset, end, card.in_samples))
        assert window[0, o] == onset  # the onset index points at P
        batch = make_batch([trace], np.array([p_sample]), np.array([3.0]), np.array([end]), card)
        assert batch.onset[0] == o
        assert batch.raw.max() < onset + k * 100


def test_training_ends_deterministic_and_keep_p_inside():
    card = get_card("ViTMag")
    rng = np.random.default_rng(1)
    p = rng.uniform(500, 3500, 2000)
    lengths = np.full(2000, 6000)
    a = training_ends(p, lengths, card, seed=3, epoch=2)
    assert np.array_equal(a, training_ends(p, lengths, card, seed=3, epoch=2))
    assert not np.array_equal(a, training_ends(p, lengths, card, seed=3, epoch=3))
    onset = np.rint(p)
    after = a - onset  # samples of data after P
    assert np.all(after >= 1) and np.all(a <= 6000)
    assert np.all(onset_in_window(onset, a, card.in_samples) >= 0)
    # Half are drawn 1-20 s after P; the "P at 5-95 %" half lands there about 2/3 of the time.
    early = np.mean((after >= 100) & (after <= 2000))
    assert 0.78 < early < 0.9
    assert 0.08 < np.mean(after > 2000) < 0.22  # late windows (P near the start) exist too
    batch = make_batch(
        [np.random.default_rng(0).normal(size=(3, 6000))] * 4,
        p[:4],
        np.array([1.0, 2.0, 3.0, 4.0]),
        a[:4],
        card,
    )
    assert batch.target.shape == (4,)  # scalar model: the catalogue magnitude itself
    assert np.allclose(batch.target, [1, 2, 3, 4])
    assert batch.waveform.shape == (4, 3, card.in_samples) and batch.log_amp.shape == (4, 1)


# --- (c) the ML baseline ------------------------------------------------------------------------


def test_wood_anderson_units():
    """1 um of ground displacement at 5 Hz reads ~2080 x |H(5 Hz)| um = ~2.04 mm on a WA."""
    fs = 100.0
    t = np.arange(4000) / fs
    velocity = 2 * np.pi * 5 * 1e-6 * np.cos(2 * np.pi * 5 * t)
    wa = wood_anderson_mm(velocity, fs)
    assert np.abs(wa[1000:3000]).max() == pytest.approx(2.04, rel=0.02)
    # Richter's definition: 1 mm at 100 km is ML 3.
    assert hutton_boore_ml(1.0, 100.0) == pytest.approx(3.0)


@pytest.fixture(scope="module")
def m35_data(tmp_path_factory):
    from seismag.training.synthetic import SyntheticConfig, generate_dataset

    out = tmp_path_factory.mktemp("m35")
    config = SyntheticConfig(magnitude_range=(3.0, 5.0), distance_range_km=(10.0, 150.0))
    return generate_dataset(out, 12, seed=7, progress=False, config=config)


def test_baseline_recovers_m3_to_5(m35_data):
    from seismag.training.dataset import WaveformDataset

    ds = WaveformDataset(m35_data)
    card = get_card("PhaseNetMag")
    meta = ds.metadata
    errors = []
    for i in range(len(ds)):
        row = meta.iloc[i]
        if row["trace_snr_db"] < 20:
            continue
        trace = ds.get_waveform(i)
        end = evaluation_end(row["trace_p_arrival_sample"], trace.shape[-1], card, None)
        window = cut_window(trace, end, card.in_samples)
        onset = int(onset_in_window(round(row["trace_p_arrival_sample"]), end, card.in_samples))
        s_win = row["trace_s_arrival_sample"] - (end - card.in_samples)
        lm = local_magnitude(window, onset, s_win, sampling_rate=100.0)
        assert lm.s_observed  # <= 150 km: S arrives within 25 s of P
        errors.append(lm.ml - row["source_magnitude"])
    errors = np.array(errors)
    print(
        f"ML - Mw on {len(errors)} traces: mean {errors.mean():+.2f}, "
        f"MAE {np.abs(errors).mean():.2f}"
    )
    assert len(errors) >= 20
    assert abs(errors.mean()) < 0.5
    assert np.abs(errors).mean() < 0.5


# --- (b) tiny end-to-end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from seismag.training.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("tiny"), 12, seed=0, progress=False)


@pytest.mark.parametrize("model", ["PhaseNetMag", "ViTMag"])
def test_tiny_end_to_end(tiny_data, tmp_path, model):
    from seismag.training.dataset import WaveformDataset
    from seismag.training.evaluate import evaluate
    from seismag.training.train import train

    out = tmp_path / "run"
    kw = {"batch_size": 8, "limit_train": 16, "threads": 2, "progress": False, "device": "cpu"}
    best = train(model, tiny_data, out, epochs=1, **kw)
    assert best == out / f"{model}.safetensors" and best.is_file()
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["state"]["epoch"] == 1 and state["model"] == model

    # Resume: a second epoch continues from the checkpoint (optimizer state included); the
    # wall-clock budget (far too small for a third epoch) stops it cleanly after that epoch.
    train(model, tiny_data, out, epochs=5, resume=True, max_minutes=1e-4, **kw)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["state"]["epoch"] == 2
    assert state["state"]["stopped"] == "time_budget"
    assert [h["epoch"] for h in state["state"]["history"]] == [1, 2]
    assert state["optimizer"]["param_groups"][0]["lr"] > 0

    results = evaluate(model, tiny_data, best, out_dir=out / "eval", seconds_after_p=(1, 3, 10))
    n_test = len(WaveformDataset(tiny_data).split("test"))
    assert results["n_waveforms"] == n_test
    assert set(results["metrics"]) == {"full", "1s", "3s", "10s"}
    for m in (*results["metrics"].values(), *results["baseline"]["metrics"].values()):
        assert set(m) == {"n", "mse", "rmse", "mae", "r2", "bias"}
        assert m["n"] == n_test
    on_disk = json.loads((out / "eval" / "results.json").read_text())
    assert on_disk["metrics"] == results["metrics"]
    for name in ("scatter.png", "mae_vs_time.png", "results.md", "predictions.csv"):
        assert (out / "eval" / name).stat().st_size > 0
    print(
        f"{model}: test n={n_test}, full MAE {results['metrics']['full']['mae']:.3f}, "
        f"ML full MAE {results['baseline']['metrics']['full']['mae']:.3f}"
    )


def test_warm_start_from_weights(tiny_data, tmp_path):
    """--init-weights: a new run that starts from given weights (recorded), without warm-up."""
    from seismag.models import build_model
    from seismag.models.weights import load_weights, save_weights
    from seismag.training.train import TrainingError, train

    kw = {"batch_size": 8, "limit_train": 16, "threads": 2, "progress": False, "device": "cpu"}
    start = save_weights(build_model("PhaseNetMag"), tmp_path / "start.safetensors")
    out = tmp_path / "warm"
    best = train("PhaseNetMag", tiny_data, out, epochs=1, init_weights=start, **kw)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["config"]["init_weights"] == str(start)
    assert state["state"]["history"][0]["lr"] == pytest.approx(state["config"]["learning_rate"])
    load_weights(build_model("PhaseNetMag"), best)
    # The starting weights are scored before the first step and are the best until beaten.
    start_mae, best_mae = state["state"]["start_dev_mae"], state["state"]["best_dev_mae"]
    assert math.isfinite(start_mae) and best_mae <= start_mae
    with pytest.raises(TrainingError, match="resume"):
        train("PhaseNetMag", tiny_data, out, epochs=2, init_weights=start, resume=True, **kw)
    with pytest.raises(TrainingError, match="cannot start from"):
        train(
            "PhaseNetMag", tiny_data, tmp_path / "x", epochs=1, init_weights=tmp_path / "no", **kw
        )


def test_warm_start_keeps_the_start_when_no_epoch_beats_it(tiny_data, tmp_path):
    """A continuation that only gets worse on dev returns the starting weights, unchanged."""
    from safetensors.numpy import load_file

    from seismag.models import build_model
    from seismag.models.weights import save_weights
    from seismag.training.train import train

    start = save_weights(build_model("PhaseNetMag"), tmp_path / "start.safetensors")
    out = tmp_path / "worse"
    # lr 1.0: every Adam step moves every weight by about 1, which wrecks the model.
    kw = {"batch_size": 8, "limit_train": 16, "threads": 2, "progress": False, "device": "cpu"}
    best = train("PhaseNetMag", tiny_data, out, epochs=1, init_weights=start, lr=1.0, **kw)
    state = json.loads((out / "history.json").read_text())["state"]
    epoch_mae = state["history"][0]["dev_mae"]
    assert not epoch_mae < state["start_dev_mae"], (epoch_mae, state["start_dev_mae"])
    assert state["best_epoch"] == 0 and state["best_dev_mae"] == state["start_dev_mae"]
    got, want = load_file(best), load_file(start)
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_onnx_evaluation_matches_torch(tiny_data, tmp_path):
    pytest.importorskip("onnxruntime")
    from seismag.export.onnx_export import export_onnx
    from seismag.models import build_model
    from seismag.models.weights import load_weights
    from seismag.training.evaluate import evaluate
    from seismag.training.train import train

    kw = {"batch_size": 8, "limit_train": 8, "threads": 2, "progress": False, "device": "cpu"}
    best = train("AMAG_v2", tiny_data, tmp_path, epochs=1, **kw)
    model = build_model("AMAG_v2")
    load_weights(model, best)
    onnx_path = tmp_path / "amag.onnx"
    export_onnx(model, onnx_path, weights=str(best))
    ks = (2, 10)
    a = evaluate("AMAG_v2", tiny_data, best, seconds_after_p=ks, baseline=False, limit=6)
    b = evaluate("AMAG_v2", tiny_data, onnx=onnx_path, seconds_after_p=ks, baseline=False, limit=6)
    for key in a["metrics"]:
        assert b["metrics"][key]["mae"] == pytest.approx(a["metrics"][key]["mae"], abs=1e-4)


def test_cli_errors_are_clean(tiny_data, tmp_path, capsys):
    import argparse

    from seismag.training.cli import add_training_commands

    parser = argparse.ArgumentParser(prog="seismag")
    add_training_commands(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> tuple[int, str]:
        args = parser.parse_args(argv)
        code = args.func(args)
        return code, capsys.readouterr().err

    code, err = run("train", "NoSuchModel", "--data", str(tiny_data))
    assert code != 0 and "unknown model" in err
    code, err = run("train", "ViTMag", "--data", str(tmp_path / "missing"))
    assert code != 0 and "not found" in err
    with pytest.raises(SystemExit):  # argparse: a usage error, exit 2
        run("train", "ViTMag", "--data", str(tiny_data), "--band-limit", "1.5")
    assert "between 0 and 1" in capsys.readouterr().err
    # Weights of another model: train one epoch of ViTMag on 4 traces (every one band-limited),
    # then evaluate as PhaseNetMag.
    code, _ = run(
        "train", "ViTMag", "--data", str(tiny_data), "--out", str(tmp_path / "v"),
        "--epochs", "1", "--limit-train", "4", "--batch-size", "4", "--quiet", "--device", "cpu",
        "--band-limit", "1",
    )  # fmt: skip
    assert code == 0
    state = json.loads((tmp_path / "v" / "history.json").read_text())
    assert state["config"]["band_limit_share"] == 1.0
    weights = tmp_path / "v" / "ViTMag.safetensors"
    code, err = run("evaluate", "PhaseNetMag", "--data", str(tiny_data), "--weights", str(weights))
    assert code != 0 and "ViTMag" in err and "Traceback" not in err
    code, err = run(
        "evaluate", "baseline", "--data", str(tiny_data), "--out", str(tmp_path / "b"), "--quiet"
    )
    assert code == 0
    doc = json.loads((tmp_path / "b" / "results.json").read_text())
    assert doc["model"] == "baseline_ML" and doc["metrics"]["full"]["n"] == doc["n_waveforms"]


def test_breakdown_slope_bins_and_offset():
    from seismag.training.evaluate import breakdown, calibration

    true = np.linspace(2, 6, 41)
    meta = pd.DataFrame({"path_ep_distance_km": np.linspace(1, 250, 41)})
    b = breakdown(true, 0.5 * true + 1.0, meta)
    assert b["slope_m2_6"] == pytest.approx(0.5)
    assert b["offset"] == pytest.approx(np.mean(-0.5 * true + 1.0))
    near = b["by_distance_km"][0]
    assert near["bin"] == [0.0, 20.0] and near["n"] == 4
    c = calibration(np.zeros(4), np.array([0.5, -0.5, 1.5, -3.0]), np.ones(4))
    assert c["within_1_sigma"] == 0.5 and c["within_2_sigma"] == 0.75


def test_breakdown_reports_each_regime_of_a_mixed_set():
    from seismag.training.evaluate import breakdown

    true = np.full(6, 4.0)
    pred = true + np.array([-0.4, -0.4, -0.4, 0.1, -0.1, 0.0])
    sigma = np.array([0.3, 0.5, 0.5, 0.2, 0.2, np.nan])
    meta = pd.DataFrame({"source_regime": ["ena"] * 3 + ["high_attenuation"] * 3})
    rows = {r["regime"]: r for r in breakdown(true, pred, meta, sigma)["by_regime"]}
    # The mixed mean (-0.2) describes neither regime: each gets its own bias and MAE.
    assert rows["ena"]["n"] == 3 and rows["ena"]["bias"] == pytest.approx(-0.4)
    assert rows["high_attenuation"]["bias"] == pytest.approx(0.0)
    assert rows["high_attenuation"]["mae"] == pytest.approx(0.2 / 3)
    assert rows["ena"]["within_1_sigma"] == pytest.approx(2 / 3)
    assert rows["high_attenuation"]["within_1_sigma"] == pytest.approx(1.0)  # NaN sigma left out
    one = pd.DataFrame({"source_regime": ["ena"] * 6})  # one regime: nothing to split
    assert "by_regime" not in breakdown(true, pred, one)
    assert "within_1_sigma" not in breakdown(true, pred, meta)["by_regime"][0]


def test_breakdown_reports_bias_by_the_synthetic_kappa():
    from seismag.training.evaluate import breakdown, markdown_table

    true = np.full(5, 3.0)
    pred = true + np.array([-0.3, -0.1, 0.0, 0.1, 0.2])
    meta = pd.DataFrame({"station_kappa_s": [0.005, 0.012, 0.02, 0.04, 0.09]})
    rows = breakdown(true, pred, meta)["by_kappa_s"]
    assert [r["bin"][0] for r in rows] == [0.0, 0.008, 0.015, 0.03, 0.06]
    assert [r["n"] for r in rows] == [1] * 5
    assert [r["bias"] for r in rows] == pytest.approx([-0.3, -0.1, 0.0, 0.1, 0.2])
    assert "by_kappa_s" not in breakdown(true, pred, pd.DataFrame(index=range(5)))
    # a dataset of someone else's with text in that column: those rows fall in no bin
    odd = pd.DataFrame({"station_kappa_s": ["n/a", "0.012", None, 0.04, 0.09]})
    assert [r["n"] for r in breakdown(true, pred, odd)["by_kappa_s"]] == [0, 1, 0, 1, 1]
    results = {
        "model": "M",
        "split": "dev",
        "n_waveforms": 5,
        "source": "w",
        "metrics": {},
        "breakdown": {"by_kappa_s": rows},
    }
    assert "| 0-0.008 | 1 | -0.300 | 0.300 |" in markdown_table(results)


def test_results_markdown_has_the_regime_table_of_a_mixed_set():
    from seismag.training.evaluate import breakdown, markdown_table

    true = np.full(4, 3.0)
    meta = pd.DataFrame({"source_regime": ["ena", "ena", "wna", "wna"]})
    metrics = {"full": {"n": 4, "mae": 0.2, "rmse": 0.2, "r2": 0.5, "bias": -0.2}}
    results = {"model": "M", "split": "test", "n_waveforms": 4, "source": "s", "metrics": metrics}
    pred = true + np.array([-0.4, -0.4, 0.0, 0.0])
    with_sigma = {**results, "breakdown": breakdown(true, pred, meta, np.full(4, 0.3))}
    text = markdown_table(with_sigma)
    assert "| regime | n | bias | MAE | within 1 sigma |" in text
    assert "| ena | 2 | -0.400 | 0.400 | 0% |" in text
    assert "| wna | 2 | 0.000 | 0.000 | 100% |" in text
    plain = markdown_table({**results, "breakdown": breakdown(true, pred, meta)})
    assert "| ena | 2 | -0.400 | 0.400 |" in plain and "within 1 sigma" not in plain
    assert "regime" not in markdown_table(results)


def test_evaluate_divides_counts_by_the_given_sensitivity(tiny_data, tmp_path):
    from seismag.training.evaluate import evaluate

    plain = evaluate("baseline", tiny_data, limit=5)
    scaled = evaluate("baseline", tiny_data, limit=5, sensitivity=1000.0)
    # ML is linear in log amplitude: dividing by 1000 lowers every value by exactly 3.
    assert scaled["metrics"]["full"]["bias"] == pytest.approx(plain["metrics"]["full"]["bias"] - 3)
    assert scaled["sensitivity"] == 1000.0 and plain["sensitivity"] is None


def test_precise_batchnorm_averages_batch_statistics_and_touches_nothing_else():
    import torch

    from seismag.training.train import precise_batchnorm

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(3, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm1d(4)

        def forward(self, waveform, log_amp):
            return self.bn(self.conv(waveform)).mean(dim=(1, 2)) + log_amp

    torch.manual_seed(0)
    model = Tiny().eval()
    weights = {k: v.clone() for k, v in model.named_parameters()}
    rng = np.random.default_rng(0)
    batches = [
        ((rng.normal(size=(8, 3, 50)) * scale + scale).astype(np.float32), np.zeros(8, np.float32))
        for scale in (1.0, 3.0, 10.0)
    ]
    assert precise_batchnorm(model, batches) == 3
    with torch.no_grad():
        feats = [model.conv(torch.from_numpy(waveform)) for waveform, _ in batches]
    means = torch.stack([f.mean(dim=(0, 2)) for f in feats]).mean(0)
    varis = torch.stack([f.var(dim=(0, 2), unbiased=True) for f in feats]).mean(0)
    # The plain average over the batches, not an exponential one dominated by the last batch.
    assert torch.allclose(model.bn.running_mean, means, rtol=1e-5, atol=1e-6)
    assert torch.allclose(model.bn.running_var, varis, rtol=1e-5, atol=1e-6)
    assert model.bn.momentum == 0.1 and not model.training
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert precise_batchnorm(torch.nn.Linear(2, 2), batches) == 0
