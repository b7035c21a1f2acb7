"""The lifecycle of a request and of its images: the only code that changes a status.

Two transition tables (state x event -> state) say which changes exist; everything
else asks them. A change is applied by the store as a conditional update ("move
these sources to these targets"), so two changes racing for the same row cannot
both win: the loser sees False/None and the caller decides what that means.

    pending --start--> processing --finish--> complete
       |                   |       --fail----> failed
       +------cancel-------+--> cancelling --finish | fail--> cancelled
    complete | failed | cancelled --retry--> pending

A cancel is final only once the output CSV is written: until then the request says
`cancelling`, so a client that stops polling at a final status always finds its CSV.
(A request cancelled by an earlier version, `cancelled` before its output was written,
stays cancelled when its output is written.)
Images: pending --succeed/fail/skip--> succeeded/failed/skipped; failed and
skipped --retry--> pending.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum

from csvcompress.errors import Conflict
from csvcompress.models import (
    ImageCounts,
    ImageJob,
    ImageResult,
    ImageStatus,
    RequestRecord,
    RequestStatus,
)
from csvcompress.store.base import ImageMove, RequestMove, Store

# What the output CSV says about an image its request's cancellation left unprocessed.
SKIPPED_REASON = "skipped: the request was cancelled"
SKIPPED_CODE = "cancelled"

# A request is created in this state, its images in IMAGE_INITIAL.
INITIAL = RequestStatus.PENDING
IMAGE_INITIAL = ImageStatus.PENDING


class RequestEvent(StrEnum):
    START = "start"  # its first image is handed to a worker
    FINISH = "finish"  # every image has a result and the output CSV is written
    FAIL = "fail"  # every image has a result but the output CSV could not be written
    CANCEL = "cancel"  # DELETE on an unfinished request
    RETRY = "retry"  # POST .../retry on a finished one


class ImageEvent(StrEnum):
    SUCCEED = "succeed"
    FAIL = "fail"
    SKIP = "skip"
    RETRY = "retry"


_P, _R, _C = RequestStatus.PENDING, RequestStatus.PROCESSING, RequestStatus.COMPLETE
_F, _X = RequestStatus.FAILED, RequestStatus.CANCELLED
_K = RequestStatus.CANCELLING

REQUEST_TRANSITIONS: Mapping[tuple[RequestStatus, RequestEvent], RequestStatus] = {
    (_P, RequestEvent.START): _R,
    (_P, RequestEvent.FINISH): _C,
    (_R, RequestEvent.FINISH): _C,
    (_K, RequestEvent.FINISH): _X,
    (_X, RequestEvent.FINISH): _X,
    (_P, RequestEvent.FAIL): _F,
    (_R, RequestEvent.FAIL): _F,
    (_K, RequestEvent.FAIL): _X,
    (_X, RequestEvent.FAIL): _X,
    (_P, RequestEvent.CANCEL): _K,
    (_R, RequestEvent.CANCEL): _K,
    (_C, RequestEvent.RETRY): _P,
    (_F, RequestEvent.RETRY): _P,
    (_X, RequestEvent.RETRY): _P,
}

IMAGE_TRANSITIONS: Mapping[tuple[ImageStatus, ImageEvent], ImageStatus] = {
    (ImageStatus.PENDING, ImageEvent.SUCCEED): ImageStatus.SUCCEEDED,
    (ImageStatus.PENDING, ImageEvent.FAIL): ImageStatus.FAILED,
    (ImageStatus.PENDING, ImageEvent.SKIP): ImageStatus.SKIPPED,
    (ImageStatus.FAILED, ImageEvent.RETRY): ImageStatus.PENDING,
    (ImageStatus.SKIPPED, ImageEvent.RETRY): ImageStatus.PENDING,
}


def request_move(event: RequestEvent) -> RequestMove:
    """Every change `event` makes to a request, as {from: to}."""
    return {src: dst for (src, ev), dst in REQUEST_TRANSITIONS.items() if ev is event}


def image_move(event: ImageEvent) -> ImageMove:
    return {src: dst for (src, ev), dst in IMAGE_TRANSITIONS.items() if ev is event}


def allows(status: RequestStatus, event: RequestEvent) -> bool:
    return (status, event) in REQUEST_TRANSITIONS


def retry_refusal(record: RequestRecord, counts: ImageCounts) -> str | None:
    """Why a request cannot be retried now, or None if it can."""
    if not allows(record.status, RequestEvent.RETRY):
        return (
            f"request {record.id} is {record.status.value}; only a finished request can be retried"
        )
    # A failed request (its output CSV could not be written) is retried even with no
    # failed image: finishing it again writes the CSV.
    if record.status is not RequestStatus.FAILED and counts.failed + counts.skipped == 0:
        return f"request {record.id} has no failed images to retry"
    return None


_SUCCEED = image_move(ImageEvent.SUCCEED)
_FAIL = image_move(ImageEvent.FAIL)


class Lifecycle:
    """Applies the tables' changes through the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def start(self, request_id: str) -> bool:
        return await self._store.start_request(request_id, request_move(RequestEvent.START))

    async def finish(self, request_id: str, output_file_path: str) -> bool:
        return await self._store.finish_request(
            request_id,
            request_move(RequestEvent.FINISH),
            output_file_path=output_file_path,
            error=None,
        )

    async def fail(self, request_id: str, error: str) -> bool:
        return await self._store.finish_request(
            request_id, request_move(RequestEvent.FAIL), output_file_path=None, error=error
        )

    async def cancel(self, request_id: str) -> bool:
        """Cancel an unfinished request and skip its pending images; False if it was not."""
        return await self._store.cancel_request(
            request_id,
            request_move(RequestEvent.CANCEL),
            image_move(ImageEvent.SKIP),
            reason=SKIPPED_REASON,
            code=SKIPPED_CODE,
        )

    async def retry(self, request_id: str) -> int:
        """Put a finished request's failed and skipped images back to pending; how many.

        Conflict, saying why, when there is nothing to retry or the request is not (or no
        longer) finished.
        """
        found = await self._store.get_request_with_counts(request_id)
        if found is not None and (refusal := retry_refusal(*found)) is not None:
            raise Conflict(refusal)
        requeued = await self._store.retry_request(
            request_id, request_move(RequestEvent.RETRY), image_move(ImageEvent.RETRY)
        )
        if requeued is None:
            raise Conflict(
                f"request {request_id} changed meanwhile; look at its status and try again"
            )
        return requeued

    async def record(self, results: Sequence[tuple[ImageJob, ImageResult]]) -> list[int]:
        """Each image's result, for it and its repeats; how many images each one was."""
        return await self._store.record_results(
            [
                (job, result, _SUCCEED if result.status is ImageStatus.SUCCEEDED else _FAIL)
                for job, result in results
            ]
        )
