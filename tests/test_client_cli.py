"""The Python client and the predict / stream / plot commands against a real loopback server.

ObsPy's RJOB record is in counts: the client sends its StationXML (``--stationxml``); the server
here has no inventory, so without it the answer is FAILED_PRECONDITION, never a magnitude.
"""

from __future__ import annotations

import json

import numpy as np
import obspy
import pytest
from station_metadata import stationxml

from seismag.cli import main
from seismag.serving.client import SeismagClient
from seismag.serving.executor.runtime import ModelRegistry, default_model_path
from seismag.serving.protocols.server import build_server


@pytest.fixture(scope="module")
def server():
    registry = ModelRegistry.from_paths([default_model_path()])
    srv = build_server(registry, address="127.0.0.1:0").start()
    yield f"127.0.0.1:{srv.port}"
    srv.stop(0)
    registry.close()


@pytest.fixture(scope="module")
def event(tmp_path_factory):
    """RJOB (float32), its file, a --pick and its StationXML file."""
    st = obspy.read()  # BW.RJOB..EH[ZNE], 30 s at 100 Hz; P about 5 s in
    folder = tmp_path_factory.mktemp("data")
    path = folder / "rjob.mseed"
    for tr in st:
        tr.data = tr.data.astype(np.float32)
    st.write(str(path), format="MSEED")
    pick = f"BW.RJOB={st[0].stats.starttime + 5.0}"
    xml = folder / "rjob.xml"
    xml.write_bytes(stationxml())
    return st, str(path), pick, str(xml)


def test_client_returns_obspy_objects(server, event):
    st, _, _, xml = event
    picks = {"BW.RJOB": st[0].stats.starttime + 5.0}
    with SeismagClient(server) as client:
        (result,) = client.predict(st, p_picks=picks, stationxml=xml)
        (raw,) = client.predict(st, p_picks=picks, raw=True, stationxml=xml)
    assert result.station_id == "BW.RJOB." and np.isfinite(result.magnitude)
    assert isinstance(result.series, obspy.Trace) and result.series.stats.delta == 1.0
    assert result.series.data[-1] == pytest.approx(result.magnitude)
    assert result.onset == st[0].stats.starttime + 5.0 and result.onset_source == "request"
    assert result.warnings == [] and result.to_dict()["warnings"] == []
    # miniSEED (float32) and raw arrays carry the same samples: the same answer.
    np.testing.assert_allclose(raw.series.data, result.series.data, atol=1e-5)


def test_predict_json_has_magnitude_and_series(server, event, capsys):
    _, path, pick, xml = event
    args = ["predict", path, "--server", server, "--pick", pick, "--stationxml", xml, "--json"]
    assert main(args) == 0
    (station,) = json.loads(capsys.readouterr().out)
    assert station["station"] == "BW.RJOB." and isinstance(station["magnitude"], float)
    assert station["series"]["values"][-1] == pytest.approx(station["magnitude"])
    assert station["series"]["interval_s"] == 1.0


def test_predict_appends_rows_a_station_table_is_fitted_from(server, event, tmp_path, capsys):
    from seismag.serving.pipeline.station_table import fit, read_predictions

    _, path, pick, xml = event
    rows = tmp_path / "past.csv"
    base = ["predict", path, "--server", server, "--pick", pick, "--stationxml", xml]
    for event_id, magnitude in (("e1", "2.1"), ("e2", "2.3")):
        assert main([*base, "--table-rows", str(rows), "--event", f"{event_id}={magnitude}"]) == 0
    assert "appended" in capsys.readouterr().err
    table_rows = read_predictions(rows)
    finals = [r for r in table_rows if not r["seconds_after_first_p"]]
    assert [(r["source_id"], r["catalogue_magnitude"]) for r in finals] == [
        ("e1", "2.1"),
        ("e2", "2.3"),
    ]
    series = [r for r in table_rows if r["source_id"] == "e1" and r["seconds_after_first_p"]]
    at = {r["seconds_after_first_p"]: float(r["magnitude"]) for r in series}
    # P 5 s into 30 s of record: values from 2 s after P; past the record's end (~25 s after
    # P) the station holds its final value, as the event magnitude counts it.
    assert {"3", "10", "20", "30", "45"} <= set(at) and "2.5" not in at  # 1 s grid: 3 s first
    assert at["30"] == at["45"] == pytest.approx(float(finals[0]["magnitude"]))
    table = fit(table_rows)
    assert table.events == 2 and table.early == ()  # too few events for an early term
    for bad in (["--event", "e3=2.0"], ["--table-rows", str(rows), "--event", "e3"]):
        assert main([*base, *bad]) == 2
    assert "--event" in capsys.readouterr().err


def test_predict_readable_output(server, event, capsys):
    _, path, pick, xml = event
    assert main(["predict", path, "--server", server, "--pick", pick, "--stationxml", xml]) == 0
    out = capsys.readouterr().out
    assert "BW.RJOB." in out and " M " in out and "PhaseNetMag" in out


def test_rjob_is_refused_in_counts_and_m_2_with_its_response(server, event, capsys):
    """The README's example: ObsPy's RJOB record (counts) once answered M 8.26 without
    StationXML and M 2.1 with it, silently. Now: refused without a response, M ~2 with one."""
    _, path, _, xml = event
    pick = "BW.RJOB=2009-08-24T00:20:08"
    assert main(["predict", path, "--server", server, "--pick", pick]) == 2
    err = capsys.readouterr().err
    assert "FAILED_PRECONDITION" in err and "BW.RJOB..EH" in err and "--stationxml" in err
    assert main(["predict", path, "--server", server, "--pick", pick, "--units", "m/s"]) == 2
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "look like counts" in err
    assert main(["predict", path, "--server", server, "--pick", pick, "--stationxml", xml]) == 0
    out = capsys.readouterr().out
    magnitude = float(out.split(" M ")[1].split()[0])
    assert 1.5 < magnitude < 2.7, out  # 1.96 with the shipped weights (PhaseNetMag 0.2.0)
    assert main(["stream", path, "--server", server, "--speed", "0", "--pick", pick]) == 2
    assert "FAILED_PRECONDITION" in capsys.readouterr().err


def test_cli_says_who_refused(server, event, capsys):
    _, path, pick, xml = event
    common = ["--server", server, "--pick", pick, "--stationxml", xml]
    assert main(["predict", path, *common, "--max-message-mb", "0"]) == 2
    err = capsys.readouterr().err
    assert "this client refused to send" in err and "--max-message-mb 0" in err
    assert "server 127.0.0.1" not in err
    assert main(["predict", path, *common, "--model", "Nope"]) == 2
    assert f"server {server} answered NOT_FOUND" in capsys.readouterr().err
    assert main(["predict", path, "--server", "127.0.0.1:1", "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach server 127.0.0.1:1" in err or "within this client's --timeout" in err


def test_predict_errors_are_one_line_messages(server, event, tmp_path, capsys):
    _, path, pick, xml = event
    assert main(["predict", str(tmp_path / "missing.mseed"), "--server", server]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--server", server]) == 2
    assert "is a folder" in capsys.readouterr().err
    junk = tmp_path / "junk.mseed"
    junk.write_bytes(b"\x00" * 100)
    assert main(["predict", str(junk), "--server", server]) == 2
    assert "not a waveform file" in capsys.readouterr().err
    nope = ["--model", "Nope", "--pick", pick, "--stationxml", xml]
    assert main(["predict", path, "--server", server, *nope]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["predict", path, "--server", server, "--pick", "BW.RJOB"]) == 2
    assert "--pick takes" in capsys.readouterr().err


def test_stream_replay_matches_predict(server, event, capsys):
    st, path, pick, xml = event
    args = ["stream", path, "--server", server, "--speed", "0", "--pick", pick, "--json"]
    assert main([*args, "--stationxml", xml]) == 0
    updates = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert updates and {u["station"] for u in updates} == {"BW.RJOB."}
    assert all(u["warnings"] == [] for u in updates)
    with SeismagClient(server) as client:
        picks = {"BW.RJOB": st[0].stats.starttime + 5.0}
        (result,) = client.predict(st, p_picks=picks, stationxml=xml)
    # A replayed feed sees what predict's causal series saw: the last values agree.
    assert updates[-1]["magnitude"] == pytest.approx(result.magnitude, abs=1e-4)


def test_stream_needs_a_source(capsys):
    assert main(["stream", "--server", "127.0.0.1:1"]) == 2
    assert "FILE to replay or --seedlink" in capsys.readouterr().err


def test_bad_output_and_speed_are_messages_before_any_call(event, capsys):
    _, path, _, _ = event
    for speed in ("-1", "nan"):
        assert main(["stream", path, "--server", "127.0.0.1:1", "--speed", speed]) == 2
        assert "--speed must be 0" in capsys.readouterr().err
    # Checked before the server is asked (none listens here), not a traceback after it answered.
    assert main(["plot", path, "--server", "127.0.0.1:1", "--out", "/no/such/dir/x.png"]) == 2
    assert "--out: no such folder: /no/such/dir" in capsys.readouterr().err


def test_stream_json_times_are_iso_and_replay_lag_is_on_the_replay_clock(server, event, capsys):
    # RJOB is from 2009: a lag against the wall clock would be about 5e8 s.
    st, path, pick, xml = event
    args = ["stream", path, "--server", server, "--speed", "10", "--pick", pick, "--json"]
    assert main([*args, "--stationxml", xml]) == 0
    updates = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert updates
    for u in updates:
        when = obspy.UTCDateTime(u["time"])
        assert u["time"] == str(when) and st[0].stats.starttime < when <= st[0].stats.endtime
        assert u["onset"] == str(st[0].stats.starttime + 5.0)
        # At 10x a second of replay passes in 0.1 s; an update is at most a few behind.
        assert 0 <= u["lag_s"] < 5, u


def test_stream_replay_without_any_magnitude_says_why(server, event, tmp_path, capsys):
    # The first 3 s of RJOB hold no P: a replay that ends without an update is an error.
    st, _, _, xml = event
    short = tmp_path / "before_p.mseed"
    st.slice(st[0].stats.starttime, st[0].stats.starttime + 3).write(str(short), format="MSEED")
    args = ["stream", str(short), "--server", server, "--speed", "0", "--stationxml", xml]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "ended without a magnitude" in captured.err


def test_plot_shows_units_utc_dates_p_and_sigma(server, event):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from seismag.serving.client_cli import plot_figure

    st, _, _, xml = event
    with SeismagClient(server) as client:
        results = client.predict(
            st, p_picks={"BW.RJOB": st[0].stats.starttime + 5.0}, stationxml=xml
        )
    fig = plot_figure(st, "counts", results)
    wave_ax, mag_ax = fig.axes
    assert wave_ax.get_ylabel() == "counts" and mag_ax.get_ylabel() == "magnitude"
    assert mag_ax.get_xlabel() == "time (UTC)"
    first_tick = mag_ax.xaxis.get_major_formatter()(mag_ax.get_xticks()[0])
    assert first_tick.startswith("2009-08-24")
    labels = [t.get_text() for t in mag_ax.get_legend().get_texts()]
    assert "P (request)" in labels and "± 1 sigma" in labels
    band = [c for c in mag_ax.collections if c.get_label() == "± 1 sigma"]
    assert band and results[0].has_sigma


def test_plot_writes_a_png(server, event, tmp_path):
    pytest.importorskip("matplotlib")
    _, path, pick, xml = event
    out = tmp_path / "rjob.png"
    args = ["plot", path, "--server", server, "--pick", pick, "--stationxml", xml]
    assert main([*args, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_value_once_p_is_older_than_the_trained_windows(server, event):
    # Training windows hold P at 5-95% of the window: a window whose P slid further out was
    # never seen in training, so the series stops there instead of extrapolating.
    st, _, _, xml = event
    pick = st[0].stats.starttime + 0.5
    with SeismagClient(server) as client:
        (r,) = client.predict(st, p_picks={"BW.RJOB": pick}, stationxml=xml)
    last = r.series.stats.starttime + (len(r.series.data) - 1) * r.series.stats.delta
    assert last <= pick + 0.95 * 30.01
    assert last < st[0].stats.endtime


def test_seedlink_forwarder_groups_traces_and_loses_none():
    # ObsPy's SeedLink client against a SeedLink server (tests/seedlink_server.py) serving
    # four stations' records: every record arrives once, in each station's order.
    import io

    from seedlink_server import SeedLinkServer

    from seismag.serving.client_cli import seedlink_packets
    from seismag.serving.seedlink_feed import SeedLinkFeed, parse_selection

    st = obspy.Stream()
    for i in range(4):
        copy = obspy.read()  # BW.RJOB..EH[ZNE]
        for tr in copy:
            tr.stats.station = f"S{i:02d}"
            tr.data = tr.data.astype(np.float32)
        st += copy
    buf = io.BytesIO()
    st.write(buf, format="MSEED", reclen=512)
    raw = buf.getvalue()
    records = [raw[k : k + 512] for k in range(0, len(raw), 512)]
    server = SeedLinkServer()
    server.feed(records)
    t0, t1 = st[0].stats.starttime, st[0].stats.endtime
    selections = [parse_selection(f"BW.S{i:02d}:EH?") for i in range(4)]
    feed = SeedLinkFeed(server.address, selections, begin=t0, end=t1 + 1, timeout=10)
    got = [tr for packet in seedlink_packets(feed) for tr in packet]  # ends at the server's END
    server.close()
    assert feed.error is None
    expected = []
    for rec in records:
        tr = obspy.read(io.BytesIO(rec), format="MSEED")[0]
        expected.append((tr.stats.station, tr.stats.channel, tr.stats.starttime, len(tr)))
    received = [(tr.stats.station, tr.stats.channel, tr.stats.starttime, len(tr)) for tr in got]
    assert sorted(received) == sorted(expected) and len(received) == len(records)
    for station in ("S00", "S01", "S02", "S03"):
        assert [r for r in received if r[0] == station] == [e for e in expected if e[0] == station]
