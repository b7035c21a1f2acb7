"""The browser pages: plain HTML, CSS and a little JavaScript from csvcompress/static/.

The pages hold no data: their scripts read it from the JSON API (sending the API key
the user typed in, if any), so a page URL can be shared without sharing anything.

What the scripts must know of the server's own rules (which states are not final yet)
they import from /static/statuses.js, which the server writes from `models`: the
scripts hold no copy of it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp import web

from csvcompress.errors import NotFound
from csvcompress.http.files import is_file
from csvcompress.models import UNFINISHED_STATUSES

STATIC_DIR = Path(__file__).parent.parent / "static"

# The pages load only their own scripts, styles and images: the thumbnails are the
# service's own (/thumbnails/), so the browser never asks an image's origin.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
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


def statuses_js() -> str:
    """The ES module /static/statuses.js: the groups of request states, from `models`."""
    unfinished = json.dumps([status.value for status in UNFINISHED_STATUSES])
    return (
        "// Written by the server from csvcompress.models: the states that are not final.\n"
        f"export const UNFINISHED_STATUSES = {unfinished};\n"
    )


# Assets the server writes instead of reading them from STATIC_DIR.
GENERATED_ASSETS = {"statuses.js": statuses_js()}


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(
        STATIC_DIR / name, headers={**PAGE_HEADERS, "Content-Type": "text/html; charset=utf-8"}
    )


async def index_page(request: web.Request) -> web.FileResponse:
    return _page("index.html")


async def request_page(request: web.Request) -> web.FileResponse:
    return _page("request.html")


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    generated = GENERATED_ASSETS.get(name)
    if generated is not None:
        return web.Response(
            text=generated,
            content_type=ASSET_TYPES[Path(name).suffix],
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )
    path = STATIC_DIR / name
    content_type = ASSET_TYPES.get(path.suffix)
    # The route pattern has no "/", so the name cannot leave STATIC_DIR.
    if content_type is None or not await asyncio.to_thread(is_file, path):
        raise NotFound("no such file")
    return web.FileResponse(
        path,
        headers={"Content-Type": f"{content_type}; charset=utf-8", "Cache-Control": "no-cache"},
    )
