"""One image through fetch -> recompress (in the CPU pool) -> store; every failure a result."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from csvcompress.config import Settings
from csvcompress.errors import CsvCompressError, StorageError, StorageFull, StorageRejected
from csvcompress.metrics import Metrics
from csvcompress.models import ImageJob, ImageResult
from csvcompress.pipeline import imaging
from csvcompress.pipeline.budget import ByteBudget, Ticket
from csvcompress.pipeline.fetcher import Fetched, Fetcher
from csvcompress.pipeline.inflight import InFlight, ceiling
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
    seconds: float = 0.0  # in the compression thread, for the downloads-in-flight rule


class DownloadSlot:
    """A worker's leave to start one download; given back once the bytes are in."""

    def __init__(self, in_flight: InFlight | None) -> None:
        self._in_flight = in_flight

    def release(self) -> None:
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.release()


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
        # Bytes arriving and downloaded images held for compression: bounded, see budget.py.
        self._downloads = ByteBudget(settings.fetch.buffer_bytes)
        # Downloads in flight: a fixed count (kept by the fetcher), or as many as the
        # compression threads need (fetch.concurrency = 0, see inflight.py).
        threads = settings.workers.thread_count
        self.max_downloads = settings.fetch.concurrency or ceiling(settings.fetch, threads)
        self._threads = threads
        self._compressing = 0  # images handed to the pool and not back yet
        self._in_flight = (
            None
            if settings.fetch.concurrency
            else InFlight(threads, self.max_downloads, starving=self._starving)
        )

    @property
    def in_flight(self) -> InFlight | None:
        return self._in_flight

    def _starving(self) -> bool:
        """A compression thread is idle while every download slot is busy downloading,
        and the byte budget has room for more."""
        assert self._in_flight is not None
        return (
            self._compressing < self._threads
            and self._downloads.downloading >= self._in_flight.limit
            and self._downloads.has_room()
        )

    def close(self) -> None:
        """No new images will come: workers waiting for a download slot go at once."""
        if self._in_flight is not None:
            self._in_flight.close()

    async def download_slot(self) -> DownloadSlot:
        """Wait until one more download may start (at once when the count is fixed)."""
        if self._in_flight is not None:
            await self._in_flight.acquire()
        return DownloadSlot(self._in_flight)

    async def process(self, job: ImageJob, slot: DownloadSlot | None = None) -> ImageResult:
        """One image to its result. `slot`: the download slot the worker already holds."""
        if slot is None:
            slot = await self.download_slot()
        try:
            return await self._process(job, slot)
        finally:
            slot.release()  # at the latest; normally as soon as the bytes are in

    async def _process(self, job: ImageJob, slot: DownloadSlot) -> ImageResult:
        if (reason := self._rejected.get(job.request_id)) is not None:
            return ImageResult(output_url=None, error=reason, error_code=StorageRejected.code)
        try:
            async with self._downloads.admit() as ticket:
                fetched = await self._download(job, ticket, slot)
                loop = asyncio.get_running_loop()
                self._compressing += 1
                try:
                    encoded = await loop.run_in_executor(
                        self._pool, self._recompress_and_store, job, fetched.data
                    )
                finally:
                    self._compressing -= 1
                if self._in_flight is not None:
                    self._in_flight.compressed(encoded.seconds)
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

    async def _download(self, job: ImageJob, ticket: Ticket, slot: DownloadSlot) -> Fetched:
        try:
            with self._metrics.stage("download"):
                if self._in_flight is not None:
                    self._in_flight.watch()
                started = time.monotonic()
                fetched = await self._fetcher.fetch(job.url, ticket)
                if self._in_flight is not None:
                    # The origin's time, not the budget's: a paused download needs no more
                    # downloads in flight to hide it.
                    self._in_flight.downloaded(time.monotonic() - started - ticket.paused)
        finally:
            slot.release()
        ticket.downloaded()
        return fetched

    def _recompress_and_store(self, job: ImageJob, data: bytes) -> _Encoded:
        """In a CPU thread: recompress, then store at once if the backend writes blocking."""
        started = time.monotonic()
        with self._metrics.stage("compress"):
            image = imaging.recompress(data, self._settings.images)
        seconds = time.monotonic() - started
        key = f"{job.request_id}/{job.row + 1}-{job.position + 1}{image.extension}"
        if self._put_blocking is None:
            return _Encoded(image, key, seconds=seconds)
        with self._metrics.stage("store"):
            try:
                url = self._put_blocking(key, image.data, image.content_type)
                return _Encoded(image, key, url, seconds=seconds)
            except StorageError as exc:
                if not exc.retryable:
                    raise
                # The next tries wait on the event loop, not in a CPU thread.
                return _Encoded(image, key, tried=1, seconds=seconds)

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
