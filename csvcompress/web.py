"""Routes, handlers and the error middleware."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from . import uploads
from .app import SERVICE
from .config import Settings
from .documents import status_document, status_url
from .errors import CsvCompressError, NotFound
from .webhook_routes import setup_webhook_routes

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


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
        return web.json_response({"error": exc.reason}, status=exc.status, headers=exc.headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response({"error": "internal error"}, status=500)


async def upload(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    settings = service.settings
    part_path, webhook_url = await uploads.receive(request, settings)
    accepted = await asyncio.to_thread(uploads.ingest, part_path, settings, webhook_url)
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
    request_id = request.match_info["request_id"]
    record = await service.db.get_request(request_id)
    if record is None:
        raise NotFound(f"no request with id {request_id}")
    counts = await service.db.get_counts(request_id)
    delivery = await service.db.latest_delivery(request_id) if record.webhook_url else None
    doc = status_document(record, counts, delivery, service.settings.server.base_url)
    return web.json_response(doc, headers={"Cache-Control": "no-store"})


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


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


def setup_routes(app: web.Application, settings: Settings) -> None:
    app.middlewares.append(error_middleware)
    app.router.add_get("/", index)
    app.router.add_post("/upload", upload)
    app.router.add_get("/status/{request_id}", status)
    app.router.add_get("/requests/{request_id}/output.csv", output_csv)
    setup_webhook_routes(app)
    if settings.storage.backend == "local":
        files = Path(settings.storage.dir)
        files.mkdir(parents=True, exist_ok=True)
        app.router.add_static("/files", files, follow_symlinks=False)
