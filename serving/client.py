"""A Python client for the seismag server that speaks ObsPy: Streams in, Traces out.

    from seismag.serving.client import SeismagClient
    with SeismagClient("127.0.0.1:8500") as client:
        for r in client.predict(obspy.read("event.mseed"), stationxml="event.xml"):
            print(r.station_id, r.magnitude, "+/-", r.magnitude_sigma, r.warnings)
            r.series  # the evolving magnitude as an ObsPy Trace
            r.sigma_series  # its standard deviation, the same times (None without sigma)
        for e in client.embed(obspy.read("event.mseed"), encoder="BidirAutoregEncoder",
                              stationxml="event.xml"):
            e.embedding, e.times  # (T, D) float32 and (T,) datetime64[ns], one time a step
        # A server started with --field-model: whole fields from a few observed points.
        mean, std = client.reconstruct(coords, values, grid=(32, 32))  # (F, H, W) each

Units: samples are counts unless ``units="m/s"`` declares them ground velocity; counts need the
channels' StationXML (``stationxml=``) or a server started with ``--inventory``, otherwise the
server answers FAILED_PRECONDITION.

Failures arrive as :class:`grpc.RpcError` with the server's status code and message (or this
client's own, e.g. a request over ``max_message_mb``: see :func:`refused_by_client`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from obspy import Stream, Trace, UTCDateTime

from seismag.serving.config import DEFAULT_ADDRESS
from seismag.serving.v1 import field_pb2 as fpb
from seismag.serving.v1 import field_pb2_grpc as fpb_grpc
from seismag.serving.v1 import seismag_pb2 as pb
from seismag.serving.v1 import seismag_pb2_grpc as pb_grpc


@dataclass
class Prediction:
    """One station's result; ``series`` is an ObsPy Trace of the evolving magnitude,
    ``sigma_series`` one of its standard deviation (None when the model has no sigma output)."""

    network: str
    station: str
    location: str
    magnitude: float
    derivation: str
    series: Trace
    onset: UTCDateTime | None
    onset_source: str
    model: str
    model_version: str
    missing_components: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    onset_confidence: float = 0.0
    """In [0, 1]; see StationMagnitude.onset_confidence in the proto."""
    magnitude_sigma: float = math.nan
    """One standard deviation of ``magnitude`` as the model predicts it; NaN without sigma."""
    sigma_series: Trace | None = None
    warnings: list[str] = field(default_factory=list)
    """What to read the magnitude with (components left out, clipped, upsampled)."""

    @property
    def station_id(self) -> str:
        return f"{self.network}.{self.station}.{self.location}"

    @property
    def has_sigma(self) -> bool:
        return self.sigma_series is not None

    def to_dict(self) -> dict:
        """JSON-ready: the keys ``magnitude`` and ``series`` are what machines read."""
        return {
            "station": self.station_id,
            "magnitude": self.magnitude,
            "magnitude_sigma": self.magnitude_sigma if self.has_sigma else None,
            "series": {
                "start": str(self.series.stats.starttime),
                "interval_s": self.series.stats.delta,
                # null where the model has no value (between two events of one record)
                "values": _json_floats(self.series.data),
                "sigmas": _json_floats(self.sigma_series.data) if self.has_sigma else None,
            },
            "onset": str(self.onset) if self.onset is not None else None,
            "onset_source": self.onset_source,
            "onset_confidence": self.onset_confidence,
            "derivation": self.derivation,
            "model": self.model,
            "model_version": self.model_version,
            "missing_components": self.missing_components,
            "warnings": self.warnings,
            "timings_ms": self.timings_ms,
        }


@dataclass
class Embedding:
    """One station's encoder embedding: ``embedding`` (T, D) float32 and ``times`` (T,) numpy
    ``datetime64[ns]`` (UTC), the time of each step (window start + t * ``step_seconds``)."""

    network: str
    station: str
    location: str
    embedding: np.ndarray
    times: np.ndarray
    window_start: UTCDateTime
    window_end: UTCDateTime
    step_seconds: float
    encoder: str
    encoder_version: str
    missing_components: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Components left out, clipped or upsampled, and a record shorter than the window."""
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def station_id(self) -> str:
        return f"{self.network}.{self.station}.{self.location}"


@dataclass
class Reconstruction:
    """A Reconstruct reply: ``mean`` and ``std`` (F, H, W) float32 in the model's value units,
    and what ran."""

    mean: np.ndarray
    std: np.ndarray
    model: str
    model_version: str
    objective: str
    samples: int
    steps: int
    timings_ms: dict[str, float] = field(default_factory=dict)


def step_times(start: UTCDateTime, step_seconds: float, steps: int) -> np.ndarray:
    """``steps`` times from ``start`` every ``step_seconds`` as datetime64[ns] (UTC), computed
    in integer nanoseconds so that no step drifts by float rounding."""
    start_ns = np.datetime64(UTCDateTime(start).ns, "ns")
    return start_ns + np.arange(steps, dtype=np.int64) * np.timedelta64(
        round(step_seconds * 1e9), "ns"
    )


def _embedding(e: pb.StationEmbedding, response: pb.EmbedResponse) -> Embedding:
    shape = tuple(int(d) for d in e.shape)
    values = np.asarray(e.values, dtype=np.float32).reshape(shape)
    # Times travel as float seconds (microsecond precision): rounded back to the microsecond so
    # that the time axis holds whole microseconds, not the double's last bits.
    start = UTCDateTime(ns=round(e.window_start * 1e6) * 1000)
    return Embedding(
        network=e.network,
        station=e.station,
        location=e.location,
        embedding=values,
        times=step_times(start, e.step_seconds, shape[0]),
        window_start=start,
        window_end=UTCDateTime(ns=round(e.window_end * 1e6) * 1000),
        step_seconds=e.step_seconds,
        encoder=response.encoder,
        encoder_version=response.encoder_version,
        missing_components=list(e.missing_components),
        warnings=list(e.warnings),
        timings_ms=_timings(e.timings),
    )


def _json_floats(values) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]


def _timings(t: pb.Timings) -> dict[str, float]:
    return {
        "preprocess": t.preprocess_ms,
        "queue": t.queue_ms,
        "compute": t.compute_ms,
        "total": t.total_ms,
    }


def _onset(value: float, present: bool) -> UTCDateTime | None:
    return UTCDateTime(value) if present and not math.isnan(value) else None


def _prediction(m: pb.StationMagnitude) -> Prediction:
    header = {
        "network": m.network,
        "station": m.station,
        "location": m.location,
        "channel": "MAG",
        "starttime": UTCDateTime(m.series.start),
        "delta": m.series.interval or 1.0,
    }
    series = Trace(np.asarray(m.series.values, dtype=np.float64), header=dict(header))
    sigma_series = None
    if m.has_sigma:
        header["channel"] = "MSG"  # magnitude sigma
        sigma_series = Trace(np.asarray(m.series.sigmas, dtype=np.float64), header=header)
    return Prediction(
        m.network,
        m.station,
        m.location,
        m.magnitude,
        m.derivation,
        series,
        _onset(m.onset, m.has_onset),
        m.onset_source,
        m.model,
        m.model_version,
        list(m.missing_components),
        _timings(m.timings),
        m.onset_confidence,
        m.magnitude_sigma if m.has_sigma else math.nan,
        sigma_series,
        list(m.warnings),
    )


def _time_chunks(data: Stream, seconds: float) -> Iterator[Stream]:
    """The Stream in time order, ``seconds`` at a time (every trace's piece of each span)."""
    if not len(data):
        return
    t0 = min(tr.stats.starttime for tr in data)
    t1 = max(tr.stats.endtime for tr in data)
    k = 0
    while t0 + k * seconds <= t1:
        a, b = t0 + k * seconds, t0 + (k + 1) * seconds
        part = Stream()
        for tr in data:
            # Samples at times in [a, b): each sample goes out exactly once.
            piece = tr.slice(a, b - 0.5 * tr.stats.delta, nearest_sample=False)
            if piece.stats.npts:
                part.append(piece)
        if len(part):
            yield part
        k += 1


def _from_updates(
    key: tuple[str, str, str],
    updates: list[pb.StreamUpdate],
    interval: float,
    versions: dict[str, str],
) -> Prediction:
    """One station's stream updates as the Prediction a Predict would give."""
    updates = sorted(updates, key=lambda u: u.time)
    first = updates[0].time
    # Value k at first + k * interval; the last may be the data end, off the grid: next slot.
    slots = np.ceil(np.array([u.time - first for u in updates]) / interval - 1e-6).astype(int)
    values = np.full(slots[-1] + 1, np.nan)
    values[slots] = [u.magnitude for u in updates]
    last = updates[-1]
    header = {"network": key[0], "station": key[1], "location": key[2], "channel": "MAG",
              "starttime": UTCDateTime(first), "delta": interval}  # fmt: skip
    sigma_series = None
    if last.has_sigma:
        sigmas = np.full(slots[-1] + 1, np.nan)
        sigmas[slots] = [u.magnitude_sigma for u in updates]
        sigma_series = Trace(sigmas, header={**header, "channel": "MSG"})
    return Prediction(
        key[0],
        key[1],
        key[2],
        last.magnitude,
        "the last value of the evolving series, streamed (every window evaluated)",
        Trace(values, header=header),
        _onset(last.onset, last.has_onset),
        last.onset_source,
        last.model,
        versions.get(last.model, ""),
        onset_confidence=last.onset_confidence,
        magnitude_sigma=last.magnitude_sigma if last.has_sigma else math.nan,
        sigma_series=sigma_series,
        warnings=list(last.warnings),
    )


def stream_to_miniseed(stream: Stream, reclen: int = 512) -> bytes:
    """Serialise a Stream as miniSEED records (float32 samples keep the client's precision)."""
    st = stream.copy()
    for tr in st:
        if tr.data.dtype not in (np.int32, np.float32, np.float64):
            tr.data = tr.data.astype(np.float32)
    buf = io.BytesIO()
    st.write(buf, format="MSEED", reclen=reclen)
    return buf.getvalue()


def raw_trace(tr: Trace) -> pb.RawTrace:
    return pb.RawTrace(
        network=tr.stats.network,
        station=tr.stats.station,
        location=tr.stats.location,
        channel=tr.stats.channel,
        sampling_rate=tr.stats.sampling_rate,
        starttime=tr.stats.starttime.timestamp,
        samples=np.asarray(tr.data, dtype=np.float32).tolist(),
    )


def _set_input(request, data, raw: bool, stationxml) -> None:
    """Fill a Predict or Embed request's waveform input (one oneof) and its StationXML."""
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    if isinstance(data, bytes):
        request.miniseed = data
    elif raw:
        request.raw.traces.extend(raw_trace(tr) for tr in data)
    else:
        request.miniseed = stream_to_miniseed(data)
    request.stationxml = _bytes(stationxml)


def _bytes(stationxml: bytes | str | Path | None) -> bytes:
    if stationxml is None:
        return b""
    return Path(stationxml).read_bytes() if isinstance(stationxml, (str, Path)) else stationxml


def refused_by_client(exc: grpc.RpcError) -> bool:
    """True when ``exc`` is this client's own refusal (a request over its message limit, its
    deadline), not a status the server sent."""
    details = exc.details() if hasattr(exc, "details") else ""
    code = exc.code() if hasattr(exc, "code") else None
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "Sent message larger than max" in details:
        return True
    return code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded"


def _picks(p_picks: dict[str, UTCDateTime] | None) -> list[pb.PPick]:
    picks = p_picks or {}
    return [pb.PPick(station_id=k, time=UTCDateTime(v).timestamp) for k, v in picks.items()]


class SeismagClient:
    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        timeout: float | None = 30.0,
        max_message_mb: int = 64,
    ) -> None:
        options = [
            ("grpc.max_send_message_length", max_message_mb << 20),
            ("grpc.max_receive_message_length", max_message_mb << 20),
        ]
        if tls_ca or tls_cert:
            read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
            creds = grpc.ssl_channel_credentials(read(tls_ca), read(tls_key), read(tls_cert))
            self._channel = grpc.secure_channel(address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.MagnitudeServiceStub(self._channel)
        self._field = fpb_grpc.FieldServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def __enter__(self) -> SeismagClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def predict(
        self,
        data: Stream | bytes | str | Path,
        *,
        model: str = "",
        stationxml: bytes | str | Path | None = None,
        p_picks: dict[str, UTCDateTime] | None = None,
        series_interval: float = 1.0,
        raw: bool = False,
        units: str = "",
    ) -> list[Prediction]:
        """Magnitudes for every station in ``data`` (a Stream, miniSEED bytes or a file path).

        ``units``: "counts" (also when empty: then ``stationxml`` or the server's inventory must
        hold each channel's response) or "m/s" (the samples are ground velocity already).
        ``raw=True`` sends a Stream as plain arrays instead of miniSEED.
        """
        request = pb.PredictRequest(
            model=model,
            series_interval=series_interval,
            p_picks=_picks(p_picks),
            input_units=units,
        )
        _set_input(request, data, raw, stationxml)
        response = self._stub.Predict(request, timeout=self.timeout, metadata=self._metadata)
        return [_prediction(m) for m in response.results]

    def embed(
        self,
        data: Stream | bytes | str | Path,
        *,
        encoder: str = "",
        stationxml: bytes | str | Path | None = None,
        raw: bool = False,
        units: str = "",
    ) -> list[Embedding]:
        """The embedding of each station's latest window (Embed): ``data``, ``stationxml``,
        ``units`` and ``raw`` as in :meth:`predict`; ``encoder`` "" = the server's only one."""
        request = pb.EmbedRequest(encoder=encoder, input_units=units)
        _set_input(request, data, raw, stationxml)
        response = self._stub.Embed(request, timeout=self.timeout, metadata=self._metadata)
        return [_embedding(e, response) for e in response.embeddings]

    def stream(
        self,
        packets: Iterable[Stream | bytes],
        *,
        model: str = "",
        hop: float = 0.0,
        stationxml: bytes | str | Path | None = None,
        p_picks: dict[str, UTCDateTime] | None = None,
        units: str = "",
        every_window: bool = False,
    ) -> Iterator[pb.StreamUpdate]:
        """Send packets (Streams or miniSEED bytes) as they come; yield magnitude updates
        (``magnitude_sigma`` is valid where ``has_sigma``; ``warnings`` as in Predict).
        ``stationxml`` and ``units`` as in :meth:`predict`. ``every_window``: an archive replay,
        every window evaluated with flow control (StreamConfig.every_window)."""
        config = pb.StreamConfig(
            model=model,
            hop_seconds=hop,
            stationxml=_bytes(stationxml),
            input_units=units,
            every_window=every_window,
        )

        def requests() -> Iterator[pb.StreamRequest]:
            yield pb.StreamRequest(config=config)
            for pick in _picks(p_picks):
                yield pb.StreamRequest(pick=pick)
            for packet in packets:
                if isinstance(packet, bytes):
                    yield pb.StreamRequest(miniseed=packet)
                else:  # all of a packet's traces in one message
                    chunks = pb.RawTraces(traces=[raw_trace(tr) for tr in packet])
                    yield pb.StreamRequest(raw_chunks=chunks)

        for message in self._stub.StreamPredict(requests(), metadata=self._metadata):
            yield from message.updates

    def predict_streamed(
        self,
        data: Stream,
        *,
        model: str = "",
        stationxml: bytes | str | Path | None = None,
        p_picks: dict[str, UTCDateTime] | None = None,
        series_interval: float = 1.0,
        units: str = "",
        chunk_seconds: float = 10.0,
    ) -> list[Prediction]:
        """What :meth:`predict` returns, for data of any length: sent through StreamPredict as
        an archive replay (``every_window``) in packets of ``chunk_seconds``, the updates put
        back together into each station's series (NaN where the model has no value, as
        Predict does). For recordings larger than one Predict accepts.

        ``chunk_seconds`` stays under the server's start wait for missing components (a station
        starts without a component once another spans a whole window): 1-10 s, as a live feed's
        packets are."""
        if not 0 < chunk_seconds <= 10:
            raise ValueError(f"chunk_seconds must be in (0, 10], got {chunk_seconds}")
        packets = _time_chunks(data, chunk_seconds)
        by_station: dict[tuple[str, str, str], list[pb.StreamUpdate]] = {}
        for u in self.stream(
            packets,
            model=model,
            hop=series_interval,
            stationxml=stationxml,
            p_picks=p_picks,
            units=units,
            every_window=True,
        ):
            by_station.setdefault((u.network, u.station, u.location), []).append(u)
        versions = {m.name: m.version for m in self.models().models}
        return [
            _from_updates(key, updates, series_interval, versions)
            for key, updates in by_station.items()
        ]

    def reconstruct_fields(
        self,
        coords: np.ndarray,
        values: np.ndarray,
        grid: tuple[int, int],
        samples: int | None = None,
        steps: int | None = None,
        seed: int = 0,
        model: str | None = None,
        *,
        sources: np.ndarray | None = None,
    ) -> Reconstruction:
        """:meth:`reconstruct` with what ran (model, version, samples, steps, timings)."""
        coords = np.asarray(coords, np.float32)
        values = np.asarray(values, np.float32)
        if coords.ndim != 3 or values.ndim != 2 or len(coords) != len(values):
            raise ValueError(
                f"coords must be (F, K, 2) and values (F, K); got {coords.shape} and {values.shape}"
            )
        if sources is None:
            events = [None] * len(coords)
        else:
            rows = np.asarray(sources, np.float64)
            if rows.shape != (len(coords), 4):
                raise ValueError(
                    f"sources must be (F, 4) = ({len(coords)}, 4) (magnitude, epicentre row, "
                    f"epicentre column, depth km); got {rows.shape}"
                )
            events = [
                fpb.EventSource(magnitude=m, epicentre_row=r, epicentre_column=c, depth_km=d)
                for m, r, c, d in rows.tolist()
            ]
        request = fpb.ReconstructRequest(
            model=model or "",
            fields=[
                fpb.ObservedField(coords=c.ravel().tolist(), values=v.tolist(), source=e)
                for c, v, e in zip(coords, values, events, strict=True)
            ],
            height=int(grid[0]),
            width=int(grid[1]),
            samples=samples,
            steps=steps,
            seed=int(seed),
        )
        reply = self._field.Reconstruct(request, timeout=self.timeout, metadata=self._metadata)
        shape = (len(reply.fields), reply.height, reply.width)
        return Reconstruction(
            mean=np.array([f.mean for f in reply.fields], np.float32).reshape(shape),
            std=np.array([f.std for f in reply.fields], np.float32).reshape(shape),
            model=reply.model,
            model_version=reply.model_version,
            objective=reply.objective,
            samples=reply.samples,
            steps=reply.steps,
            timings_ms=_timings(reply.timings),
        )

    def reconstruct(
        self,
        coords: np.ndarray,
        values: np.ndarray,
        grid: tuple[int, int],
        samples: int | None = None,
        steps: int | None = None,
        seed: int = 0,
        model: str | None = None,
        *,
        sources: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Whole fields from observed points (FieldService/Reconstruct; a server started with
        ``--field-model``): ``coords`` (F, K, 2) (row, column) in [0, 1] and ``values`` (F, K)
        in the model's value units -> ``mean`` and ``std``, each (F, H, W) float32 for ``grid``
        (H, W). ``samples`` and ``steps`` default to the model card's; ``model`` to the server's
        field model; ``sources`` (F, 4) each field's magnitude, epicentre (row, column, in the
        coordinates' frame) and depth in km, for a model whose prior needs them (ShakeFlow).
        Bad input: :class:`grpc.RpcError` INVALID_ARGUMENT with the reason."""
        r = self.reconstruct_fields(
            coords, values, grid, samples, steps, seed, model, sources=sources
        )
        return r.mean, r.std

    def models(self) -> pb.ListModelsResponse:
        return self._stub.ListModels(
            pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
        )
