"""Command-line helpers of the benchmarks that read `seismag evaluate`'s predictions.csv files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def named(value: str) -> tuple[str, Path]:
    """``NAME=predictions.csv`` as (name, path); an argparse type."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=predictions.csv, got {value!r}")
    return name, Path(path)


def read(path: Path) -> pd.DataFrame:
    """The table, or exit with a message naming the command that writes it."""
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (write it with `seismag evaluate`)")
    return pd.read_csv(path)
