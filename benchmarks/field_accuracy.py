"""Sparse-field reconstruction accuracy (issue #15): the classic baselines and exported flow
matching models on the same held-out fields and observations.

    python -m seismag.benchmarks.field_accuracy [--fields 200] [--family benchmark]
        [--fractions 1 2 5 10 20] [--baselines mean linear ...] [--model FILE.onnx ...]
        [--samples S] [--steps N] [--steps-sweep 1 2 5 10 20] [--out results.json]

Fields come from :func:`seismag.training.field_data.make_fields` with seed ``--seed`` (default
1000; training uses small integer seeds below 1000, so these fields are never trained on) and are
observed at ``--fractions`` percent of their pixels with seed ``--seed + 1`` (positions differ for
every field). Per family, fraction and method: PSNR (20 log10(1 / RMSE) over the whole field) as
mean, median and standard deviation over the fields, and wall time per field. Baselines are timed
around each field's call, single-threaded (threadpoolctl caps BLAS/OpenMP at one thread), and the
median is reported; models are timed per batch of ``--batch`` fields through
:class:`seismag.serving.executor.field_runtime.FieldRuntime`, the batch time divided by its size
(median over batches). For methods with a predictive standard deviation (``gp`` and the models):
the share of unobserved pixels whose error is within 1 and 2 std (a calibrated Gaussian gives
68.3 % and 95.4 %) and the median std. Each model is also compared with the best baseline
at its fraction (highest mean PSNR there) field by field: the mean PSNR difference with a paired
bootstrap 95 % interval over fields, and the share of fields where the model is better; the
baseline is picked on the same fields, which favours it. ``--steps-sweep`` adds, per model, PSNR
and ms/field against the number of sampling steps at 5 % observed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from seismag.benchmarks.field_baselines import BASELINES
from seismag.benchmarks.stats import bootstrap_interval
from seismag.training.field_data import make_fields, observe, psnr

EVAL_FAMILIES = ("benchmark", "oblique")
SWEEP_FRACTION = 5.0


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """BLAS/OpenMP at one thread where threadpoolctl (a scikit-learn dependency) is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1):
        yield


def run_baseline(
    name: str, coords: np.ndarray, values: np.ndarray, grid: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Means (F, H, W), stds or None, and ms per field (F,), each field timed on its own."""
    fn = BASELINES[name]
    means, stds, ms = [], [], []
    with single_threaded():
        for c, v in zip(coords, values, strict=True):
            t0 = time.perf_counter()
            mean, std = fn(c, v, grid)
            ms.append((time.perf_counter() - t0) * 1e3)
            means.append(mean)
            stds.append(std)
    return np.stack(means), (None if stds[0] is None else np.stack(stds)), np.asarray(ms)


def load_model(path: str, threads: int) -> Any:
    # Lazy: the baselines run without the field runtime (and without ONNX Runtime's session).
    from seismag.serving.executor.field_runtime import FieldRuntime

    return FieldRuntime(path, threads=threads)


def run_model(
    runtime: Any,
    coords: np.ndarray,
    values: np.ndarray,
    grid: tuple[int, int],
    *,
    samples: int | None,
    steps: int | None,
    batch: int,
    sources: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means, stds (F, H, W) in field units and ms per field (one value per batch: its time over
    its size). The shaking-map benchmark runs its models here too (with each map's source
    for a model whose prior needs it)."""
    kw = {"grid": grid, "samples": samples, "steps": steps, "seed": 0}

    def part(i: int, n: int) -> np.ndarray | None:
        return None if sources is None else sources[i : i + n]

    runtime.reconstruct(coords[:1], values[:1], sources=part(0, 1), **kw)  # warm-up
    means, stds, ms = [], [], []
    for i in range(0, len(coords), batch):
        c, v = coords[i : i + batch], values[i : i + batch]
        t0 = time.perf_counter()
        mean, std = runtime.reconstruct(c, v, sources=part(i, batch), **kw)
        ms.append((time.perf_counter() - t0) * 1e3 / len(c))
        means.append(np.asarray(mean, np.float32))
        stds.append(np.asarray(std, np.float32))
    return np.concatenate(means), np.concatenate(stds), np.asarray(ms)


def score(
    fields: np.ndarray,
    idx: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray | None,
    ms: np.ndarray,
) -> dict[str, float]:
    p = psnr(mean, fields)
    row = {
        "psnr_mean": float(np.mean(p)),
        "psnr_median": float(np.median(p)),
        "psnr_std": float(np.std(p)),
        "ms_per_field": float(np.median(ms)),
    }
    if std is not None:
        f = len(fields)
        hidden = np.ones(fields.reshape(f, -1).shape, bool)
        hidden[np.arange(f)[:, None], idx] = False
        err = np.abs(fields - mean).reshape(f, -1)[hidden]
        sd = np.asarray(std, np.float64).reshape(f, -1)[hidden]
        row |= {
            "within_1sd": float(np.mean(err <= sd)),
            "within_2sd": float(np.mean(err <= 2 * sd)),
            "std_median": float(np.median(sd)),
        }
    return row


def against_best(model_psnr: np.ndarray, baseline_psnr: dict[str, np.ndarray]) -> dict[str, Any]:
    """The model's per-field PSNR minus that of the baseline with the highest mean on these
    fields: mean difference (dB), its paired bootstrap 95 % interval, share of fields better."""
    best = max(baseline_psnr, key=lambda n: float(np.mean(baseline_psnr[n])))
    diff = np.asarray(model_psnr, np.float64) - baseline_psnr[best]
    return {
        "baseline": best,
        "mean_difference_db": float(np.mean(diff)),
        "interval_db": bootstrap_interval(diff),
        "fields_better": float(np.mean(diff > 0)),
    }


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    grid = (args.grid[0], args.grid[1])
    models = [(Path(m).stem, load_model(m, args.threads)) for m in args.model]
    results, sweep = [], []
    for family in args.family:
        fields = make_fields(args.fields, family, grid, seed=args.seed)
        for pct in args.fractions:
            coords, values, idx = observe(fields, pct / 100, seed=args.seed + 1)
            k = coords.shape[1]
            baseline_psnr: dict[str, np.ndarray] = {}
            for name in args.baselines:
                mean, std, ms = run_baseline(name, coords, values, grid)
                row = score(fields, idx, mean, std, ms)
                baseline_psnr[name] = psnr(mean, fields)
                results.append(_row(family, pct, k, name, "baseline", row))
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
                )
                row = score(fields, idx, mean, std, ms)
                if baseline_psnr:
                    row["vs_best_baseline"] = against_best(psnr(mean, fields), baseline_psnr)
                results.append(_row(family, pct, k, name, "model", row))
                _progress(results[-1])
        if args.steps_sweep and models:
            coords, values, idx = observe(fields, SWEEP_FRACTION / 100, seed=args.seed + 1)
            for name, runtime in models:
                for steps in args.steps_sweep:
                    mean, std, ms = run_model(
                        runtime,
                        coords,
                        values,
                        grid,
                        samples=args.samples,
                        steps=steps,
                        batch=args.batch,
                    )
                    row = score(fields, idx, mean, std, ms)
                    sweep.append({"family": family, "model": name, "steps": steps} | row)
    return {
        "config": {
            "fields": args.fields,
            "families": args.family,
            "fractions_percent": args.fractions,
            "grid": list(grid),
            "field_seed": args.seed,
            "observation_seed": args.seed + 1,
            "baselines": args.baselines,
            "models": args.model,
            "samples": args.samples,
            "steps": args.steps,
            "batch": args.batch,
            "timing": "baselines: median ms of single-threaded per-field calls; models: batch "
            "time / batch size, median over batches",
            "machine": platform.processor() or platform.machine(),
        },
        "results": results,
        "steps_sweep": sweep,
    }


def _row(family: str, pct: float, k: int, method: str, kind: str, row: dict) -> dict[str, Any]:
    head = {"family": family, "fraction_percent": pct, "points": k, "method": method}
    return head | {"kind": kind} | row


def _progress(r: dict[str, Any]) -> None:
    print(
        f"  {r['family']} {r['fraction_percent']:g}% {r['method']}: "
        f"{r['psnr_mean']:.2f} dB, {r['ms_per_field']:.2f} ms/field",
        flush=True,
    )


def percent_text(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f} %"


def markdown(report: dict[str, Any]) -> str:
    cfg, rows = report["config"], report["results"]
    out = [
        f"{cfg['fields']} fields per family ({cfg['grid'][0]}x{cfg['grid'][1]}), field seed "
        f"{cfg['field_seed']}, observation seed {cfg['observation_seed']}. "
        f"Timing: {cfg['timing']}.",
    ]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for family in cfg["families"]:
        fam = [r for r in rows if r["family"] == family]
        fracs = list(dict.fromkeys(r["fraction_percent"] for r in fam))
        pts = {r["fraction_percent"]: r["points"] for r in fam}
        out += [
            "",
            f"**{family}**: mean PSNR (dB) by observed fraction (points)",
            "",
            "| method | " + " | ".join(f"{f:g} % ({pts[f]})" for f in fracs) + " |",
            "|---|" + "---:|" * len(fracs),
        ]
        for m in methods:
            by = {r["fraction_percent"]: r for r in fam if r["method"] == m}
            out.append(
                f"| {m} | "
                + " | ".join(f"{by[f]['psnr_mean']:.2f}" if f in by else "" for f in fracs)
                + " |"
            )
        out += [
            "",
            f"**{family}**: details (PSNR in dB; 1 sd / 2 sd: share of unobserved pixels within "
            "1 and 2 predicted std, 68.3 / 95.4 % if calibrated)",
            "",
            "| % | method | mean | median | std | ms/field | 1 sd | 2 sd | median std |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in fam:
            sd = r.get("std_median")
            out.append(
                f"| {r['fraction_percent']:g} | {r['method']} | {r['psnr_mean']:.2f} | "
                f"{r['psnr_median']:.2f} | {r['psnr_std']:.2f} | {r['ms_per_field']:.2f} | "
                f"{percent_text(r.get('within_1sd'))} | {percent_text(r.get('within_2sd'))} | "
                f"{'' if sd is None else f'{sd:.2g}'} |"
            )
        paired = [r for r in fam if "vs_best_baseline" in r]
        if paired:
            out += [
                "",
                f"**{family}**: each model against the best baseline at its fraction, field by "
                "field (PSNR difference in dB, paired bootstrap 95 % interval; the baseline is "
                "picked on these fields)",
                "",
                "| % | model | best baseline | mean difference | 95 % interval | fields better |",
                "|---:|---|---|---:|---|---:|",
            ]
            for r in paired:
                v = r["vs_best_baseline"]
                lo, hi = v["interval_db"]
                out.append(
                    f"| {r['fraction_percent']:g} | {r['method']} | {v['baseline']} | "
                    f"{v['mean_difference_db']:+.2f} | [{lo:+.2f}, {hi:+.2f}] | "
                    f"{percent_text(v['fields_better'])} |"
                )
    if report["steps_sweep"]:
        out += [
            "",
            f"PSNR against sampling steps and latency ({SWEEP_FRACTION:g} % observed; ms/field: "
            "batch time / batch size)",
            "",
            "| family | model | steps | mean PSNR | median PSNR | ms/field | 1 sd | 2 sd |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in report["steps_sweep"]:
            out.append(
                f"| {r['family']} | {r['model']} | {r['steps']} | {r['psnr_mean']:.2f} | "
                f"{r['psnr_median']:.2f} | {r['ms_per_field']:.2f} | "
                f"{percent_text(r.get('within_1sd'))} | {percent_text(r.get('within_2sd'))} |"
            )
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fields", type=int, default=200, help="held-out fields per family")
    ap.add_argument("--family", action="append", choices=EVAL_FAMILIES, help="repeatable")
    ap.add_argument(
        "--fractions", type=float, nargs="+", default=[1, 2, 5, 10, 20], help="observed percent"
    )
    ap.add_argument("--baselines", nargs="*", choices=list(BASELINES), default=list(BASELINES))
    ap.add_argument("--model", action="append", default=[], metavar="FILE.onnx")
    ap.add_argument("--samples", type=int, help="model samples per field (default: its card)")
    ap.add_argument("--steps", type=int, help="model sampling steps (default: its card)")
    ap.add_argument(
        "--steps-sweep",
        type=int,
        nargs="+",
        metavar="N",
        help=f"per model: PSNR and ms/field against steps at {SWEEP_FRACTION:g} %% observed",
    )
    ap.add_argument("--batch", type=int, default=50, help="fields per model call")
    ap.add_argument("--threads", type=int, default=1, help="model intra-op threads")
    ap.add_argument("--grid", type=int, nargs=2, default=[32, 32], metavar=("H", "W"))
    ap.add_argument("--seed", type=int, default=1000, help="field seed (observations: seed + 1)")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args(argv)
    args.family = args.family or ["benchmark"]
    if args.seed < 1000:
        ap.error("--seed below 1000 may overlap the training seeds")
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
