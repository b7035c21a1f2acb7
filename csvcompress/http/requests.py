"""A request as a resource: /status/{id} and everything under /requests/.

Reading:
- GET /status/{id}: the status document (documents.status_document).
- GET /requests: the requests, newest first, optionally of one status.
- GET /requests/{id}/images: a request's images in input order, with their results.
- GET /requests/{id}/output.csv: the output CSV, once written.

Both lists page with an opaque `cursor`: pass a page's `next_cursor` back to get the
next page; `next_cursor` is null on the last one. Cursors are row ids, so a page
never repeats or skips an item when new requests arrive meanwhile.

Controlling:
- DELETE on an unfinished request cancels it: its pending images are skipped,
  images in flight finish but their results are dropped, the output CSV is
  written with what was done (skipped images say so in the Errors column), the
  status becomes `cancelled` and the webhook `request.cancelled` is sent.
  The answer is 200 with the status document, saying `cancelling` until the output
  CSV is written; DELETE while it says so is 409.
- DELETE on a finished request (complete, failed, cancelled) removes it, its
  output images, its CSVs and its rows: 204.
- POST /requests/{id}/retry on a finished request puts its failed images (and
  the images a cancel skipped) back in the queue; when they are done, a new
  output CSV is written and the webhook is sent again. 202; 409 if the request
  is not finished or has nothing to retry.
- POST /requests/{id}/webhook/redeliver sends a finished request's webhook again.
"""

from __future__ import annotations

from aiohttp import web

from csvcompress.documents import (
    delivery_document,
    image_page_document,
    request_list_document,
    retry_accepted_document,
    status_document,
)
from csvcompress.errors import BadRequest, Conflict, NotFound, ServiceUnavailable, ShuttingDown
from csvcompress.http.keys import SERVICE, Service
from csvcompress.models import RequestRecord, RequestStatus

REQUESTS_PAGE = (20, 100)
"""Default and largest `limit` of GET /requests."""
IMAGES_PAGE = (100, 1000)
"""Default and largest `limit` of GET /requests/{id}/images."""
CURSOR_DIGITS = 18
"""Cursors are row ids, at most 18 digits: below SQLite's largest integer (19 digits), and
a rule the OpenAPI document can state as a pattern."""
MAX_CURSOR = 10**CURSOR_DIGITS - 1
# Documents that change while a client polls or pages through them: never cached.
NO_STORE = {"Cache-Control": "no-store"}


# --- reading ------------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return await status_response(service, request.match_info["request_id"])


async def status_response(service: Service, request_id: str) -> web.Response:
    """The /status document of a request (GET /status, and DELETE of an unfinished one)."""
    found = await service.store.get_request_with_counts(request_id)
    if found is None:
        raise NotFound(f"no request with id {request_id}")
    record, counts = found
    delivery = await service.store.latest_delivery(request_id) if record.webhook_url else None
    doc = status_document(record, counts, delivery, service.settings.server.base_url)
    return web.json_response(doc, headers=NO_STORE)


async def list_requests(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    limit = _limit(request, REQUESTS_PAGE)
    found = await service.store.list_requests(
        status=_status_filter(request), before=_cursor(request), limit=limit + 1
    )
    page = found[:limit]
    more = len(found) > limit
    doc = request_list_document(
        [(record, counts) for _, record, counts in page],
        str(page[-1][0]) if more else None,
        service.settings.server.base_url,
    )
    return web.json_response(doc, headers=NO_STORE)


async def request_images(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    request_id = request.match_info["request_id"]
    limit = _limit(request, IMAGES_PAGE)
    after = _cursor(request) or 0
    if await service.store.get_request(request_id) is None:
        raise NotFound(f"no request with id {request_id}")
    found = await service.store.image_page(request_id, after, limit + 1)
    page = found[:limit]
    more = len(found) > limit
    doc = image_page_document(
        request_id, page, str(page[-1].id) if more else None, service.settings.server.base_url
    )
    return web.json_response(doc, headers=NO_STORE)


async def output_csv(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    request_id = request.match_info["request_id"]
    record = await service.store.get_request(request_id)
    if record is None:
        raise NotFound(f"no request with id {request_id}")
    if not record.output_file_path:
        raise NotFound(f"request {request_id} has no output CSV yet (status: {record.status})")
    headers = {
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{request_id}.csv"',
    }
    path = service.files.local_file(record.output_file_path)
    if path is not None:
        return web.FileResponse(path, headers=headers)
    # Kept elsewhere (S3, in distributed mode): streamed through, never held whole.
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    async for chunk in service.files.stream(record.output_file_path):
        await response.write(chunk)
    await response.write_eof()
    return response


def whole_number(raw: str, largest: int) -> int | None:
    """`raw` as a number from 0 to `largest`, or None: ASCII digits only.

    str.isdigit() alone accepts digits int() refuses ("²") and strings of any length;
    a value is judged by its length first, so thousands of digits cost nothing.
    """
    if not raw or len(raw) > len(str(largest)) or not (raw.isascii() and raw.isdigit()):
        return None
    value = int(raw)
    return value if value <= largest else None


def _limit(request: web.Request, page: tuple[int, int]) -> int:
    default, largest = page
    raw = request.query.get("limit", "")
    if not raw:
        return default
    value = whole_number(raw, largest)
    if value is None or value < 1:
        raise BadRequest(f"limit must be a whole number from 1 to {largest}")
    return value


def _cursor(request: web.Request) -> int | None:
    raw = request.query.get("cursor", "")
    if not raw:
        return None
    value = whole_number(raw, MAX_CURSOR)
    if value is None:
        raise BadRequest("cursor must be a next_cursor value from a previous page")
    return value


def _status_filter(request: web.Request) -> RequestStatus | None:
    raw = request.query.get("status", "")
    if not raw:
        return None
    try:
        return RequestStatus(raw)
    except ValueError:
        names = ", ".join(s.value for s in RequestStatus)
        raise BadRequest(f"status must be one of: {names}") from None


# --- controlling --------------------------------------------------------------


async def delete_request(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    request_id = request.match_info["request_id"]
    record = await _find(service, request_id)
    if record.status is RequestStatus.CANCELLING:
        raise Conflict(
            f"request {request_id} is being cancelled: its output CSV is being written; "
            "try again in a moment"
        )
    if not record.status.finished:
        if not await service.dispatcher.cancel(request_id):
            raise Conflict(
                f"request {request_id} finished before it could be cancelled; "
                "send DELETE again to remove it"
            )
        return await status_response(service, request_id)
    _check_idle(service, request_id)
    if not await service.retention.remove(request_id):
        raise ServiceUnavailable(
            f"the images of request {request_id} could not be removed from storage; try again later"
        )
    return web.Response(status=204)


async def retry_request(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    request_id = request.match_info["request_id"]
    if service.dispatcher.stopping:
        raise ShuttingDown()
    record = await _find(service, request_id)
    if not record.status.finished:
        raise Conflict(
            f"request {request_id} is {record.status.value}; only a finished request can be retried"
        )
    _check_idle(service, request_id)
    requeued = await service.dispatcher.retry(request_id)
    doc = retry_accepted_document(request_id, requeued, service.settings.server.base_url)
    return web.json_response(doc, status=202, headers={"Location": doc["status_url"]})


async def redeliver_webhook(request: web.Request) -> web.Response:
    """202 with the delivery, queued again from the first step of the retry schedule."""
    service = request.app[SERVICE]
    delivery = await service.webhooks.redeliver(request.match_info["request_id"])
    return web.json_response(delivery_document(delivery), status=202)


async def _find(service: Service, request_id: str) -> RequestRecord:
    record = await service.store.get_request(request_id)
    if record is None or service.retention.is_removing(request_id):
        raise NotFound(f"no request with id {request_id}")
    return record


def _check_idle(service: Service, request_id: str) -> None:
    if service.dispatcher.is_busy(request_id):
        raise Conflict(f"request {request_id} is still being finished; try again in a moment")
