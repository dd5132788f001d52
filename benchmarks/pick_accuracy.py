"""P onsets without a client pick: the server's pickers side by side.

    .venv/bin/python -m seismag.benchmarks.pick_accuracy --events 60 --stead DIR --heldout DIR

Pickers: the old 10 s STA/LTA, the STA/LTA + AIC picker (``sta_lta_aic``) and the picker network
(``phasenet``, the packaged ONNX file or ``--picker-onnx``), each fed the whole record through the
class the server uses. Records start 2-10 s before P (what a client sends for one event). Sets:
synthetic traces of :mod:`seismag.training.synthetic` for the seed the STA/LTA constants were tuned
on (1), a held-out seed (2), a held-out seed (3) with other noise, kappa, stress drop and
distances, ``--fresh-seeds``: more sets of seed 2's configuration under seeds nothing was
chosen on, ``--heldout``: the test split of a SeisBench-format dataset (the unseen regimes of
docs/evaluation.md) cut so that 2-10 s of noise precede P, and ``--stead``: the 50 real STEAD
traces of TA.109C cut so that 2-7 s of noise precede the analyst's P (validation only). Held-out
sets and STEAD also get rows with the horizontals zeroed (a Z-only station). The picker
network was trained on ``seismag synth --regimes wna,two_corner,broad --seed 1`` (other events,
other physics than seeds 2 and 3 of the plain generator, none of the unseen regimes).
``--obspy`` adds ObsPy's ``ar_pick`` and ``pk_baer`` with their documentation's parameters.
Each picker reads the whole record and reports its first onset. Columns: ``ok`` pick within 0.5 s
of P; ``S`` pick nearer the S arrival than P (S taken for P); ``other`` any other wrong pick;
``none`` no pick; ``ok|pick`` within 0.5 s among the traces picked; ``med`` median |pick - P| (s)
of the picks. All as fractions of the traces in the row.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from obspy.signal.trigger import ar_pick, pk_baer

from seismag.serving.executor.picker_runtime import PickerRuntime, default_picker_path
from seismag.serving.pipeline.onset import CombinedPicker, NetworkPicker, OnsetPicker, PPicker
from seismag.training.synthetic import SyntheticConfig, simulate_event

TOLERANCE_S = 0.5
SHORT_CONFIG = SyntheticConfig(p_window_s=(2.0, 10.0))
OTHER_CONFIG = replace(
    SHORT_CONFIG,
    noise_level_beta=(3.0, 2.5),  # noisier stations (mean 0.55 of the way to NHNM, was 0.36)
    kappa_s=0.06,
    stress_drop_bar=30.0,
    distance_range_km=(10.0, 150.0),
)


P_SNR_BINS = [(-np.inf, 3.0), (3.0, 6.0), (6.0, 10.0), (10.0, np.inf)]


def p_snr_db(w: np.ndarray, p: int, rate: float) -> float:
    """How visible P is on Z: power in the first second after P over the power before it
    (1 s after the record start to 0.1 s before P), both 3-20 Hz (causal 4th-order Butterworth),
    in dB. The generator's trace_snr_db measures the S wave, which is 10-20 dB stronger."""
    from scipy.signal import butter, sosfilt

    sos = butter(4, (3.0, min(20.0, 0.45 * rate)), "bandpass", fs=rate, output="sos")
    x = sosfilt(sos, np.asarray(w[0], dtype=np.float64))
    skip, gap, n = round(rate), round(0.1 * rate), round(rate)
    noise = x[skip : max(p - gap, skip + 10)]
    signal = x[p : p + n]
    return float(10 * np.log10(np.mean(signal**2) / max(np.mean(noise**2), 1e-300)))


@dataclass
class TraceSet:
    name: str
    waveforms: list[np.ndarray]  # (3, N) ZNE each
    p: np.ndarray
    s: np.ndarray
    snr_db: np.ndarray
    rate: float = 100.0


def synthetic_set(name: str, seed: int, events: int, config: SyntheticConfig) -> TraceSet:
    waves, p, s, snr = [], [], [], []
    for i in range(events):
        ev = simulate_event(seed, i, config)
        waves += list(ev.waveforms)
        p += [m["trace_p_arrival_sample"] for m in ev.metadata]
        s += [m["trace_s_arrival_sample"] for m in ev.metadata]
        snr += [m["trace_snr_db"] for m in ev.metadata]
    return TraceSet(name, waves, np.array(p), np.array(s), np.array(snr))


def stead_set(path: Path, seed: int = 0) -> TraceSet:
    """STEAD traces (a SeisBench-format folder) cut to start 2-7 s before the analyst's P."""
    stead = Path(path)
    if not (stead / "metadata.csv").exists():
        raise SystemExit(f"--stead {path}: no metadata.csv there")
    import h5py
    import pandas as pd

    meta = pd.read_csv(stead / "metadata.csv")
    rng = np.random.default_rng(seed)
    waves, p, s = [], [], []
    with h5py.File(stead / "waveforms.hdf5", "r") as f:
        for _, row in meta.iterrows():
            data = np.asarray(f["data"][row["trace_name"]], dtype=np.float64)
            p0 = round(row["trace_p_arrival_sample"])
            cut = max(p0 - round(rng.uniform(2.0, 7.0) * 100), 0)
            waves.append(data[:, cut:])
            p.append(p0 - cut)
            s.append(round(row["trace_s_arrival_sample"]) - cut)
    snr = meta["trace_snr_db"].to_numpy(dtype=np.float64)
    return TraceSet("STEAD TA.109C, cut", waves, np.array(p), np.array(s), snr)


def old_pick(w: np.ndarray, rate: float) -> tuple[int | None, float]:
    """The first onset of the previous server picker (10 s STA/LTA on Z); no confidence."""
    picker = OnsetPicker(rate)
    picker.feed(w[0])
    return (picker.accepted[0], np.nan) if picker.accepted else (None, np.nan)


def new_pick(w: np.ndarray, rate: float, **rows) -> tuple[int | None, float]:
    """The first onset of the server's picker and its confidence."""
    picker = PPicker(rate, **rows)
    picker.feed(w)
    return _first(picker)


def _first(picker) -> tuple[int | None, float]:
    return (
        (picker.accepted[0].sample, picker.accepted[0].confidence)
        if picker.accepted
        else (
            None,
            np.nan,
        )
    )


def heldout_set(path: Path, n: int = 400, seed: int = 0) -> TraceSet:
    """Test traces of a SeisBench-format dataset, each cut to start 2-10 s before its P."""
    from seismag.training.dataset import WaveformDataset

    ds = WaveformDataset(path)
    if "split" in ds.metadata.columns:
        ds = ds.split("test")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(ds), size=min(n, len(ds)), replace=False)
    waves, p, s, snr = [], [], [], []
    for i in rows:
        meta = ds.metadata.iloc[int(i)]
        p0 = round(meta["trace_p_arrival_sample"])
        cut = max(p0 - round(rng.uniform(2.0, 10.0) * 100), 0)
        waves.append(ds.get_waveform(int(i)).astype(np.float64)[:, cut:])
        p.append(p0 - cut)
        s.append(round(meta["trace_s_arrival_sample"]) - cut)
        snr.append(meta["trace_snr_db"])
    name = f"{Path(path).name} test, cut"
    return TraceSet(name, waves, np.array(p), np.array(s), np.array(snr))


def network_pick(runtime: PickerRuntime, *, combined: bool = False, z_only: bool = False):
    """The first onset of the picker network (``combined``: of the network and the STA/LTA
    together, as the server runs them), and its confidence."""

    def pick(w: np.ndarray, rate: float) -> tuple[int | None, float]:
        picker = NetworkPicker(runtime)
        if combined:
            sta_lta = PPicker(rate, horizontal=() if z_only else (1, 2))
            picker = CombinedPicker(picker, sta_lta)
        picker.feed(w)
        return _first(picker)

    return pick


def outcomes(picks: list[int | None], ts: TraceSet) -> np.ndarray:
    """Per trace: 'ok', 'S', 'other' or 'none'."""
    tol = TOLERANCE_S * ts.rate
    out = []
    for o, p, s in zip(picks, ts.p, ts.s, strict=True):
        if o is None:
            out.append("none")
        elif abs(o - p) <= tol:
            out.append("ok")
        elif abs(o - s) < abs(o - p):
            out.append("S")
        else:
            out.append("other")
    return np.array(out)


def row(label: str, kind: np.ndarray, err_s: np.ndarray) -> str:
    n = kind.size
    if n == 0:
        return f"| {label} | 0 | | | | | | |"
    frac = {k: np.mean(kind == k) for k in ("ok", "S", "other", "none")}
    picked = kind != "none"
    ok_pick = np.mean(kind[picked] == "ok") if picked.any() else float("nan")
    med = np.nanmedian(err_s[picked]) if picked.any() else float("nan")
    return (
        f"| {label} | {n} | {frac['ok']:.3f} | {frac['S']:.3f} | {frac['other']:.3f} | "
        f"{frac['none']:.3f} | {ok_pick:.3f} | {med:.2f} |"
    )


HEADER = "| set / picker | n | ok | S | other | none | ok\\|pick | med (s) |\n|" + "---|" * 8


def ar_pick_first(w: np.ndarray, rate: float) -> tuple[int | None, float]:
    """ObsPy's ``ar_pick`` with its documentation's example parameters (whole record at once)."""
    z, n, e = (c.astype(np.float32) for c in w)
    tp, _ = ar_pick(z, n, e, rate, 1.0, 20.0, 1.0, 0.1, 4.0, 1.0, 2, 8, 0.1, 0.2)
    return (round(tp * rate), np.nan) if tp > 0 else (None, np.nan)


def pk_baer_first(w: np.ndarray, rate: float) -> tuple[int | None, float]:
    """ObsPy's ``pk_baer`` on Z with its documentation's example parameters."""
    tp, _ = pk_baer(w[0].astype(np.float32), int(rate), 20, 60, 7.0, 12.0, 100, 100)
    return (int(tp), np.nan) if tp > 0 else (None, np.nan)


Result = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Per trace: outcome, |pick - P| in s (NaN without a pick), confidence."""


OLD, STA, NET, BOTH = "old sta_lta", "sta_lta_aic", "network alone", "phasenet (served)"


def evaluate(
    ts: TraceSet, network: PickerRuntime, *, z_only: bool = False, obspy: bool = False
) -> dict[str, Result]:
    runs = {
        OLD: old_pick,
        STA: new_pick,
        NET: network_pick(network),
        BOTH: network_pick(network, combined=True),
    }
    if obspy:
        runs |= {"obspy ar_pick": ar_pick_first, "obspy pk_baer": pk_baer_first}
    if z_only:  # a station whose horizontals are missing
        runs[f"{STA}, Z only"] = lambda w, rate: new_pick(w, rate, vertical=0, horizontal=())
        z = network_pick(network, combined=True, z_only=True)
        runs[f"{BOTH}, Z only"] = lambda w, rate: z(np.concatenate([w[:1], 0 * w[1:]]), rate)
    results = {}
    for name, fn in runs.items():
        got = [fn(w, ts.rate) for w in ts.waveforms]
        picks = [o for o, _ in got]
        err = np.array(
            [
                np.nan if o is None else abs(o - p) / ts.rate
                for o, p in zip(picks, ts.p, strict=True)
            ]
        )
        results[name] = (outcomes(picks, ts), err, np.array([c for _, c in got]))
    return results


def cost(network: PickerRuntime, repeats: int = 5) -> None:
    """What the pickers cost: microseconds per station-second fed in 1 s packets (a live
    feed), and milliseconds for a 30 s record fed at once (a Predict without a pick), on a
    record of noise alone and on one with an event; medians of ``repeats`` runs."""
    import time

    from seismag.training.synthetic import peterson_noise

    ev = simulate_event(2, 0, SHORT_CONFIG)
    event = ev.waveforms[int(np.argmax([m["trace_snr_db"] for m in ev.metadata]))]
    noise = peterson_noise(np.random.default_rng(0), np.array([0.4]), event.shape[1], 100.0)[0]
    pickers = {
        STA: lambda: PPicker(100.0),
        BOTH: lambda: CombinedPicker(NetworkPicker(network), PPicker(100.0)),
        NET: lambda: NetworkPicker(network),
    }
    print("\n| record | picker | us per station-second (1 s packets) | ms per 30 s record |")
    print("|---|---|---:|---:|")
    for label, w in (("noise", noise), ("event", event)):
        w = np.asarray(w, dtype=np.float64)
        for name, make in pickers.items():
            live, whole = [], []
            for _ in range(repeats):
                p, t0 = make(), time.perf_counter()
                for i in range(0, w.shape[1], 100):
                    p.feed(w[:, i : i + 100])
                live.append((time.perf_counter() - t0) / (w.shape[1] / 100) * 1e6)
                p, t0 = make(), time.perf_counter()
                p.feed(w[:, :3000])
                whole.append((time.perf_counter() - t0) * 1e3)
            print(f"| {label} | {name} | {np.median(live):.0f} | {np.median(whole):.2f} |")


def onsets_per_hour(network: PickerRuntime, record: np.ndarray, rate: float, z_only: bool) -> float:
    """Onsets the served picker accepts per hour of ``record`` (C, N), fed in the chunks a
    Predict's walk feeds, with the server's refractory of one 30 s model window. On a record of
    noise alone every onset is a false one, and each would become a magnitude."""
    refractory = round(30 * rate)
    sta_lta = PPicker(rate, horizontal=() if z_only else (1, 2), refractory=refractory)
    served = CombinedPicker(NetworkPicker(network, refractory=refractory), sta_lta,
                            refractory=refractory)  # fmt: skip
    found: set[int] = set()
    for i in range(0, record.shape[1], 3001):
        served.feed(record[:, i : i + 3001])
        # onsets older than max_delay are final (the merge is chunk-independent)
        found |= {o.sample for o in served.accepted if o.sample < served.n - served.max_delay}
    found |= {o.sample for o in served.accepted}  # the record's end decides the rest
    return len(found) / (record.shape[1] / rate / 3600)


def noise_records() -> list[tuple[str, np.ndarray, bool]]:
    """Records without a known event: two hours of the generator's Peterson noise, and the real
    ObsPy record (:func:`~seismag.benchmarks.archive_data.obspy_kw1_record`, Z only) in two
    halves, the first for choosing settings, the second held out."""
    from seismag.benchmarks.archive_data import obspy_kw1_record, station_record

    st, _ = station_record(7200.0, events=0, seed=2)
    synthetic = np.stack([tr.data for tr in st]).astype(np.float64)
    z = obspy_kw1_record()[0].data.astype(np.float64)
    real = np.zeros((3, z.size))
    real[0] = z
    half = z.size // 2
    return [
        ("synthetic noise", synthetic, False),
        ("real noise KW1, 1st half", real[:, :half], True),
        ("real noise KW1, 2nd half", real[:, half:], True),
    ]


def sweep(network: PickerRuntime, settings: list[str], sets: list[TraceSet]) -> None:
    """The served picker under other serving settings of the network
    (``STRIDE,GATE,LOOKAHEAD[,THRESHOLD]`` in seconds, ratio, seconds, probability): share
    within 0.5 s per set, the longest an onset waits to be decided (``max_delay``: a live
    magnitude starts no earlier), the network windows run on two hours of a continuous record
    (Peterson noise with two events, the archive benchmark's generator) with their time, and
    the onsets per hour on records of noise alone (:func:`noise_records`): false onsets."""
    import time

    from seismag.benchmarks.archive_data import station_record

    st, _ = station_record(7200.0, events=2, seed=2)
    record = np.stack([tr.data for tr in st]).astype(np.float64)
    noise = noise_records()
    base = network.card
    print("| stride s | gate | look-ahead s | threshold | max delay s | "
          + " | ".join(ts.name for ts in sets) + " | network windows in 2 h | s | "
          + " | ".join(f"onsets/h, {name}" for name, _, _ in noise) + " |")  # fmt: skip
    print("|" + "---|" * (len(sets) + len(noise) + 7))
    try:
        for text in settings:
            values = [float(v) for v in text.split(",")]
            stride, gate, look = values[:3]
            threshold = values[3] if len(values) > 3 else base.threshold
            network.card = replace(base, stride_s=stride, gate=gate, lookahead_s=look,
                                   threshold=threshold)  # fmt: skip
            cells = []
            for ts in sets:
                pick = network_pick(network, combined=True)
                kind = outcomes([pick(w, ts.rate)[0] for w in ts.waveforms], ts)
                cells.append(f"{np.mean(kind == 'ok'):.3f}")
            net = NetworkPicker(network)
            served = CombinedPicker(net, PPicker(100.0))
            t0 = time.perf_counter()
            for i in range(0, record.shape[1], 3001):  # the chunks a Predict's walk feeds
                served.feed(record[:, i : i + 3001])
            seconds = time.perf_counter() - t0
            delay = net.max_delay / net.rate
            rates = [f"{onsets_per_hour(network, r, 100.0, z):.1f}" for _, r, z in noise]
            print(f"| {stride:g} | {gate:g} | {look:g} | {threshold:g} | {delay:.1f} | "
                  + " | ".join(cells) + f" | {net.windows_run} | {seconds:.1f} | "
                  + " | ".join(rates) + " |", flush=True)  # fmt: skip
    finally:
        network.card = base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=60, help="synthetic events per set")
    ap.add_argument(
        "--obspy", action="store_true", help="also ObsPy's ar_pick and pk_baer (untuned)"
    )
    ap.add_argument(
        "--stead",
        type=Path,
        help="folder of the STEAD sample (SeisBench format, e.g. stead-109c) to add as a set",
    )
    ap.add_argument(
        "--heldout",
        type=Path,
        help="a SeisBench-format dataset whose test split (400 traces) is added as a set",
    )
    ap.add_argument(
        "--fresh-seeds",
        type=int,
        nargs="+",
        default=[],
        metavar="SEED",
        help="more held-out sets of seed 2's configuration under seeds no choice was made on "
        "(choose ones no earlier run looked at)",
    )
    ap.add_argument("--picker-onnx", type=Path, help="picker network (default: the packaged one)")
    ap.add_argument("--cost", action="store_true", help="only the time the pickers take")
    ap.add_argument(
        "--sweep",
        nargs="+",
        metavar="STRIDE,GATE,LOOKAHEAD[,THRESHOLD]",
        help="only the served picker under these network settings (e.g. 0.5,2,1 2,2,1,0.5)",
    )
    args = ap.parse_args()
    if used := sorted(set(args.fresh_seeds) & {1, 2, 3}):
        ap.error(f"--fresh-seeds: seeds 1, 2 and 3 are the sets above, not fresh ones ({used})")
    network = PickerRuntime(args.picker_onnx or default_picker_path())
    if args.cost:
        cost(network)
        return
    other = "synthetic seed 3, other config (held out)"
    sets = [
        (synthetic_set("synthetic seed 1 (STA/LTA tuning)", 1, args.events, SHORT_CONFIG), False),
        (synthetic_set("synthetic seed 2 (held out)", 2, args.events, SHORT_CONFIG), True),
        (synthetic_set(other, 3, args.events, OTHER_CONFIG), True),
    ]
    for seed in args.fresh_seeds:
        name = f"synthetic seed {seed} (fresh, as seed 2)"
        sets.append((synthetic_set(name, seed, args.events, SHORT_CONFIG), True))
    if args.heldout is not None:
        sets.append((heldout_set(args.heldout), True))
    if args.stead is not None:
        sets.append((stead_set(args.stead), True))
    if args.sweep:
        sweep(network, args.sweep, [ts for ts, _ in sets])
        return
    print(f"P within {TOLERANCE_S} s of the true P; fractions of all traces in the row.\n")
    print(HEADER)
    by_set = []
    for ts, z_only in sets:
        res = evaluate(ts, network, z_only=z_only, obspy=args.obspy)
        by_set.append((ts, res))
        for name, (kind, err, _) in res.items():
            print(row(f"{ts.name}: {name}", kind, err))
    print("\nBy the SNR of P itself (p_snr_db: first second of P on Z, 3-20 Hz):\n")
    print(HEADER)
    for ts, res in by_set:
        psnr = np.array([p_snr_db(w, p, ts.rate) for w, p in zip(ts.waveforms, ts.p, strict=True)])
        for lo, hi in P_SNR_BINS:
            m = (psnr >= lo) & (psnr < hi)
            for name in (STA, NET, BOTH):
                kind, err, _ = res[name]
                print(row(f"{ts.name}, P SNR {lo:g}-{hi:g} dB: {name}", kind[m], err[m]))
    print("\nBy noise before P:\n")
    print(HEADER)
    for ts, res in by_set:
        before = ts.p / ts.rate
        for lo, hi in [(2.0, 4.0), (4.0, 7.0), (7.0, 10.01)]:
            m = (before >= lo) & (before < hi)
            for name in (STA, NET, BOTH):
                kind, err, _ = res[name]
                print(row(f"{ts.name}, {lo:g}-{hi:g} s: {name}", kind[m], err[m]))
    held_out = [r for ts, r in by_set[1:] if not ts.name.startswith("STEAD")]
    for name in (STA, NET, BOTH):
        print(f"\nConfidence of {name}'s onsets vs. being within 0.5 s (held-out synthetic):\n")
        print("| onset_confidence | picks | within 0.5 s |\n|---|---|---|")
        kinds = np.concatenate([r[name][0] for r in held_out])
        conf = np.concatenate([r[name][2] for r in held_out])
        for lo, hi in [(0.0, 0.2), (0.2, 0.4), (0.4, 0.7), (0.7, 1.01)]:
            m = (conf >= lo) & (conf < hi)
            share = np.mean(kinds[m] == "ok") if m.any() else float("nan")
            print(f"| {lo:g}-{min(hi, 1):g} | {int(m.sum())} | {share:.3f} |")


if __name__ == "__main__":
    main()
