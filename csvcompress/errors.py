"""One small error hierarchy.

Every error carries the message a user may see and, for errors that reach
the HTTP layer, the status to answer with. Errors raised while processing one
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


# --- start-up -----------------------------------------------------------------


class ConfigError(CsvCompressError):
    """A setting is unknown or has a bad value; the service must not start."""

    code = "config"


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
    status = 401
    code = "unauthorized"


class NotFound(CsvCompressError):
    status = 404
    code = "not_found"


class Conflict(CsvCompressError):
    status = 409
    code = "conflict"


class PayloadTooLarge(CsvCompressError):
    status = 413
    code = "too_large"


class ServiceUnavailable(CsvCompressError):
    status = 503
    code = "unavailable"


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


class StorageRejected(StorageError):
    """The storage backend refuses every write (bad credentials, disabled account): the
    request's remaining images fail with the same reason, without being processed."""

    code = "storage_rejected"
    retryable = False
