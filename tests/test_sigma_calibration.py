"""`seismag calibrate`: one sigma scale fitted on held-out data, stored in the weights, applied by
evaluation and by the exported ONNX graph, reset by a new training."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seismag.models import build_model  # noqa: E402
from seismag.models.base import SIGMA_SCALE  # noqa: E402
from seismag.models.weights import load_weights, model_from_weights, save_weights  # noqa: E402
from seismag.training.calibrate import (  # noqa: E402
    METADATA_KEY,
    CalibrationError,
    fit_factor,
)


def test_fit_factor_is_the_one_sigma_quantile_of_the_standardised_errors():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.1, 0.5, 20000)
    errors = rng.normal(0.0, 2.0 * sigma)  # every sigma half what it should be
    assert fit_factor(errors, sigma) == pytest.approx(2.0, rel=0.03)
    # NaN windows (no prediction) are left out, not counted as misses.
    errors[:5000] = np.nan
    assert fit_factor(errors, sigma) == pytest.approx(2.0, rel=0.03)
    with pytest.raises(CalibrationError, match="at least 100"):
        fit_factor(errors[:150], sigma[:150])


@pytest.fixture(scope="module")
def calib_data(tmp_path_factory):
    from seismag.training.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("calib"), 40, seed=3, progress=False)


def _sigmas(model, card, n=4):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(n, card.in_channels, card.in_samples, generator=gen)
    a = torch.full((n, 1), -6.0)
    with torch.no_grad():
        return model.forward_with_sigma(w, a), (w, a)


def test_calibrate_writes_scaled_weights_that_evaluation_and_onnx_apply(calib_data, tmp_path):
    from seismag.cli import main
    from seismag.training.evaluate import evaluate

    start = save_weights(build_model("PhaseNetMag"), tmp_path / "start.safetensors")
    out = tmp_path / "calibrated.safetensors"
    args = ["calibrate", "PhaseNetMag", "--weights", str(start), "--data", str(calib_data)]
    assert main([*args, "--split", "train", "--out", str(out), "--quiet"]) == 0

    before, after = model_from_weights(start), model_from_weights(out)
    scale = float(getattr(after, SIGMA_SCALE))
    assert float(getattr(before, SIGMA_SCALE)) == 1.0 and scale != 1.0
    (m0, s0), x = _sigmas(before.eval(), before.card)
    (m1, s1), _ = _sigmas(after.eval(), after.card)
    assert torch.equal(m0, m1)  # the magnitudes are untouched
    assert torch.allclose(s1, s0 * scale)

    # On the split it was fitted on, 68.3 % of the full windows fall within one sigma.
    got = evaluate("PhaseNetMag", calib_data, out, split="train", baseline=False)
    assert got["calibration"]["full"]["within_1_sigma"] == pytest.approx(0.683, abs=0.02)
    from safetensors import safe_open

    with safe_open(str(out), framework="np") as f:
        record = json.loads(f.metadata()[METADATA_KEY])
    assert record["scale"] == pytest.approx(scale) and record["split"] == "train"

    # The export carries the scale in its graph: ONNX Runtime serves the calibrated sigma.
    pytest.importorskip("onnxruntime")
    from seismag.export.onnx_export import export_onnx
    from seismag.training.evaluate import onnx_predictor

    export_onnx(after, tmp_path / "c.onnx", weights=str(out))
    mag, sigma = onnx_predictor(tmp_path / "c.onnx")(x[0].numpy(), x[1].numpy())
    np.testing.assert_allclose(sigma, s1.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mag, m1.numpy(), rtol=1e-4, atol=1e-4)


def test_training_from_calibrated_weights_resets_the_scale(calib_data, tmp_path):
    from seismag.training.train import train

    model = build_model("PhaseNetMag")
    getattr(model, SIGMA_SCALE).fill_(1.7)
    start = save_weights(model, tmp_path / "start.safetensors")
    kw = {"batch_size": 8, "limit_train": 8, "threads": 2, "progress": False, "device": "cpu"}
    best = train("PhaseNetMag", calib_data, tmp_path / "run", epochs=1, init_weights=start, **kw)
    assert float(getattr(model_from_weights(best), SIGMA_SCALE)) == 1.0


def test_weights_saved_without_a_scale_load_uncalibrated(tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_weights(build_model("ViTMag"), tmp_path / "w.safetensors")
    tensors = load_file(str(path))
    del tensors[SIGMA_SCALE]
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
    save_file(tensors, str(path), metadata=meta)
    model = build_model("ViTMag")
    getattr(model, SIGMA_SCALE).fill_(3.0)
    load_weights(model, path)
    assert float(getattr(model, SIGMA_SCALE)) == 1.0


def test_cli_errors_are_clean(calib_data, tmp_path, capsys):
    from seismag.cli import main

    start = save_weights(build_model("PhaseNetMag"), tmp_path / "w.safetensors")
    base = ["calibrate", "PhaseNetMag", "--data", str(calib_data)]
    assert main([*base, "--weights", str(start), "--out", str(start)]) == 2
    assert "new file" in capsys.readouterr().err
    assert main([*base, "--weights", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    # The test split of 40 events holds too few windows to fit a percentile.
    args = [*base, "--weights", str(start), "--split", "test", "--out", str(tmp_path / "o")]
    assert main([*args, "--quiet"]) == 1
    assert "at least 100" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_counts_without_a_sensitivity_are_refused(calib_data, tmp_path):
    import shutil

    import h5py

    from seismag.training.calibrate import calibrate

    counts = tmp_path / "counts"
    shutil.copytree(calib_data, counts)
    with h5py.File(counts / "waveforms.hdf5", "r+") as f:  # the unit SeisBench's format states
        del f["data_format"]["unit"]
        f["data_format"]["unit"] = "counts"
        f["data_format"].attrs["unit"] = "counts"
    start = save_weights(build_model("PhaseNetMag"), tmp_path / "w.safetensors")
    with pytest.raises(CalibrationError, match="counts"):
        calibrate("PhaseNetMag", start, counts, tmp_path / "o.safetensors", split="train")
    assert not (tmp_path / "o.safetensors").exists()
