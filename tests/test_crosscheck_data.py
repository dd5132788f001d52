"""The independently written evaluation generator, and the training regime it led to."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import signal as ssignal

from seismag.benchmarks import crosscheck_data as xc
from seismag.training.dataset import WaveformDataset
from seismag.training.evaluate import evaluate
from seismag.training.regimes import (
    BJ97_GENERIC_ROCK,
    BT14_PATH_DURATION,
    WNA,
    draw_event_physics,
    piecewise_linear,
)
from seismag.training.synthetic import velocity_spectrum

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("xc") / "set"
    xc.main(["--out", str(out), "--events", "6", "--seed", "3"])
    return out


def test_writes_a_seisbench_test_set_with_p_before_s_in_the_record(small_set):
    meta = pd.read_csv(small_set / "metadata.csv")
    assert len(meta) >= 12  # 6 events x 4 stations, a few possibly undetectable
    assert set(meta["split"]) == {"test"}
    assert meta["source_magnitude_type"].eq("Mw").all()
    assert meta["source_magnitude"].between(*xc.MAGNITUDES).all()
    n = int(xc.TRACE_SECONDS * xc.SAMPLING_RATE)
    p, s = meta["trace_p_arrival_sample"], meta["trace_s_arrival_sample"]
    assert (p >= 4 * xc.SAMPLING_RATE).all() and (p < s).all() and (s < n).all()
    assert (meta["trace_snr_db"] >= xc.MIN_SNR_DB).all()
    ds = WaveformDataset(small_set)
    assert len(ds) == len(meta) and ds.sampling_rate == xc.SAMPLING_RATE
    waves = np.stack([ds.get_waveform(i) for i in range(len(ds))])
    assert waves.shape == (len(meta), 3, n) and np.isfinite(waves).all()
    # Ground velocity in m/s: microseisms and local noise of 1e-9-1e-5 m/s, no event above 1 m/s.
    assert 1e-10 < np.abs(waves[:, :, : int(3 * xc.SAMPLING_RATE)]).max() < 1e-4
    assert np.abs(waves).max() < 1.0
    with h5py.File(small_set / "waveforms.hdf5") as f:
        assert f["data_format"].attrs["unit"] == "mps"
        command = f["provenance"].attrs["command"]
    assert command == (
        f"python -m seismag.benchmarks.crosscheck_data --out {small_set} --events 6 --seed 3"
    )


def test_same_seed_same_traces_other_seed_other_traces():
    a_waves, a_meta = xc.simulate_event(5, 2)
    b_waves, b_meta = xc.simulate_event(5, 2)
    c_waves, _ = xc.simulate_event(6, 2)
    assert a_meta == b_meta
    assert all(np.array_equal(x, y) for x, y in zip(a_waves, b_waves, strict=True))
    assert not np.array_equal(a_waves[0], c_waves[0])


def test_a_swap_replaces_one_choice_and_keeps_every_other_draw():
    """--swap stress / brune / radiation / resonance / duration change only their choice: the same
    events at the same distances; the level moves the way the physics says."""
    seed, idx = 5, 3
    base_waves, base = xc.simulate_event(seed, idx)
    by = {
        name: xc.simulate_event(seed, idx, frozenset({name}))
        for name in ("stress", "brune", "radiation", "resonance", "duration")
    }
    for name, (_, meta) in by.items():
        assert [m["path_ep_distance_km"] for m in meta] == [
            m["path_ep_distance_km"] for m in base
        ], name
        assert [m["trace_p_arrival_sample"] for m in meta] == [
            m["trace_p_arrival_sample"] for m in base
        ], name
    # The same uniform draw mapped to 1-300 bar instead of 10-250.
    u = (math.log(base[0]["source_stress_drop_bar"]) - math.log(10)) / math.log(25)
    expected = math.exp(math.log(1) + u * math.log(300))
    assert by["stress"][1][0]["source_stress_drop_bar"] == pytest.approx(expected, rel=1e-3)
    assert {m["source_spectrum"] for m in by["brune"][1]} == {"brune"}
    # A smaller S radiation coefficient: every record quieter by 0.55 / 0.63 in S.
    ratio = [
        np.abs(w).max() / np.abs(b).max()
        for w, b in zip(by["radiation"][0], base_waves, strict=True)
    ]
    assert max(ratio) <= 1.0 + 1e-9 and min(ratio) > 0.55 / 0.63 - 0.05


def test_site_swap_and_unknown_swaps(tmp_path):
    """Generic rock at a quarter of the stations: records quieter on average by about three
    quarters of its amplification at a few Hz (log10 2.1-2.6 = 0.32-0.41)."""
    event = xc.draw_event(np.random.default_rng(0))

    def mean_log_pgv(swaps):
        rng = np.random.default_rng(1)
        pgv = [xc.simulate_trace(rng, event, 30.0, swaps)[1]["trace_pgv_mps"] for _ in range(60)]
        return float(np.mean(np.log10(pgv)))

    drop = mean_log_pgv(frozenset()) - mean_log_pgv(frozenset({"site"}))
    assert 0.12 < drop < 0.45
    with pytest.raises(ValueError, match="unknown swap"):
        xc.simulate_event(5, 3, frozenset({"kappa"}))
    out = tmp_path / "set"
    xc.main(["--out", str(out), "--events", "2", "--seed", "3", "--swap", "site"])
    with h5py.File(out / "waveforms.hdf5") as f:
        assert "--swap site" in f["provenance"].attrs["command"]
    with pytest.raises(SystemExit):
        xc.main(["--out", str(out), "--events", "2", "--swap", "kappa"])


def test_first_arrival_switches_to_the_head_wave_beyond_the_crossover():
    # Crust 6.2 km/s over an 8.0 km/s mantle at 35 km, source at 10 km.
    t_near, slow_near = xc.first_arrival(20.0, 10.0, 6.2, 8.0, 35.0)
    t_far, slow_far = xc.first_arrival(250.0, 10.0, 6.2, 8.0, 35.0)
    assert t_near == pytest.approx(math.hypot(20, 10) / 6.2)
    assert slow_far == pytest.approx(1 / 8.0)
    assert t_far < math.hypot(250, 10) / 6.2
    assert slow_near < 1 / 6.2


def test_published_forms():
    # Boore & Thompson (2014) table points, and the slope beyond 270 km.
    for r, d in ((7, 2.4), (45, 8.4), (125, 10.9), (175, 9.3), (270, 18.3)):
        assert xc.path_duration(r) == pytest.approx(d)
    assert xc.path_duration(370) == pytest.approx(18.3 + 15.6)
    # Atkinson (2004): R^-1.3 to 70 km, R^+0.2 to 140 km, R^-0.5 beyond (per km -> per m).
    g = lambda r: xc.spreading(r, "steep", 0.0) * 1000  # noqa: E731
    assert g(50) == pytest.approx(50**-1.3)
    assert g(140) == pytest.approx(70**-1.3 * 2**0.2)
    assert g(280) == pytest.approx(g(140) * 2**-0.5)
    assert xc.spreading(200, "bilinear", 80.0) * 1000 == pytest.approx(
        (1 / 80) * (200 / 80) ** -0.5
    )
    # Hanks & Kanamori moment; Brune corner of an M 5, 100 bar event near 1 Hz (Boore 2003).
    assert xc.moment_nm(6.0) == pytest.approx(10**18.05)
    assert 0.8 < xc.corner_hz(5.0, 100.0, 3.5) < 1.5


def test_ground_motion_level_is_that_of_real_earthquakes():
    """Median horizontal PGV of M 5 at 20 km: about 1-3 cm/s in ground-motion models fitted to
    real records (e.g. Boore et al. 2014); a generator off by a factor 5 would mislabel Mw by
    about 0.5. Checked loosely: the point is the unit and the order of magnitude."""
    rng = np.random.default_rng(0)
    pgv = []
    for _ in range(40):
        event = xc.draw_event(rng)
        event["mw"], event["fc"] = 5.0, xc.corner_hz(5.0, event["stress_bar"], event["vs"])
        pgv.append(xc.simulate_trace(rng, event, 20.0)[1]["trace_pgv_mps"])
    assert 0.003 < float(np.median(pgv)) < 0.05


def test_seismag_evaluate_reads_it(small_set):
    result = evaluate("baseline", small_set, seconds_after_p=(3.0,))
    assert result["metrics"]["full"]["n"] == len(pd.read_csv(small_set / "metadata.csv"))


def test_release_doc_takes_the_generator_command(small_set):
    spec = importlib.util.spec_from_file_location("td", ROOT / "release" / "train_defaults.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.synth_command(str(small_set)).startswith(
        "python -m seismag.benchmarks.crosscheck_data"
    )


def test_empirical_regime_has_real_record_lengths_and_crustal_amplification():
    r = np.array([7.0, 45.0, 125.0, 175.0, 270.0])
    assert piecewise_linear(r, BT14_PATH_DURATION) == pytest.approx([2.4, 8.4, 10.9, 9.3, 18.3])
    rng = np.random.default_rng(1)
    drawn = [draw_event_physics(rng, "empirical").physics for _ in range(300)]
    at_20 = [float(piecewise_linear(np.array([20.0]), p.duration_path)[0]) for p in drawn]
    # wide's longest path duration at 20 km is 0.12 s/km x 20 km = 2.4 s; Boore & Thompson's
    # 4.45 s times 0.5-2.
    assert min(at_20) > 2.2 and max(at_20) < 9.0
    assert np.median(at_20) == pytest.approx(4.45, rel=0.2)
    # Boore & Joyner's generic rock, at its own frequencies and nowhere else in the regimes.
    physics = drawn[0]
    assert physics.crust_amplification == BJ97_GENERIC_ROCK
    f = np.array([point[0] for point in BJ97_GENERIC_ROCK])
    ratio = velocity_spectrum(f, 4.0, 30.0, physics=physics) / velocity_spectrum(
        f, 4.0, 30.0, physics=replace(physics, crust_amplification=())
    )
    assert ratio == pytest.approx([point[1] for point in BJ97_GENERIC_ROCK])
    assert WNA.crust_amplification == ()
    for other in ("wna", "ena", "two_corner", "high_attenuation", "broad", "wide"):
        assert draw_event_physics(rng, other).physics.crust_amplification == ()


def test_site_range_spans_hard_rock_to_stiff_soil():
    rng = np.random.default_rng(2)
    drawn = [draw_event_physics(rng, "site_range").physics for _ in range(400)]
    # The generic-rock amplification at 6 Hz is 2.58; scaled in log by U(0, 1.4): 1 to 3.77.
    at_6hz = np.array([dict(p.crust_amplification)[6.05] for p in drawn])
    assert at_6hz.min() == pytest.approx(1.0, abs=0.05)
    assert at_6hz.max() == pytest.approx(2.58**1.4, rel=0.03)
    assert np.median(np.log(at_6hz)) == pytest.approx(0.7 * np.log(2.58), rel=0.1)
    # every table keeps generic rock's frequencies and rises with frequency, as a crust does
    for p in drawn[:20]:
        amp = [a for _, a in p.crust_amplification]
        assert [f for f, _ in p.crust_amplification] == [f for f, _ in BJ97_GENERIC_ROCK]
        assert amp == sorted(amp)
    # and the long durations of ``empirical``
    at_20 = [float(piecewise_linear(np.array([20.0]), p.duration_path)[0]) for p in drawn]
    assert min(at_20) > 2.2


def test_nothing_arrives_before_the_first_arrival():
    """Spectral shaping by FFT is circular and zero-phase: without care, a long coda wraps round
    to the record start and the onset smears backwards, so pickers (and any model) see signal
    before P."""
    rng = np.random.default_rng(4)
    n, fs, start = 6000, 100.0, 700
    series = xc.phase_series(rng, n, start, 40.0, lambda f: np.exp(-f / 5.0), fs)
    assert np.all(series[:start] == 0.0)
    assert np.abs(series[start : start + 200]).max() > 0
    event = xc.draw_event(np.random.default_rng(5))
    event["mw"], event["fc"] = 6.0, xc.corner_hz(6.0, event["stress_bar"], event["vs"])
    wave, meta = xc.simulate_trace(np.random.default_rng(6), event, 250.0)
    noise_only = wave[:, : meta["trace_p_arrival_sample"] - 10]
    sos = ssignal.butter(4, (1.0, 20.0), "bandpass", fs=fs, output="sos")
    quiet = ssignal.sosfiltfilt(sos, noise_only, axis=-1)
    # What is before P is the noise alone: no coda wrapped round from the record end.
    assert np.abs(quiet).max() < 10 * quiet.std()
