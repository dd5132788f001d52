"""Calibrate a model's predicted sigma on held-out data: one scale for the whole sigma head.

A Gaussian likelihood head (MagNet, Mousavi & Beroza 2020; TEAM-LM, Münchmeyer et al. 2021)
learns the scatter of the data it was trained on; on other physics its sigma is too narrow
(docs/evaluation.md: 51-61 % of errors within one sigma on unseen regimes). Variance scaling
(Levi et al. 2022, Sensors 22:5540; the regression recalibration of Kuleshov et al. 2018, ICML)
multiplies every sigma by the one factor that puts 68.3 % of a calibration set's errors within
one sigma: the ranking of confident and unsure windows is kept, only the level moves.

The factor is the 68.3rd percentile of ``|predicted - true| / sigma`` over the full windows of
the calibration set (the quantity of the calibration tables). It is stored in the weights as the
model's ``sigma_scale`` buffer (:mod:`seismag.models.base`), so evaluation, export and every
serving backend apply it with no other change. Which data calibrate is the user's choice and
decides what the sigma means: data the weights were not fitted to (another region, regimes left
out of the last training), never the set that will judge the result.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ONE_SIGMA = math.erf(1 / math.sqrt(2))
"""Share of a Gaussian within one standard deviation (0.6827)."""
MIN_TRACES = 100
"""Fewer full windows than this fit a percentile too loosely to ship."""
METADATA_KEY = "seismag.sigma_calibration"
"""Weights metadata that records how the scale was fitted."""


class CalibrationError(ValueError):
    """The calibration cannot be fitted (no sigma output, too few windows, bad data)."""


@dataclass(frozen=True)
class SigmaCalibration:
    model: str
    scale: float
    """The new sigma_scale of the weights (the previous one times the fitted factor)."""
    previous_scale: float
    n: int
    within_1_sigma_before: float
    within_2_sigma_before: float
    within_2_sigma_after: float
    median_sigma_after: float
    data: str
    split: str

    def to_dict(self) -> dict:
        return asdict(self)


def fit_factor(errors: np.ndarray, sigmas: np.ndarray, coverage: float = ONE_SIGMA) -> float:
    """The factor that puts ``coverage`` of ``|errors|`` within ``factor * sigmas``."""
    e, s = np.asarray(errors, dtype=np.float64), np.asarray(sigmas, dtype=np.float64)
    keep = np.isfinite(e) & np.isfinite(s) & (s > 0)
    if keep.sum() < MIN_TRACES:
        raise CalibrationError(
            f"{int(keep.sum())} windows with a prediction and a sigma; at least {MIN_TRACES} "
            "are needed to fit a calibration"
        )
    return float(np.quantile(np.abs(e[keep]) / s[keep], coverage))


def calibrate(
    model_name: str,
    weights: str | Path,
    data_dir: str | Path,
    out: str | Path,
    *,
    split: str = "dev",
    limit: int | None = None,
    sensitivity: float | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = False,
) -> SigmaCalibration:
    """Fit the sigma scale of ``weights`` on a split of ``data_dir`` and write the calibrated
    weights to ``out`` (the input file is left as it is)."""
    from safetensors import safe_open

    from seismag.models.base import SIGMA_SCALE
    from seismag.models.card import CARD_KEY
    from seismag.models.weights import WeightsError, model_from_weights, save_weights
    from seismag.training.dataset import dataset_for
    from seismag.training.evaluate import (
        EvaluationError,
        _collect,
        _head,
        _units,
        calibration,
        torch_predictor,
    )

    try:
        model = model_from_weights(weights, model_name)
    except WeightsError as exc:
        raise CalibrationError(str(exc)) from exc
    scale = getattr(model, SIGMA_SCALE, None)
    if scale is None:
        raise CalibrationError(f"{model_name} has no sigma output to calibrate")
    card = model.card
    ds = dataset_for(card, Path(data_dir), CalibrationError)
    if sensitivity is None and _units(ds.data_format, ds.metadata) == "counts":
        # A scale fitted to magnitudes of uncorrected counts would be meaningless, not wrong
        # enough to notice: refuse instead of guessing the unit.
        raise CalibrationError(
            f"{data_dir} is stored in counts: give the sensitivity (counts per m/s) to "
            "calibrate on it"
        )
    sub = ds.split(split)
    if limit is not None:
        sub = _head(sub, limit)
    try:
        got = _collect(
            sub,
            card,
            torch_predictor(model, device, batch_size),
            [None],
            batch_size=batch_size,
            with_baseline=False,
            progress=progress,
            sensitivity=sensitivity,
        )["full"]
    except EvaluationError as exc:
        raise CalibrationError(str(exc)) from exc
    true = sub.metadata["source_magnitude"].to_numpy(dtype=np.float64)
    errors, sigmas = got["pred"] - true, got["sigma"]
    factor = fit_factor(errors, sigmas)
    before = calibration(true, got["pred"], sigmas)
    after = calibration(true, got["pred"], sigmas * factor)
    previous = float(scale)
    result = SigmaCalibration(
        model=card.name,
        scale=previous * factor,
        previous_scale=previous,
        n=int(before["n"]),
        within_1_sigma_before=float(before["within_1_sigma"]),
        within_2_sigma_before=float(before["within_2_sigma"]),
        within_2_sigma_after=float(after["within_2_sigma"]),
        median_sigma_after=float(after["median_sigma"]),
        data=str(data_dir),
        split=split,
    )
    with safe_open(str(weights), framework="np") as f:
        kept = {k: v for k, v in (f.metadata() or {}).items() if k != CARD_KEY}
    import torch

    with torch.no_grad():
        scale.fill_(result.scale)
    save_weights(model, out, extra={**kept, METADATA_KEY: json.dumps(result.to_dict())})
    return result
