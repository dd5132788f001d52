"""SeisBench's dataset format both ways, against the real seisbench package.

seismag's writer -> ``seisbench.data.WaveformDataset``, and ``seisbench.data.WaveformDataWriter``
-> seismag's reader, in every component and dimension order SeisBench allows, with exact samples:
each component carries its own signal, so a component read into the wrong slot cannot pass.
"""

import h5py
import numpy as np
import pandas as pd
import pytest

sbd = pytest.importorskip("seisbench.data")

from seismag.models.card import get_card  # noqa: E402
from seismag.training.dataset import (  # noqa: E402
    DatasetFormatError,
    DatasetWriter,
    WaveformDataset,
    dataset_for,
)
from seismag.training.synthetic import generate_dataset  # noqa: E402

FS = 100.0
LENGTHS = (500, 620, 480, 560)  # unequal, so buckets are padded and locators matter


def signals(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """One distinct float32 signal per component letter."""
    return {c: rng.normal(size=n).astype(np.float32) for c in "ZNE"}


def stored(sig: dict[str, np.ndarray], order: str) -> np.ndarray:
    """The (C, N) array a file in ``order`` holds."""
    return np.stack([sig[c] for c in order])


def as_zne(sig: dict[str, np.ndarray], order: str) -> np.ndarray:
    """What reading it as ZNE must give: each letter in its slot, absent letters zero."""
    return np.stack([sig[c] if c in order else np.zeros_like(sig["Z"]) for c in "ZNE"])


def rows(n: int) -> list[dict]:
    return [
        {
            "trace_name": f"ev{i // 2}_XX.ST{i}.",
            "source_id": f"ev{i // 2}",
            "source_magnitude": 1.5 + 0.5 * i,
            "trace_p_arrival_sample": 100 + 10 * i,
            "station_network_code": "XX",
            "station_code": f"ST{i}",
            "split": ("train", "dev", "test", "train")[i % 4],
        }
        for i in range(n)
    ]


def seisbench_write(path, traces, meta, data_format, *, axis=-1, bucket_size=2) -> None:
    """Write with SeisBench's own writer: traces in arrival order packed into padded buckets of
    ``bucket_size`` whatever their length, split or component count; a last lone trace becomes its
    own HDF5 dataset, as SeisBench does."""
    with sbd.WaveformDataWriter(path / "metadata.csv", path / "waveforms.hdf5") as writer:
        writer.data_format = dict(data_format)
        writer.bucketer = sbd.GeometricBucketer(
            minbucket=10_000, splits=False, track_channels=False, axis=axis
        )
        writer.bucket_size = bucket_size
        for wave, row in zip(traces, meta, strict=True):
            writer.add_trace(dict(row), wave)


# --- seismag writes, SeisBench reads ----------------------------------------------------------
@pytest.mark.parametrize("storage", ["bucket", "trace"])
@pytest.mark.parametrize("order", ["ZNE", "ENZ"])
def test_seisbench_reads_seismag_writer(tmp_path, rng, storage, order):
    sigs = [signals(rng, n) for n in LENGTHS]
    meta = rows(len(LENGTHS))
    with DatasetWriter(
        tmp_path, sampling_rate=FS, component_order=order, storage=storage, bucket_size=3
    ) as writer:
        for sig, row in zip(sigs, meta, strict=True):
            writer.add(stored(sig, order), row)

    ds = sbd.WaveformDataset(tmp_path, component_order="ZNE", dimension_order="NCW")
    assert ds.data_format["component_order"] == order
    assert ds.data_format["dimension_order"] == "CW"
    assert ds.data_format["sampling_rate"] == FS
    assert (ds.metadata["trace_sampling_rate_hz"] == FS).all()
    assert (ds.metadata["trace_component_order"] == order).all()
    for column in ("source_id", "source_magnitude", "trace_p_arrival_sample", "station_code"):
        assert ds.metadata[column].tolist() == [r[column] for r in meta]
    assert ds.metadata["split"].tolist() == [r["split"] for r in meta]
    for i, sig in enumerate(sigs):
        np.testing.assert_array_equal(ds.get_waveforms(i), as_zne(sig, "ZNE"))
    assert len(ds.train()) == 2 and len(ds.dev()) == 1 and len(ds.test()) == 1

    # A Z-only impulse stays in Z through SeisBench's reordering.
    impulse = np.zeros((3, 300), dtype=np.float32)
    impulse[order.index("Z"), 150] = 1.0
    with DatasetWriter(tmp_path / "impulse", sampling_rate=FS, component_order=order) as writer:
        writer.add(impulse, {"source_id": "ev0", "trace_name": "imp"})
    wave = sbd.WaveformDataset(tmp_path / "impulse", component_order="ZNE").get_waveforms(0)
    assert wave[0, 150] == 1.0 and np.count_nonzero(wave) == 1


def test_seisbench_reads_synthetic_dataset(tmp_path):
    path = generate_dataset(tmp_path / "synth", 2, seed=1, progress=False)
    ours = WaveformDataset(path)
    theirs = sbd.WaveformDataset(path, component_order="ZNE", dimension_order="NCW")
    assert len(theirs) == len(ours) > 0
    assert (theirs.metadata["trace_sampling_rate_hz"] == FS).all()
    assert theirs.data_format["measurement"] == "velocity" and theirs.data_format["unit"] == "mps"
    np.testing.assert_array_equal(
        theirs.metadata["source_magnitude"].to_numpy(), ours.metadata["source_magnitude"]
    )
    for i in range(len(ours)):
        np.testing.assert_array_equal(theirs.get_waveforms(i), ours.get_waveform(i))


def test_older_seismag_files_with_attributes_still_read(tmp_path, rng):
    # Before SeisBench's datasets were written, data_format held attributes only: rebuild that
    # layout from a fresh file by deleting the datasets.
    sigs = [signals(rng, n) for n in LENGTHS]
    with DatasetWriter(tmp_path, sampling_rate=50.0, component_order="ENZ") as writer:
        for sig, row in zip(sigs, rows(len(sigs)), strict=True):
            writer.add(stored(sig, "ENZ"), row)
    with h5py.File(tmp_path / "waveforms.hdf5", "a") as f:
        group = f["data_format"]
        for key in list(group.keys()):
            del group[key]
        assert dict(group.attrs)["component_order"] == "ENZ" and not list(group.keys())
    ds = WaveformDataset(tmp_path)
    assert ds.sampling_rate == 50.0 and ds.data_format["component_order"] == "ENZ"
    for i, sig in enumerate(sigs):
        np.testing.assert_array_equal(ds.get_waveform(i), as_zne(sig, "ZNE"))


# --- SeisBench writes, seismag reads ----------------------------------------------------------
@pytest.mark.parametrize("dims", ["CW", "WC"])
@pytest.mark.parametrize("order", ["ZNE", "ENZ", "ZEN", "Z"])
def test_seismag_reads_seisbench_writer(tmp_path, rng, order, dims):
    sigs = [signals(rng, n) for n in LENGTHS]
    traces = [stored(s, order) if dims == "CW" else stored(s, order).T for s in sigs]
    meta = rows(len(sigs))
    data_format = {
        "component_order": order,
        "dimension_order": dims,
        "sampling_rate": FS,
        "measurement": "velocity",
        "unit": "mps",
    }
    seisbench_write(tmp_path, traces, meta, data_format, axis=-1 if dims == "CW" else 0)
    with h5py.File(tmp_path / "waveforms.hdf5") as f:  # SeisBench's layout: datasets, no attrs
        assert set(f["data_format"].keys()) == set(data_format)
        assert not dict(f["data_format"].attrs)

    ds = WaveformDataset(tmp_path)
    assert ds.sampling_rate == FS and ds.data_format["dimension_order"] == dims
    assert ds.metadata["source_magnitude"].tolist() == [r["source_magnitude"] for r in meta]
    assert ds.metadata["trace_p_arrival_sample"].tolist() == [
        r["trace_p_arrival_sample"] for r in meta
    ]
    for i, sig in enumerate(sigs):
        np.testing.assert_array_equal(ds.get_waveform(i), as_zne(sig, order))
    # The same samples as SeisBench returns for ZNE (its zero padding for absent components).
    theirs = sbd.WaveformDataset(tmp_path, component_order="ZNE", dimension_order="NCW")
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds.get_waveform(i), theirs.get_waveforms(i))
    # load_all (one read per bucket) gives the same.
    before = [ds.get_waveform(i) for i in range(len(ds))]
    ds.load_all()
    for i, wave in enumerate(before):
        np.testing.assert_array_equal(ds.get_waveform(i), wave)


@pytest.mark.parametrize("order", ["ZNE", "ENZ", "ZEN", "Z"])
def test_z_only_impulse_lands_in_z(tmp_path, order):
    wave = np.zeros((len(order), 400), dtype=np.float32)
    wave[order.index("Z"), 123] = 7.0
    fmt = {"component_order": order, "dimension_order": "CW", "sampling_rate": FS}
    seisbench_write(tmp_path, [wave], [{"trace_name": "imp", "source_id": "ev"}], fmt)
    got = WaveformDataset(tmp_path).get_waveform(0)
    assert got.shape == (3, 400) and got[0, 123] == 7.0 and np.count_nonzero(got) == 1


def test_per_trace_component_order(tmp_path, rng):
    # One dataset, four traces in four orders (the metadata column overrides data_format's
    # ZNE), packed into shared padded buckets whatever their component count.
    orders = ["ENZ", "ZNE", "Z", "ZEN"]
    sigs = [signals(rng, n) for n in LENGTHS]
    meta = [{**r, "trace_component_order": o} for r, o in zip(rows(4), orders, strict=True)]
    fmt = {"component_order": "ZNE", "dimension_order": "CW", "sampling_rate": FS}
    traces = [stored(s, o) for s, o in zip(sigs, orders, strict=True)]
    seisbench_write(tmp_path, traces, meta, fmt, bucket_size=3)
    names = pd.read_csv(tmp_path / "metadata.csv")["trace_name"]
    assert names.str.contains("$", regex=False).tolist() == [True, True, True, False]

    ds = WaveformDataset(tmp_path)
    theirs = sbd.WaveformDataset(tmp_path, component_order="ZNE", dimension_order="NCW")
    for i, (sig, order) in enumerate(zip(sigs, orders, strict=True)):
        np.testing.assert_array_equal(ds.get_waveform(i), as_zne(sig, order))
        np.testing.assert_array_equal(ds.get_waveform(i), theirs.get_waveforms(i))
    # Other target orders follow the same mapping.
    enz = WaveformDataset(tmp_path, component_order="ENZ")
    np.testing.assert_array_equal(enz.get_waveform(0), stored(sigs[0], "ENZ"))

    # A row without its own order takes data_format's (here ENZ, the order trace 0 is in).
    meta[0]["trace_component_order"] = ""
    seisbench_write(tmp_path / "partial", traces, meta, {**fmt, "component_order": "ENZ"})
    partial = WaveformDataset(tmp_path / "partial")
    for i, (sig, order) in enumerate(zip(sigs, orders, strict=True)):
        np.testing.assert_array_equal(partial.get_waveform(i), as_zne(sig, order))


def test_training_entry_point_opens_a_seisbench_dataset(tmp_path, rng):
    sigs = [signals(rng, n) for n in LENGTHS]
    fmt = {"component_order": "ENZ", "dimension_order": "WC", "sampling_rate": FS}
    traces = [stored(s, "ENZ").T for s in sigs]
    seisbench_write(tmp_path, traces, rows(4), fmt, axis=0)
    ds = dataset_for(get_card("PhaseNetMag"), tmp_path)
    assert len(ds.split("train")) == 2
    np.testing.assert_array_equal(ds.get_waveform(3), as_zne(sigs[3], "ZNE"))


def test_sampling_rate_from_metadata_as_seisbench(tmp_path, rng):
    sigs = [signals(rng, n) for n in LENGTHS[:2]]
    traces = [stored(s, "ZNE") for s in sigs]
    fmt = {"component_order": "ZNE", "dimension_order": "CW"}
    dt_rows = [{**r, "trace_dt_s": 0.025} for r in rows(2)]
    seisbench_write(tmp_path / "dt", traces, dt_rows, fmt)
    assert WaveformDataset(tmp_path / "dt").sampling_rate == 40.0

    seisbench_write(tmp_path / "none", traces, rows(2), fmt)
    with pytest.raises(ValueError, match="no sampling rate"):
        dataset_for(get_card("PhaseNetMag"), tmp_path / "none")

    # The metadata's rate wins over data_format's, as in SeisBench, and the clash is reported.
    fast = [{**r, "trace_sampling_rate_hz": 200.0} for r in rows(2)]
    seisbench_write(tmp_path / "clash", traces, fast, {**fmt, "sampling_rate": FS})
    with pytest.warns(UserWarning, match="differs from data_format"):
        ds = WaveformDataset(tmp_path / "clash")
    assert ds.sampling_rate == 200.0
    with pytest.raises(ValueError, match=r"needs 100\.0 Hz"):
        dataset_for(get_card("PhaseNetMag"), tmp_path / "clash")


# --- what cannot be read is refused -----------------------------------------------------------
def _write_fmt(path, rng, fmt, *, n_components=3, meta=None):
    sigs = [signals(rng, n) for n in LENGTHS[:2]]
    traces = [np.stack([s[c] for c in "ZNE"[:n_components]]) for s in sigs]
    seisbench_write(path, traces, meta or rows(2), fmt)
    return path


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ({"component_order": "ZRT", "dimension_order": "CW"}, "R, T"),
        ({"component_order": "Z3N", "dimension_order": "CW"}, "twice"),
        ({"dimension_order": "CW"}, "no component order"),
        ({"component_order": "ZNE", "dimension_order": "CHW"}, "dimension_order"),
    ],
)
def test_uninterpretable_formats_are_refused_on_open(tmp_path, rng, fmt, message):
    path = _write_fmt(tmp_path, rng, {"sampling_rate": FS, **fmt})
    with pytest.raises(DatasetFormatError, match=message):
        WaveformDataset(path)


def test_component_count_mismatch_is_refused(tmp_path, rng):
    # data_format says ZNE, the traces hold two components: no zero-filled guess.
    fmt = {"component_order": "ZNE", "dimension_order": "CW", "sampling_rate": FS}
    ds = WaveformDataset(_write_fmt(tmp_path, rng, fmt, n_components=2))
    with pytest.raises(DatasetFormatError, match="holds 2 components"):
        ds.get_waveform(0)
    with pytest.raises(DatasetFormatError, match="holds 2 components"):
        ds.load_all()
    # The same traces declared WC (samples x components) cannot be read either.
    wc = WaveformDataset(_write_fmt(tmp_path / "wc", rng, {**fmt, "dimension_order": "WC"}))
    with pytest.raises(DatasetFormatError, match="dimension order WC"):
        wc.get_waveform(0)


def test_dataset_and_attribute_disagreeing_is_refused(tmp_path, rng):
    fmt = {"component_order": "ZNE", "dimension_order": "CW", "sampling_rate": FS}
    path = _write_fmt(tmp_path, rng, fmt)
    with h5py.File(path / "waveforms.hdf5", "a") as f:
        f["data_format"].attrs["component_order"] = "ENZ"
    with pytest.raises(DatasetFormatError, match="as an attribute"):
        WaveformDataset(path)


def test_writer_refuses_what_it_cannot_describe(tmp_path):
    with pytest.raises(DatasetFormatError, match="R, T"):
        DatasetWriter(tmp_path / "zrt", sampling_rate=FS, component_order="ZRT")
    with (
        DatasetWriter(tmp_path / "zne", sampling_rate=FS) as writer,
        pytest.raises(ValueError, match="has 2 components"),
    ):
        writer.add(np.zeros((2, 100), dtype=np.float32), {"source_id": "ev"})
