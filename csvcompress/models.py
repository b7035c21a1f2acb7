"""States and records shared by the database, the workers and the API."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RequestStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETE = "complete"
    FAILED = "failed"
    # DELETE /requests/{id} was taken: images without a result are skipped, and the output
    # CSV is being written; it becomes `cancelled` once it is (a final status always comes
    # with its output).
    CANCELLING = "cancelling"
    # Stopped by DELETE /requests/{id}: images without a result were skipped.
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RequestStatus.COMPLETE, RequestStatus.FAILED, RequestStatus.CANCELLED)


# The groups of request states, defined once: everything else imports these.
FINISHED_STATUSES: tuple[RequestStatus, ...] = tuple(s for s in RequestStatus if s.finished)
UNFINISHED_STATUSES: tuple[RequestStatus, ...] = tuple(s for s in RequestStatus if not s.finished)


class ImageStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # Never processed because its request was cancelled.
    SKIPPED = "skipped"

    @property
    def final(self) -> bool:
        return self is not ImageStatus.PENDING


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class ImageCounts:
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def pending(self) -> int:
        return self.total - self.succeeded - self.failed - self.skipped

    def to_json(self) -> dict[str, int]:
        doc = {
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "pending": self.pending,
        }
        # Only a cancelled request has skipped images; other documents keep their four keys.
        if self.skipped:
            doc["skipped"] = self.skipped
        return doc


@dataclass(frozen=True)
class RequestRecord:
    id: str
    status: RequestStatus
    webhook_url: str | None
    output_file_path: str | None
    error: str | None
    rows: int
    created_at: str
    updated_at: str
    bytes_in: int = 0
    bytes_out: int = 0
    # The name of the uploaded file, as the browser or client sent it (None before v4).
    file_name: str | None = None
    # Seconds spent processing, up to the last finish or cancel; and since when (unix
    # seconds) it has been processing again, if it is.
    processing_seconds: float = 0.0
    processing_since: float | None = None


@dataclass(frozen=True)
class ImageJob:
    """One distinct URL of a request: the unit of work the workers take."""

    id: int
    request_id: str
    row: int
    position: int
    url: str
    attempts: int


@dataclass(frozen=True)
class ImageResult:
    """What processing one image produced; exactly one of output_url and error is set."""

    output_url: str | None
    error: str | None
    bytes_in: int = 0
    bytes_out: int = 0
    error_code: str | None = None

    @property
    def status(self) -> ImageStatus:
        return ImageStatus.SUCCEEDED if self.output_url is not None else ImageStatus.FAILED


@dataclass(frozen=True)
class DeliveryRecord:
    id: str
    request_id: str
    url: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float | None
    last_status: int | None
    last_error: str | None


@dataclass(frozen=True)
class DueDeliveries:
    """Deliveries a sender may attempt now (leased to it where senders are many), and
    when the next one not yet due will be: a time to wait for, never one to start."""

    due: list[str]
    next_at: float | None


@dataclass(frozen=True)
class ImageRecord:
    """One image of a request as the API shows it; `row` and `position` are 0-based."""

    id: int
    row: int
    position: int
    url: str
    status: ImageStatus
    output_url: str | None
    error: str | None
    error_code: str | None
    bytes_in: int
    bytes_out: int
