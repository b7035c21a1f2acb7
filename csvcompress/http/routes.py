"""Every route of the service, in one table, grouped by resource.

A route is declared here and nowhere else (tests/http/test_routes.py checks it), and
described in openapi.PATHS. Who may call it is decided by its path template in `auth`.
GET routes answer HEAD too (aiohttp's `web.get`).
"""

from __future__ import annotations

from aiohttp import web

from csvcompress.http import files, openapi, ops, pages, requests, thumbnails, uploads

ROUTES: list[web.RouteDef] = [
    # The browser pages (HTML, with their scripts and styles).
    web.get("/", pages.index_page, name="index-page"),
    # HTML without data: the API key check lets GET through (auth.OPEN_ROUTES), like "/".
    web.get("/requests/{request_id}", pages.request_page, name="request-page"),
    web.get("/static/{name}", pages.asset, name="static"),
    # A new request.
    web.post("/upload", uploads.upload),
    # A request: its status, its listing, its images and output, and what controls it.
    web.get("/status/{request_id}", requests.status),
    web.get("/requests", requests.list_requests),
    web.delete("/requests/{request_id}", requests.delete_request),
    web.get("/requests/{request_id}/images", requests.request_images),
    web.get("/requests/{request_id}/output.csv", requests.output_csv),
    web.post("/requests/{request_id}/retry", requests.retry_request),
    web.post("/requests/{request_id}/webhook/redeliver", requests.redeliver_webhook),
    # The output images, when the storage backend is one the service serves itself.
    web.get("/files/{key:.+}", files.stored_file),
    # The request page's small previews of each image, made by the service on first view.
    web.get("/thumbnails/{request_id}/{name}", thumbnails.thumbnail),
    # For operators and tools.
    web.get("/healthz", ops.healthz),
    web.get("/metrics", ops.metrics),
    web.get("/openapi.json", openapi.openapi_json),
]


def add_routes(app: web.Application) -> None:
    app.router.add_routes(ROUTES)
