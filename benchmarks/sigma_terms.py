"""Would a between-regime term calibrate the sigmas on physics the models never saw?

    seismag evaluate MODEL --data TRAIN --split dev --out DEV      (each training dataset)
    seismag evaluate MODEL --data SET --out OUT                    (each evaluation set)
    python -m seismag.benchmarks.sigma_terms --dev DEV1/predictions.csv DEV2/predictions.csv \\
        --test NAME=OUT/predictions.csv ...

The shipped sigma is the head's times one scale fitted on regimes the weights were not last
trained on (:mod:`seismag.training.calibrate`). Ground-motion models split their variability
instead into a within-event and a between-event term added in quadrature (Al Atik et al. 2010,
"The variability of ground-motion prediction models and its components", SRL 81:794). The same
split by physics regime, fitted on the training regimes' dev splits alone:

* ``b_r``: the mean error of regime r; ``tau`` = sqrt(mean of b_r^2), the level a new regime
  brings (its errors share it);
* ``s``: the 68.3rd percentile of ``|error - b_r| / sigma``, the head's scale within a regime;
* ``sigma_total = sqrt((s * sigma)^2 + tau^2)``.

Each evaluation set is then scored: the share of errors within one and two sigmas with the
sigmas the file holds (the shipped calibration) and with ``sigma_total``. A set the fit never saw
tells whether the training regimes' spread of levels predicts an unseen regime's. The inputs are
the ``predictions.csv`` files ``seismag evaluate`` writes (``source_regime`` column on the dev
files: data from ``seismag synth``).
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
from seismag.training.calibrate import fit_factor
from seismag.training.evaluate import REGIME_COLUMN, calibration

MIN_PER_REGIME = 30
"""Fewer dev traces than this in a regime give no usable mean error for it."""


@dataclass(frozen=True)
class Terms:
    """The within-regime scale and the between-regime term fitted on dev."""

    s: float
    tau: float
    regime_bias: dict[str, float]
    n: int

    def sigma(self, sigma: np.ndarray) -> np.ndarray:
        return np.sqrt(np.square(self.s * sigma) + self.tau**2)


def _columns(table: pd.DataFrame, cut: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True magnitudes, predictions and sigmas of one window cut-off."""
    missing = [c for c in (f"pred_{cut}", f"sigma_{cut}") if c not in table]
    if missing:
        raise ValueError(
            f"no column(s) {', '.join(missing)}: a model with a sigma output, evaluated with "
            "this cut-off, writes them"
        )
    return (
        table["source_magnitude"].to_numpy(float),
        table[f"pred_{cut}"].to_numpy(float),
        table[f"sigma_{cut}"].to_numpy(float),
    )


def fit(dev: pd.DataFrame, cut: str = "full") -> Terms:
    if REGIME_COLUMN not in dev:
        raise ValueError(f"the dev predictions have no {REGIME_COLUMN} column")
    true, pred, sigma = _columns(dev, cut)
    err = pred - true
    regime = dev[REGIME_COLUMN].astype(str).to_numpy()
    ok = np.isfinite(err) & np.isfinite(sigma) & (sigma > 0)
    bias: dict[str, float] = {}
    for name in sorted(set(regime[ok])):
        mine = ok & (regime == name)
        if mine.sum() < MIN_PER_REGIME:
            raise ValueError(
                f"regime {name}: {int(mine.sum())} dev traces, {MIN_PER_REGIME} needed"
            )
        bias[name] = float(err[mine].mean())
    if len(bias) < 2:
        raise ValueError("one regime on dev: a between-regime term needs two or more")
    within = err[ok] - np.array([bias[r] for r in regime[ok]])
    s = fit_factor(within, sigma[ok])  # the shipped calibration's rule, within regimes
    tau = float(np.sqrt(np.mean(np.square(list(bias.values())))))
    return Terms(s=s, tau=tau, regime_bias=bias, n=int(ok.sum()))


def run(dev: pd.DataFrame, tests: dict[str, pd.DataFrame], cut: str = "full") -> dict:
    terms = fit(dev, cut)
    scores = []
    for name, table in tests.items():
        true, pred, sigma = _columns(table, cut)
        scores.append(
            {
                "set": name,
                "bias": float(np.nanmean(pred - true)),
                "shipped": calibration(true, pred, sigma),
                "terms": calibration(true, pred, terms.sigma(sigma)),
            }
        )
    return {"cut": cut, "terms": asdict(terms), "scores": scores}


def markdown(results: dict) -> str:
    t = results["terms"]
    biases = ", ".join(f"{k} {v:+.2f}" for k, v in t["regime_bias"].items())
    lines = [
        f"dev ({t['n']} traces): regime biases {biases}; tau {t['tau']:.3f}, s {t['s']:.3f} "
        "(times the sigmas the files hold)",
        "",
        "| set | n | bias | shipped: within 1 / 2 sigma, median | with tau: within 1 / 2 sigma, "
        "median |",
        "|---|---:|---:|---|---|",
    ]
    for s in results["scores"]:
        cells = [
            f"{c['within_1_sigma']:.0%} / {c['within_2_sigma']:.0%}, {c['median_sigma']:.2f}"
            for c in (s["shipped"], s["terms"])
        ]
        lines.append(
            f"| {s['set']} | {s['shipped']['n']} | {s['bias']:+.2f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--dev",
        type=Path,
        nargs="+",
        required=True,
        help="predictions.csv of training dev splits (pooled)",
    )
    ap.add_argument(
        "--test", type=named, action="append", required=True, help="NAME=predictions.csv (repeat)"
    )
    ap.add_argument("--cut", default="full", help="window cut-off column (default %(default)s)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    dev = pd.concat([read(p) for p in args.dev], ignore_index=True)
    tests = {name: read(path) for name, path in args.test}
    try:
        results = run(dev, tests, args.cut)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
