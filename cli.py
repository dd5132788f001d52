"""The ``seismag`` command: one entry point with a subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from seismag import __version__
from seismag.benchmarks.cli import add_bench_commands
from seismag.field_cli import add_field_commands
from seismag.models.card import CardError, load_cards
from seismag.serving.archive.cli import add_annotate_command
from seismag.serving.client_cli import CliError, add_client_commands
from seismag.serving.config import ServeConfig, add_serve_flags, serve_flag_names
from seismag.serving.health_cli import add_health_command
from seismag.serving.log_format import configure_logging
from seismag.training.cli import add_training_commands


def _cmd_models(args: argparse.Namespace) -> int:
    cards = load_cards()
    if args.json:
        json.dump([c.to_dict() for c in cards.values()], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    header = f"{'model':<18}{'version':<9}{'output':<8}{'samples':>8}{'rate Hz':>9}  {'comp':<5}"
    print(header + "  description")
    for c in cards.values():
        print(
            f"{c.name:<18}{c.version:<9}{c.output:<8}{c.in_samples:>8}{c.sampling_rate:>9g}  "
            f"{c.component_order:<5}  {c.description}"
        )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        from seismag.export.pipeline import export_model
    except ImportError as exc:
        print(f"seismag: error: export needs the 'export' extra ({exc})", file=sys.stderr)
        return 2
    from seismag.export.tensorrt import TensorRTUnavailable
    from seismag.models.weights import WeightsError

    if args.all == (args.model is not None or args.weights is not None):
        print("seismag: error: name one MODEL (or --weights FILE) or pass --all", file=sys.stderr)
        return 2
    if args.all and args.weights:
        print("seismag: error: --weights takes one model, not --all", file=sys.stderr)
        return 2
    names: list[str | None] = list(load_cards()) if args.all else [args.model]
    try:
        for name in names:
            export_model(
                name,
                args.out,
                to=args.to,
                weights=args.weights,
                opset=args.opset,
                int8=args.int8,
                precisions=tuple(args.precision),
                parity=not args.no_parity,
            )
    except (WeightsError, TensorRTUnavailable, ValueError) as exc:
        print(f"seismag: error: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, TensorRTUnavailable) else 3
    except RuntimeError as exc:  # parity or checker failure: the file must not be trusted
        print(f"seismag: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_export_picker(args: argparse.Namespace) -> int:
    try:
        from seismag.export.picker_export import export_picker
    except ImportError as exc:
        print(f"seismag: error: export-picker needs the 'export' extra ({exc})", file=sys.stderr)
        return 2
    weights = Path(args.weights) if args.weights else None
    if weights is not None and not weights.is_file():
        print(f"seismag: error: weights file not found: {weights}", file=sys.stderr)
        return 2
    try:
        result = export_picker(args.out, weights=weights)
    except FileNotFoundError as exc:  # an install without the shipped picker weights
        print(f"seismag: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # parity or checker failure: the file must not be trusted
        print(f"seismag: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {result.path} (ONNX Runtime vs PyTorch: max |diff| {result.max_abs_diff:.1e})")
    return 0


def _cmd_export_encoder(args: argparse.Namespace) -> int:
    try:
        from seismag.export.encoder_export import export_encoder
    except ImportError as exc:
        print(f"seismag: error: export-encoder needs the 'export' extra ({exc})", file=sys.stderr)
        return 2
    from seismag.models.weights import WeightsError

    try:
        result = export_encoder(args.weights, args.out)
    except (WeightsError, CardError) as exc:  # missing, not safetensors, no card, wrong shapes
        print(f"seismag: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # parity or checker failure: the file must not be trusted
        print(f"seismag: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {result.path} (ONNX Runtime vs PyTorch: max |diff| {result.max_abs_diff:.1e}, "
        f"{result.max_rel_diff:.1e} relative; tolerance {result.card.tolerance:g})"
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from seismag.serving.protocols.server import serve_forever
    except ImportError as exc:
        print(f"seismag: error: serving needs grpcio and onnxruntime ({exc})", file=sys.stderr)
        return 2
    tokens: tuple[str, ...] = ()
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                tokens = tuple(
                    line.strip() for line in f if line.strip() and not line.startswith("#")
                )
        except OSError as exc:
            print(f"seismag: error: cannot read --token-file: {exc}", file=sys.stderr)
            return 2
        if not tokens:
            print(f"seismag: error: {args.token_file} holds no tokens", file=sys.stderr)
            return 2
    try:
        config = ServeConfig(
            **{name: getattr(args, name) for name in serve_flag_names()}, tokens=tokens
        ).validate()
    except ValueError as exc:
        name, _, rest = str(exc).partition(" ")
        print(f"seismag: error: --{name.replace('_', '-')} {rest}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    return serve_forever(config, args.models)


def _cmd_import_checkpoint(args: argparse.Namespace) -> int:
    try:
        from seismag.models.reference import ReferenceImportError, import_checkpoint
    except ImportError as exc:
        print(f"seismag: error: import-checkpoint needs the 'torch' extra ({exc})", file=sys.stderr)
        return 2
    try:
        weights, card = import_checkpoint(args.model, args.file, args.out)
    except ReferenceImportError as exc:
        print(f"seismag: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {weights}")
    print(f"wrote {card}")
    return 0


def _cmd_station_table(args: argparse.Namespace) -> int:
    from seismag.serving.pipeline.station_table import fit, read_predictions

    try:
        table = fit(read_predictions(args.predictions), model=args.model)
    except ValueError as exc:
        print(f"seismag: error: {exc}", file=sys.stderr)
        return 2
    table.write(args.out)
    print(
        f"wrote {args.out}: {table.events} events, network correction "
        f"{table.network_correction:+.2f}, {len(table.corrections)} stations with their own, "
        f"shared error fraction {table.shared_error_fraction:.2f}, sigma scale "
        f"{table.sigma_scale:.2f}; event magnitude by seconds after the first P: "
        f"{table.describe_event_terms()}"
    )
    return 0


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" after each option's help unless there is nothing to show (no
    value, a switch that is off) or the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default in (None, False, "", argparse.SUPPRESS) or "(default" in help_text:
            return help_text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every subcommand's parser shows its defaults (the formatter unless one is given)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        # An option without help text would print nothing, its default included.
        if kwargs.get("help") is None and kwargs.get("default") not in (None, False, ""):
            kwargs["help"] = "(default: %(default)s)"
        return super().add_argument(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="seismag", description="Deep-learning earthquake magnitude models: export and serve."
    )
    parser.add_argument("--version", action="version", version=f"seismag {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    p = sub.add_parser("models", help="list the magnitude models and their cards")
    p.add_argument("--json", action="store_true", help="print the full cards as JSON")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser(
        "export",
        help="export a model to ONNX (parity-checked), TensorRT or a Triton repository",
        description="Export to ONNX (opset 17+, dynamic batch, card in the metadata), verify "
        "parity against PyTorch, and optionally quantise to int8, build TensorRT engines or "
        "write a Triton model repository.",
    )
    p.add_argument("model", nargs="?", help="model name (see `seismag models`)")
    p.add_argument("--all", action="store_true", help="export every shipped model")
    p.add_argument("--weights", help="safetensors weights (default: the shipped ones, if any)")
    p.add_argument("--to", choices=["onnx", "triton", "tensorrt"], default="onnx")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--int8", action="store_true", help="also write an int8 dynamic-quantised copy")
    p.add_argument(
        "--precision",
        nargs="+",
        choices=["fp32", "fp16"],
        default=["fp32", "fp16"],
        help="TensorRT engine precisions",
    )
    p.add_argument("--no-parity", action="store_true", help="skip the ONNX vs PyTorch check")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "export-picker",
        help="export the P picker network to ONNX (parity-checked)",
        description="Export the P picker (PhaseNetPicker) to ONNX with its card in the metadata; "
        "the server loads it for --picker phasenet.",
    )
    p.add_argument("--weights", help="safetensors weights (default: the shipped ones)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.set_defaults(func=_cmd_export_picker)

    p = sub.add_parser(
        "export-encoder",
        help="export a pretraining encoder to ONNX (parity-checked)",
        description="Export encoder weights (seismag pretrain's safetensors, card inside) to "
        "OUT/<name>.onnx with the card in the metadata, checked against PyTorch within the "
        "card's tolerance; serve it with seismag serve --encoder FILE.",
    )
    p.add_argument("weights", help="encoder weights (.safetensors written by seismag pretrain)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_export_encoder)

    add_client_commands(sub)
    add_annotate_command(sub)
    add_health_command(sub)
    add_training_commands(sub)
    add_bench_commands(sub)
    add_field_commands(sub)

    p = sub.add_parser(
        "serve",
        help="serve magnitude models over gRPC (MagnitudeService, KServe v2, health, reflection)",
        description="Serve exported ONNX models over gRPC until SIGTERM/SIGINT, then drain. "
        "Without --models the model shipped in the package is served. Every flag but --models "
        "and --token-file may also be set by its SEISMAG_* environment variable (the flag wins); "
        "`seismag health` reads the same variables.",
    )
    p.add_argument(
        "--models",
        nargs="+",
        metavar="PATH",
        help=".onnx files or folders of them (default: the embedded default model)",
    )
    add_serve_flags(p)
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="bearer tokens, one a line; every RPC but health then needs one",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "station-table",
        help="calibrate event magnitudes on a network's past events' predictions",
        description="A network correction (minus the mean residual of the past events, shrunk "
        "towards 0 for few events), station corrections for stations with 3 or more events, the "
        "share of the error common to an event and a scale for the event sigma, from "
        "per-station magnitudes of past events with catalogue magnitudes. Serve the result "
        "with `seismag serve --station-table FILE`.",
    )
    p.add_argument(
        "predictions",
        help="CSV, one row per station and event: source_id, station_id (NET.STA.LOC), "
        "magnitude, catalogue_magnitude, and optionally sigma (needed for the sigma scale) and "
        "seconds_after_first_p (empty for the final magnitude; a number for the station's "
        "latest value that many seconds after the event's first P, from 2 s after its own P: "
        "these fit the event-level correction and gain by time and join the sigma scale's "
        "residuals). `seismag predict FILE --table-rows CSV --event ID=MAGNITUDE` appends one "
        "past event's rows",
    )
    p.add_argument("--out", required=True, help="TOML file to write")
    p.add_argument("--model", default="", help="model the magnitudes came from (recorded)")
    p.set_defaults(func=_cmd_station_table)

    p = sub.add_parser(
        "import-checkpoint",
        help="convert a reference (QuentonYeo/magnitude_estimation) checkpoint to seismag weights",
        description="Map a reference state_dict (.pt/.pth, read with weights_only, or "
        ".safetensors) onto MODEL and write MODEL.safetensors plus a card (TOML) with the "
        "reference's preprocessing.",
    )
    p.add_argument("model", metavar="MODEL", help="seismag model name (see `seismag models`)")
    p.add_argument("file", metavar="FILE", help="the reference checkpoint")
    p.add_argument("--out", default="imported", metavar="DIR", help="output folder")
    p.set_defaults(func=_cmd_import_checkpoint)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CardError, CliError) as exc:
        print(f"seismag: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `seismag models | head` is not an error
        return 0
