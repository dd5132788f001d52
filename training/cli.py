"""``seismag train``, ``evaluate``, ``calibrate`` and ``synth``: the training-side subcommands.

Kept out of the top-level ``cli.py`` so that module stays torch-free; ``cli.py`` calls
:func:`add_training_commands` on its subparsers. Each handler turns the expected failures
(missing data, unknown model, weights of another model) into one ``seismag: error:`` line and a
non-zero exit; heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILED = 1


def _error(message: str, code: int = EXIT_USAGE) -> int:
    print(f"seismag: error: {message}", file=sys.stderr)
    return code


def _known_model(name: str, *, allow_baseline: bool = False) -> str | None:
    """An error message for an unknown model name, or None."""
    from seismag.models.card import load_cards, load_head_cards

    names = [*load_cards(), *load_head_cards()]
    if name in names or (allow_baseline and name == "baseline"):
        return None
    extra = ", baseline" if allow_baseline else ""
    return f"unknown model {name!r}; known models: {', '.join(names)}{extra}"


def _bad_sensitivity(value: float | None) -> str | None:
    """An error message for a --sensitivity that is not a positive finite number, or None."""
    if value is None or (value > 0 and math.isfinite(value)):
        return None
    return f"--sensitivity must be a positive number of counts per m/s, got {value}"


def _sensitivity_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sensitivity",
        type=float,
        help="counts per m/s: divide every trace by it (recordings stored in counts)",
    )


def _cmd_train(args: argparse.Namespace) -> int:
    if (msg := _known_model(args.model)) is not None:
        return _error(msg)
    if not Path(args.data).is_dir():
        return _error(f"data directory not found: {args.data}")
    try:
        from seismag.training.train import TrainingError, train
    except ImportError as exc:
        return _error(f"training needs the 'torch' extra, tqdm and pandas ({exc})")
    out = args.out or f"runs/{args.model}"
    try:
        best = train(
            args.model,
            args.data,
            out,
            epochs=args.epochs,
            max_minutes=args.max_minutes,
            batch_size=args.batch_size,
            lr=args.lr,
            device=args.device,
            seed=args.seed,
            resume=args.resume,
            limit_train=args.limit_train,
            init_weights=args.init_weights,
            init_encoder=args.init_encoder,
            freeze_encoder_steps=args.freeze_encoder_steps,
            linear_probe=args.linear_probe,
            threads=args.threads,
            progress=not args.quiet,
            band_limit_share=args.band_limit,
            card_overrides=(
                {"use_amplitude": False, "amplitude_additive": False} if args.no_amplitude else None
            ),
        )
    except (TrainingError, ValueError, FileNotFoundError, KeyError) as exc:
        return _error(str(exc), EXIT_FAILED)
    print(best)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if (msg := _known_model(args.model, allow_baseline=True)) is not None:
        return _error(msg)
    if not Path(args.data).is_dir():
        return _error(f"data directory not found: {args.data}")
    if args.model != "baseline" and args.weights is None and args.onnx is None:
        return _error(f"evaluating {args.model} needs --weights FILE or --onnx FILE")
    if (msg := _bad_sensitivity(args.sensitivity)) is not None:
        return _error(msg)
    try:
        from seismag.training.evaluate import EvaluationError, evaluate
    except ImportError as exc:
        return _error(f"evaluation needs pandas, matplotlib and the model extras ({exc})")
    out = args.out or f"runs/{args.model}/eval_{args.split}"
    ks = tuple(args.seconds_after_p) if args.seconds_after_p else None
    try:
        results = evaluate(
            args.model,
            args.data,
            args.weights,
            split=args.split,
            out_dir=out,
            batch_size=args.batch_size,
            onnx=args.onnx,
            device=args.device,
            baseline=not args.no_baseline,
            limit=args.limit,
            progress=not args.quiet,
            sensitivity=args.sensitivity,
            **({"seconds_after_p": ks} if ks else {}),
        )
    except (EvaluationError, ValueError, FileNotFoundError, KeyError) as exc:
        return _error(str(exc), EXIT_FAILED)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from seismag.training.evaluate import markdown_table

        sys.stdout.write(markdown_table(results))
        print(f"\nwritten to {out}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    if (msg := _known_model(args.model)) is not None:
        return _error(msg)
    if not Path(args.data).is_dir():
        return _error(f"data directory not found: {args.data}")
    if not Path(args.weights).is_file():
        return _error(f"weights file not found: {args.weights}")
    if Path(args.out).resolve() == Path(args.weights).resolve():
        return _error("--out must be a new file; the input weights are left as they are")
    if (msg := _bad_sensitivity(args.sensitivity)) is not None:
        return _error(msg)
    try:
        from seismag.training.calibrate import CalibrationError, calibrate
    except ImportError as exc:
        return _error(f"calibration needs the training extras ({exc})")
    try:
        c = calibrate(
            args.model,
            args.weights,
            args.data,
            args.out,
            split=args.split,
            limit=args.limit,
            sensitivity=args.sensitivity,
            device=args.device,
            progress=not args.quiet,
        )
    except (CalibrationError, ValueError, FileNotFoundError, KeyError) as exc:
        return _error(str(exc), EXIT_FAILED)
    print(
        f"{c.model}: {c.n} full windows of {c.data} ({c.split}): within one sigma "
        f"{c.within_1_sigma_before:.1%} -> 68.3 %, within two {c.within_2_sigma_before:.1%} -> "
        f"{c.within_2_sigma_after:.1%}; sigma scale {c.previous_scale:.3f} -> {c.scale:.3f} "
        f"(median sigma {c.median_sigma_after:.3f})\nwritten to {args.out}"
    )
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    if args.events < 1:
        return _error("--events must be at least 1")
    # The generator writes HDF5 with pandas metadata and a tqdm bar: the 'train' extra's.
    missing = []
    for module in ("h5py", "pandas", "tqdm"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        return _error(
            f"synth needs the 'train' extra: pip install 'seismag[train]' (missing: "
            f"{', '.join(missing)})"
        )
    from seismag.training.synthetic import generate_dataset

    try:
        config = None
        if args.regimes:
            from seismag.training.regimes import regime_names
            from seismag.training.synthetic import regime_config

            config = regime_config(regime_names(args.regimes))
        path = generate_dataset(
            args.out, args.events, seed=args.seed, config=config, workers=args.workers
        )
    except (ValueError, OSError) as exc:
        return _error(str(exc), EXIT_FAILED)
    print(path)
    return 0


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share between 0 and 1, not {text!r}")
    return value


def _device_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--device", default=default, help=f"cpu, cuda, cuda:N or auto (default {default})"
    )


def _cmd_train_picker(args: argparse.Namespace) -> int:
    if not Path(args.data).is_dir():
        return _error(f"data directory not found: {args.data}")
    if args.init_weights is not None and not Path(args.init_weights).is_file():
        return _error(f"--init-weights: file not found: {args.init_weights}")
    if args.lr is not None and not (args.lr > 0 and math.isfinite(args.lr)):
        return _error(f"--lr must be a positive number, got {args.lr}")
    try:
        from seismag.training.picker import PickerTrainingError, train_picker
    except ImportError as exc:
        return _error(f"training needs the 'torch' extra ({exc})")
    from seismag.training.dataset import DatasetFormatError
    from seismag.training.train import TrainingError

    try:
        summary = train_picker(
            args.data,
            args.out,
            minutes=args.minutes,
            max_traces=args.max_traces,
            seed=args.seed,
            threads=args.threads,
            init_weights=args.init_weights,
            lr=args.lr,
            device=args.device,
        )
    except (PickerTrainingError, DatasetFormatError, TrainingError, FileNotFoundError) as exc:
        return _error(str(exc), EXIT_FAILED)
    print(json.dumps(summary))
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from seismag.models.card import CardError
    from seismag.models.encoder_card import get_encoder_card

    try:
        get_encoder_card(args.encoder)
    except CardError as exc:
        return _error(str(exc))
    missing = [d for d in args.data if not Path(d).exists()]
    if missing:
        return _error(f"data not found: {', '.join(missing)}")
    try:
        from seismag.training.pretrain import PretrainError, pretrain
    except ImportError as exc:
        return _error(f"pretraining needs the 'torch' extra ({exc})")
    from seismag.training.dataset import DatasetFormatError
    from seismag.training.train import TrainingError

    try:
        final = pretrain(
            args.encoder,
            args.data,
            args.out or f"runs/{args.encoder}",
            steps=args.steps,
            max_minutes=args.max_minutes,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            resume=args.resume,
            limit=args.limit,
            threads=args.threads,
            device=args.device,
            progress=not args.quiet,
        )
    except (PretrainError, TrainingError, DatasetFormatError, FileNotFoundError) as exc:
        return _error(str(exc), EXIT_FAILED)
    print(final)
    return 0


def add_training_commands(sub) -> None:
    """Register ``train``, ``evaluate`` and ``synth`` on the top-level subparsers."""
    p = sub.add_parser(
        "train",
        help="train a magnitude model from its card's recipe (resumable)",
        description="Train MODEL on a SeisBench-format dataset (event-based train/dev split). "
        "Best weights go to OUT/MODEL.safetensors, checkpoints to OUT/checkpoint/.",
    )
    p.add_argument("model", help="model name (see `seismag models`)")
    p.add_argument("--data", required=True, help="dataset folder (metadata + waveforms)")
    p.add_argument("--out", help="output folder (default runs/MODEL)")
    p.add_argument("--epochs", type=int, help="total epochs (default 100; early stopping)")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget, stops after an epoch")
    p.add_argument("--batch-size", type=int, help="default: the card's")
    p.add_argument("--lr", type=float, help="learning rate (default: the card's)")
    _device_arg(p, "auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-train", type=int, help="train on a seeded subset of N traces")
    p.add_argument(
        "--init-weights",
        metavar="FILE",
        help="warm start from these safetensors weights of MODEL (fresh optimizer, no "
        "learning-rate warm-up); they are scored on dev first and kept unless an epoch beats "
        "them",
    )
    p.add_argument(
        "--init-encoder",
        metavar="FILE",
        help="heads on encoders (BidirAutoregMag, ConvDownContrastiveMag): start the encoder "
        "from these `seismag pretrain` weights",
    )
    p.add_argument(
        "--freeze-encoder-steps",
        type=int,
        default=100,
        help="with --init-encoder: optimizer steps the encoder stays frozen while the head "
        "settles (default: %(default)s)",
    )
    p.add_argument(
        "--linear-probe",
        action="store_true",
        help="heads on encoders: a linear head, the encoder frozen throughout",
    )
    p.add_argument(
        "--no-amplitude",
        action="store_true",
        help="ablation: no amplitude at all, neither as input nor added at the output "
        "(recorded in the weights' card)",
    )
    p.add_argument(
        "--band-limit",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="record this share of the training traces as a 20, 40 or 50 Hz digitiser would, "
        "then resample them as the server does (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining of an encoder on unlabelled waveforms (resumable)",
        description="Pretrain ENCODER (ConvDownEncoderContrastive or BidirAutoregEncoder; "
        "cards in models/cards/encoders/) on the train split of SeisBench-format datasets or "
        "on folders of miniSEED, labels ignored. Weights go to OUT/ENCODER.safetensors, "
        "checkpoints to OUT/checkpoint/. Fine-tune with `seismag train BidirAutoregMag "
        "--init-encoder OUT/BidirAutoregEncoder.safetensors`.",
    )
    p.add_argument("encoder", help="ConvDownEncoderContrastive or BidirAutoregEncoder")
    p.add_argument(
        "--data", required=True, nargs="+", help="dataset folders and/or folders of miniSEED"
    )
    p.add_argument("--out", help="output folder (default runs/ENCODER)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: %(default)s)")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget (stops early)")
    p.add_argument("--batch-size", type=int, help="default: the card's")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the card's)")
    p.add_argument("--limit", type=int, help="at most N traces per dataset (seeded subset)")
    _device_arg(p, "auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser(
        "train-picker",
        help="train the P picker network (PhaseNetPicker) on P and S picks",
        description="Train the picker of the card models/cards/pickers/PhaseNetPicker.toml on "
        "the train split of a SeisBench-format dataset with P (and S) arrival samples; keeps "
        "the weights with the lowest loss on dev windows. Export them with "
        "`seismag export-picker --weights OUT`.",
    )
    p.add_argument("--data", required=True, help="dataset folder (metadata + waveforms)")
    p.add_argument(
        "--out",
        default="runs/PhaseNetPicker.safetensors",
        help="weights file (default: %(default)s)",
    )
    p.add_argument(
        "--minutes", type=float, default=12.0, help="wall-clock budget (default: %(default)s)"
    )
    p.add_argument(
        "--max-traces",
        type=int,
        default=8000,
        help="train traces held in memory (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init-weights",
        help="start from these picker weights (safetensors), e.g. the shipped ones; they are "
        "scored on dev first and kept unless a later dev loss beats them",
    )
    p.add_argument("--lr", type=float, help="Adam's learning rate (default: the card's)")
    _device_arg(p, "cpu")
    p.set_defaults(func=_cmd_train_picker)

    p = sub.add_parser(
        "evaluate",
        help="score a model (or the ML baseline) per waveform, full window and k s after P",
        description="Evaluate MODEL on a split: one magnitude per waveform, for the full window "
        "and windows ending k seconds after P, next to a local-magnitude baseline on the same "
        "windows. Use MODEL 'baseline' for the baseline alone.",
    )
    p.add_argument("model", help="model name, or 'baseline'")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--weights", help="safetensors weights of MODEL")
    p.add_argument("--onnx", help="an exported ONNX file of MODEL (run through ONNX Runtime)")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"])
    p.add_argument("--out", help="output folder (default runs/MODEL/eval_SPLIT)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--seconds-after-p", type=float, nargs="+", help="curve points (default 1 2 3 5 10 20)"
    )
    p.add_argument("--limit", type=int, help="only the first N traces of the split")
    p.add_argument("--no-baseline", action="store_true", help="skip the ML baseline")
    _sensitivity_arg(p)
    _device_arg(p, "cpu")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "calibrate",
        help="fit the scale of a model's predicted sigma on held-out data",
        description="Scale MODEL's predicted sigma so that 68.3 %% of the full-window errors on a "
        "split fall within one sigma (variance scaling), and write the weights with that scale. "
        "Calibrate on data the weights were not fitted to, and judge on other data.",
    )
    p.add_argument("model", help="model name")
    p.add_argument("--weights", required=True, help="safetensors weights of MODEL")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="dev", choices=["train", "dev", "test"])
    p.add_argument("--out", required=True, help="the calibrated weights (a new file)")
    p.add_argument("--limit", type=int, help="only the first N traces of the split")
    _sensitivity_arg(p)
    _device_arg(p, "cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser(
        "synth",
        help="generate a synthetic SeisBench-format dataset (Boore 2003 stochastic method)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--events", type=int, required=True, help="number of events")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--regimes",
        help="physics regimes, comma-separated names or 'train' / 'held-out' / 'all' "
        "(default: none, the fixed Boore 2003 WNA physics of the first datasets)",
    )
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.set_defaults(func=_cmd_synth)
