"""The one recorded command that trains, evaluates and ships the default weights of all six models.

    seismag synth --out data/regimes_train --events 6000 --seed 1 --regimes train --workers 2
    seismag synth --out data/regimes_heldout --events 2500 --seed 2 --regimes held-out --workers 2
    python release/train_defaults.py --data data/regimes_train --minutes 14 --threads 2 \\
        --eval unseen-regimes=data/regimes_heldout --eval stead=PATH/stead-109c:test

A release script, run from a checkout (it writes into the repository, so it is not part of the
installed package); it imports ``seismag`` from the editable install (``pip install -e '.[dev]'``).

For every model: train on ``--data`` within the time budget (the card's recipe), evaluate with the
one evaluator on the held-out test events of ``--data`` (in-distribution) and on every ``--eval``
set (``NAME=PATH[:SPLIT]``, default split ``test``), copy the best weights to ``models/weights/``
(shipped in the package) and write ``docs/evaluation.md``. The classic ML baseline is scored on
the same traces of every set. ``--models A B --merge`` retrains only A and B and keeps the other
rows from ``docs/evaluation.json`` (the figures behind the doc, committed with it so a fresh
checkout can regenerate it); every row records the command that produced it. Text under the
doc's "## Reading" heading is hand-written commentary and is kept across runs. The embedded
serving model is re-exported from the new PhaseNetMag weights. ``--calibrate PATH[:SPLIT]`` (per
model ``--calibrate-for MODEL=PATH[:SPLIT]``) fits each new model's sigma scale there before it
is scored and shipped (``seismag calibrate``); pick data the model was not trained on and no
``--eval`` set holds, or the sigmas ship uncalibrated (scale 1), as the script then says.
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

ROOT = Path(__file__).resolve().parent.parent  # the checkout: release/ sits at its top
SCRIPT = "python release/train_defaults.py"
OLD_SCRIPT = "python -m seismag.training.train_defaults"
WEIGHTS_DIR = ROOT / "models" / "weights"
DOC = ROOT / "docs" / "evaluation.md"
# The doc's figures, committed beside it: regenerating the doc for one model keeps the others'
# rows without the (uncommitted) runs/ folder of whoever measured them.
SUMMARY = ROOT / "docs" / "evaluation.json"
COMMENTARY = "## Reading"
BASELINE = "ML baseline (Hutton & Boore 1987)"
IN_DISTRIBUTION = "in-distribution"
CUTOFFS = (1, 2, 3, 5, 10, 20)


def _budget(text: str) -> tuple[str, float]:
    name, _, minutes = text.partition("=")
    try:
        return name, float(minutes)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MODEL=MINUTES, got {text!r}") from None


def _eval_set(text: str) -> tuple[str, str, str, float | None]:
    """NAME=PATH[:SPLIT][@SENSITIVITY] -> (name, path, split, counts per m/s or None)."""
    name, eq, rest = text.partition("=")
    if not eq or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH[:SPLIT][@SENSITIVITY], got {text!r}")
    sensitivity = None
    if "@" in rest:
        rest, _, value = rest.rpartition("@")
        try:
            sensitivity = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad sensitivity in {text!r}") from None
    path, colon, split = rest.rpartition(":")
    if not colon or split not in ("train", "dev", "test"):
        path, split = rest, "test"
    return name, path, split, sensitivity


def _calibration_set(text: str) -> tuple[str, str]:
    """PATH[:SPLIT] -> (path, split); the split defaults to dev."""
    path, colon, split = text.rpartition(":")
    if not colon or split not in ("train", "dev", "test"):
        return text, "dev"
    return path, split


def _calibration_for(text: str) -> tuple[str, tuple[str, str]]:
    name, eq, rest = text.partition("=")
    if not eq or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected MODEL=PATH[:SPLIT], got {text!r}")
    return name, _calibration_set(rest)


def main() -> None:
    from seismag.models import load_cards
    from seismag.training.evaluate import evaluate
    from seismag.training.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="training dataset (its test split is scored)")
    parser.add_argument("--runs", default=str(ROOT / "runs"))
    parser.add_argument("--minutes", type=float, default=9.0, help="training budget per model")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--eval-limit", type=int, default=1500, help="traces scored per set")
    parser.add_argument("--lr", type=float, help="override every card's learning rate")
    parser.add_argument("--batch-size", type=int, help="override every card's batch size")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument(
        "--eval",
        type=_eval_set,
        action="append",
        default=[],
        metavar="NAME=PATH[:SPLIT]",
        help="another evaluation set (repeatable), e.g. unseen regimes or real recordings",
    )
    parser.add_argument(
        "--minutes-for",
        type=_budget,
        action="append",
        default=[],
        metavar="MODEL=MIN",
        help="a model's own training budget (repeatable)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the other models' rows from docs/evaluation.json"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue each model's run from runs/MODEL/checkpoint for the budget given "
        "(minutes and epochs add up in the doc; implies --merge)",
    )
    parser.add_argument(
        "--from-runs",
        metavar="DIR",
        help="no training here: take DIR/MODEL/MODEL.safetensors and history.json, trained "
        "elsewhere (e.g. release/train_parallel.sh on a GPU machine), then evaluate and ship "
        "them as if trained by this script (implies --merge)",
    )
    parser.add_argument(
        "--trained-by",
        default="bash release/train_parallel.sh",
        help="with --from-runs: the command that trained them, recorded in the doc",
    )
    parser.add_argument(
        "--calibrate",
        type=_calibration_set,
        metavar="PATH[:SPLIT]",
        help="fit each trained model's sigma scale on this set (default split dev; seismag "
        "calibrate) before it is scored and shipped; without it the sigmas ship uncalibrated",
    )
    parser.add_argument(
        "--calibrate-for",
        type=_calibration_for,
        action="append",
        default=[],
        metavar="MODEL=PATH[:SPLIT]",
        help="a model's own calibration set (repeatable), e.g. regimes it was not trained on",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="no training: score the shipped weights on the --eval sets, merged into "
        "docs/evaluation.json",
    )
    args = parser.parse_args()
    budgets = dict(args.minutes_for)
    command = f"{SCRIPT} {shlex.join(sys.argv[1:])}"
    sets = [(IN_DISTRIBUTION, args.data, "test", None), *args.eval]

    runs = Path(args.runs)
    names = args.models or list(load_cards())
    keep = args.merge or args.evaluate_only or args.resume or bool(args.from_runs)
    summary = json.loads(SUMMARY.read_text()) if keep and SUMMARY.exists() else {}
    if args.evaluate_only:
        missing = [n for n in names if n not in summary]
        if missing:
            parser.error(
                f"--evaluate-only: no row for {', '.join(missing)} in {SUMMARY}; "
                "train or --from-runs them first"
            )
        for name in names:
            row = summary[name]
            for set_name, path, split, sensitivity in args.eval:
                row["evals"][set_name] = evaluate(
                    name,
                    path,
                    WEIGHTS_DIR / f"{name}.safetensors",
                    split=split,
                    out_dir=runs / name / f"eval_{set_name}",
                    limit=args.eval_limit,
                    sensitivity=sensitivity,
                )
                row["sets"][set_name] = {"path": path, "split": split, "sensitivity": sensitivity}
            row.setdefault("evaluated_by", []).append(command)
            _record_synth(row)
            SUMMARY.write_text(json.dumps(summary, indent=2, default=str))
        _write_docs(summary)
        return
    for name in names:
        out = runs / name
        if args.from_runs:
            best, minutes = _take_run(Path(args.from_runs) / name, out, name)
            command = f"{args.trained_by}; then {SCRIPT} {shlex.join(sys.argv[1:])}"
        else:
            t0 = time.perf_counter()
            best = train(
                name,
                args.data,
                out,
                max_minutes=budgets.get(name, args.minutes),
                threads=args.threads,
                lr=args.lr,
                batch_size=args.batch_size,
                progress=False,
                resume=args.resume,
            )
            minutes = (time.perf_counter() - t0) / 60
        calibration_set = dict(args.calibrate_for).get(name, args.calibrate)
        if calibration_set is None:
            print(f"{name}: no --calibrate set; its sigma ships with scale 1 (uncalibrated)")
        else:
            best = _calibrate(name, best, calibration_set, out, args.eval_limit)
        before = summary.get(name, {}) if args.resume else {}
        minutes += before.get("minutes", 0.0)
        history = json.loads((out / "history.json").read_text())
        evals = {}
        for set_name, path, split, sensitivity in sets:
            evals[set_name] = evaluate(
                name,
                path,
                best,
                split=split,
                out_dir=out / f"eval_{set_name}",
                limit=args.eval_limit,
                sensitivity=sensitivity,
            )
            print(f"{name} on {set_name}: MAE {evals[set_name]['metrics']['full']['mae']:.3f}")
        summary[name] = {
            "minutes": minutes,
            "epochs": len(history["state"]["history"]),
            "command": before.get("command", command),
            "resumed_by": [*before.get("resumed_by", []), *([command] if args.resume else [])],
            "data": args.data,
            "sets": {n: {"path": p, "split": s, "sensitivity": c} for n, p, s, c in sets},
            "evals": evals,
        }
        _record_synth(summary[name], before.get("synth"))
        WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, WEIGHTS_DIR / f"{name}.safetensors")
        SUMMARY.parent.mkdir(parents=True, exist_ok=True)
        SUMMARY.write_text(json.dumps(summary, indent=2, default=str))

    _write_docs(summary)
    if "PhaseNetMag" in names:
        _reexport_default()


def _calibrate(name: str, best: Path, calibration_set: tuple[str, str], out: Path, limit: int):
    """The calibrated copy of ``best`` (seismag calibrate on the given set), in ``out``."""
    from seismag.training.calibrate import calibrate

    path, split = calibration_set
    target = out / f"{name}.calibrated.safetensors"
    c = calibrate(name, best, path, target, split=split, limit=limit)
    print(
        f"{name}: sigma scale {c.scale:.3f} on {path} ({split}): within one sigma "
        f"{c.within_1_sigma_before:.0%} -> 68 %"
    )
    return target


def _sigma_scale_note(name: str) -> str:
    """The shipped weights' sigma scale and the set it was fitted on (their metadata)."""
    from safetensors import safe_open

    from seismag.training.calibrate import METADATA_KEY

    path = WEIGHTS_DIR / f"{name}.safetensors"
    if not path.is_file():
        return "-"
    with safe_open(str(path), framework="np") as f:
        record = (f.metadata() or {}).get(METADATA_KEY)
    if record is None:
        return "1 (not calibrated)"
    c = json.loads(record)
    return f"{c['scale']:.3f} ({c['data']}, {c['split']}, {c['n']} traces)"


def _take_run(src: Path, out: Path, name: str) -> tuple[Path, float]:
    """Copy a run trained elsewhere into ``out``; its minutes are the sum of its epochs' times."""
    weights, history = src / f"{name}.safetensors", src / "history.json"
    for f in (weights, history):
        if not f.exists():
            raise SystemExit(f"--from-runs: {f} not found")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, out / weights.name)
    shutil.copyfile(history, out / history.name)
    epochs = json.loads(history.read_text())["state"]["history"]
    return out / weights.name, sum(e["seconds"] for e in epochs) / 60


# --- the doc ----------------------------------------------------------------------------------
def _f(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _set_names(summary: dict) -> list[str]:
    names: list[str] = []
    for row in summary.values():
        names += [n for n in row["evals"] if n not in names]
    return names


def _baseline(summary: dict, set_name: str) -> dict | None:
    for row in summary.values():
        res = row["evals"].get(set_name)
        if res and "baseline" in res:
            return {
                "metrics": res["baseline"]["metrics"],
                "breakdown": res["baseline"]["breakdown"],
            }
    return None


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _entries(summary: dict, set_name: str):
    """(label, metrics, breakdown, calibration) of each model on a set, then the baseline."""
    for name, row in summary.items():
        res = row["evals"].get(set_name)
        if res:
            yield name, res["metrics"], res["breakdown"], res.get("calibration")
    base = _baseline(summary, set_name)
    if base:
        yield BASELINE, base["metrics"], base["breakdown"], None


def _overview(summary: dict) -> str:
    sets = _set_names(summary)
    head = ["model", "training", *[f"{s} MAE" for s in sets], *[f"{s} slope" for s in sets]]
    rows = []
    for label, row in [*summary.items(), (BASELINE, None)]:
        cells = [label, "-" if row is None else f"{row['minutes']:.1f} min, {row['epochs']} ep"]
        for s in sets:
            m = (
                row["evals"].get(s, {}).get("metrics")
                if row
                else (_baseline(summary, s) or {}).get("metrics")
            )
            cells.append(_f(m["full"]["mae"], 3) if m else "-")
        for s in sets:
            b = (
                row["evals"].get(s, {}).get("breakdown")
                if row
                else (_baseline(summary, s) or {}).get("breakdown")
            )
            cells.append(_f(b["slope_m2_6"]) if b else "-")
        rows.append(cells)
    return _table(head, rows)


def _cutoffs(summary: dict, set_name: str) -> str:
    head = ["model", "n", "MAE full", "bias full", *[f"{k} s" for k in CUTOFFS]]
    rows = []
    for label, m, _, _ in _entries(summary, set_name):
        rows.append(
            [label, str(m["full"]["n"]), _f(m["full"]["mae"], 3), _f(m["full"]["bias"])]
            + [_f(m.get(f"{k}s", {}).get("mae")) for k in CUTOFFS]
        )
    return _table(head, rows)


def _bins(summary: dict, set_name: str, key: str, unit: str) -> str:
    entries = list(_entries(summary, set_name))
    if not entries or key not in entries[0][2]:
        return ""
    edges = [b["bin"] for b in entries[0][2][key]]
    head = ["model"] + [
        f"{lo:g}-{hi:g}{unit} (n={b['n']})"
        for (lo, hi), b in zip(edges, entries[0][2][key], strict=True)
    ]
    rows = [[label] + [_f(b["bias"]) for b in bd[key]] for label, _, bd, _ in entries]
    return _table(head, rows)


def _regimes(summary: dict, set_name: str) -> str:
    """Bias / MAE (within one sigma) per physics regime, for a set that mixes regimes."""
    entries = list(_entries(summary, set_name))
    if not entries or "by_regime" not in entries[0][2]:
        return ""
    names = [r["regime"] for r in entries[0][2]["by_regime"]]
    head = ["model"] + [f"{r['regime']} (n={r['n']})" for r in entries[0][2]["by_regime"]]
    rows = []
    for label, _, bd, _ in entries:
        got = {r["regime"]: r for r in bd.get("by_regime", [])}
        cells = [label]
        for name in names:
            r = got.get(name)
            if r is None:
                cells.append("-")
                continue
            cell = f"{_f(r['bias'])} / {_f(r['mae'], 3)}"
            if r.get("within_1_sigma") is not None:
                cell += f" ({r['within_1_sigma']:.0%})"
            cells.append(cell)
        rows.append(cells)
    return _table(head, rows)


def _calibration(summary: dict) -> str:
    sets = _set_names(summary)
    head = ["model", "sigma scale (fitted on)"]
    head += [f"{s}: within 1 / 2 sigma, median sigma" for s in sets]
    rows = []
    for name, row in summary.items():
        cells = [name, _sigma_scale_note(name)]
        for s in sets:
            c = (row["evals"].get(s, {}).get("calibration") or {}).get("full")
            cells.append(
                "-"
                if not c or c["n"] == 0
                else f"{c['within_1_sigma']:.0%} / {c['within_2_sigma']:.0%}, "
                f"{c['median_sigma']:.2f}"
            )
        rows.append(cells)
    return _table(head, rows)


def _offsets(summary: dict, set_name: str) -> str:
    head = [
        "model",
        "n",
        "offset",
        "scatter after offset (std)",
        "MAE after offset",
        "slope (all M)",
    ]
    rows = [
        [label, str(m["full"]["n"]), _f(bd["offset"]), _f(bd["scatter_after_offset"]),
         _f(bd["mae_after_offset"]), _f(bd["slope_all"])]
        for label, m, bd, _ in _entries(summary, set_name)
    ]  # fmt: skip
    return _table(head, rows)


def synth_command(path: str) -> str | None:
    """The command that made a synthetic dataset (`seismag synth`, or the one the generator
    recorded), from its stored provenance."""
    import h5py

    try:
        with h5py.File(Path(path) / "waveforms.hdf5", "r") as f:
            if "provenance" not in f:
                return None
            prov = dict(f["provenance"].attrs)
    except OSError:
        return None
    if prov.get("command"):  # a generator that records its own command (crosscheck_data)
        return str(prov["command"])
    cmd = f"seismag synth --out {path} --events {int(prov['n_events'])} --seed {int(prov['seed'])}"
    regimes = prov.get("regimes", "()")
    if regimes != "()":
        import ast

        cmd += " --regimes " + ",".join(ast.literal_eval(regimes))
    return cmd


def _data_paths(row: dict) -> list[str]:
    return list(dict.fromkeys([row["data"], *(v["path"] for v in row.get("sets", {}).values())]))


def _record_synth(row: dict, before: dict | None = None) -> None:
    """Keep in the row the `seismag synth` command of each synthetic dataset it names, read
    from the data while it is here, so the doc can be regenerated where the data is not."""
    live = {p: c for p in _data_paths(row) if (c := synth_command(p))}
    row["synth"] = {**(before or {}), **row.get("synth", {}), **live}


def _write_docs(summary: dict) -> None:
    old = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    commentary = old[old.index(COMMENTARY) :] if COMMENTARY in old else ""
    commands = list(
        dict.fromkeys(
            # Runs recorded before this script left the package name its old module path.
            c.replace(OLD_SCRIPT, SCRIPT)
            for key in ("command", "resumed_by", "evaluated_by")  # training first, then scoring
            for row in summary.values()
            for c in ([row[key]] if key == "command" else row.get(key, []))
        )
    )
    sets = _set_names(summary)
    first = next(iter(summary.values()))
    recorded = {p: c for row in summary.values() for p, c in row.get("synth", {}).items()}
    synth = [c for p in _data_paths(first) if (c := synth_command(p) or recorded.get(p))]
    where = "\n".join(
        f"- **{s}**: `{first['sets'][s]['path']}`, split `{first['sets'][s]['split']}`"
        + (
            f", divided by {first['sets'][s]['sensitivity']:g} counts per m/s"
            if first["sets"][s].get("sensitivity")
            else ""
        )
        for s in sets
        if s in first.get("sets", {})
    )
    sections = []
    for s in sets:
        sections.append(f"### {s}: MAE against seconds after P\n\n{_cutoffs(summary, s)}")
        dist = _bins(summary, s, "by_distance_km", " km")
        if dist:
            sections.append(f"### {s}: bias (predicted - true) by epicentral distance\n\n{dist}")
        sections.append(
            f"### {s}: bias by true magnitude\n\n{_bins(summary, s, 'by_magnitude', '')}"
        )
        regimes = _regimes(summary, s)
        if regimes:
            sections.append(
                f"### {s}: by physics regime: bias / MAE (within one sigma)\n\n{regimes}"
            )
        sections.append(
            f"### {s}: one station offset removed (what uncalibrated counts can measure)\n\n"
            f"{_offsets(summary, s)}"
        )
    text = f"""# Evaluation of the shipped default weights

Produced by these commands (evaluation and CPU training: {platform.machine()}, \
{os.cpu_count()} cores; a run trained elsewhere names its machine in its command):

{chr(10).join("    " + c for c in [*synth, *commands])}

Evaluation sets (per waveform, at most the first 1500 traces of the split):
{where}

Metrics are per waveform against the catalogue magnitude; a series model's scalar is the mean of
its output after the P onset (the catalogue P pick). "k s" is the MAE when the input is cut k
seconds after P, as a live feed sees it; "full": the window ends 25 s after P or at the trace end.
The ML baseline is a simulated Wood-Anderson amplitude with Hutton & Boore (1987) and distance
from the S-P time, on the same windows. Slopes are least-squares fits of predicted on true
magnitude over M 2-6 (over all magnitudes in the offset tables).

## Overview: full-window MAE and slope on every set

{_overview(summary)}

## Calibration of the predicted standard deviation (full window)

Share of errors within one and two predicted sigmas (68 % and 95 % when calibrated), with the
shipped weights' sigma scale (`seismag calibrate`) and the set it was fitted on.

{_calibration(summary)}

## Per set

{chr(10).join(s + chr(10) for s in sections)}
Per-model JSON, Markdown, predicted-vs-true and error-vs-time plots are written to
`runs/<model>/eval_<set>/` by the same command (not committed).

{commentary}"""
    DOC.write_text(text.rstrip() + "\n", encoding="utf-8")


def _reexport_default() -> None:
    from seismag.export.pipeline import export_model

    export_model("PhaseNetMag", ROOT / "serving" / "default_model", parity=True)


if __name__ == "__main__":
    main()
