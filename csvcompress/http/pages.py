"""The browser pages: plain HTML, CSS and a little JavaScript from csvcompress/static/.

The pages hold no data: their scripts read it from the JSON API (sending the API key
the user typed in, if any), so a page URL can be shared without sharing anything.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from csvcompress.errors import NotFound

STATIC_DIR = Path(__file__).parent.parent / "static"

# The pages load only their own scripts and styles; images may come from anywhere,
# since "before" thumbnails are the input URLs themselves.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src * data: blob:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # Revalidate (cheaply, by Last-Modified) so an upgrade never pairs old and new files.
    "Cache-Control": "no-cache",
}
ASSET_TYPES = {
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
}


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(
        STATIC_DIR / name, headers={**PAGE_HEADERS, "Content-Type": "text/html; charset=utf-8"}
    )


async def index_page(request: web.Request) -> web.FileResponse:
    return _page("index.html")


async def request_page(request: web.Request) -> web.FileResponse:
    return _page("request.html")


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    path = STATIC_DIR / name
    content_type = ASSET_TYPES.get(path.suffix)
    # The route pattern has no "/", so the name cannot leave STATIC_DIR.
    if content_type is None or not await asyncio.to_thread(path.is_file):
        raise NotFound("no such file")
    return web.FileResponse(
        path,
        headers={"Content-Type": f"{content_type}; charset=utf-8", "Cache-Control": "no-cache"},
    )
