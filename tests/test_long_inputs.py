"""Long inputs: StreamPredict's archive replay (every window, flow control) and ``seismag
predict`` on files larger than one Predict accepts, against a real server on loopback."""

from __future__ import annotations

import json

import numpy as np
import pytest
from obspy import Stream, UTCDateTime, read

from seismag.benchmarks.archive_data import station_record
from seismag.cli import main
from seismag.serving.archive.annotate import AnnotateOptions, annotate_stream
from seismag.serving.client import SeismagClient
from seismag.serving.protocols import stream_rpc

SEED = 4  # two events the picker finds in 300 s (as in test_archive.py)


@pytest.fixture(scope="module")
def client(server):
    with SeismagClient(f"127.0.0.1:{server.port}", timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def record() -> Stream:
    st, _ = station_record(300, events=2, seed=SEED)
    return st


def _same(a, b) -> None:
    """Two Predictions of one station: same series (NaN where no value), same magnitude."""
    assert a.series.stats.starttime == b.series.stats.starttime
    np.testing.assert_array_equal(np.isnan(a.series.data), np.isnan(b.series.data))
    np.testing.assert_allclose(a.series.data, b.series.data, rtol=0, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(
        a.sigma_series.data, b.sigma_series.data, rtol=0, atol=1e-5, equal_nan=True
    )
    assert a.magnitude == pytest.approx(b.magnitude, abs=1e-5)
    assert abs(a.onset - b.onset) < 1e-6 and a.onset_source == b.onset_source


def test_archive_replay_at_full_speed_gets_every_update(client, record):
    (expected,) = client.predict(record, units="m/s")
    # 10 s packets sent as fast as gRPC takes them: a live stream would merge windows here.
    (got,) = client.predict_streamed(record, units="m/s", chunk_seconds=10)
    _same(got, expected)
    assert np.isfinite(got.series.data).sum() == np.isfinite(expected.series.data).sum() > 40
    assert got.model_version == expected.model_version


def test_flow_control_bounds_the_backlog(client, record, monkeypatch):
    # A bound of 8 windows: the reader waits for the handler again and again, nothing is lost.
    monkeypatch.setattr(stream_rpc, "EVERY_WINDOW_BACKLOG", 8)
    seen: list[int] = []  # the backlog each time the reader is about to read a packet
    room = stream_rpc.StreamCall._room

    async def watched(call) -> None:
        seen.append(call.session.backlog())
        await room(call)

    monkeypatch.setattr(stream_rpc.StreamCall, "_room", watched)
    (expected,) = client.predict(record, units="m/s")
    (got,) = client.predict_streamed(record, units="m/s", chunk_seconds=2)
    _same(got, expected)
    # 150 packets read; never more than the bound plus one 2 s packet's windows (hop 1 s).
    assert len(seen) >= 149 and max(seen) <= 8 + 3


def test_predict_cli_streams_what_one_predict_refuses(server, registry, tmp_path, capsys):
    # 6 h of 100 Hz 3-component data: 6.5 M samples at the model's rate, over a Predict's limit.
    st, _ = station_record(6 * 3600, events=6, seed=7)
    path = tmp_path / "six_hours.mseed"
    st.write(str(path), format="MSEED")
    args = ["predict", str(path), "--units", "m/s", "--server", f"127.0.0.1:{server.port}"]
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    assert "larger than one Predict (the server:" in captured.err and "streaming" in captured.err
    (result,) = json.loads(captured.out)
    values = np.array([np.nan if v is None else v for v in result["series"]["values"]])
    # The same values as the pipeline gives the whole record in one piece (what Predict would
    # give without its limits; tests/test_archive.py checks that path against Predict).
    whole = annotate_stream(registry.get().backend, read(str(path)), AnnotateOptions(units="m/s"))
    v = whole.values
    start = UTCDateTime(result["series"]["start"])
    k = np.rint([(whole.time_of(i) - start) / result["series"]["interval_s"] for i in v.index])
    assert len(v) > 100 and np.isfinite(values).sum() == len(v)
    np.testing.assert_allclose(values[k.astype(int)], v.magnitude, rtol=0, atol=1e-5)
    assert result["magnitude"] == pytest.approx(v.magnitude[-1], abs=1e-5)


def test_predict_cli_over_the_client_message_limit(server, tmp_path, capsys):
    st, _ = station_record(1800, events=3, seed=SEED)
    path = tmp_path / "rec.mseed"
    st.write(str(path), format="MSEED")
    assert path.stat().st_size > 1 << 20  # over 1 MiB: with --max-message-mb 1 the client refuses
    args = ["predict", str(path), "--units", "m/s", "--json", "--server",
            f"127.0.0.1:{server.port}"]  # fmt: skip
    assert main(args) == 0
    (direct,) = json.loads(capsys.readouterr().out)
    assert main([*args, "--max-message-mb", "1"]) == 0
    captured = capsys.readouterr()
    assert "over this client's --max-message-mb" in captured.err
    (streamed,) = json.loads(captured.out)
    assert streamed["magnitude"] == pytest.approx(direct["magnitude"], abs=1e-5)
    assert streamed["series"]["start"] == direct["series"]["start"]
    a, b = streamed["series"]["values"], direct["series"]["values"]
    assert [v is None for v in a] == [v is None for v in b]
    finite = [v for v in b if v is not None]
    assert [v for v in a if v is not None] == pytest.approx(finite, abs=1e-5) and len(finite) > 40


def test_predict_cli_stream_flag_equals_predict(server, tmp_path, capsys):
    # A file one Predict accepts: --stream forces the archive replay, same printed result.
    st, _ = station_record(300, events=2, seed=SEED)
    path = tmp_path / "short.mseed"
    st.write(str(path), format="MSEED")
    args = ["predict", str(path), "--units", "m/s", "--json", "--server",
            f"127.0.0.1:{server.port}"]  # fmt: skip
    assert main(args) == 0
    (direct,) = json.loads(capsys.readouterr().out)
    assert main([*args, "--stream"]) == 0
    (streamed,) = json.loads(capsys.readouterr().out)
    assert "streamed" in streamed["derivation"]  # it says which path gave the result
    for key in ("station", "onset", "onset_source", "model", "model_version"):
        assert streamed[key] == direct[key]
    assert streamed["magnitude"] == pytest.approx(direct["magnitude"], abs=1e-5)
    assert streamed["magnitude_sigma"] == pytest.approx(direct["magnitude_sigma"], abs=1e-5)
    a, b = streamed["series"], direct["series"]
    assert a["start"] == b["start"] and a["interval_s"] == b["interval_s"]
    assert [v is None for v in a["values"]] == [v is None for v in b["values"]]
    finite = [v for v in b["values"] if v is not None]
    assert len(finite) > 40
    assert [v for v in a["values"] if v is not None] == pytest.approx(finite, abs=1e-5)


def test_stream_cli_every_window_gives_predicts_series(server, capsys):
    # The README's example record replayed at full speed: one update per value of Predict's
    # series, in time order (batches may finish out of order: the session puts them back).
    xml = "examples/event.xml"
    st = read("examples/event.mseed")
    address = f"127.0.0.1:{server.port}"
    args = ["stream", "examples/event.mseed", "--server", address, "--speed", "0", "--json"]
    assert main([*args, "--stationxml", xml, "--every-window"]) == 0
    updates = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with SeismagClient(address) as c:
        (result,) = c.predict(st, stationxml=xml)
    times = result.series.times("utcdatetime")
    finite = np.isfinite(result.series.data)
    assert len(updates) == finite.sum() > 10
    for u, when, value in zip(updates, times[finite], result.series.data[finite], strict=True):
        assert abs(UTCDateTime(u["time"]) - when) < 0.5 * result.series.stats.delta
        assert u["magnitude"] == pytest.approx(value, abs=1e-4)


def test_long_raw_packets_start_a_station_with_all_components(client, record):
    # Two 150 s packets, each one raw_chunks message of Z, N and E: the components of a message
    # are buffered together, so Z's 150 s do not start the station without N and E.
    (expected,) = client.predict(record, units="m/s")
    t0 = record[0].stats.starttime
    halves = [record.slice(t0, t0 + 149.995), record.slice(t0 + 150, t0 + 300)]
    updates = list(client.stream(halves, units="m/s", hop=1.0, every_window=True))
    assert updates and not any(u.warnings for u in updates)
    start = expected.series.stats.starttime.timestamp
    values = expected.series.data
    for u in updates:
        k = round(u.time - start)
        assert u.magnitude == pytest.approx(values[k], abs=1e-5)
    assert len(updates) == np.isfinite(values).sum()
