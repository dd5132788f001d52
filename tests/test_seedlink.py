"""`seismag stream --seedlink` with ObsPy's SeedLink client against a SeedLink v3 server
(tests/seedlink_server.py) serving RJOB's records, into the real seismag server.

The SeedLink feed delivers the same magnitude updates as a file replay of the same records; a
closed link ends the stream with a message; --reconnect resumes after the last packet received;
refusals and unreachable servers are one-line SeedLink errors, never a hang.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import obspy
import pytest
from seedlink_server import SeedLinkServer
from station_metadata import stationxml

from seismag.cli import main
from seismag.serving.client import SeismagClient
from seismag.serving.client_cli import replay_records
from seismag.serving.executor.runtime import ModelRegistry, default_model_path
from seismag.serving.protocols.server import build_server

CLI_LIMIT_S = 90.0
"""Longest a command may run here: beyond it, the test fails as a hang."""


@pytest.fixture(scope="module")
def server():
    registry = ModelRegistry.from_paths([default_model_path()])
    srv = build_server(registry, address="127.0.0.1:0").start()
    yield f"127.0.0.1:{srv.port}"
    srv.stop(0)
    registry.close()


@pytest.fixture(scope="module")
def event(tmp_path_factory):
    """RJOB (float32) as a file and as the 512-byte records a replay sends, a --pick, its
    StationXML file, and the updates of a file replay (the reference)."""
    st = obspy.read()
    for tr in st:
        tr.data = tr.data.astype(np.float32)
    folder = tmp_path_factory.mktemp("seedlink")
    path = str(folder / "rjob.mseed")
    st.write(path, format="MSEED")
    xml = folder / "rjob.xml"
    xml.write_bytes(stationxml())
    pick = f"BW.RJOB={st[0].stats.starttime + 5.0}"
    return st, path, list(replay_records(path, speed=0)), pick, str(xml)


def run_cli(args: list[str], capsys) -> tuple[int, list[dict], str]:
    """``seismag ARGS`` in a thread (so a hang fails the test): exit status, JSON updates,
    stderr."""
    capsys.readouterr()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(main(args)), daemon=True)
    thread.start()
    thread.join(CLI_LIMIT_S)
    assert not thread.is_alive(), f"seismag {' '.join(args)} still running after {CLI_LIMIT_S} s"
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    return result[0], lines, captured.err


@pytest.fixture(scope="module")
def predicted(server, event) -> dict[float, float]:
    """Predict's causal series of the same data, by data time: the value every update of a
    feed of it must show (data time decides, so any pace and grouping gives these values)."""
    st, _, _, _, xml = event
    with SeismagClient(server) as client:
        (r,) = client.predict(st, p_picks={"BW.RJOB": st[0].stats.starttime + 5.0}, stationxml=xml)
    t0, dt = r.series.stats.starttime.timestamp, r.series.stats.delta
    return {round(t0 + i * dt, 2): float(v) for i, v in enumerate(r.series.data)}


def _epoch(time) -> float:
    """An update's time (ISO-8601 or epoch seconds) as epoch seconds to 10 ms."""
    return round(obspy.UTCDateTime(time).timestamp, 2)


def assert_same_updates(updates: list[dict], replayed: list[dict], predicted: dict) -> None:
    """The SeedLink feed's updates are the file replay's: each shows Predict's value at its
    data time, no warning (counts converted with the StationXML), and both end on the same last
    update. Which intermediate points each shows may differ: a window the model has not yet run
    is replaced by a newer one when packets arrive faster than the model runs (docs/serving.md,
    StreamPredict), and a feed delivered at once does."""
    assert updates and replayed
    for u in updates + replayed:
        assert u["station"] == "BW.RJOB." and u["warnings"] == []
        assert u["magnitude"] == pytest.approx(predicted[_epoch(u["time"])], abs=1e-4)
    last, replay_last = updates[-1], replayed[-1]
    assert _epoch(last["time"]) == _epoch(replay_last["time"])
    assert last["magnitude"] == pytest.approx(replay_last["magnitude"], abs=1e-4)


def replay_updates(server, event, capsys) -> list[dict]:
    _, path, _, pick, xml = event
    args = ["stream", path, "--server", server, "--speed", "0", "--pick", pick]
    status, updates, err = run_cli([*args, "--stationxml", xml, "--json"], capsys)
    assert status == 0, err
    return updates


def seedlink_args(server, address, event, *extra) -> list[str]:
    _, _, _, pick, xml = event
    return [
        "stream",
        "--seedlink",
        address,
        "--select",
        "BW.RJOB:EH?",
        "--server",
        server,
        "--pick",
        pick,
        "--stationxml",
        xml,
        "--json",
        "--seedlink-timeout",
        "20",
        *extra,
    ]


def test_time_window_gives_the_updates_of_a_file_replay_and_exits_0(
    server, event, predicted, capsys
):
    st, _, records, _, _ = event
    reference = replay_updates(server, event, capsys)
    sl = SeedLinkServer()
    sl.feed(records)
    window = ["--begin", str(st[0].stats.starttime), "--end", str(st[0].stats.endtime)]
    status, updates, err = run_cli(seedlink_args(server, sl.address, event, *window), capsys)
    sl.close()
    assert status == 0, err
    assert_same_updates(updates, reference, predicted)
    (commands,) = sl.commands
    assert commands[:4] == ["HELLO", "STATION RJOB BW", "SELECT EH?", commands[3]]
    assert commands[3].startswith("TIME ") and commands[-1] == "END"
    assert [seq for _, seq in sl.sent[0]] == list(range(len(records)))


def test_counts_without_a_response_are_refused_by_the_seismag_server(server, event, capsys):
    st, _, records, _, _ = event
    sl = SeedLinkServer()
    sl.feed(records)
    window = ["--begin", str(st[0].stats.starttime), "--end", str(st[0].stats.endtime)]
    args = seedlink_args(server, sl.address, event, *window)
    args.remove("--stationxml")
    args.remove(event[4])
    status, updates, err = run_cli(args, capsys)
    sl.close()
    assert status == 2 and not updates
    assert f"server {server} answered FAILED_PRECONDITION" in err and "SeedLink" not in err


def test_a_closed_link_ends_the_stream_with_a_message(server, event, predicted, capsys):
    records = event[2]
    reference = replay_updates(server, event, capsys)
    sl = SeedLinkServer(stations=[("BW", "RJOB")])

    def feed_then_close() -> None:
        assert sl.wait_connections(1)  # DATA sends what arrives after the client asked
        sl.feed(records)
        assert sl.wait_sent(len(records))
        sl.close()

    feeder = threading.Thread(target=feed_then_close, daemon=True)
    feeder.start()
    status, updates, err = run_cli(seedlink_args(server, sl.address, event), capsys)
    feeder.join(5)
    assert status == 2
    assert f"SeedLink server {sl.address}: the server closed the connection" in err
    assert "answered" not in err  # not reported as the seismag server
    # Everything sent before the close was forwarded: the replay's updates, to its last.
    assert_same_updates(updates, reference, predicted)


def test_reconnect_resumes_after_the_last_packet(server, event, predicted, capsys):
    records = event[2]
    reference = replay_updates(server, event, capsys)
    sl = SeedLinkServer(stations=[("BW", "RJOB")], drop_after=30)

    def feed_then_close() -> None:
        assert sl.wait_connections(1)
        sl.feed(records)
        assert sl.wait_sent(len(records))
        sl.close()

    feeder = threading.Thread(target=feed_then_close, daemon=True)
    feeder.start()
    args = seedlink_args(server, sl.address, event, "--reconnect", "1")
    status, updates, err = run_cli(args, capsys)
    feeder.join(5)
    assert [len(sent) for sent in sl.sent] == [30, len(records) - 30]
    # The second connection asked for the packet after the 30th (sequence 0x1e) ...
    assert "DATA 0x1e" in sl.commands[1]
    # ... so every record was sent once, in order, and forwarded: the replay's updates.
    assert [seq for sent in sl.sent for _, seq in sent] == list(range(len(records)))
    assert_same_updates(updates, reference, predicted)
    assert "the server closed the connection; reconnecting in 1 s (attempt 1 of 1)" in err
    # After the server went away for good, one more try, then a message and a non-zero exit.
    assert status == 2
    assert f"SeedLink server {sl.address}: cannot connect" in err
    assert "(after 1 reconnect attempts)" in err


@pytest.mark.parametrize(
    ("select", "message"),
    [
        ("BW.NOPE", "refused 'STATION NOPE BW'"),
        ("BW.RJOB:EHZ.X", "refused 'SELECT EHZ.X'"),
        ("RJOB", "--select takes NET.STA[:CHANNELS]"),
        ("BW.RJOB:E", "--select takes NET.STA[:CHANNELS]"),
    ],
)
def test_a_bad_selection_is_a_clear_error(server, event, capsys, select, message):
    sl = SeedLinkServer()
    sl.feed(event[2])
    args = seedlink_args(server, sl.address, event, "--reconnect", "3")
    args[args.index("BW.RJOB:EH?")] = select
    status, updates, err = run_cli(args, capsys)
    sl.close()
    assert status == 2 and not updates
    assert message in err and "reconnecting" not in err  # a refusal is never retried
    assert "answered" not in err


def test_an_unreachable_seedlink_server_is_a_clear_error(server, event, capsys):
    free = SeedLinkServer()
    free.close()  # a port nothing listens on any more
    status, _, err = run_cli(seedlink_args(server, free.address, event), capsys)
    assert status == 2
    assert f"SeedLink server {free.address}: cannot connect" in err
    status, _, err = run_cli(seedlink_args(server, "no-port", event), capsys)
    assert status == 2 and "--seedlink takes HOST:PORT" in err


def test_seedlink_options_need_seedlink(event, capsys):
    path = event[1]
    assert main(["stream", path, "--server", "127.0.0.1:1", "--reconnect", "2"]) == 2
    assert "are options of --seedlink" in capsys.readouterr().err
    args = ["stream", "--seedlink", "127.0.0.1:1", "--select", "BW.RJOB", "--end", "2009-08-24"]
    assert main(args) == 2
    assert "--end needs --begin" in capsys.readouterr().err
