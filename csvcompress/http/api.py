"""JSON routes for browsing: the list of requests, one request's images, the OpenAPI document.

Both lists page with an opaque `cursor`: pass a page's `next_cursor` back to get the
next page; `next_cursor` is null on the last one. Cursors are row ids, so a page
never repeats or skips an item when new requests arrive meanwhile.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from csvcompress.documents import request_data, status_url
from csvcompress.errors import BadRequest, NotFound
from csvcompress.http import openapi
from csvcompress.http.keys import SERVICE
from csvcompress.models import ImageRecord, RequestStatus

REQUESTS_PAGE = (20, 100)
"""Default and largest `limit` of GET /requests."""
IMAGES_PAGE = (100, 1000)
"""Default and largest `limit` of GET /requests/{id}/images."""


def _limit(request: web.Request, page: tuple[int, int]) -> int:
    default, largest = page
    raw = request.query.get("limit", "")
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= largest:
        raise BadRequest(f"limit must be a whole number from 1 to {largest}")
    return int(raw)


def _cursor(request: web.Request) -> int | None:
    raw = request.query.get("cursor", "")
    if not raw:
        return None
    if not raw.isdigit():
        raise BadRequest("cursor must be a next_cursor value from a previous page")
    return int(raw)


def _status_filter(request: web.Request) -> RequestStatus | None:
    raw = request.query.get("status", "")
    if not raw:
        return None
    try:
        return RequestStatus(raw)
    except ValueError:
        names = ", ".join(s.value for s in RequestStatus)
        raise BadRequest(f"status must be one of: {names}") from None


async def list_requests(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    base = service.settings.server.base_url
    limit = _limit(request, REQUESTS_PAGE)
    found = await service.db.list_requests(
        status=_status_filter(request), before=_cursor(request), limit=limit + 1
    )
    page = found[:limit]
    items = [
        {**request_data(record, counts, base), "status_url": status_url(base, record.id)}
        for _, record, counts in page
    ]
    more = len(found) > limit
    return web.json_response(
        {"requests": items, "next_cursor": str(page[-1][0]) if more else None},
        headers={"Cache-Control": "no-store"},
    )


def image_document(image: ImageRecord) -> dict[str, Any]:
    return {
        "row": image.row + 1,
        "position": image.position + 1,
        "url": image.url,
        "status": image.status.value,
        "output_url": image.output_url,
        "bytes": {"input": image.bytes_in, "output": image.bytes_out},
        "error": image.error,
        "error_code": image.error_code,
    }


async def request_images(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    request_id = request.match_info["request_id"]
    limit = _limit(request, IMAGES_PAGE)
    after = _cursor(request) or 0
    if await service.db.get_request(request_id) is None:
        raise NotFound(f"no request with id {request_id}")
    found = await service.db.image_page(request_id, after, limit + 1)
    page = found[:limit]
    more = len(found) > limit
    return web.json_response(
        {
            "request_id": request_id,
            "images": [image_document(image) for image in page],
            "next_cursor": str(page[-1].id) if more else None,
        },
        headers={"Cache-Control": "no-store"},
    )


async def openapi_json(request: web.Request) -> web.Response:
    base = request.app[SERVICE].settings.server.base_url
    return web.json_response(openapi.document(base))


def setup_api_routes(app: web.Application) -> None:
    app.router.add_get("/requests", list_requests)
    app.router.add_get("/requests/{request_id}/images", request_images)
    app.router.add_get("/openapi.json", openapi_json)
