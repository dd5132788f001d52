"""The sparse-field baselines (issue #15) and their benchmark CLI: shapes and range, that the
interpolators beat the constant on smooth fields, that the GP's uncertainty grows away from the
data, and that the CLI writes the JSON the docs are built from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seismag.benchmarks.field_accuracy import single_threaded
from seismag.benchmarks.field_baselines import BASELINES
from seismag.models.field_card import grid_coords
from seismag.training.field_data import make_fields, observe, psnr

GRID = (32, 32)


@pytest.fixture(autouse=True)
def _one_thread():
    # Small matrices: BLAS threads only contend (as the benchmark runs them).
    with single_threaded():
        yield


def _smooth_field() -> np.ndarray:
    """A slow oblique sinusoid plus a tilt, in [0, 1]: any interpolator should get it."""
    rc = grid_coords(*GRID).astype(np.float64)
    z = 0.5 + 0.3 * np.sin(2 * np.pi * 0.8 * (0.6 * rc[:, 0] + 0.8 * rc[:, 1]) + 0.4)
    z += 0.15 * (rc[:, 0] - 0.5)
    return z.reshape(1, *GRID).astype(np.float32)


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_shapes_and_range(name: str) -> None:
    if name == "gp":
        pytest.importorskip("sklearn")
    fields = make_fields(2, "benchmark", GRID, seed=1000)
    coords, values, _ = observe(fields, 0.05, seed=1001)
    mean, std = BASELINES[name](coords[0], values[0], GRID)
    assert mean.shape == GRID
    assert np.all(np.isfinite(mean))
    assert mean.min() >= 0.0 and mean.max() <= 1.0
    if name == "gp":
        assert std is not None and std.shape == GRID
        assert np.all(np.isfinite(std)) and np.all(std >= 0)
    else:
        assert std is None


def test_nearest_reproduces_observations() -> None:
    fields = _smooth_field()
    coords, values, idx = observe(fields, 0.05, seed=3)
    for name in ("nearest", "linear", "cubic", "thin_plate"):
        mean, _ = BASELINES[name](coords[0], values[0], GRID)
        np.testing.assert_allclose(mean.ravel()[idx[0]], values[0], atol=1e-4, err_msg=name)


def test_interpolators_beat_the_mean_on_a_smooth_field() -> None:
    pytest.importorskip("sklearn")
    fields = _smooth_field()
    coords, values, _ = observe(fields, 0.05, seed=7)
    score = {
        name: float(psnr(BASELINES[name](coords[0], values[0], GRID)[0][None], fields)[0])
        for name in ("mean", "linear", "thin_plate", "gp")
    }
    for name in ("linear", "thin_plate", "gp"):
        assert score[name] > score["mean"] + 10.0, score
    # A smooth field is what thin-plate splines and the GP are for: well beyond linear.
    assert score["gp"] > score["linear"] + 5.0, score
    assert score["thin_plate"] > score["linear"], score


def test_gp_std_grows_away_from_observations() -> None:
    pytest.importorskip("sklearn")
    fields = _smooth_field()
    coords, values, idx = observe(fields, 0.02, seed=11)
    _, std = BASELINES["gp"](coords[0], values[0], GRID)
    # Distance from every pixel to its nearest observation, in pixels.
    pix = grid_coords(*GRID) * GRID[0]
    dist = np.min(np.linalg.norm(pix[:, None] - pix[idx[0]][None], axis=-1), axis=1)
    std = std.ravel()
    near, far = std[dist <= 1.0], std[dist >= np.quantile(dist, 0.9)]
    assert np.median(near) < 0.5 * np.median(far)
    assert np.median(std[idx[0]]) < np.median(far)


def test_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "seismag.benchmarks.field_accuracy", "--fields", "3"]
    cmd += ["--fractions", "5", "--baselines", "mean", "linear", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "| linear |" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report) == {"config", "results", "steps_sweep"}
    assert report["config"]["field_seed"] == 1000
    assert report["config"]["observation_seed"] == 1001
    rows = report["results"]
    assert [(r["family"], r["fraction_percent"], r["method"]) for r in rows] == [
        ("benchmark", 5.0, "mean"),
        ("benchmark", 5.0, "linear"),
    ]
    for r in rows:
        assert r["points"] == 51
        for key in ("psnr_mean", "psnr_median", "psnr_std", "ms_per_field"):
            assert np.isfinite(r[key]), key
    assert rows[1]["psnr_mean"] > rows[0]["psnr_mean"]
    assert report["steps_sweep"] == []


class _StubRuntime:
    """A stand-in for FieldRuntime (same reconstruct signature): linear interpolation, a constant
    std, and the steps it was asked for recorded."""

    def __init__(self) -> None:
        self.steps: list[int | None] = []

    def reconstruct(self, coords, values, grid, samples=None, steps=None, seed=0, *, sources=None):
        self.steps.append(steps)
        pairs = zip(coords, values, strict=True)
        mean = np.stack([BASELINES["linear"](c, v, grid)[0] for c, v in pairs])
        return mean, np.full_like(mean, 0.05)


def test_model_branch_and_steps_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    from seismag.benchmarks import field_accuracy

    stub = _StubRuntime()
    monkeypatch.setattr(field_accuracy, "load_model", lambda path, threads: stub)
    argv = (
        "--fields 4 --fractions 5 --baselines mean linear --model m.onnx --batch 3 "
        "--steps-sweep 1 4"
    )
    args = field_accuracy.parse_args(argv.split())
    report = field_accuracy.evaluate(args)
    worse, base, model = report["results"]
    assert (model["method"], model["kind"]) == ("m", "model")
    assert model["psnr_mean"] == pytest.approx(base["psnr_mean"], abs=1e-3)
    # The stub is the linear baseline, the better of the two: a paired difference of ~0.
    assert worse["psnr_mean"] < base["psnr_mean"]
    paired = model["vs_best_baseline"]
    assert paired["baseline"] == "linear"
    assert paired["mean_difference_db"] == pytest.approx(0.0, abs=1e-3)
    lo, hi = paired["interval_db"]
    assert lo <= paired["mean_difference_db"] <= hi
    assert "against the best baseline" in field_accuracy.markdown(report)
    assert 0.0 <= model["within_1sd"] <= model["within_2sd"] <= 1.0
    assert model["std_median"] == pytest.approx(0.05)
    assert [r["steps"] for r in report["steps_sweep"]] == [1, 4]
    assert {1, 4} <= set(stub.steps)
    assert "PSNR against sampling steps" in field_accuracy.markdown(report)
