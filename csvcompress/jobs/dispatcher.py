"""Dispatching images to workers: the seam a queue engine can replace.

`Dispatcher` is what the rest of the service asks of the queue: submit a
request's images, cancel, retry, resume after a restart, shut down. The web layer
and the processor know nothing else, so a PostgreSQL-backed queue can replace
`InProcessDispatcher` without touching them.

`InProcessDispatcher` is the single-process default. Work is handed out
round-robin across the requests that have pending images, so a one-image request
submitted behind a 10,000-image one waits for one free worker, not for the big
one. Pending images live in the store and are read in small batches per request,
so memory does not grow with a request's size and a restart simply picks up
whatever is still pending.

Each worker takes one image through the Processor (fetch -> recompress -> store)
and hands the result to the recorder. There are more workers than CPU threads so
downloads run ahead of compression and the pool is never idle waiting for the
network.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from csvcompress.config import Settings
from csvcompress.errors import StorageRejected
from csvcompress.jobs.lifecycle import Lifecycle
from csvcompress.jobs.output import Finisher
from csvcompress.jobs.processor import Processor
from csvcompress.jobs.recorder import ResultRecorder
from csvcompress.logs import REQUEST_ID
from csvcompress.metrics import Metrics
from csvcompress.models import ImageJob
from csvcompress.store.base import Store, StoreUnavailable

log = logging.getLogger(__name__)

# How many pending images are read from the store per request at a time.
BATCH_SIZE = 64
# Seconds before the pending images of a request that drained without them are queued again.
REQUEUE_DELAY = 5.0


class Dispatcher(Protocol):
    """What the service asks of its queue, whatever engine runs it."""

    # Set once shutdown begins: no new work is taken in.
    stopping: bool

    async def start(self) -> None:
        """Start the workers and resume every unfinished request."""

    async def submit(self, request_id: str) -> None:
        """Queue the pending images of a stored request."""

    async def cancel(self, request_id: str) -> bool:
        """Cancel an unfinished request; False if it is unknown or already finished."""

    async def retry(self, request_id: str) -> int:
        """Re-queue a finished request's failed and skipped images; how many (Conflict if none)."""

    def is_busy(self, request_id: str) -> bool:
        """Whether images of the request are in flight or its output CSV is being written."""

    async def drain(self, grace: float) -> None:
        """Take no new images; give those in flight up to `grace` seconds to finish."""

    async def stop(self) -> None: ...


@dataclass
class _Active:
    """A request with work left: a small buffer of its next jobs and a cursor into the table."""

    request_id: str
    buffer: deque[ImageJob] = field(default_factory=deque)
    after_id: int = 0
    exhausted: bool = False
    in_flight: int = 0
    loading: bool = False
    started: bool = False


class Scheduler:
    """Hands out jobs fairly across requests and notices when a request is done."""

    def __init__(
        self, store: Store, lifecycle: Lifecycle, on_drained: Callable[[str], None]
    ) -> None:
        self._store = store
        self._lifecycle = lifecycle
        self._on_drained = on_drained
        self._active: OrderedDict[str, _Active] = OrderedDict()
        self._wakeup = asyncio.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._active)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._active

    async def add(self, request_id: str) -> None:
        async with self._wakeup:
            if request_id not in self._active:
                self._active[request_id] = _Active(request_id)
            self._wakeup.notify_all()

    async def close(self) -> None:
        async with self._wakeup:
            self._closed = True
            self._wakeup.notify_all()

    async def cancel(self, request_id: str) -> bool:
        """Hand out no more of a request's jobs; False if the scheduler did not have it.

        Jobs already handed out run to the end; when the last is done, the request
        drains as usual.
        """
        async with self._wakeup:
            entry = self._active.get(request_id)
            if entry is None:
                return False
            entry.buffer.clear()
            entry.exhausted = True
            self._maybe_drained(entry)
            return True

    async def next_job(self) -> ImageJob | None:
        """The next job, round-robin over requests; None once the scheduler is closed."""
        while True:
            async with self._wakeup:
                if self._closed:
                    return None
                job = await self._take()
                if job is not None:
                    return job
                await self._wakeup.wait()

    async def _take(self) -> ImageJob | None:
        for request_id in list(self._active):
            entry = self._active.get(request_id)
            if entry is None:
                continue
            if not entry.buffer and not entry.exhausted and not entry.loading:
                await self._refill(entry)
            if entry.buffer:
                # Rotate: this request goes to the back of the line.
                self._active.move_to_end(request_id)
                entry.in_flight += 1
                if not entry.started:
                    entry.started = await self._start(request_id)
                return entry.buffer.popleft()
            self._maybe_drained(entry)
        return None

    async def _start(self, request_id: str) -> bool:
        """pending -> processing; False (tried again with its next image) when the store
        cannot take the write now: the image goes ahead, and a request still pending
        when it finishes moves straight to complete."""
        try:
            await self._lifecycle.start(request_id)
        except StoreUnavailable as exc:
            log.warning("request %s: cannot mark it processing now: %s", request_id, exc.message)
            return False
        return True

    async def _refill(self, entry: _Active) -> None:
        entry.loading = True
        try:
            jobs = await self._store.pending_images(entry.request_id, entry.after_id, BATCH_SIZE)
        finally:
            entry.loading = False
        entry.buffer.extend(jobs)
        if jobs:
            entry.after_id = jobs[-1].id
        if len(jobs) < BATCH_SIZE:
            entry.exhausted = True

    async def done(self, job: ImageJob) -> None:
        async with self._wakeup:
            entry = self._active.get(job.request_id)
            if entry is None:
                return
            entry.in_flight -= 1
            self._maybe_drained(entry)
            self._wakeup.notify_all()

    def _maybe_drained(self, entry: _Active) -> None:
        if entry.exhausted and not entry.buffer and entry.in_flight == 0:
            del self._active[entry.request_id]
            self._on_drained(entry.request_id)


class InProcessDispatcher:
    """The scheduler, the workers and the finishing of requests, in this process."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        processor: Processor,
        finisher: Finisher,
        lifecycle: Lifecycle,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._processor = processor
        self._finisher = finisher
        self._lifecycle = lifecycle
        self._metrics = metrics or Metrics()
        self._scheduler = Scheduler(store, lifecycle, self._drained)
        self._recorder = ResultRecorder(lifecycle)
        self._workers: list[asyncio.Task[None]] = []
        self._finishing: set[asyncio.Task[None]] = set()
        # Requests whose output CSV is being written: they cannot be deleted or retried yet.
        self._finishing_ids: set[str] = set()
        self.stopping = False

    @property
    def worker_count(self) -> int:
        """Enough workers for every download the processor may allow, plus one image
        per compression thread; when the count follows the need, idle workers wait
        for a download slot before taking an image, so none holds a job it cannot start."""
        return self._processor.max_downloads + self._settings.workers.thread_count

    async def start(self) -> None:
        self._finisher.outputs_dir.mkdir(parents=True, exist_ok=True)
        await self._recorder.start()
        for n in range(self.worker_count):
            self._workers.append(asyncio.create_task(self._work(), name=f"worker-{n}"))
        resumed = await self._store.unfinished_request_ids()
        for request_id in resumed:
            await self._scheduler.add(request_id)
        if resumed:
            log.info("resuming %d unfinished request(s)", len(resumed))

    async def submit(self, request_id: str) -> None:
        await self._scheduler.add(request_id)

    def is_busy(self, request_id: str) -> bool:
        return request_id in self._scheduler or request_id in self._finishing_ids

    async def cancel(self, request_id: str) -> bool:
        """Cancel an unfinished request; False if it is unknown or already finished.

        Its pending images are skipped at once. Images already in flight run to the
        end but their results are dropped; then the output CSV is written (with the
        skipped images' reason in the Errors column) and the webhook is sent.
        """
        if not await self._lifecycle.cancel(request_id):
            return False
        log.info("request %s cancelled", request_id, extra={"request_id": request_id})
        active = await self._scheduler.cancel(request_id)
        if not active and request_id not in self._finishing_ids:
            # Not in the scheduler (it drained already, or was never queued): finish it here.
            self._drained(request_id)
        return True

    async def retry(self, request_id: str) -> int:
        requeued = await self._lifecycle.retry(request_id)
        await self.submit(request_id)
        return requeued

    async def drain(self, grace: float) -> None:
        """Take no new images, and give those in flight up to `grace` seconds to finish.

        Whatever is not finished by then stays pending in the store for the next start.
        """
        self.stopping = True
        await self._scheduler.close()
        self._processor.close()
        deadline = asyncio.get_running_loop().time() + grace
        busy = [task for task in self._workers if not task.done()]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        if self._finishing:
            await asyncio.wait(set(self._finishing), timeout=remaining)
        unfinished = sum(not task.done() for task in busy)
        if unfinished:
            log.warning(
                "shutdown grace of %g s is over: %d image(s) in flight stay pending for the next"
                " start",
                grace,
                unfinished,
            )

    async def stop(self) -> None:
        self.stopping = True
        await self._scheduler.close()
        self._processor.close()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        await self._recorder.close()
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            slot = await self._processor.download_slot()
            if (job := await self._scheduler.next_job()) is None:
                slot.release()
                return
            REQUEST_ID.set(job.request_id)  # this worker's log lines are about this request
            try:
                result = await self._processor.process(job, slot)
                if result.error:
                    # The reason is in the line a person reads, and a field for JSON logs;
                    # a rejection by the storage, shared by every image, was logged once.
                    shared = result.error_code == StorageRejected.code
                    log.info(
                        "image %s failed (%s)%s",
                        job.url,
                        result.error_code,
                        "" if shared else f": {result.error}",
                        extra={"error": result.error},
                    )
                images = await self._recorder.record(job, result)
                self._metrics.image_recorded(result, images)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug must not kill the worker; the image stays pending for the next start.
                log.exception("worker error on image %d", job.id)
            finally:
                await self._scheduler.done(job)

    def _drained(self, request_id: str) -> None:
        task = asyncio.create_task(self._finish(request_id), name=f"finish-{request_id}")
        self._finishing.add(task)
        self._finishing_ids.add(request_id)

        def done(task: asyncio.Task[None]) -> None:
            self._finishing.discard(task)
            self._finishing_ids.discard(request_id)

        task.add_done_callback(done)

    async def _finish(self, request_id: str) -> None:
        self._processor.forget(request_id)
        finished = await self._finisher.finish(request_id, stopping=self.stopping)
        if not finished and not self.stopping:
            # Images are still pending (an error kept their results from being recorded):
            # the request is not left in `processing` while the service runs; its pending
            # images go back in the queue after a pause.
            log.warning(
                "request %s: queueing its pending images again in %g s", request_id, REQUEUE_DELAY
            )
            await asyncio.sleep(REQUEUE_DELAY)
            if not self.stopping:
                await self._scheduler.add(request_id)
