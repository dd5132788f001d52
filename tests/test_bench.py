"""The benchmark tool's logic, in seconds: no timed assertions, only shapes and rules."""

from __future__ import annotations

import csv
import json

import pytest

from seismag.benchmarks.capacity import find_capacity
from seismag.benchmarks.stats import agree, is_stable, percentile, summary


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0
    s = summary([1.0, 2.0, 3.0, 4.0])
    assert s["p50"] == 2.0 and s["p99"] == 4.0 and s["mean"] == 2.5 and s["n"] == 4
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_stability_needs_three_windows_within_ten_percent():
    def w(tp: float, lat: float) -> dict:
        return {"throughput": tp, "latency_mean": lat}

    assert agree([100, 105, 95])
    assert not agree([100, 125, 95])
    assert not is_stable([w(100, 5), w(100, 5)])  # only two windows
    assert is_stable([w(10, 50), w(100, 5), w(104, 5.2), w(97, 4.9)])  # the last three agree
    assert not is_stable([w(100, 5), w(100, 5), w(130, 5)])  # throughput moved 30%
    assert not is_stable([w(100, 5), w(100, 5), w(100, 7)])  # latency moved
    assert not agree([float("nan"), 1.0, 1.0])


@pytest.mark.parametrize("threshold", [1, 7, 137, 1000, 4999])
def test_capacity_search_finds_the_threshold(threshold):
    seen: list[int] = []

    def probe(n: int) -> dict:
        seen.append(n)
        return {"stations": n, "ok": n <= threshold, "p99": float(n)}

    result = find_capacity(probe, guess=100, maximum=5000, tolerance=0.0)
    assert result.capacity == threshold
    assert len(seen) == len(set(seen))  # no probe repeated
    assert [p["stations"] for p in result.probes] == sorted(seen)


def test_capacity_search_edges_and_tolerance():
    assert find_capacity(lambda n: {"ok": False}, guess=10).capacity == 0
    capped = find_capacity(lambda n: {"ok": True}, guess=10, maximum=50)
    assert capped.capacity == 50 and capped.capped
    loose = find_capacity(lambda n: {"ok": n <= 1000}, guess=100, tolerance=0.1)
    assert 1000 / 1.1 <= loose.capacity <= 1000


@pytest.fixture(scope="module")
def target():
    from seismag.benchmarks.target import open_target

    with open_target("in-process") as t:
        yield t


def test_predict_sweep_writes_json_csv_and_png(target, tmp_path):
    from seismag.benchmarks.cli import write_outputs
    from seismag.benchmarks.loadgen import CSV_FIELDS, Workload, flat_row, run_concurrency
    from seismag.benchmarks.plots import plot_predict

    workload = Workload.rjob()
    runs = [
        run_concurrency(target.address, workload, c, window_s=0.3, max_windows=3, warmup_s=0.1)
        for c in (1, 2)
    ]
    for r, c in zip(runs, (1, 2), strict=True):
        assert r["concurrency"] == c and r["requests"] > 0 and r["errors"] == 0
        assert set(r["latency_ms"]) >= {"p50", "p90", "p95", "p99", "mean"}
        assert set(r["server_ms"]) >= {"preprocess_p50", "queue_p50", "compute_p50", "total_p50"}
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    rows = [flat_row(r) for r in runs]
    assert tuple(rows[0]) == CSV_FIELDS

    class Args:
        json = str(tmp_path / "out.json")
        csv = str(tmp_path / "out.csv")

    write_outputs(Args, {"runs": runs}, rows)
    assert len(json.loads((tmp_path / "out.json").read_text())["runs"]) == 2
    with open(tmp_path / "out.csv") as f:
        assert [int(r["concurrency"]) for r in csv.DictReader(f)] == [1, 2]
    png = plot_predict(runs, tmp_path / "out.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rate_mode_runs(target):
    from seismag.benchmarks.loadgen import Workload, run_rate

    r = run_rate(target.address, Workload.rjob(), 20.0, poisson=True, window_s=0.3, max_windows=3)
    assert r["mode"] == "rate" and r["poisson"] and r["requests"] > 0


@pytest.mark.parametrize("batch_ms", [0.0, 300.0])  # 300: packets of ~2 stations per message
def test_stream_replay_with_five_stations(target, tmp_path, batch_ms):
    from seismag.benchmarks.feeds import FeedConfig, run_stream
    from seismag.benchmarks.plots import plot_stream

    cfg = FeedConfig(5, seconds=9, warmup_s=7, calls=2, batch_ms=batch_ms)
    r = run_stream(target.address, cfg)
    assert r["stations"] == 5 and r["calls"] == 2 and not r["errors"]
    assert r["batch_ms"] == batch_ms
    assert r["latency_ms"]["n"] > 0  # updates from second 8 on (pick at 5 s + 2 s)
    assert 0 < r["completeness"] <= 1
    assert {"p50", "p99", "ok", "per_second", "server_ms"} <= set(r)
    assert plot_stream(r, tmp_path / "s.png").exists()


def test_predict_stages_time_each_stage_and_the_round_trips(target):
    import math

    from seismag.benchmarks import predict_stages
    from seismag.benchmarks.target import ServerOptions

    result = predict_stages.run(target.address, ServerOptions(), repeats=5)
    assert list(result["stages_ms"]) == [
        "parse request", "decode miniSEED", "station pipeline", "model", "results",
        "event magnitude", "response message",
    ]  # fmt: skip
    # The refused Predicts raise unless the server answered them with the expected status.
    assert len(result["round_trips_ms"]) == 4
    assert all(
        math.isfinite(v) and v > 0
        for part in ("stages_ms", "round_trips_ms")
        for v in result[part].values()
    )
    assert "PhaseNetMag" in predict_stages.report(result)


def test_bench_cli_is_wired():
    from seismag.cli import build_parser

    args = build_parser().parse_args(["bench", "predict", "--in-process", "--concurrency", "1"])
    assert args.concurrency == [1] and args.in_process
    args = build_parser().parse_args(["bench", "stages", "--repeats", "3"])
    assert args.repeats == 3 and args.func.__name__ == "_cmd_stages"
    args = build_parser().parse_args(["bench", "capacity", "--models", "ViTMag"])
    assert args.models == ["ViTMag"]


# -- the serving fixes the benchmarks led to ------------------------------------------------------


def test_ticketed_submission_does_not_wait_out_the_delay():
    import numpy as np

    from seismag.serving.executor.batcher import DynamicBatcher

    b = DynamicBatcher(lambda w, a: w[:, 0, 0], max_batch=8, max_queue_delay_ms=60_000, max_queue=8)
    wave, amp = np.ones((1, 1, 2), np.float32), np.zeros((1, 1), np.float32)
    try:
        with b.expect() as ticket:
            rows, _ = b.submit(wave, amp, ticket=ticket).result(10)  # not the 60 s delay
        assert rows.tolist() == [1.0]
        other = b.expect()  # another caller still preparing: the next one waits for it
        waiting = b.submit(wave, amp, ticket=b.expect())
        assert not waiting.done()
        other.release()
        assert waiting.result(10)[0].tolist() == [1.0]
    finally:
        b.close()


def test_idle_batcher_runs_a_ticketed_submission_in_the_callers_thread():
    import threading

    import numpy as np

    from seismag.serving.executor.batcher import DynamicBatcher
    from seismag.serving.executor.statistics import ModelStatistics

    threads: list[str] = []
    gate = threading.Event()

    def run(w, a):
        threads.append(threading.current_thread().name)
        if threads[-1].startswith("batcher"):
            gate.wait(10)
        return w[:, 0, 0] * 2.0

    stats = ModelStatistics("m", "1")
    b = DynamicBatcher(run, max_batch=4, max_queue_delay_ms=60_000, max_queue=8, statistics=stats)
    wave, amp = np.ones((1, 1, 2), np.float32), np.zeros((1, 1), np.float32)
    try:
        ticket = b.expect()
        rows, timings = b.run_if_idle(wave, amp, ticket)
        assert rows.tolist() == [2.0] and timings["queue"] == 0.0 and timings["compute"] >= 0
        assert ticket.spent and threads == [threading.current_thread().name]
        assert b.stats().batches == 1 and stats.snapshot().execution_count == 1
        assert b.run_if_idle(wave, amp, ticket) is None  # a spent ticket is not used twice
        other = b.expect()  # another caller is preparing: the rows must wait to batch with it
        mine = b.expect()
        assert b.run_if_idle(wave, amp, mine) is None and not mine.spent
        other.release()
        assert b.run_if_idle(np.ones((5, 1, 2), np.float32), np.zeros((5, 1)), mine) is None
        running = b.submit(wave, amp)  # a worker is busy with it (held at the gate)
        while not threads[1:]:
            threading.Event().wait(0.001)
        assert b.run_if_idle(wave, amp, mine) is None
        gate.set()
        assert running.result(10)[0].tolist() == [2.0]
        assert b.submit(wave, amp, ticket=mine).result(10)[0].tolist() == [2.0]
    finally:
        gate.set()
        b.close()


def test_loop_policy_runs_models_on_the_loop_only_while_predicts_come_one_at_a_time():
    from seismag.serving.protocols.loop_policy import LoopModelPolicy

    policy = LoopModelPolicy(quiet=3, probe=4)
    alone = []
    for _ in range(9):
        alone.append(policy.start())
        policy.end()
    # Three quiet ones first, then every fourth still goes through the batcher (a probe).
    assert alone == [False, False, False, False, True, True, True, False, True]
    policy.start()
    assert policy.start() is False  # two in flight: concurrent clients
    policy.end()
    policy.end()
    assert [policy.start() or policy.end() for _ in range(3)] == [None, None, None]
    assert policy.quiet == 3 and policy.start() is True


def test_clean_traces_skip_the_merge_and_give_the_same_array():
    import numpy as np
    import obspy

    from seismag.models.card import load_cards
    from seismag.models.preprocess import stream_to_array

    card = load_cards()["PhaseNetMag"]
    st = obspy.read()
    split = st.copy()
    z = split.select(component="Z")[0]
    split += z.slice(z.stats.starttime + 10, z.stats.endtime)  # an overlap: the merge path
    split.remove(z)
    split += z.slice(z.stats.starttime, z.stats.starttime + 12)
    before = [tr.data.copy() for tr in st]
    clean, merged = stream_to_array(st, card), stream_to_array(split, card)
    assert np.array_equal(clean.data, merged.data) and clean.starttime == merged.starttime
    assert all(np.array_equal(a, tr.data) for a, tr in zip(before, st, strict=True))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_gpu_throughput_without_a_gpu_is_a_clear_error():
    if _cuda():
        pytest.skip("a CUDA GPU is present: the refusal cannot be seen here")
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "seismag.benchmarks.gpu_throughput"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "no CUDA device" in r.stderr


def test_gpu_throughput_measures_fp32_and_fp16():
    if not _cuda():
        pytest.skip("no CUDA GPU here: the measurement runs only on one")
    from seismag.benchmarks import gpu_throughput

    row = gpu_throughput.measure("PhaseNetMag", batch=8, repeats=2)
    assert row["fp32_wps"] > 0 and row["fp16_wps"] > 0 and row["fp16_max_diff"] < 0.1
