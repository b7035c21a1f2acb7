"""Controlling a request: cancel or delete it (DELETE), retry its failed images (POST .../retry).

- DELETE on an unfinished request cancels it: its pending images are skipped,
  images in flight finish but their results are dropped, the output CSV is
  written with what was done (skipped images say so in the Errors column), the
  status becomes `cancelled` and the webhook `request.cancelled` is sent.
  The answer is 200 with the status document.
- DELETE on a finished request (complete, failed, cancelled) removes it, its
  output images, its CSVs and its rows: 204.
- POST /requests/{id}/retry on a finished request puts its failed images (and
  the images a cancel skipped) back in the queue; when they are done, a new
  output CSV is written and the webhook is sent again. 202; 409 if the request
  is not finished or has nothing to retry.
"""

from __future__ import annotations

from aiohttp import web

from csvcompress.documents import status_document, status_url
from csvcompress.errors import Conflict, NotFound, ServiceUnavailable
from csvcompress.http.keys import SERVICE, Service
from csvcompress.models import RequestRecord


async def _find(service: Service, request_id: str) -> RequestRecord:
    record = await service.db.get_request(request_id)
    if record is None or service.retention.is_removing(request_id):
        raise NotFound(f"no request with id {request_id}")
    return record


def _check_idle(service: Service, request_id: str) -> None:
    if service.queue.is_busy(request_id):
        raise Conflict(f"request {request_id} is still being finished; try again in a moment")


async def status_response(service: Service, request_id: str) -> web.Response:
    """The /status document of a request (GET /status, and DELETE of an unfinished one)."""
    found = await service.db.get_request_with_counts(request_id)
    if found is None:
        raise NotFound(f"no request with id {request_id}")
    record, counts = found
    delivery = await service.db.latest_delivery(request_id) if record.webhook_url else None
    doc = status_document(record, counts, delivery, service.settings.server.base_url)
    return web.json_response(doc, headers={"Cache-Control": "no-store"})


async def delete_request(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    request_id = request.match_info["request_id"]
    record = await _find(service, request_id)
    if not record.status.finished:
        if not await service.queue.cancel(request_id):
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
    if service.queue.stopping:
        raise ServiceUnavailable("the service is shutting down; try again shortly")
    record = await _find(service, request_id)
    if not record.status.finished:
        raise Conflict(
            f"request {request_id} is {record.status.value}; only a finished request can be retried"
        )
    _check_idle(service, request_id)
    requeued = await service.queue.retry(request_id)
    url = status_url(service.settings.server.base_url, request_id)
    return web.json_response(
        {"request_id": request_id, "status": "pending", "status_url": url, "images": requeued},
        status=202,
        headers={"Location": url},
    )


def setup_control_routes(app: web.Application) -> None:
    app.router.add_delete("/requests/{request_id}", delete_request)
    app.router.add_post("/requests/{request_id}/retry", retry_request)
