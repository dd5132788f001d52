"""Status mapping and deadlines shared by every asyncio servicer.

One decorator turns the core's ``ServingError`` subclasses into the matching gRPC status with the
exception message as details, a client that went away into CANCELLED (not an error: nothing is
logged), and anything unexpected into INTERNAL with a short message (the traceback goes to the
log, not to the client). The event loop survives either way, so one bad request never takes the
service down.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc
from grpc.aio import AbortError

from seismag.serving.errors import ServingError

log = logging.getLogger("seismag.serving")

_NO_DEADLINE = 1e8
"""grpc reports "no deadline" as a huge time_remaining(); anything beyond ~3 years is none."""


class Undecodable:
    """A request whose bytes are not the method's message (see the interceptor)."""

    __slots__ = ("error", "size")

    def __init__(self, error: str, size: int) -> None:
        self.error = error
        self.size = size

    @property
    def details(self) -> str:
        return f"the request ({self.size} bytes) is not a valid message: {self.error[:200]}"

    async def abort(self, context: grpc.aio.ServicerContext) -> None:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, self.details)


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    """``context.abort``; when the call has already ended on the wire (its deadline passed while
    the handler ran without yielding, or the client left), no status can be sent: CancelledError,
    as for any client that went away, instead of the core's error and a second abort."""
    try:
        await context.abort(code, details)
    except AbortError:
        raise
    except Exception as exc:  # grpc's ExecuteBatchError: the status could not be sent
        raise asyncio.CancelledError(f"{code.name} not sent: the call had ended") from exc


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and details a client should see for ``exc``."""
    if isinstance(exc, ServingError):
        code = getattr(grpc.StatusCode, exc.code_name, grpc.StatusCode.INTERNAL)
        return code, str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "deadline exceeded"
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"


async def _fail(context: grpc.aio.ServicerContext, name: str, exc: Exception) -> None:
    code, details = status_of(exc)
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        log.error("%s failed", name, exc_info=exc)
    else:
        log.debug("%s: %s: %s", name, code.name, details)
    await abort(context, code, details)


def rpc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate an async servicer method (unary or response-streaming) with the status mapping.

    ``asyncio.CancelledError`` (the client cancelled or disconnected, or the server stopped) and
    ``AbortError`` (a status already set) pass through untouched.
    """
    name = fn.__name__
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream_wrapper(self, request, context):
            try:
                async for item in fn(self, request, context):
                    yield item
            except (AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await _fail(context, name, exc)

        return stream_wrapper

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            return await fn(self, request, context)
        except (AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await _fail(context, name, exc)

    return wrapper


def time_left(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds until the client's deadline, or None when it set none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE:
        return None
    return float(remaining)


async def check_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """Abort with DEADLINE_EXCEEDED if the client's deadline has passed; else the time left.

    Called between stages so a request whose deadline passed while it queued does not go on to
    spend model time on an answer nobody will read.
    """
    remaining = time_left(context)
    if remaining is not None and remaining <= 0:
        await abort(
            context, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the model ran"
        )
    return remaining
