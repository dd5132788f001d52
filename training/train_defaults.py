"""The one recorded command that trains, evaluates and ships the default weights of all six models.

    seismag synth --out data/synth4k --events 4000 --seed 0
    python -m seismag.training.train_defaults --data data/synth4k --minutes 9 --threads 2

``--models A B --merge`` retrains only A and B (``--minutes-for A=30`` gives one model its own
budget) and keeps the other rows from ``runs/summary.json``; every row records the command that
produced it, and the doc lists those commands. Text under the doc's "## Reading" heading is
hand-written commentary and is kept across runs.

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
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = ROOT / "models" / "weights"
ABLATION_MODEL = "ViTMag"
DOC = ROOT / "docs" / "evaluation.md"
COMMENTARY = "## Reading"
BASELINE = "ML baseline (Hutton & Boore 1987)"
# The first run, before rows recorded their command.
LEGACY_COMMAND = (
    "python -m seismag.training.train_defaults --data /work/data/synth4k --minutes 10 "
    "--ablation-minutes 8 --threads 2 --eval-limit 1500 --lr 1e-3 --batch-size 64"
)


def _budget(text: str) -> tuple[str, float]:
    name, _, minutes = text.partition("=")
    try:
        return name, float(minutes)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MODEL=MINUTES, got {text!r}") from None


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
    parser.add_argument(
        "--minutes-for",
        type=_budget,
        action="append",
        default=[],
        metavar="MODEL=MIN",
        help="a model's own training budget (repeatable)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the other models' rows from runs/summary.json"
    )
    args = parser.parse_args()
    budgets = dict(args.minutes_for)
    command = "python -m seismag.training.train_defaults " + shlex.join(sys.argv[1:])

    runs = Path(args.runs)
    names = args.models or list(load_cards())
    jobs = [(n, n, None) for n in names]
    if not args.no_ablation:
        jobs.append((f"{ABLATION_MODEL} without amplitude", ABLATION_MODEL, False))
    summary_path = runs / "summary.json"
    summary = json.loads(summary_path.read_text()) if args.merge and summary_path.exists() else {}
    baseline = next((r["baseline"] for r in summary.values() if "baseline" in r), None)
    for label, name, amplitude in jobs:
        out = runs / (name if amplitude is None else f"{name}_no_amplitude")
        t0 = time.perf_counter()
        best = train(
            name,
            args.data,
            out,
            max_minutes=budgets.get(name, args.minutes)
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
            baseline=baseline is None,  # the baseline once, on the same traces
        )
        baseline = baseline or res.get("baseline")
        res.update(minutes=minutes, epochs=epochs, command=command)
        summary[label] = res
        if amplitude is None:
            WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(best, WEIGHTS_DIR / f"{name}.safetensors")
        print(_row(label, res["metrics"], minutes, epochs), flush=True)
        summary_path.write_text(json.dumps(summary, indent=2, default=str))

    _write_docs(summary, runs)
    if "PhaseNetMag" in names:
        _reexport_default()


def _rows(summary: dict, runs: Path) -> list[str]:
    """One row per model in card order, the ablation, then the baseline."""
    rows = []
    for label, res in summary.items():
        minutes, epochs = res.get("minutes"), res.get("epochs")
        if minutes is None:  # written before rows recorded it: rebuild from the run's history
            out = runs / Path(res["source"]).parent.name
            history = json.loads((out / "history.json").read_text())["state"]["history"]
            minutes, epochs = sum(h["seconds"] for h in history) / 60, len(history)
        rows.append(_row(label, res["metrics"], minutes, epochs))
    baseline = next((r["baseline"] for r in summary.values() if "baseline" in r), None)
    if baseline is not None:
        rows.append(_row(BASELINE, baseline["metrics"], None, None))
    return rows


def _write_docs(summary: dict, runs: Path) -> None:
    header = (
        "| model | training | n test waveforms | MAE | RMSE | R2 | MAE 1 s | 2 s | 3 s | 5 s | "
        "10 s | 20 s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    groups: dict[str, list[str]] = {}  # command -> the rows it produced, in order
    for label, res in summary.items():
        groups.setdefault(res.get("command", LEGACY_COMMAND), []).append(label)
    by_command = "\n".join(
        f"    {cmd}\n        # rows: {', '.join(labels)}" for cmd, labels in groups.items()
    )
    old = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    commentary = old[old.index(COMMENTARY) :] if COMMENTARY in old else ""
    first = next(iter(summary.values()))
    n, data = first["metrics"]["full"]["n"], first["data"]
    text = f"""# Evaluation of the shipped default weights

Produced by these commands (machine: {platform.machine()}, {os.cpu_count()} cores, CPU only); each
row names the command that trained and evaluated it:

    seismag synth --out {data} --events 4000 --seed 0
{by_command}

Data: synthetic 3-component 100 Hz velocity seismograms (Boore 2003 stochastic method,
`seismag.training.synthetic`), split by event 70/10/20; the table is on the first {n} traces of
the held-out test events (unseen events). Each model trained within the wall-clock budget its
command gives (`--minutes`, or `--minutes-for MODEL=MIN`) with its card's recipe (optimiser,
schedule, clipping, warm-up), except where a command overrides the learning rate and batch size:
with the seeds' slower settings (lr 1e-4, batch 256) PhaseNetMag reached only a dev MAE of 2.1 in
9 minutes here. The machine is a 2-core one shared with other work; longer training would lower
every number.

Metrics are per waveform (n = number of waveforms, never waveform x time step) against the
catalogue magnitude; a series model's scalar is the mean of its output after the P onset. "MAE k s"
is the MAE when the input is cut k seconds after P, as a live feed would see it. "full": the
window ends 25 s after P (or at the trace end). The ML baseline is a simulated Wood-Anderson
amplitude with Hutton & Boore (1987) and distance from the S-P time, on the same windows.

{header}
{chr(10).join(_rows(summary, runs))}

Per-model JSON, Markdown, predicted-vs-true and error-vs-time plots are written to
`runs/<model>/eval/` by the same command (not committed).

{commentary}"""
    DOC.write_text(text.rstrip() + "\n", encoding="utf-8")


def _reexport_default() -> None:
    from seismag.export.pipeline import export_model

    export_model("PhaseNetMag", ROOT / "serving" / "default_model", parity=True)


if __name__ == "__main__":
    main()
