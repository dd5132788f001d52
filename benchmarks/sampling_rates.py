"""How far do served magnitudes move when the same record arrives at another sampling rate?

    python -m seismag.benchmarks.sampling_rates --data DIR [--traces 200] [--sensitivity S]

Stations record at 20-1,000 Hz; the models read 100 Hz, so the server resamples
(:func:`seismag.models.preprocess.resample_trace`). Each trace of a SeisBench-format set at
100 Hz (the first ``--traces`` of the ``test`` split, in m/s, or counts divided by
``--sensitivity``) is turned into an off-rate record by a route the server does not take: below
100 Hz a zero-phase Butterworth low-pass at 0.4 x the new rate (a digitiser's anti-alias
filter) and band-limited FFT interpolation of the mirrored record (so it has no wrap-around
jump); above 100 Hz the same interpolation plus white noise above 55 Hz at half the trace's
standard deviation (a faster digitiser records what the 100 Hz one had filtered away, and it
must not alias into the band). Then the record is served as Predict serves it (the trace's
catalogue P pick, 1 s series, the final magnitude), once with the server's resampler and once
with ObsPy's ``Trace.resample`` (the FFT method with its default Hann window, and its causal
anti-alias pre-filter when decimating; the server's resampler until 2026-11-29), and compared
with the magnitude of the 100 Hz original. Below 100 Hz part of the difference is information
the record does not hold (nothing above 0.4 x its rate), whichever resampler.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# The off-rate record's low-pass corner below 100 Hz: a digitiser's, as the training option has it
# (only the corner is shared; the filter and the resampling here take another route).
from seismag.training.digitiser_band import ANTI_ALIAS_SHARE

DEFAULT_RATES = (20.0, 40.0, 50.0, 200.0, 250.0, 500.0, 1000.0)
NATIVE_RATE = 100.0
NOISE_ABOVE_HZ = 55.0
NOISE_SHARE = 0.5
"""White noise added above ``NOISE_ABOVE_HZ`` to records faster than 100 Hz, as a share of the
trace's standard deviation."""


def obspy_resample(tr, rate: float) -> None:
    """ObsPy's ``Trace.resample`` as the server called it before 2026-11-29."""
    if tr.stats.sampling_rate > rate:
        tr.resample(rate, no_filter=False)
    else:
        tr.resample(rate)


def off_rate(x: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """(C, N) at 100 Hz -> (C, M) at ``rate`` Hz (see the module docstring)."""
    from scipy.signal import butter, resample, sosfiltfilt

    if rate < NATIVE_RATE:
        sos = butter(8, ANTI_ALIAS_SHARE * rate, fs=NATIVE_RATE, output="sos")
        x = sosfiltfilt(sos, x, axis=-1)
    n = x.shape[-1]
    mirrored = np.concatenate([x, x[:, ::-1]], axis=-1)
    m = round(2 * n * rate / NATIVE_RATE)
    y = resample(mirrored, m, axis=-1)[:, : m // 2]
    if rate > NATIVE_RATE:
        spectrum = np.fft.rfft(rng.normal(size=y.shape), axis=-1)
        spectrum[:, np.fft.rfftfreq(y.shape[-1], 1.0 / rate) < NOISE_ABOVE_HZ] = 0.0
        noise = np.fft.irfft(spectrum, n=y.shape[-1], axis=-1)
        scale = (
            NOISE_SHARE * np.std(x, axis=-1, keepdims=True) / np.std(noise, axis=-1, keepdims=True)
        )
        y = y + noise * scale
    return y


def run(
    data: str | Path,
    *,
    traces: int = 200,
    rates: tuple[float, ...] = DEFAULT_RATES,
    sensitivity: float = 1.0,
    model: str | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Mean |M(rate) - M(100 Hz)| and mean M(rate) - M(100 Hz) per rate and resampler."""
    from obspy import Stream, Trace, UTCDateTime

    import seismag.models.preprocess as preprocess
    from seismag.serving.errors import InvalidInput
    from seismag.serving.executor.runtime import ModelRegistry, default_model_path
    from seismag.serving.pipeline.predict import predict
    from seismag.training.dataset import WaveformDataset

    ds = WaveformDataset(data, component_order="ZNE")
    if "split" in ds.metadata.columns:
        ds = ds.split("test")
    if ds.sampling_rate != NATIVE_RATE:
        raise ValueError(f"{data}: traces at {ds.sampling_rate:g} Hz; this needs {NATIVE_RATE:g}")
    resamplers = {"served": preprocess.resample_trace, "obspy_resample": obspy_resample}
    registry = ModelRegistry.from_paths([model or default_model_path()])
    runtime = registry.get("")
    rng = np.random.default_rng(seed)
    t0 = UTCDateTime(0)
    diffs = {name: {r: [] for r in rates} for name in resamplers}
    used, skipped, started = 0, 0, time.monotonic()

    def magnitude(x: np.ndarray, rate: float, pick) -> float:
        st = Stream(
            Trace(x[i], header={"network": "XX", "station": "S", "channel": "HH" + c,
                                "sampling_rate": rate, "starttime": t0})
            for i, c in enumerate("ZNE")
        )  # fmt: skip
        (result,) = predict(
            registry, st, model=runtime.name, units="m/s", picker=registry.picker,
            series_interval=1.0, p_picks={"XX.S.": pick},
        )  # fmt: skip
        return result.magnitude

    try:
        for i in range(min(traces, len(ds.metadata))):
            p = ds.metadata["trace_p_arrival_sample"].iloc[i]
            if not np.isfinite(p):
                skipped += 1
                continue
            x = ds.get_waveform(i).astype(np.float64) / sensitivity
            pick = t0 + float(p) / NATIVE_RATE
            try:
                native = magnitude(x, NATIVE_RATE, pick)
            except InvalidInput:  # no value for this trace at its own rate (e.g. P too late)
                skipped += 1
                continue
            used += 1
            for rate in rates:
                y = off_rate(x, rate, rng)
                for name, fn in resamplers.items():
                    preprocess.resample_trace = fn
                    try:
                        diffs[name][rate].append(magnitude(y.copy(), rate, pick) - native)
                    finally:
                        preprocess.resample_trace = resamplers["served"]
            if progress and used % 25 == 0:
                progress(f"{used} traces, {time.monotonic() - started:.0f} s")
    finally:
        registry.close()
    rows = []
    for rate in rates:
        row = {"rate_hz": rate}
        for name in resamplers:
            d = np.asarray(diffs[name][rate])
            row[f"{name}_mean_abs"] = float(np.mean(np.abs(d))) if d.size else float("nan")
            row[f"{name}_mean"] = float(np.mean(d)) if d.size else float("nan")
        rows.append(row)
    return {
        "data": str(data),
        "traces": used,
        "skipped": skipped,
        "sensitivity": sensitivity,
        "model": runtime.name,
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['traces']} traces of {result['data']} ({result['model']}); "
        "|M(rate) - M(100 Hz)| mean (signed mean)",
        "",
        "| rate (Hz) | served resampler | ObsPy Trace.resample |",
        "|---:|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['rate_hz']:g} | {row['served_mean_abs']:.3f} ({row['served_mean']:+.3f}) | "
            f"{row['obspy_resample_mean_abs']:.3f} ({row['obspy_resample_mean']:+.3f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True, help="SeisBench-format folder at 100 Hz")
    ap.add_argument("--traces", type=int, default=200, help="first traces of its test split")
    ap.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=list(DEFAULT_RATES),
        help="Hz (default: %(default)s)",
    )
    ap.add_argument(
        "--sensitivity", type=float, default=1.0, help="counts per m/s (a set stored in counts)"
    )
    ap.add_argument("--model", help="an exported .onnx (default: the embedded default model)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"error: {args.data} is not a folder", file=sys.stderr)
        return 2
    if args.traces < 1 or args.sensitivity <= 0 or any(r <= 0 for r in args.rates):
        print("error: --traces, --sensitivity and --rates must be positive", file=sys.stderr)
        return 2
    try:
        result = run(
            args.data,
            traces=args.traces,
            rates=tuple(args.rates),
            sensitivity=args.sensitivity,
            model=args.model,
            progress=lambda msg: print(msg, file=sys.stderr),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
