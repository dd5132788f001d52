"""ONE evaluator for every model, per waveform, on the windows a live feed would see.

For each trace of a split it cuts the full-information window (ending 25 s after P, or at the
trace end) and one window ending k seconds after P for each k of the curve
(:mod:`seismag.training.windows`). Each window gives ONE magnitude:

* scalar models: the model output (a magnitude: the model removes the card's ``label_offset``);
* series models: :func:`seismag.models.aggregate.to_magnitude` with the P onset inside the window,
  i.e. the aggregate of the series *after* P. Averaging the whole window (zeros before P) or
  scoring the flattened (waveform x timestep) arrays are the two mistakes of the original design;
  neither exists here, and :func:`waveform_metrics` refuses anything but one value per waveform.

Metrics (MSE, RMSE, MAE, R2, bias) count waveforms. The classic local magnitude
(:mod:`seismag.training.baseline`) is computed on the very same windows, so the comparison is fair.
A PyTorch model (safetensors weights) or an exported ONNX file (what serving runs) can be scored.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from seismag.models.aggregate import series_to_scalar, to_magnitude
from seismag.models.card import OUTPUT_NAME, SIGMA_NAME, ModelCard, get_card
from seismag.training.baseline import local_magnitude
from seismag.training.windows import (
    DEFAULT_SECONDS_AFTER_P,
    FULL_AFTER_P_SECONDS,
    evaluation_end,
    make_batch,
)

BASELINE = "baseline"
"""Model name that evaluates the ML baseline alone."""

Predictor = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]]
"""(waveform (B, C, N), log_amp (B, 1)) -> (model output in magnitude units, its standard
deviation in magnitude units or None for a model without an uncertainty output)."""

DISTANCE_BINS_KM = (0.0, 20.0, 50.0, 100.0, 200.0, 300.0, 1000.0)
MAGNITUDE_BINS = (0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0)
REGIME_COLUMN = "source_regime"
"""Metadata column naming each trace's physics regime (``seismag synth`` writes it)."""
KAPPA_COLUMN = "station_kappa_s"
"""Metadata column with the kappa a synthetic trace was made with (``seismag synth``)."""
KAPPA_BINS_S = (0.0, 0.008, 0.015, 0.03, 0.06, 1.0)
"""Hard rock (under 0.008 s) to soft soil (over 0.06 s): Van Houtte et al. (2011)'s range."""
SLOPE_RANGE = (2.0, 6.0)
"""Magnitudes over which the slope of predicted vs true is fitted (the issue's target range)."""


class EvaluationError(ValueError):
    """The evaluation cannot run as asked (missing data, wrong weights, empty split...)."""


def waveform_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | int | None]:
    """MSE, RMSE, MAE, R2 and bias over waveforms: n is the number of waveforms.

    Takes 1-D arrays only: a (waveform, timestep) array here would be the flattened evaluation.
    """
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.ndim != 1 or p.shape != t.shape:
        raise ValueError(
            f"metrics take one value per waveform: 1-D arrays of equal length, got "
            f"{t.shape} and {p.shape}"
        )
    keep = np.isfinite(t) & np.isfinite(p)
    t, p = t[keep], p[keep]
    n = int(t.size)
    if n == 0:
        return {"n": 0, "mse": None, "rmse": None, "mae": None, "r2": None, "bias": None}
    err = p - t
    mse = float(np.mean(err**2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    r2 = 1.0 - float(np.sum(err**2)) / ss_tot if n > 1 and ss_tot > 0 else None
    return {
        "n": n,
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(np.mean(np.abs(err))),
        "r2": r2,
        "bias": float(np.mean(err)),
    }


def window_magnitudes(output: np.ndarray, card: ModelCard, onset: np.ndarray) -> np.ndarray:
    """Model output (magnitudes) -> one magnitude per window, aggregated after P for series."""
    return np.asarray(to_magnitude(output, card, onset), dtype=np.float64).reshape(-1)


def window_sigmas(sigma: np.ndarray, card: ModelCard, onset: np.ndarray) -> np.ndarray:
    """Standard deviations -> one per window, aggregated after P like the magnitude (the errors
    of neighbouring samples are strongly correlated, so their sigmas are averaged, not pooled)."""
    if card.output == "scalar":
        return np.asarray(sigma, dtype=np.float64).reshape(-1)
    return np.asarray(
        series_to_scalar(sigma, onset, card.scalar_from_series), dtype=np.float64
    ).reshape(-1)


def calibration(y_true: np.ndarray, y_pred: np.ndarray, sigma: np.ndarray) -> dict:
    """Share of errors within 1 and 2 predicted sigmas (68.3 % and 95.4 % if calibrated)."""
    t, p, s = (np.asarray(a, dtype=np.float64) for a in (y_true, y_pred, sigma))
    keep = np.isfinite(t) & np.isfinite(p) & np.isfinite(s)
    if not keep.any():
        return {"n": 0, "within_1_sigma": None, "within_2_sigma": None, "median_sigma": None}
    z = np.abs(p[keep] - t[keep]) / s[keep]
    return {
        "n": int(keep.sum()),
        "within_1_sigma": float(np.mean(z <= 1.0)),
        "within_2_sigma": float(np.mean(z <= 2.0)),
        "median_sigma": float(np.median(s[keep])),
    }


def slope(y_true: np.ndarray, y_pred: np.ndarray, span=SLOPE_RANGE) -> float | None:
    """Least-squares slope of predicted on true magnitude over ``span`` (1 = no compression)."""
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    keep = np.isfinite(t) & np.isfinite(p) & (t >= span[0]) & (t <= span[1])
    if keep.sum() < 3 or np.ptp(t[keep]) == 0:
        return None
    return float(np.polyfit(t[keep], p[keep], 1)[0])


def binned_bias(
    y_true: np.ndarray, y_pred: np.ndarray, by: np.ndarray, edges: Sequence[float]
) -> list[dict]:
    """Mean error, MAE and count of waveforms in each bin of ``by`` (distance or magnitude)."""
    t, p, b = (np.asarray(a, dtype=np.float64) for a in (y_true, y_pred, by))
    rows = []
    for lo, hi in itertools.pairwise(edges):
        keep = np.isfinite(t) & np.isfinite(p) & (b >= lo) & (b < hi)
        err = p[keep] - t[keep]
        rows.append(
            {
                "bin": [lo, hi],
                "n": int(keep.sum()),
                "bias": float(err.mean()) if err.size else None,
                "mae": float(np.abs(err).mean()) if err.size else None,
            }
        )
    return rows


def by_regime(
    y_true: np.ndarray, y_pred: np.ndarray, regime: np.ndarray, sigma: np.ndarray | None = None
) -> list[dict]:
    """Count, bias and MAE (and the share within one sigma, given sigmas) per physics regime.

    A set that mixes regimes averages errors of opposite sign: on the unseen regimes a model
    that reads one regime 0.4 low and the other right shows a mean bias of -0.2 that describes
    neither; leave-one-regime-out evaluation reports each."""
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    r = np.asarray(regime).astype(str)
    s = None if sigma is None else np.asarray(sigma, dtype=np.float64)
    rows = []
    for name in sorted(set(r)):
        keep = (r == name) & np.isfinite(t) & np.isfinite(p)
        err = p[keep] - t[keep]
        row: dict = {
            "regime": name,
            "n": int(keep.sum()),
            "bias": float(err.mean()) if err.size else None,
            "mae": float(np.abs(err).mean()) if err.size else None,
        }
        if s is not None:
            row["within_1_sigma"] = calibration(t[keep], p[keep], s[keep])["within_1_sigma"]
        rows.append(row)
    return rows


def breakdown(
    y_true: np.ndarray, y_pred: np.ndarray, meta, sigma: np.ndarray | None = None
) -> dict:
    """Slope, and bias by distance and magnitude bin (and by physics regime where the metadata
    names more than one, by kappa where it has the synthetic kappa), of one set of per-waveform
    estimates."""
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    err = (p - t)[np.isfinite(p) & np.isfinite(t)]
    out: dict = {
        "slope_m2_6": slope(t, p),
        "slope_all": slope(t, p, (-np.inf, np.inf)),
        # For one station of uncalibrated counts (STEAD here) only these are meaningful.
        "offset": float(err.mean()) if err.size else None,
        "scatter_after_offset": float(err.std()) if err.size else None,
        "mae_after_offset": float(np.abs(err - err.mean()).mean()) if err.size else None,
    }
    if "path_ep_distance_km" in meta:
        dist = meta["path_ep_distance_km"].to_numpy(dtype=np.float64)
        out["by_distance_km"] = binned_bias(y_true, y_pred, dist, DISTANCE_BINS_KM)
    out["by_magnitude"] = binned_bias(y_true, y_pred, y_true, MAGNITUDE_BINS)
    if REGIME_COLUMN in meta and meta[REGIME_COLUMN].nunique() > 1:
        out["by_regime"] = by_regime(y_true, y_pred, meta[REGIME_COLUMN].to_numpy(), sigma)
    if KAPPA_COLUMN in meta:
        # Kappa is the record's site where it follows the site (the site_kappa regime): a bias
        # that follows it is a site level the model did not read from the record.
        kappa = pd.to_numeric(meta[KAPPA_COLUMN], errors="coerce").to_numpy(dtype=np.float64)
        out["by_kappa_s"] = binned_bias(y_true, y_pred, kappa, KAPPA_BINS_S)
    return out


def torch_predictor(model, device: str = "cpu", batch_size: int = 64) -> Predictor:
    """Wrap a PyTorch model (put in eval mode) as a numpy predictor."""
    import torch

    model.eval()
    model.to(device)

    with_sigma = getattr(model, "n_outputs", 1) == 2

    def predict(waveform: np.ndarray, log_amp: np.ndarray):
        outs, sigmas = [], []
        with torch.no_grad():
            for i in range(0, len(waveform), batch_size):
                w = torch.from_numpy(np.ascontiguousarray(waveform[i : i + batch_size]))
                a = torch.from_numpy(np.ascontiguousarray(log_amp[i : i + batch_size]))
                if with_sigma:
                    out, sigma = model.forward_with_sigma(w.to(device), a.to(device))
                    sigmas.append(sigma.float().cpu().numpy())
                else:
                    out = model(w.to(device), a.to(device))
                outs.append(out.float().cpu().numpy())
        return np.concatenate(outs), (np.concatenate(sigmas) if with_sigma else None)

    return predict


def onnx_predictor(path: str | Path, threads: int = 1) -> Predictor:
    """An exported ONNX file as a predictor; it outputs magnitudes, like the PyTorch model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(int(threads), 1)
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types
        raise EvaluationError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc

    names = [o.name for o in session.get_outputs()]
    wanted = [OUTPUT_NAME, *([SIGMA_NAME] if SIGMA_NAME in names else [])]

    def predict(waveform: np.ndarray, log_amp: np.ndarray):
        outs = session.run(
            wanted,
            {"waveform": waveform.astype(np.float32), "log_amp": log_amp.astype(np.float32)},
        )
        sigma = np.asarray(outs[1]) if len(outs) > 1 else None
        return np.asarray(outs[0]), sigma

    return predict


def load_predictor(
    model_name: str,
    weights: str | Path | None,
    onnx: str | Path | None,
    *,
    device: str = "cpu",
    batch_size: int = 64,
) -> tuple[ModelCard, Predictor, str]:
    """The card, a predictor and a description of the source, with the file checked against the
    model named (weights for another model are an error, not a silent mismatch)."""
    card = get_card(model_name)
    if onnx is not None:
        path = Path(onnx)
        if not path.is_file():
            raise EvaluationError(f"ONNX file not found: {path}")
        from seismag.models.artifact import ArtifactError, read_card_from_onnx

        try:
            stored = read_card_from_onnx(path)
        except ArtifactError as exc:
            raise EvaluationError(str(exc)) from exc
        if stored.name != card.name:
            raise EvaluationError(f"{path} is an export of {stored.name}, not {card.name}")
        return stored, onnx_predictor(path), str(path)
    if weights is None:
        raise EvaluationError(f"{model_name}: give --weights (safetensors) or --onnx")
    from seismag.models.weights import WeightsError, model_from_weights

    path = Path(weights)
    if not path.is_file():
        raise EvaluationError(f"weights file not found: {path}")
    try:
        # Built from the card the weights were trained with (e.g. the amplitude ablation).
        model = model_from_weights(path, card.name)
    except WeightsError as exc:
        raise EvaluationError(str(exc)) from exc
    return model.card, torch_predictor(model, device, batch_size), str(path)


def _window_label(k: float | None) -> str:
    return "full" if k is None else f"{k:g}s"


def _collect(
    split_ds,
    card: ModelCard,
    predictor: Predictor | None,
    ks: Sequence[float | None],
    *,
    batch_size: int,
    with_baseline: bool,
    progress: bool,
    sensitivity: float | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per window kind: arrays over traces of predicted / baseline magnitudes (NaN = no window).

    ``sensitivity`` (counts per m/s) divides every trace first: for recordings in counts.
    """
    meta = split_ds.metadata
    n_traces = len(split_ds)
    p_all = meta["trace_p_arrival_sample"].to_numpy(dtype=np.float64)
    s_all = (
        meta["trace_s_arrival_sample"].to_numpy(dtype=np.float64)
        if "trace_s_arrival_sample" in meta
        else np.full(n_traces, np.nan)
    )
    mags = meta["source_magnitude"].to_numpy(dtype=np.float64)
    out = {
        _window_label(k): {
            "pred": np.full(n_traces, np.nan),
            "sigma": np.full(n_traces, np.nan),
            "ml": np.full(n_traces, np.nan),
            "s_observed": np.zeros(n_traces, dtype=bool),
        }
        for k in ks
    }
    n = card.in_samples
    fs = card.sampling_rate
    try:
        from tqdm import tqdm

        bar = tqdm(total=n_traces, desc="evaluate", unit="trace", disable=not progress)
    except ImportError:  # tqdm is optional for evaluation
        bar = None
    for start in range(0, n_traces, batch_size):
        idx = range(start, min(start + batch_size, n_traces))
        traces = {i: np.asarray(split_ds.get_waveform(i)) for i in idx}
        if sensitivity is not None:
            traces = {i: t / sensitivity for i, t in traces.items()}
        for k in ks:
            rows, ends = [], []
            for i in idx:
                if not (np.isfinite(p_all[i]) and np.isfinite(mags[i])):
                    continue
                end = evaluation_end(p_all[i], traces[i].shape[-1], card, k)
                if end is not None:
                    rows.append(i)
                    ends.append(end)
            if not rows:
                continue
            ends_a = np.asarray(ends, dtype=np.int64)
            batch = make_batch([traces[i] for i in rows], p_all[rows], mags[rows], ends_a, card)
            slot = out[_window_label(k)]
            if predictor is not None:
                outputs, sigma = predictor(batch.waveform, batch.log_amp)
                slot["pred"][rows] = window_magnitudes(outputs, card, batch.onset)
                if sigma is not None:
                    slot["sigma"][rows] = window_sigmas(sigma, card, batch.onset)
            if with_baseline:
                window_start = ends_a - n
                s_win = s_all[rows] - window_start
                for j, i in enumerate(rows):
                    lm = local_magnitude(
                        batch.raw[j],
                        int(batch.onset[j]),
                        float(s_win[j]),
                        sampling_rate=fs,
                        component_order=card.component_order,
                    )
                    slot["ml"][i] = lm.ml
                    slot["s_observed"][i] = lm.s_observed
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return out


def evaluate(
    model_name: str,
    data_dir: str | Path,
    weights: str | Path | None = None,
    *,
    split: str = "test",
    seconds_after_p: Sequence[float] = DEFAULT_SECONDS_AFTER_P,
    out_dir: str | Path | None = None,
    batch_size: int = 64,
    onnx: str | Path | None = None,
    device: str = "cpu",
    baseline: bool = True,
    limit: int | None = None,
    progress: bool = False,
    sensitivity: float | None = None,
) -> dict:
    """Score one model (or ``"baseline"`` alone) on a split, per waveform; see the module doc.

    ``sensitivity``: counts per m/s, for a dataset in counts (applied to every trace; stated in
    the results). Without it the data are taken in the units they are stored in.

    Returns the results dict; with ``out_dir`` also writes ``results.json``, ``results.md``,
    ``predictions.csv``, ``scatter.png`` and ``mae_vs_time.png`` there.
    """
    from seismag.training.dataset import dataset_for

    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise EvaluationError(f"data directory not found: {data_dir}")
    only_baseline = model_name == BASELINE
    if only_baseline:
        card = get_card("PhaseNetMag")  # only its window geometry (30 s, 100 Hz, ZNE) is used
        predictor, source = None, "Hutton & Boore (1987) ML on simulated Wood-Anderson"
    else:
        card, predictor, source = load_predictor(
            model_name, weights, onnx, device=device, batch_size=batch_size
        )
    ds = dataset_for(card, data_dir, EvaluationError)
    sub = ds.split(split)
    if limit is not None:
        sub = _head(sub, limit)
    if len(sub) == 0:
        raise EvaluationError(f"split {split!r} of {data_dir} holds no traces")
    ks: list[float | None] = [None, *[float(k) for k in seconds_after_p]]
    got = _collect(
        sub,
        card,
        predictor,
        ks,
        batch_size=batch_size,
        with_baseline=baseline or only_baseline,
        progress=progress,
        sensitivity=sensitivity,
    )
    mags = sub.metadata["source_magnitude"].to_numpy(dtype=np.float64)
    key = "ml" if only_baseline else "pred"
    results: dict = {
        "model": "baseline_ML" if only_baseline else card.name,
        "source": source,
        "data": str(data_dir),
        "split": split,
        "n_waveforms": len(sub),
        "units": _units(ds.data_format, sub.metadata),
        "sensitivity": sensitivity,
        "n_events": int(sub.metadata["source_id"].nunique())
        if "source_id" in sub.metadata
        else None,
        "windows": {
            "full": f"ends {FULL_AFTER_P_SECONDS:g} s after P or at the trace end",
            "seconds_after_p": [float(k) for k in seconds_after_p],
            "samples": card.in_samples,
            "sampling_rate": card.sampling_rate,
        },
        "metrics": {
            _window_label(k): waveform_metrics(mags, got[_window_label(k)][key]) for k in ks
        },
    }
    s_observed = {_window_label(k): float(np.mean(got[_window_label(k)]["s_observed"])) for k in ks}
    method = "ML, Hutton & Boore (1987), Wood-Anderson from velocity, S-P distance"
    if only_baseline:
        results["method"] = method
        results["s_observed_fraction"] = s_observed
    elif baseline:
        results["baseline"] = {
            "method": method,
            "metrics": {
                _window_label(k): waveform_metrics(mags, got[_window_label(k)]["ml"]) for k in ks
            },
            "s_observed_fraction": s_observed,
        }
    meta = sub.metadata.reset_index(drop=True)
    results["breakdown"] = breakdown(
        mags, got["full"][key], meta, None if only_baseline else got["full"]["sigma"]
    )
    if baseline and not only_baseline:
        results["baseline"]["breakdown"] = breakdown(mags, got["full"]["ml"], meta)
    if not only_baseline and np.isfinite(got["full"]["sigma"]).any():
        results["calibration"] = {
            _window_label(k): calibration(
                mags, got[_window_label(k)]["pred"], got[_window_label(k)]["sigma"]
            )
            for k in ks
        }
    if out_dir is not None:
        results["files"] = _write_outputs(Path(out_dir), results, sub, got, ks, only_baseline)
    return _json_safe(results)


def _units(data_format: dict, meta) -> str:
    """The stored units: the data_format's, else the metadata's ``trace_units`` column."""
    if "unit" in data_format:
        return str(data_format["unit"])
    if "trace_units" in meta and meta["trace_units"].nunique() == 1:
        return str(meta["trace_units"].iloc[0])
    return "unknown"


def _head(split_ds, limit: int):
    """The first ``limit`` traces of a split (the dataset API has no slicing, so wrap it)."""

    class _Head:
        def __init__(self, inner, k: int) -> None:
            self._inner = inner
            self._k = min(int(k), len(inner))
            self.metadata = inner.metadata.iloc[: self._k]
            self.sampling_rate = inner.sampling_rate

        def __len__(self) -> int:
            return self._k

        def get_waveform(self, i: int) -> np.ndarray:
            return self._inner.get_waveform(i)

    return _Head(split_ds, limit)


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _fmt(x, digits: int = 3) -> str:
    return (
        "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"
    )


def markdown_table(results: dict) -> str:
    """The results as a Markdown table: one row per window, model and baseline side by side."""
    base = results.get("baseline", {}).get("metrics") if "baseline" in results else None
    head = "| window | n | MAE | RMSE | R2 | bias |"
    sep = "|---|---|---|---|---|---|"
    if base:
        head += " ML MAE | ML RMSE | ML bias |"
        sep += "---|---|---|"
    lines = [
        f"# {results['model']} on {results['split']} ({results['n_waveforms']} waveforms)",
        "",
        f"Source: {results['source']}. Metrics per waveform; series models aggregated after P.",
        "",
        head,
        sep,
    ]
    for name, m in results["metrics"].items():
        label = "full" if name == "full" else f"{name} after P"
        row = (
            f"| {label} | {m['n']} | {_fmt(m['mae'])} | {_fmt(m['rmse'])} | {_fmt(m['r2'])} "
            f"| {_fmt(m['bias'])} |"
        )
        if base:
            b = base[name]
            row += f" {_fmt(b['mae'])} | {_fmt(b['rmse'])} | {_fmt(b['bias'])} |"
        lines.append(row)
    found = results.get("breakdown") or {}
    regimes = found.get("by_regime")
    if regimes:
        sigma = any(r.get("within_1_sigma") is not None for r in regimes)
        lines += [
            "",
            "Full window by physics regime (`source_regime`):",
            "",
            "| regime | n | bias | MAE |" + (" within 1 sigma |" if sigma else ""),
            "|---|---|---|---|" + ("---|" if sigma else ""),
        ]
        for r in regimes:
            row = f"| {r['regime']} | {r['n']} | {_fmt(r['bias'])} | {_fmt(r['mae'])} |"
            if sigma:
                share = r.get("within_1_sigma")
                row += " - |" if share is None else f" {share:.0%} |"
            lines.append(row)
    kappa = [r for r in found.get("by_kappa_s") or [] if r["n"]]
    if kappa:
        lines += [
            "",
            f"Full window by the synthetic kappa (`{KAPPA_COLUMN}`):",
            "",
            "| kappa (s) | n | bias | MAE |",
            "|---|---|---|---|",
        ]
        for r in kappa:
            lo, hi = r["bin"]
            lines.append(f"| {lo:g}-{hi:g} | {r['n']} | {_fmt(r['bias'])} | {_fmt(r['mae'])} |")
    return "\n".join(lines) + "\n"


def _write_outputs(out: Path, results: dict, sub, got, ks, only_baseline: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    meta = sub.metadata.reset_index(drop=True)
    cols = [
        c
        for c in (
            "source_id",
            "station_code",
            "source_magnitude",
            "path_ep_distance_km",
            "trace_snr_db",
            REGIME_COLUMN,
            KAPPA_COLUMN,
        )
        if c in meta
    ]
    table = meta[cols].copy()
    for k in ks:
        label = _window_label(k)
        if not only_baseline:
            table[f"pred_{label}"] = got[label]["pred"]
            if np.isfinite(got[label]["sigma"]).any():
                table[f"sigma_{label}"] = got[label]["sigma"]
        if "baseline" in results or only_baseline:
            table[f"ml_{label}"] = got[label]["ml"]
    files = {
        "json": out / "results.json",
        "markdown": out / "results.md",
        "predictions": out / "predictions.csv",
        "scatter": out / "scatter.png",
        "mae_vs_time": out / "mae_vs_time.png",
    }
    table.to_csv(files["predictions"], index=False)
    files["markdown"].write_text(markdown_table(results), encoding="utf-8")
    _plot(results, table, files, only_baseline)
    names = {k: str(v) for k, v in files.items()}
    files["json"].write_text(
        json.dumps(_json_safe({**results, "files": names}), indent=2), encoding="utf-8"
    )
    return names


def _plot(results: dict, table, files: dict[str, Path], only_baseline: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true = table["source_magnitude"].to_numpy(dtype=np.float64)
    panels = [] if only_baseline else [(results["model"], table["pred_full"].to_numpy())]
    if "ml_full" in table:
        panels.append(("ML baseline", table["ml_full"].to_numpy()))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), squeeze=False)
    values = np.concatenate([true, *(np.asarray(p, dtype=np.float64) for _, p in panels)])
    finite = values[np.isfinite(values)]
    lo, hi = (finite.min() - 0.3, finite.max() + 0.3) if finite.size else (0.0, 1.0)
    for ax, (name, pred) in zip(axes[0], panels, strict=True):
        ax.scatter(true, pred, s=8, alpha=0.6)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("catalogue magnitude")
        ax.set_ylabel("predicted magnitude (full window)")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(files["scatter"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    ks = results["windows"]["seconds_after_p"]

    def curve(metrics: dict) -> list[float]:
        return [
            np.nan if metrics[f"{k:g}s"]["mae"] is None else metrics[f"{k:g}s"]["mae"] for k in ks
        ]

    label = "ML baseline" if only_baseline else results["model"]
    ax.plot(ks, curve(results["metrics"]), "o-", label=label)
    full = results["metrics"]["full"]["mae"]
    if full is not None:
        ax.axhline(full, color="C0", ls=":", lw=1, label=f"{label}, full window")
    if not only_baseline and "baseline" in results:
        ax.plot(ks, curve(results["baseline"]["metrics"]), "s--", color="C1", label="ML baseline")
        bfull = results["baseline"]["metrics"]["full"]["mae"]
        if bfull is not None:
            ax.axhline(bfull, color="C1", ls=":", lw=1, label="ML baseline, full window")
    ax.set_xlabel("seconds after P (window ends)")
    ax.set_ylabel("MAE per waveform (magnitude units)")
    ax.set_title(f"{results['split']} split, n = {results['n_waveforms']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(files["mae_vs_time"], dpi=110)
    plt.close(fig)
