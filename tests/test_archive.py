"""``seismag annotate``: station-days of files and SDS archives, the same values Predict gives,
resumable, in local processes and on a real multi-process Dask cluster."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from obspy import Stream, UTCDateTime, read
from obspy.clients.filesystem.sds import Client as SDSClient

from seismag.benchmarks.archive_data import station_record
from seismag.cli import main
from seismag.serving.archive.sources import scan_files
from seismag.serving.v1 import seismag_pb2 as pb

SEED = 4  # two events the picker finds (M 3.1 at 22 km, M 2.0 at 6 km), P at 00:00:58 / 00:03:41


@pytest.fixture(scope="module")
def record() -> Stream:
    st, _ = station_record(300, events=2, seed=SEED)
    return st


def _write(st: Stream, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    st.write(str(path), format="MSEED")
    return path


def _predict(stub, st: Stream) -> pb.StationMagnitude:
    buf = io.BytesIO()
    st.write(buf, format="MSEED")
    request = pb.PredictRequest(miniseed=buf.getvalue(), input_units="m/s", series_interval=1.0)
    (result,) = stub.Predict(request, timeout=60).results
    return result


def _annotate(*args: str) -> int:
    return main(["annotate", "--units", "m/s", "--quiet", *args])


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _series(root: Path, model: str = "PhaseNetMag") -> Stream:
    return read(str(root / "series" / model / "*" / "*" / "*" / "MAG.D" / "*"))


def test_annotate_gives_predicts_values(tmp_path, stub, record):
    src = _write(record, tmp_path / "in" / "rec.mseed")
    out = tmp_path / "out"
    assert _annotate(str(src), "--out", str(out), "--workers", "1") == 0
    expected = _predict(stub, record)
    values = np.asarray(expected.series.values)
    # Two events in one record: between them the series model has no value (NaN), and value k
    # is still at series start + k s.
    assert np.isnan(values).any() and np.isfinite(values).sum() > 40
    start = UTCDateTime(expected.series.start)
    got = _series(out)
    assert len(got) == 2  # one trace per run of values: one per event
    n = 0
    for tr in got:
        k = np.rint((tr.times("timestamp") - start.timestamp) / expected.series.interval)
        np.testing.assert_allclose(tr.data, values[k.astype(int)], rtol=0, atol=1e-6)
        n += tr.stats.npts
    assert n == np.isfinite(values).sum()  # every value Predict has, nothing else
    sigmas = read(str(out / "series" / "PhaseNetMag" / "*" / "*" / "*" / "MAS.D" / "*"))
    assert sum(tr.stats.npts for tr in sigmas) == n
    rows = _rows(out / "onsets-PhaseNetMag.csv")
    assert [r["onset"][11:19] for r in rows] == ["00:00:58", "00:03:41"]
    last = rows[-1]
    assert float(last["magnitude"]) == pytest.approx(expected.magnitude, abs=1e-6)
    assert abs(UTCDateTime(last["onset"]) - UTCDateTime(expected.onset)) < 1e-6
    assert last["onset_source"] == expected.onset_source in ("phasenet", "sta_lta_aic")
    assert float(last["sigma"]) == pytest.approx(expected.magnitude_sigma, abs=1e-6)
    # Each onset's magnitude is the series value at its row's time.
    for row in rows:
        k = round((UTCDateTime(row["time"]) - start) / expected.series.interval)
        assert float(row["magnitude"]) == pytest.approx(values[k], abs=1e-6)


def test_rerun_resumes_and_other_options_are_refused(tmp_path, record, capsys):
    src = _write(record, tmp_path / "rec.mseed")
    out = tmp_path / "out"
    assert _annotate(str(src), "--out", str(out)) == 0
    marker = next((out / "done" / "PhaseNetMag").glob("XX.*.json"))
    stamp = marker.stat().st_mtime_ns
    capsys.readouterr()
    assert _annotate(str(src), "--out", str(out)) == 0
    assert "1 already done, 0 to annotate" in capsys.readouterr().err
    assert marker.stat().st_mtime_ns == stamp
    assert len(_rows(out / "onsets-PhaseNetMag.csv")) == 2  # the table still holds the day
    assert _annotate(str(src), "--out", str(out), "--series-interval", "2") == 2
    assert "made with other options" in capsys.readouterr().err


def test_sds_archive_days_are_units(tmp_path, stub):
    # 10 minutes across midnight: two station-days, each a Predict of its own samples.
    st, _ = station_record(600, events=2, seed=SEED, start="2024-03-01T23:55:00")
    root = tmp_path / "sds"
    for day_start in (UTCDateTime("2024-03-01"), UTCDateTime("2024-03-02")):
        part = st.slice(day_start, day_start + 86400 - 0.005)
        for tr in part:
            s = tr.stats
            folder = root / "2024" / s.network / s.station / f"{s.channel}.D"
            name = f"{s.network}.{s.station}.{s.location}.{s.channel}.D.2024.{day_start.julday:03d}"
            _write(Stream([tr]), folder / name)
    out = tmp_path / "out"
    args = ["--sds", "--start", "2024-03-01T23:00", "--end", "2024-03-02T01:00", "--out", str(out)]
    assert _annotate(str(root), *args) == 0
    markers = sorted((out / "done" / "PhaseNetMag").glob("XX.*.json"))
    assert [m.stem for m in markers] == ["XX.SYN01..2024.061", "XX.SYN01..2024.062"]
    # The output is itself an SDS archive: ObsPy's SDS client reads the second day's series.
    got = SDSClient(str(out / "series" / "PhaseNetMag")).get_waveforms(
        "XX", "SYN01", "", "MAG", UTCDateTime("2024-03-02"), UTCDateTime("2024-03-02T01:00")
    )
    expected = _predict(stub, st.slice(UTCDateTime("2024-03-02"), UTCDateTime("2024-03-02T01:00")))
    values = np.asarray(expected.series.values)
    start = UTCDateTime(expected.series.start)
    assert len(got)
    for tr in got:
        k = np.rint(tr.times("timestamp") - start.timestamp).astype(int)
        np.testing.assert_allclose(tr.data, values[k], rtol=0, atol=1e-6)


def test_files_are_cut_into_station_days(tmp_path):
    st, _ = station_record(600, events=0, seed=1, start="2024-03-01T23:55:00")
    _write(st, tmp_path / "a" / "x.mseed")
    other = st.copy()
    for tr in other:
        tr.stats.station = "SYN02"
    _write(other, tmp_path / "b.mseed")
    (tmp_path / "a" / "notes.txt").write_text("not a waveform")
    scan = scan_files([tmp_path], stations=["XX.SYN01"])
    assert [u.name for u in scan.units] == ["XX.SYN01..2024.061", "XX.SYN01..2024.062"]
    assert scan.units[0].end == UTCDateTime("2024-03-02")
    assert len(scan.unreadable) == 1 and "notes.txt" in scan.unreadable[0]
    scan = scan_files([tmp_path], start=UTCDateTime("2024-03-02T00:01"))
    assert [u.name for u in scan.units] == ["XX.SYN01..2024.062", "XX.SYN02..2024.062"]


def test_failures_are_reported_and_retried(tmp_path, record, capsys):
    src = _write(record, tmp_path / "rec.mseed")
    out = tmp_path / "out"
    # Counts (the default unit) without a response: that day fails, nothing is written for it.
    assert main(["annotate", str(src), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "XX.SYN01..2024.061" in err and "response" in err and "1 station-days failed" in err
    assert not list((out / "done" / "PhaseNetMag").glob("XX.*.json"))
    assert _annotate(str(src), "--out", str(out)) == 0  # fixed (here: the units): it is done
    assert len(list((out / "done" / "PhaseNetMag").glob("XX.*.json"))) == 1
    assert _annotate(str(tmp_path / "missing.mseed"), "--out", str(out)) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert _annotate(str(src), "--out", str(out), "--end", "2020-01-01") == 2
    assert "no station-days" in capsys.readouterr().err
    bad_xml = tmp_path / "bad.xml"
    bad_xml.write_text("<xml>")  # read before any worker starts: a message, not a trace
    assert main(["annotate", str(src), "--out", str(out), "--stationxml", str(bad_xml)]) == 2
    assert "bad.xml is not valid StationXML" in capsys.readouterr().err
    # The same channel twice with other samples (counts and velocity, say): refused, not merged.
    other = record.copy()
    for tr in other:
        tr.data = tr.data * 2
    _write(other, tmp_path / "more" / "twice.mseed")
    _write(record, tmp_path / "more" / "rec.mseed")
    assert _annotate(str(tmp_path / "more"), "--out", str(tmp_path / "o2")) == 1
    assert "two pieces hold different samples" in capsys.readouterr().err


def test_dask_cluster_gives_the_local_results(tmp_path, record):
    distributed = pytest.importorskip("distributed")
    days = []
    for i, start in enumerate(["2024-03-01T00:00:00", "2024-03-02T00:00:00"]):
        st = record.copy()
        for tr in st:
            tr.stats.starttime = UTCDateTime(start)
        days.append(_write(st, tmp_path / "in" / f"day{i}.mseed"))
    local, remote = tmp_path / "local", tmp_path / "dask"
    assert _annotate(str(tmp_path / "in"), "--out", str(local), "--workers", "2") == 0
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        assert _annotate(str(tmp_path / "in"), "--out", str(remote), "--scheduler",
                         cluster.scheduler_address) == 0  # fmt: skip
        workers = cluster.scheduler_info["workers"]
        assert len(workers) == 2
    assert _rows(local / "onsets-PhaseNetMag.csv") == _rows(remote / "onsets-PhaseNetMag.csv")
    assert len(_rows(local / "onsets-PhaseNetMag.csv")) == 4
    a, b = _series(local), _series(remote)
    assert [tr.id for tr in a] == [tr.id for tr in b]
    for x, y in zip(a, b, strict=True):
        assert x.stats.starttime == y.stats.starttime
        np.testing.assert_array_equal(x.data, y.data)
    marker = json.loads(next((remote / "done" / "PhaseNetMag").glob("XX.*.json")).read_text())
    assert marker["grid_points"] == 300 and marker["onsets"] == 2


def test_parquet_table(tmp_path, record):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    src = _write(record, tmp_path / "rec.mseed")
    assert _annotate(str(src), "--out", str(tmp_path / "o"), "--table", "parquet") == 0
    frame = pd.read_parquet(tmp_path / "o" / "onsets-PhaseNetMag.parquet")
    assert set(frame["onset_source"]) <= {"phasenet", "sta_lta_aic"} and len(frame) == 2
    assert frame["magnitude"].dtype == np.float64 and frame["values"].dtype == np.int64
