"""GET /thumbnails/{request_id}/{image_id}-{side}.webp: the request page's small previews.

Made on the first view (see pipeline/thumbnails.py), then served from disk. Open like
/files/: an <img> cannot send the API key, and the request ID is unguessable. 404 for
an image that did not succeed or whose thumbnail cannot be made (the page then says
"no preview").
"""

from __future__ import annotations

import re

from aiohttp import web

from csvcompress.documents import THUMBNAIL_SIDES
from csvcompress.errors import NotFound
from csvcompress.http.keys import SERVICE
from csvcompress.models import ImageStatus
from csvcompress.pipeline.thumbnails import THUMBNAIL_TYPE

_NAME = re.compile(rf"([1-9][0-9]{{0,18}})-({'|'.join(THUMBNAIL_SIDES)})\.webp")
# A thumbnail always shows the same image (an image that succeeded is not redone).
THUMBNAIL_CACHE_CONTROL = "public, max-age=86400"


async def thumbnail(request: web.Request) -> web.FileResponse:
    service = request.app[SERVICE]
    request_id = request.match_info["request_id"]
    name = request.match_info["name"]
    found = _NAME.fullmatch(name)
    target = service.thumbnails.path(request_id, name)
    if found is None or target is None:
        raise NotFound("no such thumbnail")
    image_id, side = int(found[1]), found[2]
    page = await service.store.image_page(request_id, image_id - 1, 1)
    image = page[0] if page and page[0].id == image_id else None
    if image is None or image.status is not ImageStatus.SUCCEEDED or not image.output_url:
        raise NotFound("no such thumbnail")
    source = image.url if side == "before" else image.output_url
    path = await service.thumbnails.get(target, source)
    if path is None:
        raise NotFound("no preview of this image")
    return web.FileResponse(
        path, headers={"Content-Type": THUMBNAIL_TYPE, "Cache-Control": THUMBNAIL_CACHE_CONTROL}
    )
