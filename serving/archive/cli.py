"""``seismag annotate``: magnitudes for every station-day of files, folders or an SDS archive."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from obspy import UTCDateTime

from seismag.serving.archive.annotate import AnnotateOptions
from seismag.serving.archive.output import ArchiveOutput, OutputError
from seismag.serving.archive.runner import ModelSpec, run_dask, run_local
from seismag.serving.archive.sources import Scan, SourceError, scan_files, scan_sds
from seismag.serving.config import DEFAULTS
from seismag.serving.executor.backend import BACKEND_CHOICES
from seismag.serving.executor.picker_runtime import PICKERS
from seismag.serving.pipeline.units import COUNTS, VELOCITY

EXIT_USAGE = 2


def _time(text: str | None, what: str) -> UTCDateTime | None:
    if text is None:
        return None
    try:
        return UTCDateTime(text)
    except Exception:
        raise SourceError(f"--{what} {text!r} is not a time, e.g. 2024-03-01T12:00") from None


def _scan(args: argparse.Namespace) -> Scan:
    start, end = _time(args.start, "start"), _time(args.end, "end")
    if start is not None and end is not None and end <= start:
        raise SourceError(f"--end {end} is not after --start {start}")
    if args.sds:
        if len(args.paths) != 1:
            raise SourceError("--sds takes one path: the SDS root folder")
        if start is None or end is None:
            raise SourceError("an SDS archive needs --start and --end")
        return scan_sds(
            args.paths[0], start=start, end=end, stations=args.stations, channels=args.channels
        )
    return scan_files(
        args.paths, start=start, end=end, stations=args.stations, channels=args.channels
    )


def _model_path(name: str | None) -> str:
    from seismag.serving.executor.runtime import default_model_path

    path = Path(name) if name else default_model_path()
    if not path.is_file():
        raise SourceError(f"--model {path}: no such ONNX file")
    return str(path.resolve())  # workers elsewhere resolve relative paths elsewhere


def cmd_annotate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from seismag.serving.executor.runtime import read_card_from_onnx

    t0 = time.perf_counter()
    try:
        spec = ModelSpec(
            _model_path(args.model),
            backend=args.backend,
            threads=args.threads,
            inventory=str(Path(args.stationxml).resolve()) if args.stationxml else None,
        )
        card = read_card_from_onnx(spec.path)
        if spec.inventory:  # read once here, so a bad file is one message, not a worker's trace
            from seismag.serving.pipeline.units import StationInventory

            StationInventory(spec.inventory)
        options = AnnotateOptions(
            units=args.units,
            series_interval=args.series_interval,
            batch=args.batch,
            picker=args.picker,
        )
        out = ArchiveOutput(args.out, card.name, options.key(card))
        scan = _scan(args)
        out.check_key()
    except (SourceError, OutputError, ValueError, OSError) as exc:
        print(f"seismag: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for bad in scan.unreadable:
        print(f"seismag: skipped an unreadable file: {bad}", file=sys.stderr)
    if not scan.units:
        print("seismag: error: no station-days to annotate in the given sources", file=sys.stderr)
        return EXIT_USAGE
    todo = [u for u in scan.units if not out.is_done(u.name)]
    skipped = len(scan.units) - len(todo)
    print(
        f"{card.name} {card.version}: {len(scan.units)} station-days, {skipped} already done, "
        f"{len(todo)} to annotate -> {args.out}",
        file=sys.stderr,
    )
    try:
        if args.scheduler:
            results = run_dask(
                todo,
                spec,
                options,
                args.scheduler,
                on_client=lambda c: print(f"Dask: {c}", file=sys.stderr),
            )
        else:
            results = run_local(todo, spec, options, args.workers)
        grid_points = failed = 0
        bar = tqdm(total=len(todo), unit="day", disable=args.quiet, file=sys.stderr)
        for result in results:
            out.write(result, card.version)
            grid_points += result.grid_points
            if result.failed:
                failed += 1
            if result.error:
                print(f"seismag: {result.unit}: {result.error}", file=sys.stderr)
            bar.update(1)
            bar.set_postfix(windows_per_s=f"{grid_points / (time.perf_counter() - t0):.0f}")
        bar.close()
    except RuntimeError as exc:
        print(f"seismag: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("seismag: interrupted; a re-run resumes where this one stopped", file=sys.stderr)
        return 130
    try:
        table = out.table([u.name for u in scan.units], args.table)
    except OutputError as exc:
        print(f"seismag: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    seconds = time.perf_counter() - t0
    print(
        f"annotated {len(todo) - failed} station-days in {seconds:.1f} s, "
        f"{grid_points / max(seconds, 1e-9):.0f} windows/s; series in "
        f"{out.series_root}, onsets in {table}"
    )
    if failed:
        print(
            f"seismag: error: {failed} station-days failed (messages above); fix the cause and "
            "run the same command again: it does only those",
            file=sys.stderr,
        )
        return 1
    return 0


def add_annotate_command(sub) -> None:
    p = sub.add_parser(
        "annotate",
        help="magnitude series and per-onset magnitudes for station-days of an archive",
        description="Annotate every station-day of miniSEED/SAC files, folders or an SDS "
        "archive: each is evaluated as a Predict of that day's samples (every window, nothing "
        "merged), in local processes or on a Dask cluster. Writes the magnitude series as an SDS "
        "archive of miniSEED and a table of per-onset magnitudes; a re-run skips the days done.",
    )
    p.add_argument("paths", nargs="+", help="files or folders (searched recursively), or with "
                   "--sds the root of an SDS archive")  # fmt: skip
    p.add_argument("--sds", action="store_true", help="PATH is an SDS archive root")
    p.add_argument("--start", help="first time (UTC) to annotate; required with --sds")
    p.add_argument("--end", help="end time (UTC, exclusive); required with --sds")
    p.add_argument(
        "--stations",
        nargs="+",
        default=[],
        metavar="NET.STA[.LOC]",
        help="only these stations (shell wildcards, e.g. 'CI.*')",
    )
    p.add_argument(
        "--channels", default="*", help="channel pattern, e.g. 'HH?' (default: every channel; "
        "with several instruments at a station the highest-rate band is used)",
    )  # fmt: skip
    p.add_argument("--model", help="ONNX file (default: the packaged default model)")
    p.add_argument("--backend", default="ort", choices=BACKEND_CHOICES)
    p.add_argument("--threads", type=int, default=1, help="model threads per worker")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="local worker processes (one loads the model once and takes days in turn)",
    )
    p.add_argument("--scheduler", help="Dask scheduler address (tcp://HOST:8786) instead")
    p.add_argument("--stationxml", help="StationXML file or folder: the responses of counts")
    p.add_argument("--units", default=COUNTS, choices=[COUNTS, VELOCITY], help="sample units")
    p.add_argument("--series-interval", type=float, default=1.0, help="seconds between values")
    p.add_argument("--batch", type=int, default=256, help="windows per model call")
    p.add_argument(
        "--picker",
        choices=PICKERS,
        default=DEFAULTS.picker,
        help="P onsets (as seismag serve --picker; default: %(default)s)",
    )
    p.add_argument("--out", default="annotations", help="output folder")
    p.add_argument("--table", default="csv", choices=["csv", "parquet"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_annotate)
