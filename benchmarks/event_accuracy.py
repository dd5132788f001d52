"""Event magnitudes against seconds after the first P: accuracy and calibration, per model and
for an ensemble, with and without station corrections learnt from earlier events.

    python -m seismag.benchmarks.event_accuracy --data DATASET --models ONNX... [--events 150]

Each test event of ``DATASET`` (SeisBench format, velocity in m/s) is sent through the serving
pipeline as one request holding all its stations (:func:`~seismag.serving.pipeline.predict.predict`,
the same code as a Predict) and the event magnitude of
:mod:`~seismag.serving.pipeline.event` is read at t seconds after the first P: the latest value
of its causal series at or before that time, so every number is what a live system would have
published then. P onsets are the catalogue's picks unless ``--picker``. A station table (the
network's calibration of :mod:`~seismag.serving.pipeline.station_table`) is fitted on
``--table-events`` events of the dataset's ``train`` split (earlier events of the same stations,
never the test events) and applied to the test events as a second row. A network lies in one
crust: with ``--group-by`` (the metadata's ``source_regime`` by default, where it has one) each
group is its own network, with its own table fitted on its own past events, and the figures come
per group as well as pooled. The ensemble is the members' mean per station
(:mod:`~seismag.serving.pipeline.ensemble`). Columns: MAE and bias of the event magnitude, and the
share of events whose error is within one and two of its sigmas (68 % and 95 % when calibrated).
``n`` counts events that have a value at that time.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from obspy import Stream, Trace, UTCDateTime

from seismag.benchmarks.stats import bootstrap_interval
from seismag.serving.errors import InvalidInput
from seismag.serving.executor.runtime import ModelRegistry
from seismag.serving.pipeline.ensemble import ensemble_station
from seismag.serving.pipeline.event import event_magnitude
from seismag.serving.pipeline.predict import predict, station_id
from seismag.serving.pipeline.station_table import (
    PastStation,
    StationTable,
    fit,
    prediction_rows,
)

TIMES = (3.0, 5.0, 10.0, 20.0)
"""Seconds after the first P. No value exists before 2 s (a station counts from 2 s after its P),
and at 2 s only where a station's series point falls exactly there (1 event in 60)."""
SERIES_INTERVAL = 0.5


def event_groups(data: Path, column: str | None) -> dict[str, str]:
    """source_id -> its group (one network each); one group "all" without ``column``."""
    from seismag.training.dataset import WaveformDataset

    meta = WaveformDataset(data).metadata
    if not column or column not in meta:
        return defaultdict(lambda: "all")
    return dict(zip(meta["source_id"].astype(str), meta[column].astype(str), strict=True))


def event_streams(data: Path, split: str, limit: int, seed: int = 0):
    """(source_id, catalogue magnitude, Stream in m/s, P picks) for ``limit`` events of a split."""
    from seismag.training.dataset import WaveformDataset

    ds = WaveformDataset(data).split(split)
    meta = ds.metadata
    ids = meta["source_id"].drop_duplicates().to_numpy()
    rng = np.random.default_rng(seed)
    if len(ids) > limit:
        ids = rng.choice(ids, size=limit, replace=False)
    rows = defaultdict(list)
    for i, sid in enumerate(meta["source_id"].to_numpy()):
        rows[sid].append(i)
    for sid in ids:
        st, picks = Stream(), {}
        for i in rows[sid]:
            m = meta.iloc[i]
            rate = float(m["trace_sampling_rate_hz"])
            start = UTCDateTime(m["trace_start_time"])
            net, sta = str(m["station_network_code"]), str(m["station_code"])
            loc = m.get("station_location_code", "")
            loc = "" if not isinstance(loc, str) else loc
            wave = ds.get_waveform(i)
            for comp, x in zip("ZNE", wave, strict=True):
                header = dict(network=net, station=sta, location=loc, sampling_rate=rate)
                st += Trace(
                    x.astype(np.float64), dict(header, channel=f"HH{comp}", starttime=start)
                )
            picks[f"{net}.{sta}"] = start + float(m["trace_p_arrival_sample"]) / rate
        yield str(sid), float(meta.iloc[rows[sid][0]]["source_magnitude"]), st, picks


def run_models(registry, names, events, picker: bool):
    """{model: {event: [StationResult]}} plus the catalogue magnitudes.

    Each station is its own request: a Predict is refused as a whole when one of its stations
    has no value (no onset with ``--picker``), and such a station cannot join the event anyway.
    """
    out = {n: {} for n in names}
    truth = {}
    for sid, mag, st, picks in events:
        truth[sid] = mag
        stations = sorted({(tr.stats.network, tr.stats.station) for tr in st})
        for n in names:
            results = []
            for net, sta in stations:
                try:
                    results += predict(
                        registry,
                        st.select(network=net, station=sta),
                        model=n,
                        units="m/s",
                        p_picks=None if picker else {f"{net}.{sta}": picks[f"{net}.{sta}"]},
                        series_interval=SERIES_INTERVAL,
                    )
                except InvalidInput:
                    continue
            if results:
                out[n][sid] = results
    return out, truth


def ensemble_name(members: list[str]) -> str:
    return "ensemble(" + "+".join(members) + ")"


def with_ensemble(results: dict, members: list[str], name: str) -> None:
    events = set.intersection(*(set(results[m]) for m in members))
    results[name] = {}
    for sid in events:
        by_station = defaultdict(list)
        for m in members:
            for r in results[m][sid]:
                by_station[station_id(r.network, r.station, r.location)].append(r)
        results[name][sid] = [
            ensemble_station(rs, name) for rs in by_station.values() if len(rs) == len(members)
        ]


def latest_at(times: np.ndarray, t: float) -> int:
    """Index of the latest value at or before ``t`` (-1: none yet)."""
    return int(np.searchsorted(times, t + 1e-9, side="right")) - 1


def event_errors(results: dict, truth: dict, tables: dict[str, StationTable] | None, groups):
    """Per time: (event, error, sigma) of the event magnitudes (each event calibrated by its
    group's table, or by none)."""
    rows = {t: [] for t in (*TIMES, "full")}
    for sid, stations in results.items():
        ev = event_magnitude(stations, tables[groups[sid]] if tables else None)
        if ev is None:
            continue
        offsets = ev.series_interval * np.arange(len(ev.series))
        offsets[-1] = float(ev.series_end - ev.series_start)
        after = float(ev.series_start - ev.first_onset) + offsets
        for t in TIMES:
            k = latest_at(after, t)
            if k >= 0:
                rows[t].append((sid, ev.series[k] - truth[sid], ev.sigma_series[k]))
        rows["full"].append((sid, ev.final.magnitude - truth[sid], ev.final.sigma))
    return rows


def score(rows: dict, keep=lambda sid: True) -> dict:
    """Per time: MAE, bias and coverage of :func:`event_errors` rows (of the events kept), with
    95 % intervals: the MAE's by a bootstrap over events, the coverages' by Wilson's score
    interval (a calibrated 68 % over 150 events lands within 68 +- 7.5 % only 95 % of the time)."""
    summary = {}
    for t, all_pairs in rows.items():
        # In event order: the bootstrap's resamples then do not depend on dict order.
        pairs = [(e, s) for sid, e, s in sorted(all_pairs, key=lambda r: r[0]) if keep(sid)]
        if not pairs:
            summary[str(t)] = {"n": 0}
            continue
        err, sig = np.array(pairs).T
        within = [int(np.sum(np.abs(err) <= k * sig)) for k in (1, 2)]
        summary[str(t)] = {
            "n": len(pairs),
            "mae": float(np.mean(np.abs(err))),
            "mae_interval": bootstrap_interval(np.abs(err)),
            "bias": float(np.mean(err)),
            "within_1sigma": within[0] / len(pairs),
            "within_1sigma_interval": wilson(within[0], len(pairs)),
            "within_2sigma": within[1] / len(pairs),
            "within_2sigma_interval": wilson(within[1], len(pairs)),
        }
    return summary


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson's score interval of a proportion k / n (Wilson 1927, JASA 22(158))."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(centre - half), float(centre + half)]


def against_best_member(rows_by_name: dict, members: list[str], ensemble: str) -> dict:
    """Per time: the ensemble's MAE minus that of its most accurate member there, on the events
    both have, with a paired bootstrap 95 % interval. The member is chosen on these same events,
    which favours it (an optimistic best member, so a tie is not a loss)."""
    out = {}
    for t, ens_rows in rows_by_name[ensemble].items():
        errors = {sid: abs(e) for sid, e, _ in ens_rows}
        by_member = {m: {sid: abs(e) for sid, e, _ in rows_by_name[m][t]} for m in members}
        events = sorted(set(errors).intersection(*by_member.values()))
        if not events:
            continue
        best = min(members, key=lambda m: np.mean([by_member[m][s] for s in events]))
        diff = np.array([errors[s] - by_member[best][s] for s in events])
        out[str(t)] = {
            "n": len(events),
            "best_member": best,
            "ensemble_mae": float(np.mean([errors[s] for s in events])),
            "member_mae": float(np.mean([by_member[best][s] for s in events])),
            "difference": float(diff.mean()),
            "difference_interval": bootstrap_interval(diff),
        }
    return out


def rank_ensembles(single: dict[str, dict], ensemble_rows) -> list[dict]:
    """Every ensemble of two or more of the ``single`` models against the most accurate single
    model at each time (the lowest MAE there, picked after the fact), best first: sorted by the
    worst difference over the times, then by the mean difference. ``single`` maps a model to
    its :func:`event_errors` rows, ``ensemble_rows(members)`` gives the same rows for the
    ensemble of ``members``. Choose members on a development split, then score the choice once
    on the test split: picked from many on the same events, the winner is optimistic."""

    def mae(rows: list) -> float:
        return float(np.mean([abs(e) for _, e, _ in rows])) if rows else float("nan")

    def within(rows: list) -> float:
        return float(np.mean([abs(e) <= s for _, e, s in rows])) if rows else float("nan")

    names = list(single)
    times = list(single[names[0]])
    best = {t: min(mae(single[m][t]) for m in names) for t in times}
    ranked = []
    for k in range(2, len(names) + 1):
        for members in itertools.combinations(names, k):
            rows = ensemble_rows(list(members))
            diff = {str(t): mae(rows[t]) - best[t] for t in times}
            ranked.append(
                {
                    "members": list(members),
                    "difference": diff,
                    "within_1sigma": {str(t): within(rows[t]) for t in times},
                    "worst": max(diff.values()),
                    "mean": float(np.mean(list(diff.values()))),
                }
            )
    return sorted(ranked, key=lambda r: (r["worst"], r["mean"]))


def station_rows(results: dict, truth: dict) -> list[dict[str, str]]:
    """The predictions CSV rows of events' station results (the station table's fit reads them)."""
    return [
        row
        for sid, stations in results.items()
        for row in prediction_rows(sid, truth[sid], [past_station(r) for r in stations])
    ]


def past_station(r) -> PastStation:
    return PastStation(
        station_id(r.network, r.station, r.location),
        r.magnitude,
        r.magnitude_sigma,
        r.onset,
        UTCDateTime(r.series_start),
        r.series_offsets(),
        np.asarray(r.series),
        None if r.sigma_series is None else np.asarray(r.sigma_series),
    )


def _table_figures(t: StationTable) -> dict:
    return {
        "events": t.events,
        "network_correction": t.network_correction,
        "stations": len(t.corrections),
        "shared_error_fraction": t.shared_error_fraction,
        "sigma_scale": t.sigma_scale,
        "early_correction": {f"{s:g}": c for s, c in t.early},
        "early_gain": {f"{s:g}": g for (s, _), g in zip(t.early, t.knot_gains(), strict=True)},
        "final_correction": t.final_correction,
        "final_gain": t.final_gain,
        "sigma_scale_by_time": dict(
            zip(
                [*(f"{s:g}" for s, _ in t.early), "after"],
                t.knot_terms()[2].tolist(),
                strict=True,
            )
        ),
        "magnitude_pivot": t.magnitude_pivot,
        "event_terms": t.describe_event_terms(),
    }


def markdown(label: str, summary: dict) -> str:
    cells = []
    n = summary["full"]["n"]
    for t in (*TIMES, "full"):
        s = summary[str(t)]
        if not s["n"]:
            cells.append("-")
            continue
        fewer = f", {s['n']} ev" if s["n"] < n else ""
        cells.append(
            f"{s['mae']:.2f} ({s['bias']:+.2f}; {100 * s['within_1sigma']:.0f}/"
            f"{100 * s['within_2sigma']:.0f}%{fewer})"
        )
    return f"| {label} | {n} | " + " | ".join(cells) + " |"


def intervals(name: str, figures: dict) -> str:
    """The ensemble's figures with their table, with 95 % intervals, and against its best
    member (:func:`score`, :func:`against_best_member`)."""
    lines = [
        f"\n{name} + station table, 95 % intervals (MAE: bootstrap over events; coverage: "
        "Wilson); ensemble MAE minus its best member's (both with their tables; paired "
        "bootstrap):\n",
        "| time | MAE | within 1 sigma | within 2 sigma | best member | MAE difference |",
        "|---|---|---|---|---|---|",
    ]
    for t, s in figures["station_table"].items():
        if not s["n"]:
            continue
        b = figures["against_best_member"].get(t)

        def pct(key: str, s: dict = s) -> str:
            lo, hi = s[f"{key}_interval"]
            return f"{100 * s[key]:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"

        vs = (
            f"{b['best_member']} {b['member_mae']:.3f} | {b['difference']:+.3f} "
            f"[{b['difference_interval'][0]:+.3f}, {b['difference_interval'][1]:+.3f}]"
            if b
            else "- | -"
        )
        lo, hi = s["mae_interval"]
        label = "full" if t == "full" else f"{float(t):g} s"
        lines.append(
            f"| {label} | {s['mae']:.3f} [{lo:.3f}, {hi:.3f}] | {pct('within_1sigma')} | "
            f"{pct('within_2sigma')} | {vs} |"
        )
    return "\n".join(lines)


HEADER = (
    "| model | events | "
    + " | ".join(f"{t:g} s" for t in TIMES)
    + " | full |\n|"
    + "---|" * (len(TIMES) + 3)
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="SeisBench-format dataset (m/s)")
    ap.add_argument("--models", nargs="+", required=True, help="ONNX files")
    ap.add_argument("--events", type=int, default=150, help="events of --split (random sample)")
    ap.add_argument("--table-events", type=int, default=150, help="train-split events to fit on")
    ap.add_argument(
        "--ensemble",
        nargs="+",
        action="append",
        help="an ensemble's members (repeat for several; default: one of all models)",
    )
    ap.add_argument(
        "--picker", action="store_true", help="onsets from the picker, not the catalogue"
    )
    ap.add_argument(
        "--group-by",
        default="source_regime",
        help="metadata column whose values are separate networks (each its own station table); "
        "'none' for one network",
    )
    ap.add_argument(
        "--split",
        default="test",
        help="the split whose events are scored (default test; dev to choose members on)",
    )
    ap.add_argument(
        "--choose-members",
        action="store_true",
        help="also rank every ensemble of two or more of the models against the best single "
        "model at each time (run it on --split dev, then score the choice on test)",
    )
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument(
        "--plot", type=Path, help="PNG of the first test event of the first model (or ensemble)"
    )
    args = ap.parse_args(argv)

    registry = ModelRegistry.from_paths(args.models, max_queue_delay_ms=0.0)
    names = registry.names()
    ensembles = args.ensemble or [names]
    try:
        test, truth = run_models(
            registry, names, event_streams(args.data, args.split, args.events), args.picker
        )
        past, past_truth = run_models(
            registry, names, event_streams(args.data, "train", args.table_events, 1), args.picker
        )
    finally:
        registry.close()
    for members in ensembles:
        if len(members) > 1:
            ens = ensemble_name(members)
            with_ensemble(test, members, ens)
            with_ensemble(past, members, ens)
    groups = event_groups(args.data, None if args.group_by == "none" else args.group_by)
    names_of = sorted({groups[s] for s in truth} | {groups[s] for s in past_truth})
    figures = {}
    per_group = []
    corrected_by_name = {}
    print(f"{args.data}: event magnitude at t s after the first P; MAE (bias; within 1/2 sigma)")
    print(f"Networks (a station table each): {', '.join(names_of)}\n")
    print(HEADER)

    def network_tables(name: str) -> dict[str, StationTable]:
        tables = {}
        for g in names_of:
            rows = station_rows({s: v for s, v in past[name].items() if groups[s] == g}, past_truth)
            tables[g] = fit(rows, model=name) if rows else StationTable(model=name)
        return tables

    for name in test:
        tables = network_tables(name)
        plain_rows = event_errors(test[name], truth, None, groups)
        corrected_rows = event_errors(test[name], truth, tables, groups)
        plain, corrected = score(plain_rows), score(corrected_rows)
        corrected_by_name[name] = corrected_rows
        figures[name] = {
            "no_corrections": plain,
            "station_table": corrected,
            "tables": {g: _table_figures(t) for g, t in tables.items()},
            "groups": {},
        }
        print(markdown(name, plain))
        print(markdown(f"{name} + station table", corrected))
        if len(names_of) > 1:
            for g in names_of:
                fig = {
                    "no_corrections": score(plain_rows, lambda s, g=g: groups[s] == g),
                    "station_table": score(corrected_rows, lambda s, g=g: groups[s] == g),
                }
                figures[name]["groups"][g] = fig
                per_group.append(markdown(f"{name}, {g}", fig["no_corrections"]))
                per_group.append(markdown(f"{name}, {g} + station table", fig["station_table"]))
    if per_group:
        print("\nPer network:\n")
        print(HEADER)
        print("\n".join(per_group))
    for members in ensembles:
        if len(members) > 1:
            ens = ensemble_name(members)
            figures[ens]["against_best_member"] = against_best_member(
                corrected_by_name, members, ens
            )
            print(intervals(ens, figures[ens]))
    if args.choose_members:

        def ensemble_rows(members: list[str]) -> dict:
            ens = ensemble_name(members)
            if ens in corrected_by_name:  # asked for with --ensemble: scored above
                return corrected_by_name[ens]
            with_ensemble(test, members, ens)
            with_ensemble(past, members, ens)
            try:
                return event_errors(test[ens], truth, network_tables(ens), groups)
            finally:
                del test[ens], past[ens]

        ranked = rank_ensembles({n: corrected_by_name[n] for n in names}, ensemble_rows)
        print(
            f"\nEnsembles with their tables, MAE minus the best single model's at each time "
            f"({args.split} split; best first, of {len(ranked)}):\n"
        )
        print("| members | " + " | ".join(f"{t} s" for t in TIMES) + " | full | within 1 sigma |")
        print("|---" * (len(TIMES) + 3) + "|")
        for r in ranked[:5] + [r for r in ranked[5:] if len(r["members"]) == len(names)]:
            cover = [100 * v for v in r["within_1sigma"].values()]
            print(
                f"| {' + '.join(r['members'])} | "
                + " | ".join(f"{d:+.3f}" for d in r["difference"].values())
                + f" | {min(cover):.0f}-{max(cover):.0f} % |"
            )
    print("\nStation tables (train-split events of each network):")
    for name, f in figures.items():
        for g, t in f["tables"].items():
            print(
                f"- {name}, {g}: {t['events']} events, network correction "
                f"{t['network_correction']:+.2f}, {t['stations']} station corrections, shared "
                f"error fraction {t['shared_error_fraction']:.2f}, sigma scale "
                f"{t['sigma_scale']:.2f}; by seconds after the first P: {t['event_terms']}"
            )
    if args.choose_members:
        figures["ensemble_ranking"] = ranked
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=lambda x: None))
    if args.plot:
        from seismag.benchmarks.plots import plot_event

        name = list(test)[-1]  # the last ensemble, else the last model
        sid = sorted(test[name])[0]
        event = event_magnitude(test[name][sid])
        if event is not None:
            title = f"{name}: event {sid}, {len(test[name][sid])} stations ({args.data.name})"
            print(f"wrote {plot_event(event, test[name][sid], truth[sid], args.plot, title)}")


if __name__ == "__main__":
    main()
