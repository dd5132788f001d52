"""Does the classic local magnitude help a model? Fit the two ways of using it, score them.

    seismag evaluate MODEL --data TRAIN --split dev --out DEV --weights W
    seismag evaluate MODEL --data SET --out OUT --weights W          (each evaluation set)
    python -m seismag.benchmarks.ml_stacking --dev DEV/predictions.csv \
        --test NAME=OUT/predictions.csv ...

ML (:mod:`seismag.training.baseline`) is a physics-based quantity a model may take as an input or
as a baseline to correct. Both uses are fitted here on what a trained model would learn them
from, the training regimes' dev split, per window cut-off, on top of the model's own output:

* ``linear``: ``M = a * model + b * ML + c`` by least squares (ML as one more input, linearly);
* ``inverse variance``: the model and ML after its dev offset, weighted by the model's sigma and
  ML's dev scatter (ML as a baseline that the model corrects by how sure it is).

Then every evaluation set is scored with the fitted constants. A use of ML worth building into
the models would lower the error on the sets the fit never saw (unseen regimes, the independent
generator, real records), not only on the training physics. The inputs are the per-trace
``predictions.csv`` files `seismag evaluate` writes (``pred_*``, ``sigma_*``, ``ml_*`` columns).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from seismag.benchmarks.predictions_csv import named, read

DEFAULT_CUTS = ("full", "1s", "3s", "10s")


@dataclass(frozen=True)
class Stack:
    """The constants fitted on dev for one window cut-off."""

    cut: str
    a: float
    b: float
    c: float
    ml_offset: float
    ml_scatter: float

    def linear(self, pred: np.ndarray, ml: np.ndarray) -> np.ndarray:
        return self.a * pred + self.b * ml + self.c

    def inverse_variance(self, pred: np.ndarray, sigma: np.ndarray, ml: np.ndarray) -> np.ndarray:
        """A trace without a finite sigma (a model without the output) keeps the model's value."""
        var = np.square(sigma)
        w_ml = np.where(np.isfinite(var) & (var > 0), var / (var + self.ml_scatter**2), 0.0)
        return (1.0 - w_ml) * pred + w_ml * (ml - self.ml_offset)


def _columns(table: pd.DataFrame, cut: str) -> tuple[np.ndarray, ...]:
    missing = [f"{k}_{cut}" for k in ("pred", "sigma", "ml") if f"{k}_{cut}" not in table]
    if missing:
        raise ValueError(
            f"no column(s) {', '.join(missing)}: run `seismag evaluate` with this cut-off"
        )
    return (
        table["source_magnitude"].to_numpy(float),
        table[f"pred_{cut}"].to_numpy(float),
        table[f"sigma_{cut}"].to_numpy(float),
        table[f"ml_{cut}"].to_numpy(float),
    )


def fit(dev: pd.DataFrame, cut: str) -> Stack:
    """Least-squares blend and ML's offset and scatter on the traces where ML exists."""
    y, pred, _, ml = _columns(dev, cut)
    ok = np.isfinite(ml) & np.isfinite(pred)
    if ok.sum() < 10:
        raise ValueError(f"{cut}: fewer than 10 dev traces with both a prediction and ML")
    design = np.c_[pred[ok], ml[ok], np.ones(ok.sum())]
    (a, b, c), *_ = np.linalg.lstsq(design, y[ok], rcond=None)
    residual = ml[ok] - y[ok]
    return Stack(
        cut, float(a), float(b), float(c), float(np.median(residual)), float(np.std(residual))
    )


def score(stack: Stack, table: pd.DataFrame) -> dict[str, float]:
    """MAE and mean error of the model, ML and both blends (no ML: the model's value)."""
    y, pred, sigma, ml = _columns(table, stack.cut)
    has_ml = np.isfinite(ml)
    ml_or_pred = np.where(has_ml, ml, pred)
    candidates = {
        "model": pred,
        "ML": ml,
        "linear": np.where(has_ml, stack.linear(pred, ml_or_pred), pred),
        "inverse variance": np.where(has_ml, stack.inverse_variance(pred, sigma, ml_or_pred), pred),
    }
    out: dict[str, float] = {"n": len(y)}
    for name, value in candidates.items():
        err = value - y
        out[f"{name} MAE"] = float(np.nanmean(np.abs(err)))
        out[f"{name} bias"] = float(np.nanmean(err))
    return out


def run(dev: pd.DataFrame, tests: dict[str, pd.DataFrame], cuts=DEFAULT_CUTS) -> dict:
    results = {"fits": [], "scores": []}
    for cut in cuts:
        stack = fit(dev, cut)
        results["fits"].append(asdict(stack))
        for name, table in tests.items():
            results["scores"].append({"cut": cut, "set": name, **score(stack, table)})
    return results


def markdown(results: dict) -> str:
    lines = [
        "| cut-off | a (model) | b (ML) | c | ML offset on dev | ML scatter on dev |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for f in results["fits"]:
        lines.append(
            f"| {f['cut']} | {f['a']:.3f} | {f['b']:.3f} | {f['c']:+.3f} | {f['ml_offset']:+.2f} "
            f"| {f['ml_scatter']:.2f} |"
        )
    lines += [
        "",
        "| cut-off | set | n | model MAE (bias) | ML | linear | inverse variance |",
        "|---|---|---:|---|---|---|---|",
    ]
    for s in results["scores"]:
        cells = [
            f"{s[f'{k} MAE']:.3f} ({s[f'{k} bias']:+.2f})"
            for k in ("model", "ML", "linear", "inverse variance")
        ]
        lines.append(f"| {s['cut']} | {s['set']} | {s['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--dev", type=Path, required=True, help="predictions.csv of the training dev split"
    )
    ap.add_argument(
        "--test", type=named, action="append", required=True, help="NAME=predictions.csv (repeat)"
    )
    ap.add_argument(
        "--cuts",
        nargs="+",
        default=list(DEFAULT_CUTS),
        help="window cut-offs (default %(default)s)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    tests = {name: read(path) for name, path in args.test}
    try:
        results = run(read(args.dev), tests, args.cuts)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, allow_nan=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
