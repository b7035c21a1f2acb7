"""One image through fetch -> recompress (in the CPU pool) -> store; every failure a result."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from csvcompress.config import Settings
from csvcompress.errors import CsvCompressError, StorageError, StorageFull, StorageRejected
from csvcompress.metrics import Metrics
from csvcompress.models import ImageJob, ImageResult
from csvcompress.pipeline import imaging
from csvcompress.pipeline.budget import ByteBudget
from csvcompress.pipeline.fetcher import Fetcher
from csvcompress.retry import DISK_FULL_PATIENCE, Backoff, keep_trying
from csvcompress.storage import BlockingPut, Storage

log = logging.getLogger(__name__)

# Tries for a storage write that failed in a way worth retrying, and the wait before
# the second (doubling for the next).
STORE_ATTEMPTS = 3
STORE_BACKOFF = 0.4
STORE_RETRY = Backoff.exponential(STORE_ATTEMPTS, STORE_BACKOFF)


@dataclass(frozen=True)
class _Encoded:
    """An image recompressed in a CPU thread, and its URL if it was stored there too."""

    image: imaging.Compressed
    key: str
    url: str | None = None
    tried: int = 0  # failed storage tries so far


class Processor:
    """Fetches, recompresses and stores one image; every failure becomes an ImageResult."""

    def __init__(
        self,
        settings: Settings,
        fetcher: Fetcher,
        storage: Storage,
        pool: ThreadPoolExecutor,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._fetcher = fetcher
        self._storage = storage
        self._put_blocking = storage.put_blocking if isinstance(storage, BlockingPut) else None
        self._pool = pool
        self._metrics = metrics or Metrics()
        # Requests whose storage refused every write, and why: their other images fail
        # with that reason at once instead of being fetched and compressed for nothing.
        self._rejected: dict[str, str] = {}
        # Downloaded images held for compression: bounded, see budget.py.
        self._downloads = ByteBudget(settings.fetch.buffer_bytes)

    async def process(self, job: ImageJob) -> ImageResult:
        if (reason := self._rejected.get(job.request_id)) is not None:
            return ImageResult(output_url=None, error=reason, error_code=StorageRejected.code)
        try:
            async with self._downloads.admit() as ticket:
                with self._metrics.stage("download"):
                    fetched = await self._fetcher.fetch(job.url)
                ticket.downloaded(len(fetched.data))
                loop = asyncio.get_running_loop()
                encoded = await loop.run_in_executor(
                    self._pool, self._recompress_and_store, job, fetched.data
                )
            url = encoded.url
            if url is None:
                with self._metrics.stage("store"):
                    url = await self._store(encoded)
        except StorageRejected as exc:
            self._reject(job.request_id, exc)
            return ImageResult(output_url=None, error=exc.message, error_code=exc.code)
        except CsvCompressError as exc:
            return ImageResult(output_url=None, error=exc.message, error_code=exc.code)
        return ImageResult(
            output_url=url,
            error=None,
            bytes_in=len(fetched.data),
            bytes_out=len(encoded.image.data),
        )

    def _recompress_and_store(self, job: ImageJob, data: bytes) -> _Encoded:
        """In a CPU thread: recompress, then store at once if the backend writes blocking."""
        with self._metrics.stage("compress"):
            image = imaging.recompress(data, self._settings.images)
        key = f"{job.request_id}/{job.row + 1}-{job.position + 1}{image.extension}"
        if self._put_blocking is None:
            return _Encoded(image, key)
        with self._metrics.stage("store"):
            try:
                return _Encoded(image, key, self._put_blocking(key, image.data, image.content_type))
            except StorageError as exc:
                if not exc.retryable:
                    raise
                # The next tries wait on the event loop, not in a CPU thread.
                return _Encoded(image, key, tried=1)

    def _reject(self, request_id: str, exc: StorageRejected) -> None:
        # Several images may be refused at once; the request's log says it once.
        if request_id not in self._rejected:
            self._rejected[request_id] = exc.message
            log.error(
                "request %s: %s; its other images fail without being processed",
                request_id,
                exc.message,
            )

    def forget(self, request_id: str) -> None:
        """The request is finished: drop what was remembered about it."""
        self._rejected.pop(request_id, None)

    async def _store(self, encoded: _Encoded) -> str:
        """Store with the backend's async put, after the tries made in the CPU thread."""
        image = encoded.image

        async def put() -> str:
            return await self._storage.put(encoded.key, image.data, image.content_type)

        try:
            return await STORE_RETRY.run(put, done=encoded.tried)
        except StorageFull:
            # A full disk: wait for room (the workers pause with it) rather than fail
            # every image of every request within seconds.
            return await keep_trying(
                put, what=f"storing {encoded.key}", log=log, patience=DISK_FULL_PATIENCE
            )
