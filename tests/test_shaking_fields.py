"""Shaking maps (issue #15 item 4) and their ShakeMap-style baseline: shapes and ranges, the
physics (PGV falls with distance, grows with magnitude, agrees with the waveform generator), the
site field's correlation, exact interpolation at stations, that conditioning on the stations
beats the GMM alone and the mean, and that the benchmark CLI writes its JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seismag.benchmarks.shakemap_baseline import ShakeMapModel, fit_shakemap
from seismag.benchmarks.shaking_accuracy import main, single_threaded
from seismag.training.regimes import draw_event_physics
from seismag.training.shaking_fields import (
    exponential_field,
    make_shaking_maps,
    rvt_log_pgv,
    station_observations,
)

GRID = (32, 32)


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():
        yield


@pytest.fixture(scope="module")
def fitted() -> ShakeMapModel:
    with single_threaded():
        return fit_shakemap(make_shaking_maps(150, GRID, seed=1))


def test_maps_shapes_and_ranges() -> None:
    maps = make_shaking_maps(40, GRID, seed=3)
    assert maps.log_pgv.shape == (40, *GRID) and maps.log_pgv.dtype == np.float32
    assert np.all(np.isfinite(maps.log_pgv))
    assert maps.log_pgv.min() > -8.5 and maps.log_pgv.max() < 1.0
    assert np.all((maps.magnitude >= 3) & (maps.magnitude <= 7))
    assert np.all((maps.depth_km >= 5) & (maps.depth_km <= 20))
    assert set(maps.regime) <= {"wna", "two_corner", "broad"}
    event = maps.event(0)
    assert set(event) == {"magnitude", "epicentre_km", "depth_km", "extent_km"}
    # Map i depends on (seed, i) only: a longer set extends a shorter one.
    np.testing.assert_array_equal(make_shaking_maps(5, GRID, seed=3).log_pgv, maps.log_pgv[:5])


def test_median_falls_with_distance_and_grows_with_magnitude() -> None:
    maps = make_shaking_maps(60, GRID, seed=4)
    rows, cols = np.meshgrid(*(np.arange(n) + 0.5 for n in GRID), indexing="ij")
    slopes = []
    for i in range(len(maps)):
        d = np.hypot(
            rows * 200 / 32 - maps.epicentre_km[i, 0], cols * 200 / 32 - maps.epicentre_km[i, 1]
        )
        slopes.append(np.polyfit(np.log10(d.ravel() + 1), maps.log_pgv[i].ravel(), 1)[0])
    assert np.median(slopes) < -0.8  # log10 PGV against log10 distance, noise included
    rng = np.random.default_rng(0)
    for regime in ("wna", "two_corner", "broad", "ena", "high_attenuation"):
        ep = draw_event_physics(rng, regime)
        r = np.array([10.0, 30.0, 100.0, 250.0])
        by_m = [
            rvt_log_pgv(
                m,
                r,
                stress_drop_bar=ep.stress_drop_bar,
                kappa_s=ep.kappa_median_s,
                physics=ep.physics,
            )
            for m in (3.0, 5.0, 7.0)
        ]
        for pgv in by_m:
            assert np.all(np.diff(pgv) < 0), regime
        assert np.all(by_m[1] > by_m[0] + 1.0) and np.all(by_m[2] > by_m[1] + 0.5), regime


def test_rvt_median_matches_the_waveform_generator() -> None:
    from seismag.training.synthetic import simulate_signal

    ep = draw_event_physics(np.random.default_rng(5), "wna")
    r = np.array([15.0, 60.0, 150.0])
    sr, n = 100.0, 8000
    peaks = []
    for k in range(10):
        sig = simulate_signal(
            np.random.default_rng(k),
            5.0,
            r,
            np.full(3, 100),
            (100 + r * 12.2).astype(int),
            n_samples=n,
            sampling_rate=sr,
            stress_drop_bar=ep.stress_drop_bar,
            kappa_s=ep.kappa_median_s,
            physics=ep.physics,
        )
        peaks.append(np.abs(sig[:, 1:]).max(axis=2))  # per horizontal component
    simulated = np.log10(np.concatenate(peaks, axis=1)).mean(axis=1)
    rvt = rvt_log_pgv(
        5.0, r, stress_drop_bar=ep.stress_drop_bar, kappa_s=ep.kappa_median_s, physics=ep.physics
    )
    np.testing.assert_allclose(rvt, simulated, atol=0.1)


def test_site_field_correlation_length() -> None:
    rng = np.random.default_rng(6)
    spacing, length = 2.0, 10.0
    fields = np.stack([exponential_field(rng, GRID, spacing, length, 0.2) for _ in range(300)])
    assert abs(fields.std() - 0.2) < 0.02
    for lag in (1, 3, 5):  # pixels along rows and columns
        c = (
            0.5
            * (
                np.mean(fields[:, lag:, :] * fields[:, :-lag, :])
                + np.mean(fields[:, :, lag:] * fields[:, :, :-lag])
            )
            / np.mean(fields**2)
        )
        assert abs(c - np.exp(-lag * spacing / length)) < 0.06, lag


def test_gmm_kriging_interpolates_the_stations(fitted: ShakeMapModel) -> None:
    maps = make_shaking_maps(3, GRID, seed=1000)
    coords, values, idx = station_observations(maps, 0.05, seed=1001)
    for i in range(len(maps)):
        mean, std = fitted.gmm_kriging(coords[i], values[i], GRID, maps.event(i))
        np.testing.assert_allclose(mean.ravel()[idx[i]], values[i], atol=1e-3)
        assert np.all(std.ravel()[idx[i]] < 1e-2)
        hidden = np.setdiff1d(np.arange(GRID[0] * GRID[1]), idx[i])
        assert np.all(std.ravel()[hidden] > 0.05)
        mean, _ = fitted.kriging_only(coords[i], values[i], GRID, maps.event(i))
        np.testing.assert_allclose(mean.ravel()[idx[i]], values[i], atol=1e-3)


def test_gmm_kriging_beats_gmm_only_and_mean(fitted: ShakeMapModel) -> None:
    maps = make_shaking_maps(40, GRID, seed=1000)
    coords, values, _ = station_observations(maps, 0.05, seed=1001)
    rmse = {}
    for name in ("mean", "gmm_only", "gmm_kriging"):
        fn = fitted.methods()[name]
        pred = np.stack(
            [fn(coords[i], values[i], GRID, maps.event(i))[0] for i in range(len(maps))]
        )
        rmse[name] = float(np.sqrt(np.mean((pred - maps.log_pgv) ** 2)))
    assert rmse["gmm_kriging"] < rmse["gmm_only"] - 0.01, rmse
    assert rmse["gmm_kriging"] < rmse["mean"] - 0.05, rmse


def test_cli_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "shaking.json"
    main(
        [
            "--maps", "4", "--fractions", "5", "--train-maps", "30", "--regimes", "train", "ena",
            "--out", str(out),
        ]
    )  # fmt: skip
    report = json.loads(out.read_text())
    methods = {r["method"] for r in report["results"]}
    assert {"mean", "kriging_only", "gmm_only", "gmm_kriging", "gmm_event_terms"} <= methods
    assert {r["regimes"] for r in report["results"]} == {"train", "ena"}
    row = next(r for r in report["results"] if r["method"] == "gmm_kriging")
    assert 0 < row["rmse"] < 1 and 0 <= row["within_1sd"] <= 1 and "vs_reference" not in row
    # Every method after ShakeMap's is compared with it map by map: MSE differences agree with
    # the pooled RMSEs (the pooled MSE is the mean of the per-map MSEs: equal maps per group).
    for r in report["results"]:
        if r["method"] in ("gmm_event_terms", "oracle"):
            ref = next(
                x["rmse"] for x in report["results"]
                if x["method"] == "gmm_kriging" and x["regimes"] == r["regimes"]
            )  # fmt: skip
            v = r["vs_reference"]
            assert v["mse_difference"] == pytest.approx(r["rmse"] ** 2 - ref**2, abs=1e-9)
            assert v["interval"][0] <= v["mse_difference"] <= v["interval"][1]
    printed = capsys.readouterr().out
    assert "| gmm_kriging |" in printed and "map by map against gmm_kriging" in printed
