"""Exceptions of the kernelize package: one hierarchy for the embedded engine and the
HTTP client, so code written against one runs against the other.

Every exception carries the engine's or the server's message (which names the file, the
record id, the field or the offset where it applies) and, from the server, its error
``code`` and ``request_id``.
"""

from __future__ import annotations

from typing import Optional


class KernelizeError(Exception):
    """Base class of every kernelize error."""

    #: The server's error code (``invalid_request``, ``not_found``…); the embedded
    #: engine sets the code the server would have answered with.
    code: str = "internal"

    def __init__(self, message: str, *, code: Optional[str] = None, status: Optional[int] = None,
                 request_id: Optional[str] = None, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after


class InvalidArgument(KernelizeError, ValueError):
    """The call is invalid (wrong dimension, NaN, bad filter, unknown field…); retrying
    the same call fails again."""

    code = "invalid_request"


class PayloadTooLarge(InvalidArgument):
    """The request body is larger than the server accepts."""

    code = "payload_too_large"


class NotFound(KernelizeError, LookupError):
    """The collection, record or file does not exist."""

    code = "not_found"


class AlreadyExists(KernelizeError):
    """A collection of that name exists already (or another conflict with current state)."""

    code = "conflict"


class DirectoryLocked(KernelizeError):
    """Another process has the data directory open for writing. Open it with
    ``read_only=True`` to read beside that writer."""

    code = "conflict"


class ReadOnlyError(KernelizeError):
    """A write through a read-only open."""

    code = "invalid_request"


class Unauthenticated(KernelizeError):
    """The server refused the API key or token (401)."""

    code = "unauthenticated"


class PermissionDenied(KernelizeError):
    """The key's role or collection scope does not allow this (403)."""

    code = "forbidden"


class RateLimited(KernelizeError):
    """The key's rate limit is exhausted (429); ``retry_after`` says when to come back."""

    code = "rate_limited"


class Unavailable(KernelizeError):
    """The server or collection cannot serve now (overloaded, timed out, a damaged
    collection awaiting recovery, a writer that failed an fsync); may succeed later."""

    code = "unavailable"


class Timeout(Unavailable):
    """The call did not finish within its time limit (the client's or the server's)."""

    code = "timeout"


class StorageFull(KernelizeError):
    """The disk is full; nothing of the refused write was acknowledged."""

    code = "storage_full"


class CorruptionError(KernelizeError):
    """Bytes on disk are not what was written (the message names file and offset)."""

    code = "internal"


class KernelizeIOError(KernelizeError, OSError):
    """The operating system refused an operation (the message names the path)."""

    code = "internal"


class ModelError(KernelizeError):
    """The embedding model is missing or damaged (``kernelize models install``)."""

    code = "model_unavailable"


class SignatureError(KernelizeError):
    """A kernel's signature does not verify under the given public key."""

    code = "invalid_request"


class ExpiredError(KernelizeError):
    """A kernel's expiry has passed (open with ``allow_expired=True`` to read it anyway)."""

    code = "conflict"


class ConnectionFailed(KernelizeError, ConnectionError):
    """The server could not be reached (after the client's retries)."""

    code = "unavailable"


#: The server's error codes and the class each raises.
SERVER_CODES = {
    "invalid_request": InvalidArgument,
    "payload_too_large": PayloadTooLarge,
    "unauthenticated": Unauthenticated,
    "forbidden": PermissionDenied,
    "not_found": NotFound,
    "conflict": AlreadyExists,
    "last_admin": AlreadyExists,
    "rate_limited": RateLimited,
    "overloaded": Unavailable,
    "unavailable": Unavailable,
    "collection_unavailable": Unavailable,
    "backend_unavailable": Unavailable,
    "model_unavailable": ModelError,
    "timeout": Timeout,
    "storage_full": StorageFull,
}


def from_server(status: int, code: Optional[str], message: str, request_id: Optional[str] = None,
                retry_after: Optional[float] = None) -> KernelizeError:
    """The exception for a server error response."""
    cls = SERVER_CODES.get(code or "")
    if cls is None:
        cls = {400: InvalidArgument, 401: Unauthenticated, 403: PermissionDenied, 404: NotFound,
               409: AlreadyExists, 413: PayloadTooLarge, 429: RateLimited, 503: Unavailable,
               507: StorageFull}.get(status, KernelizeError)
    return cls(message, code=code, status=status, request_id=request_id, retry_after=retry_after)


__all__ = [name for name, value in globals().items()
           if isinstance(value, type) and issubclass(value, KernelizeError)] + ["from_server"]
