"""Request errors that the gRPC layer maps to status codes (never a crash, never a hang)."""

from __future__ import annotations


class ServingError(Exception):
    """Base class: the message is sent to the client as the status details."""

    code_name = "INTERNAL"


class InvalidInput(ServingError):
    """Corrupt miniSEED, NaN/Inf, impossible rates, missing components, too little data."""

    code_name = "INVALID_ARGUMENT"


class ModelNotFound(ServingError):
    code_name = "NOT_FOUND"


class Overloaded(ServingError):
    """A bounded queue is full or a request is larger than the server accepts."""

    code_name = "RESOURCE_EXHAUSTED"


class NotReady(ServingError):
    """The server is starting (models not warmed up) or draining after SIGTERM."""

    code_name = "UNAVAILABLE"


class MissingResponse(ServingError):
    """Data in counts whose instrument response is known neither from the request nor from the
    server's inventory: the server will not guess the units."""

    code_name = "FAILED_PRECONDITION"


class Cancelled(ServingError):
    """The client cancelled or went away; the work stopped."""

    code_name = "CANCELLED"
