"""Error mapping and deadlines shared by every servicer.

One decorator turns the core's ``ServingError`` subclasses into the matching gRPC status with the
exception message as details, and anything unexpected into INTERNAL with a short message (the
traceback goes to the log, not to the client). The server thread survives either way, so one bad
request never takes the service down.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc

from seismag.serving.errors import ServingError

log = logging.getLogger("seismag.serving")

_NO_DEADLINE = 1e8
"""grpc reports "no deadline" as a huge time_remaining(); anything beyond ~3 years is none."""


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and details a client should see for ``exc``."""
    if isinstance(exc, ServingError):
        code = getattr(grpc.StatusCode, exc.code_name, grpc.StatusCode.INTERNAL)
        return code, str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "deadline exceeded"
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"


def _already_aborted(context: grpc.ServicerContext) -> bool:
    """``context.abort`` raises a bare Exception after setting the code; let it through."""
    code = context.code()
    return code is not None and code != grpc.StatusCode.OK


def _fail(context: grpc.ServicerContext, name: str, exc: Exception) -> None:
    code, details = status_of(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("%s failed", name)
    else:
        log.debug("%s: %s: %s", name, code.name, details)
    context.abort(code, details)


def rpc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a servicer method (unary or response-streaming) with the error mapping."""
    name = fn.__name__
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream_wrapper(self, request, context):
            try:
                yield from fn(self, request, context)
            except Exception as exc:
                if _already_aborted(context):
                    raise
                _fail(context, name, exc)

        return stream_wrapper

    @functools.wraps(fn)
    def wrapper(self, request, context):
        try:
            return fn(self, request, context)
        except Exception as exc:
            if _already_aborted(context):
                raise
            _fail(context, name, exc)

    return wrapper


def time_left(context: grpc.ServicerContext) -> float | None:
    """Seconds until the client's deadline, or None when it set none."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE:
        return None
    return float(remaining)


def check_deadline(context: grpc.ServicerContext) -> float | None:
    """Abort with DEADLINE_EXCEEDED if the client has given up; else return the time left.

    Called between stages so a request whose deadline passed while it queued does not go on to
    spend model time on an answer nobody will read.
    """
    remaining = time_left(context)
    if not context.is_active() or (remaining is not None and remaining <= 0):
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the model ran")
    return remaining
