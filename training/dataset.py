"""SeisBench's on-disk dataset format, written and read by one module.

A dataset is a folder with ``metadata.csv`` (one row per trace, SeisBench column names) and
``waveforms.hdf5``. The HDF5 file has a group ``data_format`` whose entries say how to read the
arrays (``component_order``, ``dimension_order``, ``sampling_rate``, ``measurement``, ``unit``)
and a group ``data`` holding the waveforms, addressed by the metadata's ``trace_name``:

* ``data/<trace_name>``: one dataset per trace; or
* a *bucket* locator ``bucket3$17,:3,:6000``: row 17 of ``data/bucket3``, first 3 components and
  6000 samples (buckets are padded to their longest trace). Few large datasets read far faster
  than thousands of small ones, which is why the writer uses buckets by default.

SeisBench (``seisbench.data.WaveformDataWriter`` / ``WaveformDataset``, seisbench/data/base.py)
stores each ``data_format`` entry as an HDF5 *dataset* in that group; earlier seismag versions
wrote them as *attributes* of the group. The writer writes both (SeisBench reads the datasets,
older seismag the attributes); the reader takes the datasets and falls back to the attributes.
As in SeisBench, a metadata column ``trace_component_order`` overrides the dataset's component
order per trace, and ``trace_sampling_rate_hz`` (or ``trace_dt_s``) its sampling rate.

Using SeisBench's layout (not an own one) means the same loader trains on the synthetic data and on
a real benchmark that SeisBench downloaded (ETHZ, STEAD, INSTANCE, ...), including chunked ones
(``metadata<chunk>.csv`` + ``waveforms<chunk>.hdf5``). SeisBench itself is not needed to read them.
A component order or dimension order the reader cannot interpret is a ``DatasetFormatError``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from seismag.models.card import ModelCard
from seismag.models.preprocess import COMPONENT_ALIASES

SPLITS = ("train", "dev", "test")

# SeisBench's two dimension orders of one trace: components x samples, or samples x components.
DIMENSION_ORDERS = ("CW", "WC")


class DatasetFormatError(ValueError):
    """A dataset cannot be read without guessing (the message says what and where)."""


# Phase columns seen in SeisBench datasets, normalised to trace_p/s_arrival_sample. The first
# arrival is the earliest of the direct/first-arrival variants present in a row: lowercase p/s
# (STEAD, INSTANCE, most), uppercase P/S, P1/S1 (ETHZ-style numbered first picks), Pg/Sg, Pn/Sn
# (regional head waves, which arrive first beyond ~150 km), Pb/Sb and Pup. Later or converted
# phases (PmP, SmS, pP, pwP, ...) are not first arrivals and are ignored.
P_COLUMNS = tuple(f"trace_{p}_arrival_sample" for p in ("p", "P", "P1", "Pg", "Pn", "Pb", "Pup"))
S_COLUMNS = tuple(f"trace_{s}_arrival_sample" for s in ("s", "S", "S1", "Sg", "Sn", "Sb"))

# Columns the writer puts first, in SeisBench's naming; anything else in a row is kept after them.
METADATA_COLUMNS = (
    "trace_name",
    "source_id",
    "source_origin_time",
    "source_magnitude",
    "source_magnitude_type",
    "source_depth_km",
    "path_ep_distance_km",
    "path_back_azimuth_deg",
    "trace_p_arrival_sample",
    "trace_s_arrival_sample",
    "trace_snr_db",
    "station_network_code",
    "station_code",
    "station_location_code",
    "trace_channel",
    "trace_sampling_rate_hz",
    "trace_start_time",
    "split",
)


def parse_location(location: str) -> tuple[int | slice | None, ...]:
    """SeisBench locator ("17,:3,:6000", negative and empty bounds allowed) -> numpy index."""

    def num(s: str) -> int | None:
        return int(s) if s else None

    index: list[int | slice | None] = []
    for part in location.replace(" ", "").split(","):
        bounds = part.split(":")
        if len(bounds) == 1:
            index.append(num(bounds[0]))
        elif len(bounds) <= 3:
            index.append(slice(*(num(b) for b in bounds)))
        else:
            raise ValueError(f"invalid location {location!r}")
    return tuple(index)


def component_order_letters(order: Any, where: str) -> str:
    """A stored component order ("ZNE", "ENZ", "Z12", "Z", ...) -> its letters in Z/N/E.

    1/2/3 are read as N/E/Z as the serving path reads channel codes. A missing order, a code that
    is not Z/N/E/1/2/3 (R, T, a hydrophone, ...) or one component twice is a
    :class:`DatasetFormatError`: zero-filling or guessing there would feed a model wrong data.
    """
    if isinstance(order, (tuple, list, np.ndarray)):  # SeisBench also stores sequences of codes
        order = "".join(str(_decode(c)) for c in order)
    if not isinstance(order, str) or not order.strip():
        raise DatasetFormatError(
            f"{where}: no component order (set data_format/component_order or the metadata "
            "column trace_component_order, e.g. 'ZNE')"
        )
    codes = order.strip().upper()
    unknown = sorted({c for c in codes if c not in COMPONENT_ALIASES})
    if unknown:
        raise DatasetFormatError(
            f"{where}: component order {order!r} has {', '.join(unknown)}, not Z, N, E "
            "(or 1, 2, 3); rotate the data to Z, N, E first"
        )
    letters = "".join(COMPONENT_ALIASES[c] for c in codes)
    if len(set(letters)) != len(letters):
        raise DatasetFormatError(
            f"{where}: component order {order!r} names one component twice (as {letters})"
        )
    return letters


def assign_splits(
    source_ids: Sequence[str] | pd.Series,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> np.ndarray:
    """train/dev/test per trace, assigned by event so no source is in two splits.

    A random trace split puts one event's other stations in the test set, which measures
    memorisation of the event rather than generalisation. The sorted unique ids are shuffled
    with ``seed``, so the result depends only on the set of events and the seed.
    """
    ids = pd.Series(source_ids).astype(str)
    unique = np.array(sorted(ids.unique()))
    order = np.random.default_rng(seed).permutation(len(unique))
    total = sum(fractions)
    n_train = round(len(unique) * fractions[0] / total)
    n_dev = round(len(unique) * fractions[1] / total)
    labels = np.empty(len(unique), dtype=object)
    labels[order[:n_train]] = "train"
    labels[order[n_train : n_train + n_dev]] = "dev"
    labels[order[n_train + n_dev :]] = "test"
    return ids.map(dict(zip(unique, labels, strict=True))).to_numpy()


class DatasetWriter:
    """Stream traces into a SeisBench-format folder; metadata.csv is written on ``close``.

    ``storage="bucket"`` packs ``bucket_size`` traces per HDF5 dataset (the row's ``trace_name``
    becomes the locator, the readable name moves to ``trace_name_original``, as SeisBench's own
    writer does); ``storage="trace"`` writes ``data/<trace_name>``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        sampling_rate: float,
        component_order: str = "ZNE",
        storage: str = "bucket",
        bucket_size: int = 1024,
        measurement: str = "velocity",
        unit: str = "mps",
        provenance: Mapping[str, Any] | None = None,
        split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        compression: str | None = None,
    ) -> None:
        if storage not in ("bucket", "trace"):
            raise ValueError(f"storage must be 'bucket' or 'trace', got {storage!r}")
        component_order_letters(component_order, "DatasetWriter")
        self.component_order = component_order
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.storage = storage
        self.bucket_size = bucket_size
        self.split_fractions = split_fractions
        self.split_seed = split_seed
        self.compression = compression
        self._rows: list[dict] = []
        self._pending: list[tuple[np.ndarray, dict]] = []
        self._names: set[str] = set()
        self._n_buckets = 0
        self._file = h5py.File(self.path / "waveforms.hdf5", "w")
        fmt = self._file.create_group("data_format")
        for key, value in {
            "component_order": component_order,
            "dimension_order": "CW",
            "sampling_rate": float(sampling_rate),
            "measurement": measurement,
            "unit": unit,
        }.items():
            fmt.create_dataset(key, data=value)  # what SeisBench reads
            fmt.attrs[key] = value  # what seismag read before it read the datasets
        self._data = self._file.create_group("data")
        if provenance:
            prov = self._file.create_group("provenance")
            for key, value in provenance.items():
                prov.attrs[key] = value

    @property
    def n_traces(self) -> int:
        return len(self._rows) + len(self._pending)

    def _unique_name(self, meta: Mapping[str, Any]) -> str:
        base = str(
            meta.get("trace_name")
            or "{}_{}.{}.{}".format(
                meta.get("source_id", "ev"),
                meta.get("station_network_code", ""),
                meta.get("station_code", ""),
                meta.get("station_location_code", "") or "",
            )
        ).replace("$", "_")
        name, n = base, 1
        while name in self._names:
            name, n = f"{base}_{n}", n + 1
        self._names.add(name)
        return name

    def add(self, waveform: np.ndarray, metadata: Mapping[str, Any]) -> None:
        """One (C, N) trace and its metadata row."""
        wave = np.asarray(waveform, dtype=np.float32)
        if wave.ndim != 2:
            raise ValueError(f"waveform must be (components, samples), got {wave.shape}")
        if wave.shape[0] != len(self.component_order):
            raise ValueError(
                f"waveform has {wave.shape[0]} components, the dataset's component order "
                f"{self.component_order!r} has {len(self.component_order)}"
            )
        row = dict(metadata)
        row["trace_name"] = self._unique_name(row)
        if self.storage == "trace":
            self._data.create_dataset(row["trace_name"], data=wave, compression=self.compression)
            self._rows.append(row)
            return
        self._pending.append((wave, row))
        if len(self._pending) >= self.bucket_size:
            self._flush()

    def add_many(self, waveforms: np.ndarray, metadata: Sequence[Mapping[str, Any]]) -> None:
        if len(waveforms) != len(metadata):
            raise ValueError(f"{len(waveforms)} waveforms but {len(metadata)} metadata rows")
        for wave, meta in zip(waveforms, metadata, strict=True):
            self.add(wave, meta)

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"bucket{self._n_buckets}"
        self._n_buckets += 1
        channels = max(w.shape[0] for w, _ in self._pending)
        samples = max(w.shape[1] for w, _ in self._pending)
        block = np.zeros((len(self._pending), channels, samples), dtype=np.float32)
        for i, (wave, row) in enumerate(self._pending):
            block[i, : wave.shape[0], : wave.shape[1]] = wave
            row["trace_name_original"] = row["trace_name"]
            row["trace_name"] = f"{name}${i},:{wave.shape[0]},:{wave.shape[1]}"
            self._rows.append(row)
        self._data.create_dataset(name, data=block, compression=self.compression)
        self._pending.clear()

    def close(self) -> Path:
        """Flush the last bucket, assign splits by event (unless given) and write metadata.csv."""
        if self._file is None:
            return self.path
        self._flush()
        self._file.close()
        self._file = None
        meta = pd.DataFrame(self._rows)
        if len(meta) and "split" not in meta.columns and "source_id" in meta.columns:
            meta["split"] = assign_splits(meta["source_id"], self.split_fractions, self.split_seed)
        first = [c for c in METADATA_COLUMNS if c in meta.columns]
        meta = meta[first + [c for c in meta.columns if c not in first]]
        meta.to_csv(self.path / "metadata.csv", index=False)
        return self.path

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._file is not None:  # leave no metadata.csv that would pass for a whole dataset
            self._file.close()
            self._file = None


# --- reading ------------------------------------------------------------------------------------
def find_chunks(path: Path) -> list[str]:
    """SeisBench's chunk rule: a ``chunks`` file, else ``waveforms.hdf5``, else matching pairs of
    ``metadata<chunk>.csv`` / ``waveforms<chunk>.hdf5``."""
    listed = path / "chunks"
    if listed.is_file():
        chunks = [c.strip() for c in listed.read_text().splitlines() if c.strip()]
        if chunks:
            return sorted(chunks)
    if (path / "waveforms.hdf5").is_file():
        return [""]
    meta = {p.name[8:-4] for p in path.glob("metadata*.csv")}
    wave = {p.name[9:-5] for p in path.glob("waveforms*.hdf5")}
    chunks = sorted(meta & wave)
    if not chunks:
        raise FileNotFoundError(f"{path}: no metadata*.csv + waveforms*.hdf5 pair")
    return chunks


def normalise_metadata(meta: pd.DataFrame) -> pd.DataFrame:
    """Bring a SeisBench metadata table to the names this package reads.

    ``trace_p_arrival_sample`` / ``trace_s_arrival_sample`` become the row-wise earliest of the
    variants in :data:`P_COLUMNS` / :data:`S_COLUMNS` (originals kept). A missing
    ``source_magnitude`` becomes NaN; empty location codes stay empty strings, not NaN.
    """
    meta = meta.copy()
    for target, variants in (
        ("trace_p_arrival_sample", P_COLUMNS),
        ("trace_s_arrival_sample", S_COLUMNS),
    ):
        present = [c for c in variants if c in meta.columns]
        if present:
            values = meta[present].apply(pd.to_numeric, errors="coerce")
            meta[target] = values.min(axis=1, skipna=True)
        else:
            meta[target] = np.nan
    if "source_magnitude" not in meta.columns:
        meta["source_magnitude"] = np.nan
    if "station_location_code" in meta.columns:
        meta["station_location_code"] = meta["station_location_code"].fillna("").astype(str)
    meta["trace_name"] = meta["trace_name"].astype(str)
    return meta


def _component_map(letters: str, target: str) -> list[int]:
    """Index of each target component in a source's Z/N/E letters, -1 where the source lacks it
    (zero-filled, as SeisBench's ``missing_components="pad"``)."""
    return [letters.index(c) if c in letters else -1 for c in target.upper()]


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        return "".join(v.decode() if isinstance(v, bytes) else str(v) for v in value)
    return value


def _same(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "biuf" and b.dtype.kind in "biuf":
        return a.shape == b.shape and bool(np.all(a == b))
    return str(a.tolist()) == str(b.tolist())


def read_data_format(group: h5py.Group | None, where: str) -> dict[str, Any]:
    """A ``data_format`` group's entries: its datasets (SeisBench), else its attributes (older
    seismag files). An entry stored both ways with two values is a :class:`DatasetFormatError`."""
    if group is None:
        return {}
    entries = {
        key: _decode(item[()]) for key, item in group.items() if isinstance(item, h5py.Dataset)
    }
    attrs = {key: _decode(value) for key, value in group.attrs.items()}
    for key in entries.keys() & attrs.keys():
        if not _same(entries[key], attrs[key]):
            raise DatasetFormatError(
                f"{where}: data_format {key!r} is {entries[key]!r} as a dataset but "
                f"{attrs[key]!r} as an attribute"
            )
    return {**attrs, **entries}


class _Store:
    """HDF5 handles (re-opened after a fork: h5py handles must not cross processes) and the cache
    of raw arrays, shared by a dataset and its split views."""

    def __init__(self, path: Path, chunks: list[str]) -> None:
        self.path = path
        self.chunks = chunks
        self.formats: dict[str, dict[str, Any]] = {}
        for chunk in chunks:
            where = str(self._wave_path(chunk))
            with h5py.File(self._wave_path(chunk), "r") as f:
                fmt = read_data_format(f.get("data_format"), where)
            # SeisBench assumes CW where the entry is missing; a wrong guess fails the
            # component-count check of every trace.
            dims = str(fmt.get("dimension_order", "CW")).strip().upper()
            if dims not in DIMENSION_ORDERS:
                raise DatasetFormatError(
                    f"{where}: data_format dimension_order {fmt['dimension_order']!r} is neither "
                    "'CW' (components x samples) nor 'WC' (samples x components)"
                )
            fmt["dimension_order"] = dims
            self.formats[chunk] = fmt
        self.letters: dict[str, str] = {}  # each stored component order -> its Z/N/E letters
        self.cache: dict[int, np.ndarray] = {}
        self._files: dict[str, h5py.File] = {}
        self._pid = os.getpid()

    def _wave_path(self, chunk: str) -> Path:
        return self.path / f"waveforms{chunk}.hdf5"

    def data(self, chunk: str) -> h5py.Group:
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        if chunk not in self._files:
            self._files[chunk] = h5py.File(self._wave_path(chunk), "r")
        return self._files[chunk]["data"]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}


def _numeric(meta: pd.DataFrame, column: str) -> pd.Series:
    if column not in meta.columns:
        return pd.Series(np.nan, index=meta.index, dtype=float)
    return pd.to_numeric(meta[column], errors="coerce").astype(float)


def _unify_component_order(meta: pd.DataFrame, store: _Store) -> pd.DataFrame:
    """Every row's stored component order in ``trace_component_order``: the row's own value where
    the column has one (SeisBench's rule), else its chunk's ``data_format``; each distinct order
    is checked once here, so a dataset that cannot be read fails on opening, not mid-training."""
    chunk_order = meta["trace_chunk"].map(
        {c: f.get("component_order") for c, f in store.formats.items()}
    )
    order = chunk_order
    if "trace_component_order" in meta.columns:
        own = meta["trace_component_order"]
        given = own.notna() & (own.astype(str).str.strip() != "")
        order = own.where(given, chunk_order)
    missing = order.isna()
    if missing.any():
        first = meta["trace_name"][missing].iloc[0]
        raise DatasetFormatError(
            f"{store.path}: {int(missing.sum())} traces (the first {first!r}) "
            "have no component order: neither data_format/component_order nor the metadata "
            "column trace_component_order gives one"
        )
    meta["trace_component_order"] = order.astype(str).to_numpy()
    for value in meta["trace_component_order"].unique():
        store.letters[value] = component_order_letters(value, str(store.path))
    return meta


def _unify_sampling_rate(meta: pd.DataFrame, store: _Store) -> pd.DataFrame:
    """Every row's rate in ``trace_sampling_rate_hz``, by SeisBench's precedence: the column, else
    ``1 / trace_dt_s``, else the chunk's ``data_format/sampling_rate``; NaN where none is given."""
    rate = _numeric(meta, "trace_sampling_rate_hz").fillna(1.0 / _numeric(meta, "trace_dt_s"))
    declared = {
        c: float(f["sampling_rate"]) for c, f in store.formats.items() if "sampling_rate" in f
    }
    chunk_rate = meta["trace_chunk"].map(declared).astype(float)
    differ = (rate / chunk_rate - 1.0).abs() > 1e-4
    if differ.any():
        warnings.warn(
            f"{store.path}: {int(differ.sum())} traces' metadata sampling rate differs from "
            "data_format/sampling_rate; the metadata's is used, as SeisBench does",
            stacklevel=3,
        )
    meta["trace_sampling_rate_hz"] = rate.fillna(chunk_rate)
    return meta


class WaveformDataset:
    """A SeisBench-format dataset: metadata as a DataFrame, waveforms as (C, N) float32 arrays.

    ``component_order`` is the order ``get_waveform`` returns, whatever the file stores (per-trace
    ``trace_component_order`` column, else the chunk's ``data_format``); components the trace
    lacks are zeros (a Z-only trace read as ZNE has zero N and E). Waveforms are returned at their
    stored sampling rate: resampling belongs to preprocessing, not to the loader.
    """

    def __init__(self, path: str | os.PathLike, component_order: str = "ZNE") -> None:
        path = Path(path)
        chunks = find_chunks(path)
        store = _Store(path, chunks)
        frames = []
        for chunk in chunks:
            frame = pd.read_csv(
                path / f"metadata{chunk}.csv",
                low_memory=False,
                dtype={
                    "trace_name": str,
                    "station_location_code": str,
                    "trace_component_order": str,
                },
            )
            frame["trace_chunk"] = chunk
            frames.append(frame)
        meta = normalise_metadata(pd.concat(frames, ignore_index=True))
        meta = _unify_sampling_rate(_unify_component_order(meta, store), store)
        self._setup(store, meta, np.arange(len(meta)), component_order)

    @classmethod
    def _view(
        cls, store: _Store, full: pd.DataFrame, rows: np.ndarray, order: str
    ) -> WaveformDataset:
        view = cls.__new__(cls)
        view._setup(store, full, rows, order)
        return view

    def _setup(self, store: _Store, full: pd.DataFrame, rows: np.ndarray, order: str) -> None:
        self._store = store
        self._full = full
        self._rows = np.asarray(rows, dtype=np.int64)
        self.component_order = order
        self.metadata = full.iloc[self._rows].reset_index(drop=True)
        self._names = full["trace_name"].to_numpy()
        self._chunk = full["trace_chunk"].to_numpy()
        self._source_order = full["trace_component_order"].to_numpy()
        self._maps: dict[str, list[int]] = {}

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def data_format(self) -> dict[str, Any]:
        return dict(self._store.formats[self._store.chunks[0]])

    @property
    def sampling_rate(self) -> float | None:
        """The one rate of every trace (``trace_sampling_rate_hz`` after SeisBench's precedence);
        None where traces differ or a trace has none."""
        rates = self.metadata["trace_sampling_rate_hz"]
        if len(rates) and rates.notna().all() and rates.max() <= rates.min() * (1 + 1e-9):
            return float(rates.iloc[0])
        return None

    def __len__(self) -> int:
        return len(self._rows)

    def _raw(self, row: int) -> np.ndarray:
        """A trace as stored, brought to (C, N)."""
        cached = self._store.cache.get(row)
        if cached is not None:
            return cached
        block, _, location = self._names[row].partition("$")
        data = self._store.data(self._chunk[row])
        if block not in data:
            raise DatasetFormatError(
                f"{self.path}: trace {self._names[row]!r} points to data/{block}, which "
                f"waveforms{self._chunk[row]}.hdf5 does not hold"
            )
        wave = data[block][parse_location(location) if location else ()]
        return self._to_cw(np.asarray(wave), row)

    def _to_cw(self, wave: np.ndarray, row: int) -> np.ndarray:
        """A stored trace -> (C, N), its component count checked against its component order."""
        dims = self._store.formats[self._chunk[row]]["dimension_order"]
        order = self._source_order[row]
        if wave.ndim != 2:
            raise DatasetFormatError(
                f"{self.path}: trace {self._names[row]!r} is stored with shape {wave.shape}; "
                f"a trace is 2-D ({dims})"
            )
        if dims == "WC":
            wave = wave.T
        if wave.shape[0] != len(order):
            raise DatasetFormatError(
                f"{self.path}: trace {self._names[row]!r} holds {wave.shape[0]} components "
                f"(dimension order {dims}) but its component order {order!r} names {len(order)}"
            )
        return wave

    def get_waveform(self, i: int) -> np.ndarray:
        """Trace ``i`` of this (view of the) dataset as (C, N) float32 in ``component_order``."""
        row = int(self._rows[i])
        raw = self._raw(row)
        source = self._source_order[row]
        mapping = self._maps.get(source)
        if mapping is None:
            letters = self._store.letters[source]
            mapping = self._maps[source] = _component_map(letters, self.component_order)
        out = np.zeros((len(mapping), raw.shape[-1]), dtype=np.float32)
        for j, k in enumerate(mapping):
            if k >= 0:
                out[j] = raw[k]
        return out

    def split(self, name: str) -> WaveformDataset:
        """The traces whose ``split`` column is ``name`` (a view: shares files and cache)."""
        if "split" not in self.metadata.columns:
            raise KeyError(f"{self.path}: the metadata has no 'split' column")
        mask = (self.metadata["split"] == name).to_numpy()
        return self._view(self._store, self._full, self._rows[mask], self.component_order)

    def load_all(self) -> WaveformDataset:
        """Read every waveform of this view into memory (one read per bucket); returns self.

        For datasets that fit in RAM: training then never touches HDF5 in the loop.
        """
        cache = self._store.cache
        todo = [int(r) for r in self._rows if int(r) not in cache]
        by_block: dict[tuple[str, str], list[int]] = {}
        for row in todo:
            block = self._names[row].partition("$")[0]
            by_block.setdefault((self._chunk[row], block), []).append(row)
        for (chunk, block), rows in by_block.items():
            data = self._store.data(chunk)
            array = data[block][()] if len(rows) > 1 and block in data else None
            for row in rows:
                _, _, location = self._names[row].partition("$")
                if array is None:
                    wave = self._raw(row)
                else:
                    wave = self._to_cw(array[parse_location(location) if location else ()], row)
                cache[row] = np.ascontiguousarray(wave, dtype=np.float32)
        return self

    def close(self) -> None:
        self._store.close()

    def __repr__(self) -> str:
        return (
            f"WaveformDataset({str(self.path)!r}, {len(self)} traces, "
            f"component_order={self.component_order!r})"
        )


def dataset_for(
    card: ModelCard, path: str | os.PathLike, error: type[Exception] = ValueError
) -> WaveformDataset:
    """Open ``path`` in ``card``'s component order; ``error`` if it is not at the card's rate."""
    ds = WaveformDataset(path, component_order=card.component_order)
    if ds.sampling_rate is None:
        unknown = int(ds.metadata["trace_sampling_rate_hz"].isna().sum())
        if unknown:
            raise error(
                f"{path}: {unknown} traces have no sampling rate (no data_format/sampling_rate, "
                "trace_sampling_rate_hz or trace_dt_s)"
            )
        raise error(f"{path} mixes sampling rates; resample it to {card.sampling_rate} Hz")
    if abs(float(ds.sampling_rate) - card.sampling_rate) > 1e-6:
        raise error(
            f"{path} is sampled at {ds.sampling_rate} Hz; {card.name} needs {card.sampling_rate} Hz"
        )
    return ds
