"""Shaking-map reconstruction accuracy (issue #15 item 4): log10 PGV maps from sparse stations,
the ShakeMap-style baselines against exported field models, on the same held-out maps.

    python -m seismag.benchmarks.shaking_accuracy [--maps 200] [--fractions 1 2 5 10]
        [--regimes train ena high_attenuation] [--model FILE.onnx ...] [--samples S]
        [--steps N] [--train-maps 1000] [--out results.json]

Maps come from :func:`seismag.training.shaking_fields.make_shaking_maps`. The baselines of
:mod:`seismag.benchmarks.shakemap_baseline` are fitted once on ``--train-maps`` maps of the
training regimes with seed ``--train-seed`` (below 1000); each ``--regimes`` group (``train``,
``held-out``, a regime name or a comma-separated list) is scored on ``--maps`` maps with seed
``--seed`` (1000 or more, never trained on), observed at ``--fractions`` percent of the grid
points with seed ``--seed + 1``. Unseen regimes (``ena``, ``high_attenuation``) test the GMM and
the models on physics they were not fitted to.

Per group, fraction and method: RMSE in log10 units pooled over every pixel of every map
(``rmse``), over the unobserved pixels only (``rmse_hidden``), the median of the per-map RMSEs,
and, for methods with a standard deviation, the share of unobserved pixels within 1 and 2 std
(68.3 / 95.4 % if calibrated). Baselines see the catalogue (magnitude, epicentre, depth); models
see the stations, and the catalogue too where their prior is a ground-motion model (``prior =
"shakemap"``). ``oracle`` is a bound, not a method: the conditional mean given the
stations when the event's noise-free median and the exact covariance of its event, site and
within-event terms are known (Gaussian conditioning, so no method beats it on average).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from seismag.benchmarks.field_accuracy import load_model, percent_text, run_model, single_threaded
from seismag.benchmarks.shakemap_baseline import METHODS, ShakeMapModel, fit_shakemap
from seismag.benchmarks.stats import bootstrap_interval
from seismag.models.field_card import grid_coords
from seismag.training.shaking_fields import (
    SHAKING_REGIMES,
    ShakingMaps,
    make_shaking_maps,
    shaking_regime_names,
    station_observations,
)

ORACLE = "oracle"
REFERENCE = "gmm_kriging"
"""The method every other is compared with, map by map: ShakeMap's."""


def oracle(
    maps: ShakingMaps, i: int, coords: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Conditional mean and sd of map ``i`` given its stations, its true median and the exact
    covariance of event term + site field + within-event field."""
    cfg, grid = maps.config, maps.grid
    pts = grid_coords(*grid).astype(np.float64) * maps.extent_km
    sta = np.asarray(coords, np.float64) * maps.extent_km

    def cov(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        h = np.sqrt(np.sum((a[:, None] - b[None]) ** 2, axis=-1))
        return (
            cfg.event_sd**2
            + cfg.site_sd**2 * np.exp(-h / maps.site_length_km[i])
            + cfg.within_sd**2 * np.exp(-3.0 * h / cfg.within_range_km)
        )

    median = maps.median[i].reshape(-1).astype(np.float64)
    idx = np.argmin(np.sum((pts[None] - sta[:, None]) ** 2, axis=-1), axis=1)
    kss = cov(sta, sta)
    kss[np.diag_indices(len(sta))] += 1e-9
    factor = cho_factor(kss, lower=True)
    cross = cov(pts, sta)
    mean = median + cross @ cho_solve(factor, np.asarray(values, np.float64) - median[idx])
    total = cfg.event_sd**2 + cfg.site_sd**2 + cfg.within_sd**2
    var = total - np.sum(cross * cho_solve(factor, cross.T).T, axis=1)
    return (
        mean.reshape(grid).astype(np.float32),
        np.sqrt(np.maximum(var, 0.0)).reshape(grid).astype(np.float32),
    )


def run_method(
    name: str, model: ShakeMapModel, maps: ShakingMaps, coords: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Means (F, H, W), stds or None, and ms per map (each map timed on its own)."""
    means, stds, ms = [], [], []
    fn = model.methods().get(name)
    with single_threaded():
        for i in range(len(maps)):
            t0 = time.perf_counter()
            if name == ORACLE:
                mean, std = oracle(maps, i, coords[i], values[i])
            else:
                mean, std = fn(coords[i], values[i], maps.grid, maps.event(i))
            ms.append((time.perf_counter() - t0) * 1e3)
            means.append(mean)
            stds.append(std)
    return np.stack(means), (None if stds[0] is None else np.stack(stds)), np.asarray(ms)


def score(
    truth: np.ndarray, idx: np.ndarray, mean: np.ndarray, std: np.ndarray | None, ms: np.ndarray
) -> dict[str, float]:
    f = len(truth)
    err = (np.asarray(mean, np.float64) - truth).reshape(f, -1)
    hidden = np.ones(err.shape, bool)
    hidden[np.arange(f)[:, None], idx] = False
    row = {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "rmse_hidden": float(np.sqrt(np.mean(err[hidden] ** 2))),
        "rmse_map_median": float(np.median(np.sqrt(np.mean(err**2, axis=1)))),
        "bias": float(np.mean(err)),
        "ms_per_map": float(np.median(ms)),
    }
    if std is not None:
        sd = np.asarray(std, np.float64).reshape(f, -1)[hidden]
        e = np.abs(err[hidden])
        row |= {
            "within_1sd": float(np.mean(e <= sd)),
            "within_2sd": float(np.mean(e <= 2 * sd)),
            "std_median": float(np.median(sd)),
        }
    return row


def map_mse(truth: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(F,) mean squared error of each map (log10 units squared)."""
    err = np.asarray(mean, np.float64) - truth
    return np.mean(err.reshape(len(truth), -1) ** 2, axis=1)


def paired(truth: np.ndarray, mean: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Map by map against :data:`REFERENCE`'s MSEs: the mean difference of the MSEs (negative:
    better), its bootstrap 95 % interval over maps, and the share of maps where it is better."""
    diff = map_mse(truth, mean) - reference
    return {
        "method": REFERENCE,
        "mse_difference": float(np.mean(diff)),
        "interval": bootstrap_interval(diff),
        "maps_better": float(np.mean(diff < 0)),
    }


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    grid = (args.grid[0], args.grid[1])
    t0 = time.perf_counter()
    train = make_shaking_maps(
        args.train_maps, grid, args.extent_km, seed=args.train_seed, regimes=args.train_regimes
    )
    with single_threaded():
        baseline = fit_shakemap(train)
    fit_s = time.perf_counter() - t0
    print(f"fitted the baselines on {args.train_maps} training maps in {fit_s:.1f} s", flush=True)
    models = [(Path(m).stem, load_model(m, args.threads)) for m in args.model]
    results = []
    for spec in args.regimes:
        maps = make_shaking_maps(
            args.maps, grid, args.extent_km, seed=args.seed, regimes=shaking_regime_names(spec)
        )
        for pct in args.fractions:
            coords, values, idx = station_observations(maps, pct / 100, seed=args.seed + 1)
            k = coords.shape[1]
            reference = None
            for name in args.baselines:
                mean, std, ms = run_method(name, baseline, maps, coords, values)
                kind = "bound" if name == ORACLE else "baseline"
                results.append(
                    _row(spec, pct, k, name, kind, score(maps.log_pgv, idx, mean, std, ms))
                )
                if name == REFERENCE:
                    reference = map_mse(maps.log_pgv, mean)
                elif reference is not None:
                    results[-1]["vs_reference"] = paired(maps.log_pgv, mean, reference)
                _progress(results[-1])
            for name, runtime in models:
                mean, std, ms = run_model(
                    runtime,
                    coords,
                    values,
                    grid,
                    samples=args.samples,
                    steps=args.steps,
                    batch=args.batch,
                    sources=maps.sources() if runtime.card.needs_source else None,
                )
                results.append(
                    _row(spec, pct, k, name, "model", score(maps.log_pgv, idx, mean, std, ms))
                )
                if reference is not None:
                    results[-1]["vs_reference"] = paired(maps.log_pgv, mean, reference)
                _progress(results[-1])
    return {
        "config": {
            "maps": args.maps,
            "regimes": args.regimes,
            "fractions_percent": args.fractions,
            "grid": list(grid),
            "extent_km": args.extent_km,
            "map_seed": args.seed,
            "observation_seed": args.seed + 1,
            "train_maps": args.train_maps,
            "train_seed": args.train_seed,
            "train_regimes": list(args.train_regimes),
            "baselines": args.baselines,
            "models": args.model,
            "samples": args.samples,
            "steps": args.steps,
            "fitted_baseline": baseline.to_dict(),
            "fit_seconds": round(fit_s, 2),
            "units": "log10 PGV, m/s",
            "timing": "baselines: median ms of single-threaded per-map calls; models: batch "
            "time / batch size, median over batches",
            "machine": platform.processor() or platform.machine(),
        },
        "results": results,
    }


def _row(spec: str, pct: float, k: int, method: str, kind: str, row: dict) -> dict[str, Any]:
    head = {"regimes": spec, "fraction_percent": pct, "stations": k, "method": method}
    return head | {"kind": kind} | row


def _progress(r: dict[str, Any]) -> None:
    print(
        f"  {r['regimes']} {r['fraction_percent']:g}% {r['method']}: RMSE {r['rmse']:.3f} "
        f"(hidden {r['rmse_hidden']:.3f}), {r['ms_per_map']:.2f} ms/map",
        flush=True,
    )


def markdown(report: dict[str, Any]) -> str:
    cfg, rows = report["config"], report["results"]
    gmm = cfg["fitted_baseline"]
    out = [
        f"{cfg['maps']} maps per group ({cfg['grid'][0]}x{cfg['grid'][1]}, "
        f"{cfg['extent_km']:g} km), map seed {cfg['map_seed']}, observation seed "
        f"{cfg['observation_seed']}; baselines fitted on {cfg['train_maps']} maps of "
        f"{', '.join(cfg['train_regimes'])} (seed {cfg['train_seed']}): GMM sigma "
        f"{gmm['gmm']['sigma']:.3f}, h {gmm['gmm']['h_km']:g} km, tau {gmm['tau']:.3f}, "
        f"within-event sd {gmm['within']['sd']:.3f} / L {gmm['within']['length_km']:.1f} km / "
        f"nugget {gmm['within']['nugget']:.4f}. RMSE in log10 units. {ORACLE}: the bound "
        "knowing the noise-free median and the exact residual covariance.",
    ]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for spec in cfg["regimes"]:
        grp = [r for r in rows if r["regimes"] == spec]
        fracs = list(dict.fromkeys(r["fraction_percent"] for r in grp))
        pts = {r["fraction_percent"]: r["stations"] for r in grp}
        for key, title in (("rmse", "whole map"), ("rmse_hidden", "unobserved pixels")):
            out += [
                "",
                f"**{spec}**: RMSE ({title}) by station density (stations)",
                "",
                "| method | " + " | ".join(f"{f:g} % ({pts[f]})" for f in fracs) + " |",
                "|---|" + "---:|" * len(fracs),
            ]
            for m in methods:
                by = {r["fraction_percent"]: r for r in grp if r["method"] == m}
                out.append(
                    f"| {m} | "
                    + " | ".join(f"{by[f][key]:.3f}" if f in by else "" for f in fracs)
                    + " |"
                )
        out += [
            "",
            f"**{spec}**: details (1 sd / 2 sd: share of unobserved pixels within 1 and 2 "
            "predicted std, 68.3 / 95.4 % if calibrated)",
            "",
            "| % | method | RMSE | hidden | per-map median | bias | ms/map | 1 sd | 2 sd | "
            "median std |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in grp:
            sd = r.get("std_median")
            out.append(
                f"| {r['fraction_percent']:g} | {r['method']} | {r['rmse']:.3f} | "
                f"{r['rmse_hidden']:.3f} | {r['rmse_map_median']:.3f} | {r['bias']:+.3f} | "
                f"{r['ms_per_map']:.2f} | {percent_text(r.get('within_1sd'))} | "
                f"{percent_text(r.get('within_2sd'))} | {'' if sd is None else f'{sd:.3f}'} |"
            )
        compared = [r for r in grp if "vs_reference" in r]
        if compared:
            out += [
                "",
                f"**{spec}**: map by map against {REFERENCE} (mean difference of the per-map "
                "MSE, log10 units squared x 1000, negative = better; bootstrap 95 % interval "
                "over maps; share of maps better)",
                "",
                "| % | method | MSE difference x 1000 | 95 % interval | maps better |",
                "|---:|---|---:|---|---:|",
            ]
            for r in compared:
                v = r["vs_reference"]
                lo, hi = (1000 * x for x in v["interval"])
                out.append(
                    f"| {r['fraction_percent']:g} | {r['method']} | "
                    f"{1000 * v['mse_difference']:+.2f} | [{lo:+.2f}, {hi:+.2f}] | "
                    f"{percent_text(v['maps_better'])} |"
                )
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--maps", type=int, default=200, help="held-out maps per regime group")
    ap.add_argument(
        "--regimes",
        nargs="+",
        default=["train", "ena", "high_attenuation"],
        help="regime groups: train, held-out, all, a name or comma-separated names",
    )
    ap.add_argument(
        "--fractions", type=float, nargs="+", default=[1, 2, 5, 10], help="station percent"
    )
    choices = [*METHODS, ORACLE]
    ap.add_argument("--baselines", nargs="*", choices=choices, default=choices)
    ap.add_argument("--model", action="append", default=[], metavar="FILE.onnx")
    ap.add_argument("--samples", type=int, help="model samples per map (default: its card)")
    ap.add_argument("--steps", type=int, help="model sampling steps (default: its card)")
    ap.add_argument("--batch", type=int, default=50, help="maps per model call")
    ap.add_argument("--threads", type=int, default=1, help="model intra-op threads")
    ap.add_argument("--grid", type=int, nargs=2, default=[32, 32], metavar=("H", "W"))
    ap.add_argument("--extent-km", type=float, default=200.0, help="side of the mapped region")
    ap.add_argument("--seed", type=int, default=1000, help="map seed (stations: seed + 1)")
    ap.add_argument("--train-maps", type=int, default=1000, help="maps the baselines are fit on")
    ap.add_argument("--train-seed", type=int, default=1)
    ap.add_argument("--train-regimes", default="train", help="regimes the baselines are fit on")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args(argv)
    if args.seed < 1000:
        ap.error("--seed below 1000 may overlap the training seeds")
    if args.train_seed >= 1000:
        ap.error("--train-seed must be below 1000 (evaluation seeds start at 1000)")
    for spec in args.regimes:
        try:
            shaking_regime_names(spec)
        except ValueError as exc:
            ap.error(str(exc))
    args.train_regimes = (
        shaking_regime_names(args.train_regimes) if args.train_regimes else SHAKING_REGIMES
    )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = evaluate(args)
    print(markdown(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
