"""The one recorded command that trains, evaluates and ships the default weights of all six models.

    seismag synth --out data/synth4k --events 4000 --seed 0
    python -m seismag.training.train_defaults --data data/synth4k --minutes 9 --threads 2

For every model: train within the time budget (the card's recipe), evaluate on the held-out test
events with the one evaluator, copy the best weights to ``models/weights/`` (shipped in the
package) and write ``docs/evaluation.md``. Also the classic ML baseline on the same traces and one
ablation: ViTMag trained without the amplitude input. The embedded serving model is re-exported
from the new PhaseNetMag weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = ROOT / "models" / "weights"
ABLATION_MODEL = "ViTMag"


def _row(name: str, metrics: dict, minutes: float | None, epochs: int | None) -> str:
    full = metrics["full"]
    early = [metrics.get(f"{k}s", {}).get("mae") for k in (1, 2, 3, 5, 10, 20)]
    early_txt = " | ".join("-" if v is None else f"{v:.2f}" for v in early)
    trained = "-" if minutes is None else f"{minutes:.1f} min, {epochs} ep"
    return (
        f"| {name} | {trained} | {full['n']} | {full['mae']:.3f} | {full['rmse']:.3f} | "
        f"{full['r2']:.3f} | {early_txt} |"
    )


def main() -> None:
    from seismag.models import load_cards
    from seismag.training.evaluate import evaluate
    from seismag.training.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--runs", default=str(ROOT / "runs"))
    parser.add_argument("--minutes", type=float, default=9.0, help="training budget per model")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--eval-limit", type=int, default=1500, help="test traces evaluated")
    parser.add_argument("--lr", type=float, help="override every card's learning rate")
    parser.add_argument("--batch-size", type=int, help="override every card's batch size")
    parser.add_argument("--ablation-minutes", type=float, help="budget of the ablation run")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--no-ablation", action="store_true")
    args = parser.parse_args()

    runs = Path(args.runs)
    names = args.models or list(load_cards())
    jobs = [(n, n, None) for n in names]
    if not args.no_ablation:
        jobs.append((f"{ABLATION_MODEL} without amplitude", ABLATION_MODEL, False))
    rows, summary = [], {}
    for label, name, amplitude in jobs:
        out = runs / (name if amplitude is None else f"{name}_no_amplitude")
        t0 = time.perf_counter()
        best = train(
            name,
            args.data,
            out,
            max_minutes=args.minutes
            if amplitude is None
            else args.ablation_minutes or args.minutes,
            threads=args.threads,
            lr=args.lr,
            batch_size=args.batch_size,
            progress=False,
            card_overrides=None if amplitude is None else {"use_amplitude": amplitude},
        )
        minutes = (time.perf_counter() - t0) / 60
        history = json.loads((out / "history.json").read_text())
        epochs = len(history["state"]["history"])
        res = evaluate(
            name,
            args.data,
            best,
            out_dir=out / "eval",
            limit=args.eval_limit,
            baseline=not summary,  # the baseline once, on the same traces
        )
        summary[label] = res
        rows.append(_row(label, res["metrics"], minutes, epochs))
        if amplitude is None:
            WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(best, WEIGHTS_DIR / f"{name}.safetensors")
        print(rows[-1], flush=True)

    first = summary[next(iter(summary))]
    if "baseline" in first:
        rows.append(
            _row("ML baseline (Hutton & Boore 1987)", first["baseline"]["metrics"], None, None)
        )
    (runs / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _write_docs(rows, args)
    _reexport_default()


def _write_docs(rows: list[str], args: argparse.Namespace) -> None:
    header = (
        "| model | training | n test waveforms | MAE | RMSE | R2 | MAE 1 s | 2 s | 3 s | 5 s | "
        "10 s | 20 s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    overrides = "".join(
        f" --{flag} {value:g}"
        for flag, value in (
            ("lr", args.lr),
            ("batch-size", args.batch_size),
            ("ablation-minutes", args.ablation_minutes),
        )
        if value is not None
    )
    recipe_note = (
        " but the learning rate and batch size given above: with the seeds' slower settings"
        " (lr 1e-4, batch 256) PhaseNetMag reached only a dev MAE of 2.1 in 9 minutes here"
        if args.lr or args.batch_size
        else ""
    )
    text = f"""# Evaluation of the shipped default weights

Produced by one command (machine: {platform.machine()}, {os.cpu_count()} cores, CPU only):

    seismag synth --out data/synth4k --events 4000 --seed 0
    python -m seismag.training.train_defaults --data {args.data} --minutes {args.minutes:g} \\
        --threads {args.threads} --eval-limit {args.eval_limit}{overrides}

Data: synthetic 3-component 100 Hz velocity seismograms (Boore 2003 stochastic method,
`seismag.training.synthetic`), split by event 70/10/20; the table is on the first
{args.eval_limit} traces of the held-out test events (unseen events). Each model trained for at
most {args.minutes:g} minutes of wall clock with its card's recipe (optimiser, schedule,
clipping, warm-up){recipe_note}, on a 2-core machine shared with other work; longer training
would lower every number.

Metrics are per waveform (n = number of waveforms, never waveform x time step) against the
catalogue magnitude; a series model's scalar is the mean of its output after the P onset. "MAE k s"
is the MAE when the input is cut k seconds after P, as a live feed would see it. "full": the
window ends 25 s after P (or at the trace end). The ML baseline is a simulated Wood-Anderson
amplitude with Hutton & Boore (1987) and distance from the S-P time, on the same windows.

{header}
{chr(10).join(rows)}

Per-model JSON, Markdown, predicted-vs-true and error-vs-time plots are written to
`runs/<model>/eval/` by the same command (not committed).
"""
    (ROOT / "docs" / "evaluation.md").write_text(text, encoding="utf-8")


def _reexport_default() -> None:
    from seismag.export.pipeline import export_model

    export_model("PhaseNetMag", ROOT / "serving" / "default_model", parity=True)


if __name__ == "__main__":
    main()
