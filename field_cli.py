"""``seismag field``: make, reconstruct and plot sparse fields from the command line.

One group for the field model's whole path: ``make`` writes observed points (and the truth)
from :mod:`seismag.training.field_data`'s generators, ``eval`` reconstructs them with an
exported model, here (ONNX Runtime, no torch) or through a server's
``FieldService/Reconstruct`` (``--server``), and ``plot`` draws the points, truth, mean and
spread. It lives at the package root, beside ``cli.py``, because it reads from ``training``
and ``serving`` both, which ``serving`` itself may not (docs/architecture.md).

File formats (``.npz``): inputs hold ``coords`` (F, K, 2) (row, column in [0, 1]), ``values``
(F, K), ``grid`` (H, W), optionally ``truth`` (F, H, W) and, for a model whose prior is a
ground-motion model (ShakeFlow), ``sources`` (F, 4): each field's magnitude, epicentre row and
column in the same [0, 1] frame, and depth in km; results hold ``mean`` and ``std`` (F, H, W)
and what ran (``model``, ``model_version``, ``samples``, ``steps``, ``seed``).
"""

from __future__ import annotations

import argparse
import time
import zipfile
from pathlib import Path

import numpy as np

from seismag.models.ground_motion import SOURCE_COLUMNS
from seismag.serving.client_cli import CliError, describe_rpc_error

BATCH = 64
"""Fields per run (or per request): 64 fields of 32 x 32 at the card's 8 samples x 10 steps
are well within a request's limits. Run b is seeded with seed + b, locally and through a
server alike, so both give the same numbers."""
SHOWN = 4
"""Fields ``plot`` draws without ``--index``."""


def _npz(path: str, what: str) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{what}: no such file: {path}")
    try:
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CliError(f"{what}: {path} is not a .npz file numpy can read ({exc})") from None


def _out(path: str, suffix: str) -> Path:
    out = Path(path)
    if out.suffix != suffix:
        raise CliError(f"--out must name a {suffix} file, got {path}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def read_fields(path: str) -> dict[str, np.ndarray]:
    """An input file's arrays, shapes checked against each other (values are the model's
    business: the field pipeline checks them)."""
    data = _npz(path, "--fields")
    missing = [k for k in ("coords", "values", "grid") if k not in data]
    if missing:
        raise CliError(
            f"{path} lacks {', '.join(missing)}: a fields file holds coords (F, K, 2), values "
            "(F, K), grid (H, W) and optionally truth (F, H, W) (seismag field make writes one)"
        )
    coords, values, grid = data["coords"], data["values"], data["grid"]
    if coords.ndim != 3 or coords.shape[2] != 2 or values.shape != coords.shape[:2]:
        raise CliError(
            f"{path}: coords must be (F, K, 2) and values (F, K); got {coords.shape} and "
            f"{values.shape}"
        )
    if len(coords) == 0:
        raise CliError(f"{path} holds no fields")
    if grid.shape != (2,) or not np.issubdtype(grid.dtype, np.integer):
        raise CliError(f"{path}: grid must be two integers (H, W), got {grid!r}")
    truth = data.get("truth")
    want = (len(coords), int(grid[0]), int(grid[1]))
    if truth is not None and truth.shape != want:
        raise CliError(f"{path}: truth must be (F, H, W) = {want}, got {truth.shape}")
    sources = data.get("sources")
    if sources is not None and sources.shape != (len(coords), len(SOURCE_COLUMNS)):
        raise CliError(
            f"{path}: sources must be (F, {len(SOURCE_COLUMNS)}) = ({len(coords)}, "
            f"{len(SOURCE_COLUMNS)}) ({', '.join(SOURCE_COLUMNS)}), got {sources.shape}"
        )
    return data


def cmd_make(args: argparse.Namespace) -> int:
    from seismag.training.field_data import make_fields, observe

    h, w = args.grid
    if args.count < 1 or h < 1 or w < 1:
        raise CliError("--count and both --grid sides must be at least 1")
    if not 0 < args.fraction <= 1:
        raise CliError(f"--fraction must be in (0, 1], got {args.fraction:g}")
    out = _out(args.out, ".npz")
    extra = {}
    if args.family == "shaking":
        from seismag.training.shaking_fields import make_shaking_maps

        maps = make_shaking_maps(args.count, (h, w), seed=args.seed)
        truth, extra["sources"] = maps.log_pgv, maps.sources()
    else:
        truth = make_fields(args.count, args.family, (h, w), seed=args.seed)
    # The benchmarks' convention: fields from seed, observations from seed + 1.
    coords, values, _ = observe(truth, args.fraction, seed=args.seed + 1)
    np.savez(out, coords=coords, values=values, grid=np.array([h, w]), truth=truth, **extra)
    k = coords.shape[1]
    print(
        f"wrote {out}: {args.count} {args.family} fields of {h} x {w}, {k} observed points "
        f"each ({k / (h * w):.1%})"
    )
    return 0


def _local(args: argparse.Namespace, data: dict[str, np.ndarray]):
    """Per batch: (mean, std, model, version, samples, steps), run here."""
    from seismag.serving.errors import ServingError
    from seismag.serving.executor.backend import ModelLoadError
    from seismag.serving.executor.field_runtime import FieldRuntime
    from seismag.serving.pipeline import field

    try:
        runtime = FieldRuntime(args.model, threads=args.threads)
    except ModelLoadError as exc:
        raise CliError(str(exc)) from None
    for b, (coords, values, sources) in enumerate(_batches(data, args.batch)):
        try:
            request = field.check_request(
                runtime.card,
                coords,
                values,
                data["grid"],
                args.samples,
                args.steps,
                args.seed + b,
                sources,
            )
        except ServingError as exc:
            raise CliError(f"{args.fields}: {exc}") from None
        r = field.reconstruct(runtime, request)
        yield r.mean, r.std, r.model, r.model_version, r.samples, r.steps


def _remote(args: argparse.Namespace, data: dict[str, np.ndarray]):
    """Per batch, through the server's FieldService/Reconstruct."""
    import grpc

    from seismag.serving.client import SeismagClient

    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read --token-file: {exc}") from None
    grid = (int(data["grid"][0]), int(data["grid"][1]))
    with SeismagClient(args.server, token=token, tls_ca=args.tls_ca, timeout=args.timeout) as c:
        for b, (coords, values, sources) in enumerate(_batches(data, args.batch)):
            try:
                r = c.reconstruct_fields(
                    coords,
                    values,
                    grid,
                    args.samples,
                    args.steps,
                    args.seed + b,
                    args.name,
                    sources=sources,
                )
            except grpc.RpcError as exc:
                raise CliError(describe_rpc_error(exc, args.server, args)) from None
            except ValueError as exc:  # a number the message cannot hold (e.g. 2**40 samples)
                raise CliError(str(exc)) from None
            yield r.mean, r.std, r.model, r.model_version, r.samples, r.steps


def _batches(data: dict[str, np.ndarray], size: int):
    sources = data.get("sources")
    for i in range(0, len(data["coords"]), size):
        part = slice(i, i + size)
        yield (
            data["coords"][part],
            data["values"][part],
            None if sources is None else sources[part],
        )


def cmd_eval(args: argparse.Namespace) -> int:
    if args.model is not None and args.server is not None:
        raise CliError("give --model FILE.onnx (run here) or --server HOST:PORT, not both")
    if args.model is None and args.server is None:
        args.model = "default"
    if args.name is not None and args.server is None:
        raise CliError("--name picks a server's field model; with --model the file is the model")
    if args.seed < 0:
        raise CliError(f"--seed must be >= 0, got {args.seed}")
    if args.batch < 1:
        raise CliError(f"--batch must be at least 1, got {args.batch}")
    data = read_fields(args.fields)
    out = _out(args.out, ".npz")
    t0 = time.perf_counter()
    runs = list((_local if args.server is None else _remote)(args, data))
    seconds = time.perf_counter() - t0
    mean = np.concatenate([r[0] for r in runs])
    std = np.concatenate([r[1] for r in runs])
    _, _, model, version, samples, steps = runs[0]
    np.savez(
        out, mean=mean, std=std, model=model, model_version=version, samples=samples,
        steps=steps, seed=args.seed,
    )  # fmt: skip
    f, h, w = mean.shape
    where = f"server {args.server}" if args.server else "here"
    print(
        f"{model} {version}: {f} fields of {h} x {w}, {samples} samples x {steps} steps, "
        f"{seconds:.2f} s ({where})"
    )
    if "truth" in data:
        from seismag.training.field_data import psnr

        truth = data["truth"]
        rmse = float(np.sqrt(np.mean((mean - truth) ** 2)))
        if truth.min() >= 0 and truth.max() <= 1:
            scores = psnr(mean, truth)
            print(f"PSNR {scores.mean():.2f} dB (mean over {f} fields; peak 1, values in [0, 1])")
        print(f"RMSE {rmse:.4f} (the fields' units, over every point of every field)")
    print(f"wrote {out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CliError("plot needs matplotlib: pip install 'seismag[plot]'") from exc
    data = read_fields(args.fields)
    result = _npz(args.result, "--result")
    f, (h, w) = len(data["coords"]), data["grid"]
    for key in ("mean", "std"):
        if key not in result or result[key].shape != (f, h, w):
            got = result[key].shape if key in result else "nothing"
            raise CliError(
                f"{args.result}: {key} must be (F, H, W) = {(f, int(h), int(w))} to match "
                f"{args.fields}, got {got}"
            )
    index = args.index if args.index else list(range(min(f, SHOWN)))
    bad = [i for i in index if not 0 <= i < f]
    if bad:
        raise CliError(f"--index {bad[0]} is not a field of {args.fields} (0 .. {f - 1})")
    out = _out(args.out, ".png")
    fig = plot_fields(data, result, index)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")
    return 0


def plot_fields(data: dict[str, np.ndarray], result: dict[str, np.ndarray], index: list[int]):
    """One row per field: observed points, truth (when given), mean, std."""
    import matplotlib.pyplot as plt

    truth = data.get("truth")
    names = ["observed", *(["truth"] if truth is not None else []), "mean", "std"]
    fig, axes = plt.subplots(
        len(index), len(names), figsize=(3.2 * len(names), 3.0 * len(index)), squeeze=False
    )
    extent = (0.0, 1.0, 1.0, 0.0)  # columns left to right, rows top to bottom, as the coords
    for row, i in zip(axes, index, strict=True):
        shown = [data["values"][i], result["mean"][i]] + ([truth[i]] if truth is not None else [])
        lo = min(float(np.min(a)) for a in shown)
        hi = max(float(np.max(a)) for a in shown)
        coords, values = data["coords"][i], data["values"][i]
        panels = {"mean": result["mean"][i], "std": result["std"][i]}
        if truth is not None:
            panels["truth"] = truth[i]
        for ax, name in zip(row, names, strict=True):
            if name == "observed":
                im = ax.scatter(
                    coords[:, 1], coords[:, 0], c=values, s=14, vmin=lo, vmax=hi, cmap="viridis"
                )
                ax.set_xlim(0, 1)
                ax.set_ylim(1, 0)
                ax.set_aspect("equal")
                ax.set_title(f"field {i}: {len(values)} observed")
            elif name == "std":
                im = ax.imshow(panels[name], extent=extent, cmap="magma")
                ax.set_title("std")
            else:
                im = ax.imshow(panels[name], extent=extent, vmin=lo, vmax=hi, cmap="viridis")
                ax.set_title(name)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def add_field_commands(sub) -> argparse._SubParsersAction:
    """Register ``field`` and its ``make``, ``eval`` and ``plot``; returns the group's
    subparsers (other field commands, e.g. train and export, register there)."""
    group = sub.add_parser(
        "field",
        help="sparse-field reconstruction: make inputs, reconstruct (here or on a server), plot",
        description="Reconstruct whole 2-D fields from a few observed points with an exported "
        "field model (flow matching): seismag field make -> eval -> plot.",
    )
    fsub = group.add_subparsers(dest="field_command", required=True, metavar="COMMAND")

    p = fsub.add_parser(
        "make",
        help="write observed points (and the truth) of synthetic fields to a .npz file",
        description="Synthetic fields from seismag.training.field_data (the benchmark's "
        "generators) observed at a random fraction of their pixels: coords, values, grid "
        "and truth in one .npz, the input of seismag field eval.",
    )
    p.add_argument(
        "--family",
        choices=("benchmark", "oblique", "train", "shaking"),
        default="benchmark",
        help="sinusoid fields, or shaking: log10 PGV maps (m/s) with their sources",
    )
    p.add_argument("--count", type=int, default=16, help="number of fields")
    p.add_argument("--fraction", type=float, default=0.05, help="observed share of the pixels")
    p.add_argument("--grid", type=int, nargs=2, default=[32, 32], metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0, help="fields from SEED, points from SEED + 1")
    p.add_argument("--out", required=True, help=".npz file to write")
    p.set_defaults(func=cmd_make)

    p = fsub.add_parser(
        "eval",
        help="reconstruct the fields of a .npz file (here, or with --server on a server)",
        description="Reconstruct every field of --fields on its grid with a field model: the "
        "mean and standard deviation over the samples, written to --out (.npz: mean, std). "
        "With truth in the input, prints the mean PSNR. Runs here with --model FILE.onnx, or "
        "through a server's FieldService/Reconstruct with --server (seismag serve "
        "--field-model); both give the same numbers.",
    )
    p.add_argument(
        "--model",
        metavar="FILE",
        help="exported field model (.onnx) to run here (default without --server: the shipped "
        "FieldFlow, also named by 'default')",
    )
    p.add_argument("--server", metavar="HOST:PORT", help="run on this seismag server instead")
    p.add_argument("--name", help="with --server: the field model's name (default: the served one)")
    p.add_argument("--fields", required=True, help=".npz input (seismag field make writes one)")
    p.add_argument("--out", required=True, help=".npz file to write")
    p.add_argument("--samples", type=int, help="draws per field, 1-64 (default: the card's)")
    p.add_argument(
        "--steps", type=int, help="ODE steps per draw, 1-100 (default: the card's; its sampler)"
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed (batch b uses SEED + b)")
    p.add_argument("--batch", type=int, default=BATCH, help="fields per run or request")
    p.add_argument("--threads", type=int, help="here: ONNX Runtime threads (default: all cores)")
    p.add_argument("--token-file", help="with --server: file holding a bearer token")
    p.add_argument("--tls-ca", help="with --server: CA certificate to verify it (enables TLS)")
    p.add_argument("--timeout", type=float, default=300.0, help="with --server: s per request")
    p.set_defaults(func=cmd_eval)

    p = fsub.add_parser(
        "plot",
        help="PNG of observed points, truth, mean and std of some fields",
        description="One row per field: its observed points, the truth (when the input has "
        "it), the reconstructed mean (same colour scale) and standard deviation.",
    )
    p.add_argument("--fields", required=True, help="the .npz input given to seismag field eval")
    p.add_argument("--result", required=True, help="the .npz seismag field eval wrote")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument(
        "--index", type=int, nargs="+", help=f"fields to draw (default: the first {SHOWN})"
    )
    p.set_defaults(func=cmd_plot)

    from seismag.training.field_train import add_arguments

    p = fsub.add_parser(
        "train",
        help="train a field model (needs the train extra: torch)",
        description="Train a field model card (models/cards/fields: FieldFlow on sinusoid "
        "fields, ShakeFlow on log10 PGV maps) on freshly generated fields for a number of "
        "steps; writes OUT/<name>.safetensors (card inside) and OUT/history.json.",
    )
    add_arguments(p)
    p.set_defaults(func=cmd_train)

    p = fsub.add_parser(
        "export",
        help="export trained field weights to ONNX (parity-checked against PyTorch)",
        description="Export a field model's safetensors (seismag field train's, card inside) to "
        "ONNX with the card in the metadata, checked against PyTorch within the card's "
        "tolerance; run it with seismag field eval --model or seismag serve --field-model.",
    )
    p.add_argument("weights", help="weights written by seismag field train")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.set_defaults(func=cmd_export)
    return fsub


def cmd_train(args: argparse.Namespace) -> int:
    from seismag.models.card import CardError
    from seismag.training.field_train import run

    try:
        return run(args)
    except (CardError, ValueError) as exc:
        raise CliError(str(exc)) from None


def cmd_export(args: argparse.Namespace) -> int:
    from seismag.models.card import CardError

    if not Path(args.weights).is_file():
        raise CliError(f"no such weights file: {args.weights}")
    out = _out(args.out, ".onnx")
    from seismag.export.field_export import export_field_model
    from seismag.export.onnx_export import ExportError

    try:
        result = export_field_model(weights=args.weights, out=out)
    except (CardError, ExportError) as exc:
        raise CliError(str(exc)) from None
    scans = f"; {result.scan_nodes} SelectiveScan nodes" if result.scan_nodes else ""
    print(
        f"{result.card.name} -> {result.path} (ONNX Runtime vs PyTorch: max |diff| "
        f"{result.max_abs_diff:.1e}, tolerance {result.card.tolerance:g}{scans})"
    )
    return 0
