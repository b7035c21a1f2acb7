"""The queue and the workers: the only place a request's status changes.

Work is handed out round-robin across the requests that have pending images,
so a one-image request submitted behind a 10,000-image one waits for one free
worker, not for the big one. Pending images live in SQLite and are read in
small batches per request, so memory does not grow with a request's size and a
restart simply picks up whatever is still pending.

Each worker takes one image through fetch -> recompress (in the CPU pool) ->
store -> record; backends that write locally store from the CPU thread too.
There are more workers than CPU threads so downloads run ahead of compression
and the pool is never idle waiting for the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from csvcompress.config import Settings
from csvcompress.errors import Conflict, CsvCompressError
from csvcompress.jobs.output import write_output_csv
from csvcompress.jobs.processor import Processor
from csvcompress.jobs.recorder import ResultRecorder
from csvcompress.logs import REQUEST_ID
from csvcompress.metrics import Metrics
from csvcompress.models import ImageJob, RequestStatus
from csvcompress.store.sqlite import Database

log = logging.getLogger(__name__)

# How many pending images are read from the database per request at a time.
BATCH_SIZE = 64
FinishedCallback = Callable[[str], Awaitable[None]]


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

    def __init__(self, database: Database, on_drained: Callable[[str], None]) -> None:
        self._db = database
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
                    entry.started = True
                    await self._db.mark_processing(request_id)
                return entry.buffer.popleft()
            self._maybe_drained(entry)
        return None

    async def _refill(self, entry: _Active) -> None:
        entry.loading = True
        try:
            jobs = await self._db.pending_jobs(entry.request_id, entry.after_id, BATCH_SIZE)
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


class JobQueue:
    """Owns the scheduler, the workers and the finishing of requests."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        processor: Processor,
        on_finished: FinishedCallback | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._db = database
        self._processor = processor
        self._on_finished = on_finished
        self._metrics = metrics or Metrics()
        self._scheduler = Scheduler(database, self._drained)
        self._recorder = ResultRecorder(database)
        self._workers: list[asyncio.Task[None]] = []
        self._finishing: set[asyncio.Task[None]] = set()
        # Requests whose output CSV is being written: they cannot be deleted or retried yet.
        self._finishing_ids: set[str] = set()
        self.outputs_dir = settings.data_dir / "outputs"
        # Set once shutdown begins: no new work is taken in.
        self.stopping = False

    @property
    def worker_count(self) -> int:
        return self._settings.fetch.concurrency + self._settings.workers.thread_count

    async def start(self) -> None:
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        await self._recorder.start()
        for n in range(self.worker_count):
            self._workers.append(asyncio.create_task(self._work(), name=f"worker-{n}"))
        resumed = await self._db.unfinished_request_ids()
        for request_id in resumed:
            await self._scheduler.add(request_id)
        if resumed:
            log.info("resuming %d unfinished request(s)", len(resumed))

    async def submit(self, request_id: str) -> None:
        await self._scheduler.add(request_id)

    def is_busy(self, request_id: str) -> bool:
        """Whether images of the request are in flight or its output CSV is being written."""
        return request_id in self._scheduler or request_id in self._finishing_ids

    async def cancel(self, request_id: str) -> bool:
        """Cancel an unfinished request; False if it is unknown or already finished.

        Its pending images are skipped at once. Images already in flight run to the
        end but their results are dropped; then the output CSV is written (with the
        skipped images' reason in the Errors column) and the webhook is sent.
        """
        if not await self._db.cancel_request(request_id):
            return False
        log.info("request %s cancelled", request_id, extra={"request_id": request_id})
        active = await self._scheduler.cancel(request_id)
        if not active and request_id not in self._finishing_ids:
            # Not in the scheduler (it drained already, or was never queued): finish it here.
            self._drained(request_id)
        return True

    async def retry(self, request_id: str) -> int:
        """Put a finished request's failed and skipped images back in the queue; how many.

        Raises Conflict when there is nothing to retry or the request changed meanwhile.
        """
        record = await self._db.get_request(request_id)
        counts = await self._db.get_counts(request_id)
        # A failed request (its output CSV could not be written) is retried even with no
        # failed image: finishing it again writes the CSV.
        if (
            record is not None
            and record.status is not RequestStatus.FAILED
            and counts.failed + counts.skipped == 0
        ):
            raise Conflict(f"request {request_id} has no failed images to retry")
        requeued = await self._db.requeue(request_id)
        if requeued is None:
            raise Conflict(
                f"request {request_id} changed meanwhile; look at its status and try again"
            )
        await self.submit(request_id)
        return requeued

    async def drain(self, grace: float) -> None:
        """Take no new images, and give those in flight up to `grace` seconds to finish.

        Whatever is not finished by then stays pending in SQLite for the next start.
        """
        self.stopping = True
        await self._scheduler.close()
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
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        await self._recorder.close()
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)

    async def _work(self) -> None:
        while (job := await self._scheduler.next_job()) is not None:
            REQUEST_ID.set(job.request_id)  # this worker's log lines are about this request
            try:
                result = await self._processor.process(job)
                if result.error:
                    # The reason goes as a field (JSON logs show it), not in the message: a
                    # reason shared by every image of a request is logged once, where it arises.
                    log.info(
                        "image %s failed (%s)",
                        job.url,
                        result.error_code,
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
        """Write the output CSV, then mark the request finished, then notify."""
        REQUEST_ID.set(request_id)  # in this task's own context
        self._processor.forget(request_id)
        counts = await self._db.get_counts(request_id)
        if counts.pending:
            # Images left pending by a stop or an internal error: leave them for the next start.
            if not self.stopping:
                log.error("request %s drained with %d images pending", request_id, counts.pending)
            return
        output = self.outputs_dir / f"{request_id}.csv"
        try:
            await asyncio.to_thread(
                write_output_csv, self._db.path, request_id, output, self._settings.limits
            )
        except (OSError, CsvCompressError) as exc:
            reason = getattr(exc, "message", None) or str(exc)
            log.error("request %s failed: could not write the output CSV: %s", request_id, reason)
            await self._db.finish_request(
                request_id, RequestStatus.FAILED, error=f"could not write the output CSV: {reason}"
            )
        else:
            await self._db.finish_request(
                request_id, RequestStatus.COMPLETE, output_file_path=str(output)
            )
            log.info("request %s finished: output CSV written", request_id)
        if self._on_finished is not None:
            with contextlib.suppress(Exception):
                await self._on_finished(request_id)
