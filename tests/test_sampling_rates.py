"""The sampling-rate benchmark: its off-rate records and its command on a small synthetic set."""

import json

import numpy as np
import pytest

from seismag.benchmarks import sampling_rates


@pytest.mark.parametrize("rate", [40.0, 200.0])
def test_off_rate_records_keep_the_band_and_add_nothing_below_55_hz(rate, rng):
    t = np.arange(6000) / 100.0
    x = np.stack([np.sin(2 * np.pi * 3.0 * t)] * 3)
    y = sampling_rates.off_rate(x, rate, rng)
    assert y.shape == (3, round(6000 * rate / 100.0))
    ty = np.arange(y.shape[-1]) / rate
    inner = slice(y.shape[-1] // 10, -y.shape[-1] // 10)
    spectrum = np.abs(np.fft.rfft(y[0] - np.sin(2 * np.pi * 3.0 * ty)))
    freqs = np.fft.rfftfreq(y.shape[-1], 1.0 / rate)
    if rate > 100.0:  # only the added noise differs from the tone, all of it above 55 Hz
        assert spectrum[freqs < 54.0].max() < 1e-3 * spectrum.max()
    else:  # 3 Hz is far below the 16 Hz anti-alias corner: the tone itself
        np.testing.assert_allclose(y[0][inner], np.sin(2 * np.pi * 3.0 * ty)[inner], atol=1e-3)


def test_command_on_a_small_synthetic_set(tmp_path, capsys):
    from seismag.training.synthetic import generate_dataset

    data = generate_dataset(
        tmp_path / "synth", 3, stations_per_event=(2, 2), seed=4, progress=False
    )
    out = tmp_path / "rates.json"
    assert sampling_rates.main(
        ["--data", str(data), "--traces", "3", "--rates", "40", "250", "--json", str(out)]
    ) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result["traces"] + result["skipped"] <= 3 and result["traces"] >= 1
    assert [row["rate_hz"] for row in result["rows"]] == [40.0, 250.0]
    for row in result["rows"]:
        assert np.isfinite(row["served_mean_abs"]) and np.isfinite(row["obspy_resample_mean_abs"])
    # 250 Hz carries the whole 100 Hz band: the served resampler returns (nearly) the same value
    assert result["rows"][1]["served_mean_abs"] < 0.05
    assert "| 250 |" in capsys.readouterr().out


def test_command_refuses_bad_arguments(tmp_path, capsys):
    assert sampling_rates.main(["--data", str(tmp_path / "missing")]) == 2
    assert sampling_rates.main(["--data", str(tmp_path), "--traces", "0"]) == 2
    assert "error:" in capsys.readouterr().err
