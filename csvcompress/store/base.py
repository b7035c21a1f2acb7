"""The Store: the service's one door to its database, named for what the service needs.

Callers never see SQL, connections, cursors or locks. The SQLite implementation
(store/sqlite.py) is the only code that imports `sqlite3` or `aiosqlite`; a PostgreSQL
one can sit beside it behind the same protocol.

Two kinds of method:
- async methods, for the event loop;
- `*_blocking` methods and `request_writer`, for work that scans many rows and runs
  in a worker thread (ingesting an upload of 300,000 URLs, streaming results into
  the output CSV), so the event loop stays free.

The methods that change a status (`start_request`, `finish_request`,
`cancel_request`, `retry_request`, `record_results`) take the moves allowed by
jobs/lifecycle.py's transition table: the store applies a move only to rows whose
status is one of its sources. Only the lifecycle calls them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import NamedTuple, Protocol

# The database cannot take writes now: defined with the other errors, named here too.
from csvcompress.errors import StoreFull as StoreFull
from csvcompress.errors import StoreUnavailable as StoreUnavailable
from csvcompress.models import (
    DeliveryRecord,
    DeliveryState,
    DueDeliveries,
    ImageCounts,
    ImageJob,
    ImageRecord,
    ImageResult,
    ImageStatus,
    RequestRecord,
    RequestStatus,
)

# A status change allowed by the lifecycle: from each source status to its target.
RequestMove = Mapping[RequestStatus, RequestStatus]
ImageMove = Mapping[ImageStatus, ImageStatus]


@dataclass(frozen=True)
class RequestInput:
    """What the output CSV is built from: the stored upload and its size."""

    input_path: str
    rows: int
    images: int


@dataclass(frozen=True)
class OutcomeRow:
    """One image's place in the input and what became of it, for the output CSV."""

    row: int
    position: int
    output_url: str | None
    error: str | None


class ListedRequest(NamedTuple):
    """A request in a listing, with the cursor that continues the listing after it."""

    cursor: int
    record: RequestRecord
    counts: ImageCounts


class RequestWriter(AbstractContextManager["RequestWriter"], Protocol):
    """A new request and its images, written in one transaction as the rows are read.

    Use in a `with` block in a worker thread: rows are added as the upload is
    validated; leaving the block without `finish` stores nothing at all.
    """

    images: int

    def add(self, row: int, urls: Sequence[str]) -> None:
        """The URLs of one row, in order."""

    def finish(
        self,
        *,
        input_path: str,
        webhook_url: str | None,
        rows: int,
        file_name: str | None = None,
    ) -> int:
        """Store the request (pending) and commit; returns how many images it has.

        `file_name`: the uploaded file's name, shown in listings.
        """


class Store(Protocol):
    # --- lifetime and health ---------------------------------------------------

    async def open(self) -> None:
        """Connect, creating or upgrading the schema."""

    async def close(self) -> None: ...

    async def check(self, patience: float) -> None:
        """Raise StoreUnavailable unless a real write commits within `patience` seconds."""

    # --- new requests (in a worker thread) ----------------------------------------

    def request_writer(self, request_id: str) -> RequestWriter: ...

    # --- reading requests and images ------------------------------------------

    async def get_request(self, request_id: str) -> RequestRecord | None: ...

    async def get_request_with_counts(
        self, request_id: str
    ) -> tuple[RequestRecord, ImageCounts] | None: ...

    async def get_counts(self, request_id: str) -> ImageCounts: ...

    async def list_requests(
        self, *, status: RequestStatus | None, before: int | None, limit: int
    ) -> list[ListedRequest]:
        """Requests newest first; `before` is the cursor of the last one already listed."""

    async def unfinished_request_ids(self) -> list[str]:
        """Requests to resume at start, oldest first."""

    async def pending_images(self, request_id: str, after_id: int, limit: int) -> list[ImageJob]:
        """The next distinct URLs of a request still waiting for a result, in input order."""

    async def image_page(self, request_id: str, after: int, limit: int) -> list[ImageRecord]:
        """A request's images in input order, from the first with an id above `after`."""

    def request_input_blocking(self, request_id: str) -> RequestInput | None: ...

    def image_outcomes_blocking(self, request_id: str) -> Iterator[OutcomeRow]:
        """Every image of a request in input order, read in chunks (in a worker thread)."""

    # --- status changes: only jobs/lifecycle.py calls these ---------------------

    async def start_request(self, request_id: str, move: RequestMove) -> bool:
        """Apply `move`; its processing clock starts (RequestRecord.processing_since)."""

    async def finish_request(
        self,
        request_id: str,
        move: RequestMove,
        *,
        output_file_path: str | None,
        error: str | None,
    ) -> bool:
        """Apply `move` and set the output; a running processing clock stops (adds up)."""

    async def cancel_request(
        self, request_id: str, move: RequestMove, images: ImageMove, *, reason: str, code: str
    ) -> bool:
        """Apply `move` to the request and `images` to its images; False if `move` did not apply.

        The processing clock stops: time after a cancel is not processing time.
        """

    async def retry_request(
        self, request_id: str, move: RequestMove, images: ImageMove
    ) -> int | None:
        """Apply the moves, clear results and deliveries; how many images, None if not applied."""

    async def record_results(
        self, results: Sequence[tuple[ImageJob, ImageResult, ImageMove]]
    ) -> list[int]:
        """Each result for its image and the image's repeats, in one transaction.

        Returns, per result, how many images it was recorded for (0 when the image
        had already left the move's sources, e.g. its request was cancelled).
        """

    # --- webhook deliveries ---------------------------------------------------

    async def add_delivery(
        self,
        delivery_id: str,
        request_id: str,
        event_type: str,
        url: str,
        payload: str,
        *,
        next_attempt_at: float | None = None,
    ) -> None: ...

    async def latest_delivery(self, request_id: str) -> DeliveryRecord | None: ...

    async def get_delivery(self, delivery_id: str) -> tuple[DeliveryRecord, str] | None:
        """A delivery and its payload."""

    async def record_attempt(
        self,
        delivery_id: str,
        *,
        state: DeliveryState,
        next_attempt_at: float | None,
        last_status: int | None,
        last_error: str | None,
    ) -> None: ...

    async def next_pending_deliveries(self, exclude: Collection[str], limit: int) -> DueDeliveries:
        """Up to `limit` pending deliveries not in `exclude` that are due now, soonest first,
        and when the next one after them is due."""

    async def requeue_delivery(self, delivery_id: str, next_attempt_at: float) -> None: ...

    async def finished_requests_without_delivery(self) -> list[str]: ...

    # --- retention --------------------------------------------------------------

    async def finished_before(self, cutoff: str, limit: int) -> list[str]: ...

    async def request_files(self, request_id: str) -> list[str]: ...

    async def delete_request(self, request_id: str) -> None: ...

    # --- figures for /metrics ---------------------------------------------------

    async def requests_by_status(self) -> dict[RequestStatus, int]: ...

    async def queued_images(self) -> int: ...
