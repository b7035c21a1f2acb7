"""One small error hierarchy.

Every error carries the message a user may see and, for errors that reach
the HTTP layer, the status to answer with, its JSON body (`to_json`) and the
headers that go with it (`headers`: a challenge on 401, Retry-After on 503), so
every error answer is built from here. Errors raised while processing one
image also say whether trying again could help (`retryable`) and carry a short
machine-readable `code` that metrics and the status document group by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class CsvCompressError(Exception):
    """Base of every error the service raises on purpose."""

    status: int = 500
    code: str = "internal"
    retryable: bool = False
    # Seconds the other side asked to wait before another try (Retry-After), if it said.
    retry_after: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message}

    @property
    def headers(self) -> dict[str, str]:
        """Headers the HTTP answer carries besides the JSON body."""
        return {}


# --- start-up -----------------------------------------------------------------


class ConfigError(CsvCompressError):
    """A setting is unknown or has a bad value; the service must not start."""

    code = "config"


class StartupError(CsvCompressError):
    """The service cannot start (its port, data directory or database); `message` is
    one line naming the port, file or directory and what to do."""

    code = "startup"


# --- HTTP API -----------------------------------------------------------------


class BadRequest(CsvCompressError):
    status = 400
    code = "bad_request"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an uploaded CSV. `line` is 1-based, as editors count."""

    line: int
    column: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "message": self.message}


class CsvInvalid(BadRequest):
    """The uploaded CSV is refused as a whole; `problems` lists what was found."""

    code = "csv_invalid"

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "problems": [p.to_json() for p in self.problems]}


class Unauthorized(CsvCompressError):
    """The API key is missing or wrong; the answer names the scheme to use (RFC 6750)."""

    status = 401
    code = "unauthorized"
    CHALLENGE = 'Bearer realm="csvcompress"'

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.CHALLENGE}


class ClientGone(CsvCompressError):
    """The client closed the connection before its request was read; the answer is
    written to no one (aiohttp's "client closed request" has no status of its own)."""

    status = 400
    code = "client_gone"

    def __init__(self) -> None:
        super().__init__("the connection was closed before the request was read")


class NotFound(CsvCompressError):
    status = 404
    code = "not_found"


class RequestTimeout(CsvCompressError):
    """The client took longer than allowed to send its request body."""

    status = 408
    code = "request_timeout"


class Conflict(CsvCompressError):
    status = 409
    code = "conflict"


class PayloadTooLarge(CsvCompressError):
    status = 413
    code = "too_large"


class InsufficientStorage(CsvCompressError):
    """The disk the service writes to is full (ENOSPC, EDQUOT): 507 to an upload; a
    write the service must make is tried again for a while (retry.DISK_FULL_PATIENCE)."""

    status = 507
    code = "disk_full"
    retryable = True


class ServiceUnavailable(CsvCompressError):
    """Not now; `retry_after` (seconds), when known, is sent as Retry-After."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class StoreUnavailable(ServiceUnavailable):
    """The database cannot take writes now (read-only files, a full disk, a stuck lock).

    Retryable: a write that must happen (a result, a request's final state) is tried
    again until it succeeds (retry.keep_trying); an upload is refused with 503."""

    code = "store_unavailable"
    retryable = True


class StoreFull(StoreUnavailable):
    """The database's disk is full: 507 to an upload, retried by the workers."""

    status = 507
    code = "disk_full"


class ShuttingDown(ServiceUnavailable):
    """The service is stopping and takes no new work."""

    def __init__(self, retry_after: int | None = None) -> None:
        super().__init__("the service is shutting down; try again shortly", retry_after)


class HTTPRefused(CsvCompressError):
    """An answer aiohttp itself decided (no such route: 404, wrong method: 405, a body
    over client_max_size: 413), given as JSON like every other error.

    `headers` keeps only what means something to the client (Allow on a 405).
    """

    code = "http"

    def __init__(self, status: int, reason: str, headers: dict[str, str]) -> None:
        super().__init__(reason)
        self.status = status
        self._headers = headers

    @property
    def headers(self) -> dict[str, str]:
        return self._headers


# --- processing one image -----------------------------------------------------


class ImageFailed(CsvCompressError):
    """One image could not be processed; the request goes on without it."""

    status = 422
    code = "image_failed"


class FetchError(ImageFailed):
    """The image could not be downloaded."""

    code = "fetch"


class FetchRetryable(FetchError):
    """A failure worth another try: connection error, 5xx, 429."""

    code = "fetch_transient"
    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AddressNotAllowed(FetchError):
    """The URL leads to an address the network guard refuses."""

    code = "address_not_allowed"


class TooLarge(FetchError):
    """The body is over the byte limit."""

    code = "too_large"


class TooManyRedirects(FetchError):
    code = "too_many_redirects"


class ImageRejected(ImageFailed):
    """The bytes are not an image we accept: unknown format, corrupt, too many pixels."""

    code = "image_rejected"


class StorageError(CsvCompressError):
    """The storage backend failed to keep or serve an object."""

    code = "storage"
    retryable = True


class StorageFailed(StorageError):
    """This one object could not be stored and trying again now will not help: the backend
    refused it, or kept failing through the backend's own retries."""

    code = "storage_failed"
    retryable = False


class StorageFull(StorageError):
    """The storage's disk is full: the write is tried again until there is room, for
    retry.DISK_FULL_PATIENCE seconds at most, then the image fails with this reason."""

    code = "storage_full"


class StorageRejected(StorageError):
    """The storage backend refuses every write (bad credentials, disabled account): the
    request's remaining images fail with the same reason, without being processed."""

    code = "storage_rejected"
    retryable = False
