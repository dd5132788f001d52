"""The ``seismag`` command: one entry point with a subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from seismag import __version__
from seismag.models.card import CardError, load_cards


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seismag", description="Deep-learning earthquake magnitude models: export and serve."
    )
    parser.add_argument("--version", action="version", version=f"seismag {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the magnitude models and their cards")
    p.add_argument("--json", action="store_true", help="print the full cards as JSON")
    p.set_defaults(func=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CardError as exc:
        print(f"seismag: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `seismag models | head` is not an error
        return 0
