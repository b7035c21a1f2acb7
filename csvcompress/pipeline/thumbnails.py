"""Small "before" and "after" thumbnails for the request page, made with libvips.

The page shows each image in a 72-pixel box; loading the originals there cost a 120-image
request ~340 MB and sent the browser to the origins. The service makes a 144-pixel WebP
(twice the box, for dense screens) of each side with shrink-on-load (a JPEG is decoded
at 1/2, 1/4 or 1/8 scale straight away), keeps it under <data dir>/thumbnails/, and
serves it at /thumbnails/{request_id}/{image_id}-{side}.webp: the browser never asks
the origin, whatever the storage backend.

Lazily, on the first view, not while processing: measured (bench/results.md,
"Thumbnails"; `python -m csvcompress.bench.thumbnails`), making both thumbnails while
the image is in memory costs ~16 ms of CPU per 2000x1500 photo against the job's ~24 ms
(entropy-decoding the progressive original dominates even at 1/8 scale): 66% more CPU
for the job, far over its 5% budget. Made on first view the job pays nothing; the
"before" one then needs the original again, fetched by the service through the same
guard and limits (if its origin is gone, the page says "no preview"). Thumbnails are
made in the CPU pool, a few at a time, each once however many pages ask at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

import pyvips

from csvcompress.errors import CsvCompressError
from csvcompress.pipeline.fetcher import Fetcher

log = logging.getLogger(__name__)

# Twice the page's 72-pixel box, for high-density screens.
THUMBNAIL_PIXELS = 144
THUMBNAIL_QUALITY = 60
THUMBNAIL_TYPE = "image/webp"
# Thumbnails made at once: a first view asks for a page of them together, and the job's
# images share the same CPU pool.
THUMBNAIL_CONCURRENCY = 2


def make(data: bytes, max_pixels: int) -> bytes:
    """A WebP thumbnail at most THUMBNAIL_PIXELS wide and high, upright, sRGB, no metadata.

    Raises pyvips.Error for bytes libvips cannot read, ValueError for an image over
    `max_pixels` (judged from its header, before any pixel is decoded).
    """
    header = pyvips.Image.new_from_buffer(data, "")
    if header.width * header.height > max_pixels:
        raise ValueError(f"{header.width}x{header.height} is over the pixel limit")
    # thumbnail_buffer shrinks on load, applies the EXIF orientation and takes the
    # first frame of an animation; "down" never enlarges a small image.
    image = pyvips.Image.thumbnail_buffer(
        data, THUMBNAIL_PIXELS, height=THUMBNAIL_PIXELS, size="down"
    )
    if image.interpretation not in ("srgb", "b-w"):
        image = image.colourspace("srgb")
    if image.format != "uchar":
        image = image.cast("uchar")
    out: bytes = image.webpsave_buffer(Q=THUMBNAIL_QUALITY, strip=True)
    return out


class Thumbnails:
    """Makes an image's thumbnail on first demand and keeps it; `path` serves it after."""

    def __init__(
        self,
        root: Path,
        fetcher: Fetcher,
        local_file: Callable[[str], Path | None],
        pool: Executor,
        files_url: str,
        max_pixels: int,
    ) -> None:
        self.root = root
        self._fetcher = fetcher
        # Storage.local_file: where the service keeps an output it serves under /files/.
        self._local_file = local_file
        self._pool = pool
        self._files_url = files_url.rstrip("/") + "/"
        self._max_pixels = max_pixels
        self._making: dict[Path, asyncio.Task[Path | None]] = {}
        self._slots = asyncio.Semaphore(THUMBNAIL_CONCURRENCY)

    def path(self, request_id: str, name: str) -> Path | None:
        """Where a thumbnail is kept, or None for a name the service does not make."""
        if not _safe(request_id) or not _safe(name):
            return None
        return self.root / request_id / name

    async def get(self, target: Path, source_url: str) -> Path | None:
        """The thumbnail at `target`, made from the image at `source_url` if not yet made;
        None if it cannot be made (the origin is gone, the bytes are not an image)."""
        if await asyncio.to_thread(target.is_file):
            return target
        task = self._making.get(target)
        if task is None:
            task = asyncio.create_task(self._make(target, source_url))
            self._making[target] = task
            task.add_done_callback(lambda _: self._making.pop(target, None))
        return await asyncio.shield(task)

    async def _make(self, target: Path, source_url: str) -> Path | None:
        async with self._slots:
            try:
                data = await self._source(source_url)
                if data is None:
                    return None
                loop = asyncio.get_running_loop()
                thumbnail = await loop.run_in_executor(self._pool, make, data, self._max_pixels)
                await asyncio.to_thread(_write, target, thumbnail)
            except (CsvCompressError, pyvips.Error, ValueError, OSError) as exc:
                reason = getattr(exc, "message", None) or str(exc).strip().splitlines()[0]
                log.info("no thumbnail from %s: %s", source_url, reason)
                return None
            return target

    async def _source(self, url: str) -> bytes | None:
        """The image's bytes: an output the service keeps itself is read from disk;
        anything else (an original, an output on a CDN) is fetched through the guard."""
        if url.startswith(self._files_url):
            path = self._local_file(url[len(self._files_url) :])
            if path is not None:
                return await asyncio.to_thread(path.read_bytes)
        return (await self._fetcher.fetch(url)).data

    def remove_blocking(self, request_id: str) -> None:
        """Remove a request's thumbnails (its removal, by retention or DELETE)."""
        if _safe(request_id):
            shutil.rmtree(self.root / request_id, ignore_errors=True)


def _safe(part: str) -> bool:
    return bool(part) and "/" not in part and "\\" not in part and not part.startswith(".")


def _write(path: Path, data: bytes) -> None:
    """Under a temporary name, then renamed: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
