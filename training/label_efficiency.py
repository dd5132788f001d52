"""Label-efficiency study: a magnitude head on a pretrained encoder against the same model from
scratch, with 1 %, 10 % and 100 % of the labels, at equal compute.

    python -m seismag.training.label_efficiency --head BidirAutoregMag \\
        --pretrained runs/pretrain/BidirAutoregEncoder.safetensors \\
        --data /work/data/regimes_train --fractions 0.01 0.1 1 --seeds 0 1 2 --steps 300 \\
        --eval unseen-regimes=/work/data/regimes_heldout:test \\
        --eval stead-109c-nominal=/work/shared/data/stead-109c:test@6.29e8 --out runs/label_eff

Every run (arm x fraction x seed) trains the head's card with ``seismag train``'s loop for the
same number of optimizer steps (``--steps``; the small fractions repeat their traces for many
epochs, 100 % sees part of one), on a seeded subset of that share of the train split's traces,
with the dev split cut to the same share (at least 32, at most ``--dev-limit`` traces) for model
selection: a user with 1 % of the labels has no large labelled dev set either. Arms:
``pretrained`` (encoder from ``--pretrained``, frozen for the first ``--freeze-share`` of the
steps while the head settles, then fine-tuned with it), ``scratch`` (random
initialisation) and, with ``--probe``, ``probe`` (a linear head on the frozen pretrained encoder).
Each run's best weights are scored per waveform on the ``--eval`` sets (full window, MAE and the
scatter left after removing one offset). Results are appended to ``OUT/results.json`` as they
come (a re-run skips finished runs); ``OUT/summary.md`` and ``OUT/label_efficiency.png`` summarise
them: mean and standard deviation over seeds, and the pretrained arm's change against scratch.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

ARMS = ("pretrained", "scratch", "probe")


def _parse_eval(text: str) -> tuple[str, str, str, float | None]:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH[:SPLIT][@SENSITIVITY], got {text!r}")
    sensitivity = None
    if "@" in rest:
        rest, _, value = rest.rpartition("@")
        sensitivity = float(value)
    path, _, split = rest.partition(":")
    return name, path, split or "test", sensitivity


def _split_size(data: Path, split: str) -> int:
    import pandas as pd

    meta = pd.read_csv(data / "metadata.csv", usecols=["split", "trace_p_arrival_sample"])
    return int(((meta["split"] == split) & meta["trace_p_arrival_sample"].notna()).sum())


def run_one(args, arm: str, fraction: float, seed: int, n_train: int, n_dev: int) -> dict:
    from seismag.training.evaluate import evaluate
    from seismag.training.train import train

    out = Path(args.out) / f"{arm}_f{fraction:g}_s{seed}"
    t0 = time.monotonic()
    best = train(
        args.head,
        args.data,
        out,
        epochs=10_000,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        device="cpu",
        seed=seed,
        limit_train=max(round(fraction * n_train), 1),
        limit_dev=min(max(round(fraction * n_dev), 32), args.dev_limit),
        threads=args.threads,
        progress=False,
        init_encoder=args.pretrained if arm in ("pretrained", "probe") else None,
        freeze_encoder_steps=round(args.freeze_share * args.steps),
        linear_probe=arm == "probe",
    )
    train_s = time.monotonic() - t0
    history = json.loads((out / "history.json").read_text())
    row = {
        "arm": arm,
        "fraction": fraction,
        "seed": seed,
        "train_traces": max(round(fraction * n_train), 1),
        "steps": history["state"]["global_step"],
        "epochs": history["state"]["epoch"],
        "train_seconds": round(train_s, 1),
        "best_dev_mae": history["state"]["best_dev_mae"],
        "eval": {},
    }
    for name, path, split, sens in args.eval:
        res = evaluate(
            args.head,
            path,
            best,
            split=split,
            baseline=False,
            limit=args.eval_limit,
            sensitivity=sens,
            seconds_after_p=(),
        )
        m = res["metrics"]["full"]
        scatter = math.sqrt(max(m["mse"] - m["bias"] ** 2, 0.0)) if m["n"] else None
        row["eval"][name] = {"n": m["n"], "mae": m["mae"], "bias": m["bias"], "scatter": scatter}
    return row


def summarise(rows: list[dict], eval_names: list[str]) -> str:
    fractions = sorted({r["fraction"] for r in rows})
    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    lines = []
    for name in eval_names:
        lines += [f"### {name}: full-window MAE (mean +- sd over seeds; n seeds)", ""]
        lines.append("| labels | " + " | ".join(arms) + " | pretrained vs scratch |")
        lines.append("|---|" + "---|" * (len(arms) + 1))
        for f in fractions:
            cells, means = [], {}
            for a in arms:
                v = [r["eval"][name]["mae"] for r in rows if r["arm"] == a and r["fraction"] == f]
                if v:
                    means[a] = float(np.mean(v))
                    cells.append(f"{np.mean(v):.3f} +- {np.std(v):.3f} ({len(v)})")
                else:
                    cells.append("-")
            change = "-"
            if "pretrained" in means and "scratch" in means:
                change = f"{100 * (means['pretrained'] / means['scratch'] - 1):+.0f} %"
            lines.append(f"| {100 * f:g} % | " + " | ".join(cells) + f" | {change} |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], eval_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(eval_names), figsize=(5 * len(eval_names), 4), squeeze=False)
    for ax, name in zip(axes[0], eval_names, strict=True):
        for arm in ARMS:
            fr = sorted({r["fraction"] for r in rows if r["arm"] == arm})
            if not fr:
                continue
            vals = [
                [r["eval"][name]["mae"] for r in rows if r["arm"] == arm and r["fraction"] == f]
                for f in fr
            ]
            ax.errorbar(
                [100 * f for f in fr],
                [np.mean(v) for v in vals],
                yerr=[np.std(v) for v in vals],
                marker="o",
                capsize=3,
                label=arm,
            )
        ax.set_xscale("log")
        ax.set_xlabel("labelled training traces (%)")
        ax.set_ylabel("MAE, full window (magnitude units)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--head", default="BidirAutoregMag", help="a card of models/cards/heads/")
    p.add_argument("--pretrained", required=True, help="`seismag pretrain` weights of its encoder")
    p.add_argument("--data", required=True, help="labelled SeisBench-format dataset")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, help="default: the head card's")
    p.add_argument("--probe", action="store_true", help="also run the linear probe arm")
    p.add_argument(
        "--eval",
        type=_parse_eval,
        action="append",
        required=True,
        metavar="NAME=PATH[:SPLIT][@COUNTS_PER_M/S]",
    )
    p.add_argument("--eval-limit", type=int, default=500, help="traces per evaluation set")
    p.add_argument("--dev-limit", type=int, default=500, help="most dev traces per run")
    p.add_argument(
        "--freeze-share",
        type=float,
        default=0.2,
        help="share of the steps the pretrained encoder stays frozen (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    rows: list[dict] = json.loads(results.read_text()) if results.is_file() else []
    n_train = _split_size(Path(args.data), "train")
    n_dev = _split_size(Path(args.data), "dev")
    arms = ["pretrained", "scratch"] + (["probe"] if args.probe else [])
    for seed in args.seeds:  # seed-major: a cut-short study still covers every fraction
        for fraction in args.fractions:
            for arm in arms:
                done = any(
                    r["arm"] == arm and r["fraction"] == fraction and r["seed"] == seed
                    for r in rows
                )
                if done:
                    continue
                row = run_one(args, arm, fraction, seed, n_train, n_dev)
                rows.append(row)
                results.write_text(json.dumps(rows, indent=1))
                maes = ", ".join(f"{k} {v['mae']:.3f}" for k, v in row["eval"].items())
                print(
                    f"{arm} {100 * fraction:g}% seed {seed}: {maes} ({row['train_seconds']:.0f} s)",
                    flush=True,
                )
    names = [e[0] for e in args.eval]
    (out / "summary.md").write_text(summarise(rows, names))
    plot(rows, names, out / "label_efficiency.png")
    print(summarise(rows, names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
