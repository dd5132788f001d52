"""``seismag annotate`` against SeisBench's ``annotate`` on the same station-days, and its scaling
with local processes and Dask workers. One run, one machine; every figure is measured here.

    python -m seismag.benchmarks.archive_throughput --workdir /tmp/archive_bench \\
        [--every-window-model ViTMag.onnx] [--json OUT.json]
    python -m seismag.benchmarks.archive_throughput --stages ViTMag.onnx --hours 6
    python -m seismag.benchmarks.archive_throughput --workdir /tmp/archive_real --real-noise

Data: synthetic 100 Hz 3-component station-days (:mod:`seismag.benchmarks.archive_data`, 24
events a day), written as miniSEED; with ``--real-noise``, the 2.6 hours of real vertical record
that ObsPy ships (:func:`~seismag.benchmarks.archive_data.obspy_kw1_record`) instead, for the
single-process rows and ``--stages``. Windows per second count the grid of the 1 s series, one
window per second of data (86,400 a day), the same count as SeisBench at a 100-sample stride
(overlap 2,901 of 3,001). A series model (the default PhaseNetMag) runs the network only where a
P onset makes a magnitude possible; ``--every-window-model`` adds a scalar model whose network
runs on every window, the like-for-like comparison of network work. Times are end to end: reading
the miniSEED, the picker, normalisation, the model, writing the outputs (SeisBench: its
``annotate`` on a Stream read from the same file, pre- and post-processing included).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import time
from pathlib import Path

from obspy import read

from seismag.benchmarks.archive_data import obspy_kw1_record, station_record

DAY_S = 86400.0


def _days(workdir: Path, n: int, hours: float) -> list[Path]:
    files = []
    for i in range(n):
        path = workdir / "data" / f"SYN{i:02d}.mseed"
        if not path.exists():
            st, _ = station_record(hours * 3600, events=round(hours), seed=2 + i,
                                   station=f"SYN{i:02d}")  # fmt: skip
            path.parent.mkdir(parents=True, exist_ok=True)
            st.write(str(path), format="MSEED")
        files.append(path)
    return files


def _records(args: argparse.Namespace) -> list[Path]:
    if not args.real_noise:
        return _days(Path(args.workdir), max(args.days, 1), args.hours)
    path = Path(args.workdir) / "data" / "BW.KW1.mseed"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        obspy_kw1_record().write(str(path), format="MSEED")
    return [path]


@contextlib.contextmanager
def _gate(threads: int, value: float | None):
    """The packaged picker network with its card's STA/LTA gate set to ``value`` (0: the network
    runs on every window, the cost on noise that keeps the STA/LTA stirred all day)."""
    from dataclasses import replace

    from seismag.serving.executor.picker_runtime import default_picker

    runtime = default_picker(threads)  # the instance annotate's in-process worker loads
    card = runtime.card
    if value is not None:
        runtime.card = replace(card, gate=value)
    try:
        yield
    finally:
        runtime.card = card


def _annotate(files: list[Path], out: Path, *extra: str) -> float:
    from seismag.cli import main

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["annotate", *map(str, files), "--units", "m/s", "--quiet", "--out", str(out),
                     *extra])  # fmt: skip
    seconds = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"seismag annotate exited {code}")
    return seconds


def _model_windows(out: Path) -> int:
    """Network windows run: every value of every station-day (its marker's count)."""
    return sum(json.loads(p.read_text())["values"] for p in out.glob("done/*/*.*.json"))


def _seisbench(path: Path, overlap: int, threads: int, batch: int) -> tuple[float, int]:
    import seisbench.models as sbm
    import torch

    torch.set_num_threads(threads)
    model = sbm.PhaseNet(sampling_rate=100).eval()  # untrained: the same work as trained
    t0 = time.perf_counter()
    st = read(str(path))
    model.annotate(st, overlap=overlap, batch_size=batch)
    seconds = time.perf_counter() - t0
    n = st[0].stats.npts
    return seconds, (n - model.in_samples) // (model.in_samples - overlap) + 1


def run(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir)
    files = _records(args)
    hours = _seconds(files[0]) / 3600
    grid = round(hours * 3600)  # 1 s series: one window per second of data
    rows: list[dict] = []

    def row(name: str, seconds: float, windows: int, model_windows: int | None, days: int):
        rows.append({
            "run": name, "seconds": round(seconds, 2), "windows": windows,
            "windows_per_s": round(windows / seconds, 1), "model_windows": model_windows,
            "station_days_per_hour": round(days * (hours * 3600 / DAY_S) / seconds * 3600, 1),
        })  # fmt: skip
        print(f"{name}: {seconds:.1f} s, {windows / seconds:.0f} windows/s", flush=True)

    one = files[:1]
    out = workdir / "out"
    if args.scaling_only:
        return _scaling(args, files, grid, out, row, rows, hours)
    # Imports and model loads out of the in-process rows (the process and Dask rows include
    # each worker's): a 2-minute record through each model first.
    warm, _ = station_record(120, events=0, seed=99)
    warm_path = workdir / "warm.mseed"
    warm.write(str(warm_path), format="MSEED")
    models = [[]] + ([["--model", args.every_window_model, "--backend", b] for b in
                      ("ort", "openvino")] if args.every_window_model else [])  # fmt: skip
    for extra in models:
        _annotate([warm_path], workdir / "warm", "--workers", "1", "--threads",
                  str(args.threads), *extra)  # fmt: skip
    s = _annotate(one, out, "--workers", "1", "--threads", str(args.threads))
    row(f"seismag annotate, PhaseNetMag, 1 process x {args.threads} threads", s, grid,
        _model_windows(out), 1)  # fmt: skip
    # The default picker runs its network wherever the STA/LTA stirs; the STA/LTA alone is the
    # cheap choice for strong P (docs/serving.md#p-onsets), and this row says what it saves.
    s = _annotate(one, out, "--workers", "1", "--threads", str(args.threads),
                  "--picker", "sta_lta_aic")  # fmt: skip
    row(f"seismag annotate, PhaseNetMag, --picker sta_lta_aic, 1 process x {args.threads} "
        "threads", s, grid, _model_windows(out), 1)  # fmt: skip
    # The worst case of the default picker: its network on every window, whatever the noise.
    with _gate(args.threads, 0.0):
        s = _annotate(one, out, "--workers", "1", "--threads", str(args.threads))
    row(f"seismag annotate, PhaseNetMag, picker network on every window, 1 process x "
        f"{args.threads} threads", s, grid, _model_windows(out), 1)  # fmt: skip
    if args.every_window_model:
        name = Path(args.every_window_model).stem
        for backend in ("ort", "openvino"):
            s = _annotate(one, out, "--workers", "1", "--threads", str(args.threads),
                          "--model", args.every_window_model, "--backend", backend)  # fmt: skip
            row(f"seismag annotate, {name} ({backend}), 1 process x {args.threads} threads", s,
                grid, _model_windows(out), 1)  # fmt: skip
    for overlap in (2901, 1500):
        s, n = _seisbench(one[0], overlap, args.threads, args.batch)
        row(f"SeisBench annotate, PhaseNet, overlap {overlap}, {args.threads} threads", s, n, n, 1)
    return _scaling(args, files, grid, out, row, rows, hours)


def _seconds(path: Path) -> float:
    tr = read(str(path), headonly=True)[0]
    return tr.stats.npts / tr.stats.sampling_rate


def _scaling(args, files, grid, out, row, rows, hours) -> dict:
    if args.days > 1 and not args.real_noise:
        for workers in range(1, args.max_workers + 1):
            s = _annotate(files, out, "--workers", str(workers), "--threads", "1")
            row(f"seismag annotate, {len(files)} station-days, {workers} local processes", s,
                grid * len(files), _model_windows(out), len(files))  # fmt: skip
        with contextlib.suppress(ImportError):
            from distributed import LocalCluster

            for workers in range(1, args.max_workers + 1):
                with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:  # fmt: skip
                    s = _annotate(files, out, "--scheduler", cluster.scheduler_address,
                                  "--threads", "1")  # fmt: skip
                row(f"seismag annotate, {len(files)} station-days, Dask {workers} workers", s,
                    grid * len(files), _model_windows(out), len(files))  # fmt: skip
    return {"cpu_count": os.cpu_count(), "hours": round(hours, 3), "days": len(files),
            "rows": rows}  # fmt: skip


def stages(
    model: str | None, path: Path, hours: float, threads: int, gate: float | None = None
) -> dict:
    """Where one record's time goes in ``seismag annotate``'s path, stage by stage: the walk
    over the grid (the picker and building each window), normalisation, and the model calls;
    and the picker network's duty: the share of its windows the STA/LTA gate let it run.
    ``model`` None: the packaged default model; ``gate``: override the picker card's gate."""
    import numpy as np

    from seismag.models.preprocess import model_inputs
    from seismag.serving.archive.annotate import AnnotateOptions
    from seismag.serving.executor.backend import BackendOptions, load_backend
    from seismag.serving.executor.picker_runtime import load_picker
    from seismag.serving.executor.runtime import default_model_path
    from seismag.serving.pipeline.limits import Budget
    from seismag.serving.pipeline.predict import interval_samples, station_track, walk
    from seismag.serving.pipeline.units import VELOCITY, Responses

    st = read(str(path))
    st.trim(st[0].stats.starttime, st[0].stats.starttime + hours * 3600 - 0.001)
    backend = load_backend("ort", model or default_model_path(), BackendOptions(threads=threads))
    card = backend.card
    times = {"walk (picker, windows)": 0.0, "normalise": 0.0, "model": 0.0}
    with _gate(threads, gate):
        t0 = time.perf_counter()
        track, data, _ = station_track(("XX", st[0].stats.station, ""), st, card,
                                       responses=Responses(VELOCITY, None, None), inventory=None,
                                       response="causal", pick=None, missing="zeros",
                                       picker=load_picker("phasenet", threads))  # fmt: skip
        step = interval_samples(1.0, card.sampling_rate)
        evals = list(walk(track, data, step, budget=Budget(), normalise=False))
        times["walk (picker, windows)"] = time.perf_counter() - t0
    batch = AnnotateOptions().batch  # annotate's batch, written once there
    for i in range(0, len(evals), batch):
        t1 = time.perf_counter()
        x, log_amp = model_inputs(np.stack([e.waveform for e in evals[i : i + batch]]), card)
        t2 = time.perf_counter()
        backend.run(x, log_amp)
        times["normalise"] += t2 - t1
        times["model"] += time.perf_counter() - t2
    network = getattr(track.picker, "pickers", (None,))[0]
    ran = getattr(network, "windows_run", 0)
    possible = network.n // network.stride if network else 0  # the gate always open
    result = {"model": card.name, "hours": round(network.n / 3600 / network.rate, 3) if network
              else hours, "windows": len(evals), "picker_windows": ran,
              "picker_duty": round(ran / possible, 4) if possible else None,
              "seconds": {k: round(v, 2) for k, v in times.items()}}  # fmt: skip
    print(f"{card.name}, {result['hours']:g} h, {len(evals)} model windows, "
          f"{ran} picker windows (duty {ran / max(possible, 1):.1%}): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
          + f"; model {times['model'] / max(len(evals), 1) * 1e3:.2f} ms per window")  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/seismag_archive_bench")
    p.add_argument("--hours", type=float, default=24.0, help="length of each station record")
    p.add_argument("--days", type=int, default=4, help="station records for the scaling runs")
    p.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=2, help="threads of the single-process runs")
    p.add_argument("--batch", type=int, default=256, help="SeisBench batch size")
    p.add_argument("--every-window-model", help="a scalar model's ONNX file (e.g. ViTMag)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--scaling-only", action="store_true", help="only the 1..N worker runs")
    p.add_argument(
        "--stages", metavar="MODEL.onnx", nargs="?", const="",
        help="only where one record's time goes (default: the packaged model)",
    )  # fmt: skip
    p.add_argument(
        "--real-noise", action="store_true", help="ObsPy's real record, not synthetic days"
    )
    p.add_argument(
        "--gate", type=float, help="--stages: the picker card's STA/LTA gate (0: always open)"
    )
    args = p.parse_args(argv)
    if args.stages is not None:
        path = _records(args)[0]
        result = stages(args.stages or None, path, args.hours, args.threads, args.gate)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        return 0
    result = run(args)
    print("\n| run | s | windows | windows/s | network windows | station-days/h |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        print(f"| {r['run']} | {r['seconds']} | {r['windows']} | {r['windows_per_s']} | "
              f"{r['model_windows']} | {r['station_days_per_hour']} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
