"""StreamPredict on the event loop: one call = one StreamSession, a reader task feeding it, the
handler answering with the updates.

No thread per stream: an idle stream is two suspended coroutines, so thousands of station feeds
can stay open while health and Predict are served. Packets are handed to the session on the loop
(an in-order packet is one append); model results arrive on the batcher's worker threads, which
wake the handler through :class:`Waker` (one ``loop.call_soon_threadsafe`` per burst).

The session is created from the first message that carries a packet or a pick, with the latest
StreamConfig seen before it. It is closed in ``finally``, which also runs when the client cancels
or disconnects, so a vanished client frees its buffers and queued windows at once. Each response
packs the updates ready at that moment (at most ``MAX_UPDATES_PER_MESSAGE``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from seismag.serving.errors import InvalidInput
from seismag.serving.pipeline import ingest
from seismag.serving.pipeline.event import EventTracker
from seismag.serving.pipeline.predict import station_id
from seismag.serving.pipeline.stream_session import StreamSession
from seismag.serving.protocols.messages import event_update, pick_time, stream_update
from seismag.serving.protocols.rpc import Undecodable
from seismag.serving.v1 import seismag_pb2 as pb

if TYPE_CHECKING:
    from seismag.serving.protocols.server import SeismagServer

MAX_UPDATES_PER_MESSAGE = 256
"""Updates packed into one StreamPredict response at most (each is ~100 bytes)."""
EVERY_WINDOW_BACKLOG = 512
"""StreamConfig.every_window: the next packet is read only while fewer windows (in the model)
plus unread updates than this are waiting; one packet's windows come on top (~72 KB each for a
3 x 3001 window until it has run)."""


async def serve_stream(
    server: SeismagServer, context: grpc.aio.ServicerContext
) -> AsyncIterator[pb.StreamUpdates]:
    """The body of one StreamPredict call (the server has checked readiness)."""
    config = pb.StreamConfig()
    first = None
    while first is None:
        req = _decoded(await context.read())
        if req is grpc.aio.EOF:
            return  # the client closed without sending data
        if req.HasField("config"):
            config = req.config
        if req.WhichOneof("packet") or req.HasField("pick"):
            first = req
    call = StreamCall(server, config, context)
    server.stream_opened(call)
    try:
        async for message in call.run(first):
            yield message
    finally:
        call.close()
        server.stream_closed(call)


def _decoded(req):
    """A read request, or InvalidInput when its bytes were not a StreamRequest."""
    if isinstance(req, Undecodable):
        raise InvalidInput(req.details)
    return req


def _raw_args(t: pb.RawTrace) -> tuple:
    """A RawTrace as StreamSession.add_raw's arguments."""
    return (t.network, t.station, t.location, t.channel, t.sampling_rate, t.starttime, t.samples)


def _new_session(server: SeismagServer, config: pb.StreamConfig, on_ready) -> StreamSession:
    if config.model in server.ensembles:
        raise InvalidInput(
            f"{config.model} is an ensemble, served by Predict only; stream one of its members "
            f"({', '.join(server.ensembles[config.model])})"
        )
    hop = config.hop_seconds or server.stream_hop
    inventory = ingest.read_stationxml(config.stationxml) if config.stationxml else None
    return StreamSession(
        server.registry,
        model=config.model,
        hop=hop,
        units=config.input_units,
        inventory=inventory,
        server_inventory=server.inventory,
        on_ready=on_ready,
        coalesce=not config.every_window,
    )


class Waker:
    """Wakes stream handlers on the loop from any thread, with one loop wake-up per burst.

    A batch of the model holds windows of many stations; with one stream per station that is as
    many sessions to wake. A ``call_soon_threadsafe`` each would write the loop's self-pipe and
    queue a callback per session; here the first wake of a burst schedules one flush and the
    others only join the set it will wake.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: set[StreamCall] = set()
        self._scheduled = False

    def wake(self, call: StreamCall) -> None:
        with self._lock:
            self._pending.add(call)
            if self._scheduled:
                return
            self._scheduled = True
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            calls, self._pending = self._pending, set()
            self._scheduled = False
        for call in calls:
            call.wake.set()


class StreamCall:
    """The state of one StreamPredict: its session, reader task, wake-up event and first error."""

    def __init__(self, server: SeismagServer, config, context: grpc.aio.ServicerContext) -> None:
        self.server = server
        self.config = config
        self.context = context
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()
        self.session = _new_session(server, config, self.wake_soon)
        self.events = (
            EventTracker(calibration=server.station_table, event_id=config.event_id)
            if config.events or config.event_id
            else None
        )
        self.stations: set[str] = set()
        self.error: BaseException | None = None
        self.stop_reading = False
        self.packets = 0
        self._reader: asyncio.Task | None = None
        self.drained = asyncio.Event()
        """Set whenever updates went out: the reader's flow control waits on it."""

    def wake_soon(self) -> None:
        """Wake the handler (safe from any thread: the batcher's workers call it)."""
        self.server.waker.wake(self)

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
            else:  # fast path: straight into the stations' buffers, no ObsPy Trace
                traces = [req.raw_chunk] if kind == "raw_chunk" else req.raw_chunks.traces
                self.session.add_raw_many([_raw_args(t) for t in traces])
        except InvalidInput as exc:
            raise InvalidInput(f"packet {self.packets}: {exc}") from None

    async def _read(self, first: pb.StreamRequest) -> None:
        try:
            self._handle(first)
            while not self.stop_reading:
                if self.config.every_window:
                    await self._room()
                req = _decoded(await self.context.read())
                if req is grpc.aio.EOF:
                    break
                self._handle(req)
            self.session.finish()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # After a drain the session fails by design (it is finishing): not an error.
            if not self.stop_reading:
                self.error = exc
            self.session.close()

    async def _room(self) -> None:
        """Flow control of an archive replay: wait while the backlog is over its bound (the
        handler sets ``drained`` after each message it sends; a failed session ends the wait)."""
        while self.session.backlog() >= EVERY_WINDOW_BACKLOG and not self.session.done:
            self.drained.clear()
            if self.session.backlog() < EVERY_WINDOW_BACKLOG:
                break
            await self.drained.wait()

    def _drain(self) -> None:
        """SIGTERM: stop reading, deliver what is due, then end cleanly."""
        self.stop_reading = True
        if self._reader is not None:
            self._reader.cancel()
        self.session.finish()

    async def run(self, first: pb.StreamRequest) -> AsyncIterator[pb.StreamUpdates]:
        self._reader = asyncio.create_task(self._read(first))
        session, metrics = self.session, self.server.metrics
        while not session.done:
            self.wake.clear()  # before looking: a result that lands after the look wakes us
            ready = session.next_updates(timeout=0, limit=MAX_UPDATES_PER_MESSAGE)
            if not ready:
                if self.server.draining and not self.stop_reading:
                    self._drain()
                    continue
                if not session.done:
                    await self.wake.wait()
                continue
            for update in ready:
                sid = station_id(update.network, update.station, update.location)
                if sid not in self.stations:
                    self.stations.add(sid)
                    metrics.station_seen(sid)
                metrics.set_lag(sid, update.lag_s)
            events = self.events.add(ready) if self.events is not None else ()
            yield pb.StreamUpdates(
                updates=[stream_update(u) for u in ready],
                events=[event_update(e) for e in events],
            )
            self.drained.set()
        self.drained.set()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.session.close()
