"""grpc.health.v1 for the asyncio server, settable from any thread, with Watch streams that end
when the server drains.

grpcio-health-checking ships an asyncio servicer, but its ``set`` is a coroutine of the serving
loop and its Watch never ends, so every shutdown with a watching client (client-side health
checking, a sidecar) would wait out the whole grace period. This one keeps the statuses in a dict
and wakes watchers on the loop.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

Status = health_pb2.HealthCheckResponse.ServingStatus


class HealthServicer(health_pb2_grpc.HealthServicer):
    """Check and Watch over a status per service name ("" = the whole server)."""

    def __init__(self) -> None:
        self._status: dict[str, Status] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._ended = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the loop the server runs on (watchers are woken there)."""
        self._loop = loop
        self._changed = asyncio.Event()

    def set(self, service: str, status: Status) -> None:
        """Set a service's status (any thread) and tell its watchers."""
        self._status[service] = status
        self._wake()

    def end_watches(self) -> None:
        """Finish every open Watch with status OK, after the last status has been sent."""
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._pulse)

    def _pulse(self) -> None:
        # A fresh Event per change: every watcher waiting on the old one wakes exactly once.
        changed, self._changed = self._changed, asyncio.Event()
        if changed is not None:
            changed.set()

    async def Check(self, request, context):
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request, context):
        last = None
        while True:
            changed = self._changed
            status = self._status.get(
                request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            )
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self._ended or changed is None:
                return
            await changed.wait()
