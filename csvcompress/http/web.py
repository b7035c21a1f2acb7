"""Routes, handlers and the error middleware."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from csvcompress.config import Settings
from csvcompress.documents import status_url
from csvcompress.errors import CsvCompressError, NotFound, StorageError
from csvcompress.http import api, pages, uploads
from csvcompress.http.auth import setup_api_key
from csvcompress.http.control import setup_control_routes, status_response
from csvcompress.http.keys import SERVICE
from csvcompress.http.ops import setup_ops_routes
from csvcompress.http.webhook_routes import setup_webhook_routes
from csvcompress.pipeline import imaging
from csvcompress.storage import LocalStorage

log = logging.getLogger(__name__)

KEPT_ERROR_HEADERS = frozenset({"Allow", "WWW-Authenticate", "Retry-After", "Location"})


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON with its public message; bugs are logged, not shown."""
    try:
        return await handler(request)
    except CsvCompressError as exc:
        return web.json_response(exc.to_json(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Keep headers that mean something to the client (Allow on 405), not the text body's.
        kept = {k: v for k, v in exc.headers.items() if k in KEPT_ERROR_HEADERS}
        return web.json_response({"error": exc.reason}, status=exc.status, headers=kept)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response({"error": "internal error"}, status=500)


async def upload(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    settings = service.settings
    part_path, webhook_url = await uploads.receive(request, settings)
    accepted = await asyncio.to_thread(uploads.ingest, part_path, settings, service.db, webhook_url)
    await service.queue.submit(accepted.request_id)
    url = status_url(settings.server.base_url, accepted.request_id)
    return web.json_response(
        {
            "request_id": accepted.request_id,
            "status": "pending",
            "status_url": url,
            "rows": accepted.rows,
            "images": accepted.images,
        },
        status=202,
        headers={"Location": url},
    )


async def status(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return await status_response(service, request.match_info["request_id"])


async def output_csv(request: web.Request) -> web.FileResponse:
    service = request.app[SERVICE]
    request_id = request.match_info["request_id"]
    record = await service.db.get_request(request_id)
    if record is None:
        raise NotFound(f"no request with id {request_id}")
    if not record.output_file_path:
        raise NotFound(f"request {request_id} has no output CSV yet (status: {record.status})")
    return web.FileResponse(
        record.output_file_path,
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{request_id}.csv"',
        },
    )


# Output files are named by the service, so the extension says the type; aiohttp's own
# guess depends on the host's mime.types and misses WebP and AVIF on slim systems.
FILE_TYPES = {extension: content_type for content_type, extension in imaging.MEDIA.values()}
# An output URL always names the same bytes, except after a retry rewrites it.
FILE_CACHE_CONTROL = "public, max-age=86400"


async def stored_file(request: web.Request) -> web.FileResponse:
    service = request.app[SERVICE]
    key = request.match_info["key"]
    storage = service.storage
    if not isinstance(storage, LocalStorage):
        raise NotFound("no such file")
    try:
        path = storage.path_for(key)
    except StorageError:
        raise NotFound("no such file") from None
    content_type = FILE_TYPES.get(path.suffix.lower())
    if content_type is None or not await asyncio.to_thread(path.is_file):
        raise NotFound("no such file")
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": FILE_CACHE_CONTROL}
    )


def setup_routes(app: web.Application, settings: Settings) -> None:
    app.middlewares.append(error_middleware)
    setup_api_key(app, settings.server)
    pages.setup_page_routes(app)
    api.setup_api_routes(app)
    app.router.add_post("/upload", upload)
    app.router.add_get("/status/{request_id}", status)
    app.router.add_get("/requests/{request_id}/output.csv", output_csv)
    setup_webhook_routes(app)
    if settings.storage.backend == "local":
        app.router.add_get("/files/{key:.+}", stored_file)
    setup_ops_routes(app)
    setup_control_routes(app)
