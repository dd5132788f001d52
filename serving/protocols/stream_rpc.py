"""StreamPredict: one call = one StreamSession, a reader thread feeding it, this generator
answering with the updates.

The session is created from the first message that carries a packet or a pick, with the latest
StreamConfig seen before it. It is closed in ``finally`` and by the RPC's done callback, so a
cancelled or vanished client frees its buffers and queued windows at once. Each response packs
the updates ready at that moment (at most ``MAX_UPDATES_PER_MESSAGE``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from seismag.serving.errors import InvalidInput
from seismag.serving.pipeline import ingest
from seismag.serving.pipeline.predict import station_id
from seismag.serving.protocols.messages import pick_time, stream_update
from seismag.serving.v1 import seismag_pb2 as pb

if TYPE_CHECKING:
    from seismag.serving.protocols.server import SeismagServer

MAX_UPDATES_PER_MESSAGE = 256
"""Updates packed into one StreamPredict response at most (each is ~100 bytes)."""


def serve_stream(server: SeismagServer, request_iterator, context) -> Iterator[pb.StreamUpdates]:
    """The body of one StreamPredict call (the server has checked readiness)."""
    config = pb.StreamConfig()
    first = None
    for req in request_iterator:
        if req.HasField("config"):
            config = req.config
        if req.WhichOneof("packet") or req.HasField("pick"):
            first = req
            break
    if first is None:
        return  # the client closed without sending data
    session = _new_session(server, config)
    call = StreamCall(server, session, config, request_iterator, context)
    context.add_callback(session.close)
    server.stream_opened()
    try:
        yield from call.run(first)
    finally:
        session.close()
        server.stream_closed(call.stations)


def _new_session(server: SeismagServer, config: pb.StreamConfig):
    from seismag.serving.pipeline.stream_session import StreamSession

    hop = config.hop_seconds or server.stream_hop
    if not (math.isfinite(hop) and hop > 0):
        raise InvalidInput(f"StreamConfig.hop_seconds must be positive, got {hop}")
    inventory = ingest.read_stationxml(config.stationxml) if config.stationxml else None
    return StreamSession(server.registry, model=config.model, hop=hop, inventory=inventory)


class StreamCall:
    """The state of one StreamPredict: its session, reader thread and first error."""

    _POLL = 0.2
    """Seconds between checks for cancellation and draining while no update is ready."""

    def __init__(self, server: SeismagServer, session, config, request_iterator, context) -> None:
        self.server = server
        self.session = session
        self.config = config
        self.requests = request_iterator
        self.context = context
        self.stations: set[str] = set()
        self.error: BaseException | None = None
        self.stop_reading = threading.Event()
        self.packets = 0

    def _handle(self, req: pb.StreamRequest) -> None:
        if req.HasField("config") and req.config != self.config:
            raise InvalidInput(
                "StreamConfig changed after data was sent; send it before the first packet "
                "(or repeat it unchanged)"
            )
        if req.HasField("pick"):
            self.session.set_pick(req.pick.station_id, pick_time(req.pick))
        kind = req.WhichOneof("packet")
        if kind is None:
            return
        self.packets += 1
        try:
            if kind == "miniseed":
                self.session.add(ingest.read_miniseed(req.miniseed))
            elif kind == "raw_chunk":
                self._add_raw(req.raw_chunk)
            else:
                for i, t in enumerate(req.raw_chunks.traces):
                    try:
                        self._add_raw(t)
                    except InvalidInput as exc:
                        raise InvalidInput(f"chunk {i}: {exc}") from None
        except InvalidInput as exc:
            raise InvalidInput(f"packet {self.packets}: {exc}") from None

    def _add_raw(self, t: pb.RawTrace) -> None:
        # Fast path: straight into the station's buffer, no ObsPy Trace.
        self.session.add_raw(
            t.network, t.station, t.location, t.channel, t.sampling_rate, t.starttime, t.samples
        )

    def _read(self, first: pb.StreamRequest) -> None:
        try:
            self._handle(first)
            for req in self.requests:
                if self.stop_reading.is_set():
                    break
                self._handle(req)
            self.session.finish()
        except Exception as exc:
            # After cancellation or a drain the iterator and session fail by design: not errors.
            if self.context.is_active() and not self.stop_reading.is_set():
                self.error = exc
            self.session.close()

    def run(self, first: pb.StreamRequest) -> Iterator[pb.StreamUpdates]:
        reader = threading.Thread(
            target=self._read, args=(first,), name="seismag-stream-reader", daemon=True
        )
        reader.start()
        session, metrics = self.session, self.server.metrics
        while not session.done:
            ready = session.next_updates(timeout=self._POLL, limit=MAX_UPDATES_PER_MESSAGE)
            if not ready:
                if not self.context.is_active():
                    return
                if self.server.draining and not self.stop_reading.is_set():
                    self.stop_reading.set()  # SIGTERM: deliver what is due, then end cleanly
                    session.finish()
                continue
            for update in ready:
                sid = station_id(update.network, update.station, update.location)
                if sid not in self.stations:
                    self.stations.add(sid)
                    metrics.station_seen(sid)
                metrics.set_lag(sid, update.lag_s)
            yield pb.StreamUpdates(updates=[stream_update(u) for u in ready])
        if self.error is not None:
            raise self.error
