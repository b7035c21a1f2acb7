"""GET /files/{key}: the output images, for a storage backend that the service serves itself.

The backend says how a file is served (`Storage.local_file`): local disk gives the file
under its root, and any other backend gives None (its URLs point elsewhere, or it keeps
nothing), so the route answers 404 there. A key that would leave the root is refused by
the backend (StorageError), and answers 404 too.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from csvcompress.errors import NotFound, StorageError
from csvcompress.http.keys import SERVICE
from csvcompress.pipeline import imaging

# Output files are named by the service, so the extension says the type; aiohttp's own
# guess depends on the host's mime.types and misses WebP and AVIF on slim systems.
FILE_TYPES = {extension: content_type for content_type, extension in imaging.MEDIA.values()}
# An output URL always names the same bytes, except after a retry rewrites it.
FILE_CACHE_CONTROL = "public, max-age=86400"


def is_file(path: Path) -> bool:
    """Whether `path` is a file; False for any path the file system refuses to look up
    (a name over NAME_MAX or PATH_MAX, a component that is a file), not an OSError."""
    try:
        return path.is_file()
    except OSError:
        return False


async def stored_file(request: web.Request) -> web.FileResponse:
    storage = request.app[SERVICE].storage
    try:
        path = storage.local_file(request.match_info["key"])
    except StorageError:
        raise NotFound("no such file") from None
    if path is None:
        raise NotFound("no such file")
    content_type = FILE_TYPES.get(path.suffix.lower())
    if content_type is None or not await asyncio.to_thread(is_file, path):
        raise NotFound("no such file")
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": FILE_CACHE_CONTROL}
    )
