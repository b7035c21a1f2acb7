"""POST /requests/{id}/webhook/redeliver: send a finished request's webhook again."""

from __future__ import annotations

from aiohttp import web

from csvcompress.documents import delivery_document
from csvcompress.http.keys import SERVICE


async def redeliver(request: web.Request) -> web.Response:
    """202 with the delivery, queued again from the first step of the retry schedule."""
    service = request.app[SERVICE]
    delivery = await service.webhooks.redeliver(request.match_info["request_id"])
    return web.json_response(delivery_document(delivery), status=202)


def setup_webhook_routes(app: web.Application) -> None:
    app.router.add_post("/requests/{request_id}/webhook/redeliver", redeliver)
