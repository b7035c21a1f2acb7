"""The distributed queue: procrastinate on PostgreSQL, behind the same Dispatcher seam.

Any number of processes on any number of machines share one PostgreSQL database.
The API process (`serve`) stores a request and queues its images as *chunk* jobs
of `[cluster] chunk_size` images; `worker` processes take chunks, run each image
through the same Processor as single mode, record results through the same
ResultRecorder and Lifecycle, and when a request has no image left, queue its
*finish* job, which writes the output CSV through the same Finisher.

Why chunks: one job per image costs ~2 ms of worker and database CPU and made
procrastinate's fetch plan degrade with tens of thousands of rows (its issue
#1242); a chunk of a few dozen images spreads that over the chunk. Finished jobs
are deleted as they succeed, so the jobs table holds only the work in flight.

The tail of a request is cut finer (guided scheduling): a chunk is at most an
eighth of the images still to queue, down to two. With full chunks to the end, the
first worker to run out of work waited for the others' last chunks (two each, with
`worker_jobs = 2`): 0.3-0.5 s of a 500-image run on two workers.

Fairness: procrastinate takes jobs by priority, then id. Chunk k of a request is
queued with priority -k, a round-robin rank, so a one-image request's only chunk
(rank 0) is taken as soon as a worker is free, not after a 3,000-image one.
Finishing and the worker's own upkeep rank above every chunk.

Crash safety: a worker killed mid-chunk leaves its job `doing`. Every worker runs a
recovery loop that, each `[cluster] heartbeat`, asks procrastinate for the jobs of
workers silent for `stalled_after` seconds (its documented `get_stalled_jobs` /
`retry_job` recipe, its issue #740) and puts them back in the queue. A retried
chunk redoes only its images still pending (results already recorded stay), so an
image is stored at most once per attempt in flight and recorded once. `retry_job`
does not respect a retry cap, so the loop keeps its own: after `crash_retries`
crashes, the chunk's remaining images fail with a reason, and no image can
crash-loop the cluster. The same loop re-queues requests left with pending images
and no job (an API stopped between storing a request and queueing it, a worker
stopped past its grace), after ORPHAN_AGE seconds.

Only jobs/lifecycle.py changes statuses; this module calls it, as the in-process
dispatcher does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from typing import Any

import procrastinate
from procrastinate import JobContext
from procrastinate.exceptions import AlreadyEnqueued, ProcrastinateException
from procrastinate.jobs import Job, Status

from csvcompress.config import Settings
from csvcompress.jobs.lifecycle import Lifecycle
from csvcompress.jobs.output import Finisher
from csvcompress.jobs.processor import Processor
from csvcompress.jobs.recorder import ResultRecorder
from csvcompress.logs import REQUEST_ID
from csvcompress.metrics import Metrics
from csvcompress.models import ImageJob, ImageResult
from csvcompress.store.base import Store
from csvcompress.store.postgres import PostgresStore, queue_connector

log = logging.getLogger(__name__)

QUEUE = "csvcompress"
CHUNK_TASK = "csvcompress.chunk"
FINISH_TASK = "csvcompress.finish"
# Above every chunk's rank (0, -1, -2, ...): a finished request is written out at once.
FINISH_PRIORITY = 1
# Seconds a request must have had pending images and no job before the recovery loop
# queues it again (an upload being queued right now is not an orphan).
ORPHAN_AGE = 30.0
# Seconds between two looks for orphaned requests (stalled jobs are looked for every
# heartbeat).
ORPHAN_INTERVAL = 15.0
# Chunk jobs queued per INSERT when a request is planned (a 300,000-URL upload is
# ~9,400 chunks: 19 round trips before its 202, not 9,400).
DEFER_BATCH = 500
# Guided scheduling of a request's tail: a chunk takes at most 1/TAIL_SHARE of the
# images still to queue, and at least MIN_CHUNK.
TAIL_SHARE = 8
MIN_CHUNK = 2
CRASHED_CODE = "worker_crashed"
_WORK = "csvcompress_work"


def create_queue(settings: Settings) -> procrastinate.App:
    """The procrastinate app, with csvcompress's tasks, on `[database] url`."""
    app = procrastinate.App(connector=queue_connector(settings.database.url))

    @app.task(name=CHUNK_TASK, queue=QUEUE, pass_context=True)
    async def chunk(context: JobContext, request_id: str, after_id: int, last_id: int) -> None:
        await _work(context).run_chunk(request_id, after_id, last_id)

    @app.task(name=FINISH_TASK, queue=QUEUE, pass_context=True)
    async def finish(context: JobContext, request_id: str) -> None:
        await _work(context).finish(request_id)

    return app


def _work(context: JobContext) -> ChunkWorker:
    work = context.additional_context[_WORK]
    assert isinstance(work, ChunkWorker)
    return work


async def defer_finish(queue: procrastinate.App, request_id: str) -> None:
    """Queue the request's finish job, unless one is already waiting."""
    lock = f"finish:{request_id}"
    with contextlib.suppress(AlreadyEnqueued):
        await queue.configure_task(
            FINISH_TASK, queue=QUEUE, priority=FINISH_PRIORITY, lock=lock, queueing_lock=lock
        ).defer_async(request_id=request_id)


async def plan(queue: procrastinate.App, store: Store, request_id: str, chunk_size: int) -> int:
    """Queue a request's pending images as chunk jobs, ranked round-robin; how many chunks.

    A request with nothing pending gets its finish job instead.
    """
    rank, after_id = 0, 0
    left = (await store.get_counts(request_id)).pending
    batch: list[tuple[int, dict[str, Any]]] = []
    while jobs := await store.pending_images(request_id, after_id, chunk(chunk_size, left)):
        args = {"request_id": request_id, "after_id": after_id, "last_id": jobs[-1].id}
        batch.append((-rank, args))
        rank, after_id, left = rank + 1, jobs[-1].id, left - len(jobs)
        if len(batch) >= DEFER_BATCH:
            await _defer_chunks(queue, batch)
            batch = []
    if batch:
        await _defer_chunks(queue, batch)
    if rank == 0:
        await defer_finish(queue, request_id)
    return rank


def chunk(chunk_size: int, left: int) -> int:
    """How many images the next chunk takes, with `left` still to queue."""
    return min(chunk_size, max(MIN_CHUNK, -(-left // TAIL_SHARE)))


async def _defer_chunks(queue: procrastinate.App, chunks: list[tuple[int, dict[str, Any]]]) -> None:
    """One INSERT for the batch, each chunk with its own rank (batch_defer_async would give
    them all one priority, so the jobs are built here and deferred together)."""
    template = queue.configure_task(CHUNK_TASK, queue=QUEUE).job
    jobs = [template.evolve(priority=priority, task_kwargs=args) for priority, args in chunks]
    await queue.job_manager.batch_defer_jobs_async(jobs)


class ChunkWorker:
    """The worker side: runs chunk and finish jobs, and recovers the jobs of dead workers."""

    def __init__(
        self,
        settings: Settings,
        store: PostgresStore,
        processor: Processor,
        finisher: Finisher,
        lifecycle: Lifecycle,
        queue: procrastinate.App,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._cluster = settings.cluster
        self._store = store
        self._processor = processor
        self._finisher = finisher
        self._lifecycle = lifecycle
        self._queue = queue
        self._metrics = metrics or Metrics()
        self._recorder = ResultRecorder(lifecycle)
        # Images in flight in this process, across its chunk jobs: as many as the
        # in-process dispatcher's workers (downloads run ahead of compression; the
        # processor's own limit decides how many download at once).
        self._slots = asyncio.Semaphore(processor.max_downloads + settings.workers.thread_count)
        self._runner: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self.stopping = False

    async def start(self) -> None:
        await asyncio.to_thread(self._finisher.outputs_dir.mkdir, parents=True, exist_ok=True)
        await self._recorder.start()
        self._runner = asyncio.create_task(self._run(), name="queue-worker")
        self._recovery = asyncio.create_task(self._recover_forever(), name="queue-recovery")

    async def _run(self) -> None:
        await self._queue.run_worker_async(
            queues=[QUEUE],
            name=f"{socket.gethostname()}-{id(self):x}",
            concurrency=self._cluster.worker_jobs,
            install_signal_handlers=False,
            delete_jobs="successful",
            update_heartbeat_interval=self._cluster.heartbeat,
            stalled_worker_timeout=self._cluster.stalled_after,
            shutdown_graceful_timeout=self._settings.workers.shutdown_grace,
            additional_context={_WORK: self},
        )

    async def drain(self, grace: float) -> None:
        """Take no new job; chunks in flight get `grace` seconds (then they are aborted and
        their images stay pending: the recovery loop of any worker queues them again)."""
        self.stopping = True
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._runner), grace + 5)

    async def stop(self) -> None:
        self.stopping = True
        for task in (self._recovery, self._runner):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._recorder.close()

    # --- the tasks -----------------------------------------------------------------

    async def run_chunk(self, request_id: str, after_id: int, last_id: int) -> None:
        REQUEST_ID.set(request_id)
        pending = await self._store.pending_images(request_id, after_id, self._cluster.chunk_size)
        jobs = [job for job in pending if job.id <= last_id]
        if jobs:
            await self._lifecycle.start(request_id)
            await asyncio.gather(*(self._one(job) for job in jobs))
        counts = await self._store.get_counts(request_id)
        if counts.pending == 0:
            await defer_finish(self._queue, request_id)

    async def _one(self, job: ImageJob) -> None:
        async with self._slots:
            REQUEST_ID.set(job.request_id)
            try:
                result = await self._processor.process(job)
                if result.error:
                    error = {"error": result.error}
                    log.info("image %s failed (%s)", job.url, result.error_code, extra=error)
                images = await self._recorder.record(job, result)
                self._metrics.image_recorded(result, images)
            except Exception:
                # As in single mode, a bug costs one image, not its chunk: the image stays
                # pending, and the recovery loop queues its request again later.
                log.exception("worker error on image %d", job.id)

    async def finish(self, request_id: str) -> None:
        REQUEST_ID.set(request_id)
        record = await self._store.get_request(request_id)
        if record is None:
            return
        if record.status.finished and (record.output_file_path or record.error):
            return  # a finish job queued twice: the first one did it
        self._processor.forget(request_id)
        await self._finisher.finish(request_id, stopping=self.stopping)

    # --- recovery ------------------------------------------------------------------

    async def _recover_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_orphans = loop.time() + ORPHAN_INTERVAL
        while True:
            await asyncio.sleep(self._cluster.heartbeat)
            try:
                await self.recover_stalled()
                if loop.time() >= next_orphans:
                    next_orphans = loop.time() + ORPHAN_INTERVAL
                    await self.requeue_orphans(ORPHAN_AGE)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queue recovery failed; trying again")

    async def recover_stalled(self) -> int:
        """Put the jobs of dead workers back in the queue; how many."""
        manager = self._queue.job_manager
        stalled = await manager.get_stalled_jobs(
            queue=QUEUE, seconds_since_heartbeat=self._cluster.stalled_after
        )
        recovered = 0
        for job in stalled:
            try:
                if job.task_name == CHUNK_TASK and job.attempts >= self._cluster.crash_retries:
                    await self._give_up(job)
                else:
                    log.warning("job %s of a dead worker queued again: %s", job.id, job.call_string)
                    await manager.retry_job(job)
                recovered += 1
            except ProcrastinateException:
                # Another worker's recovery loop took it first.
                log.debug("job %s was recovered elsewhere", job.id)
        return recovered

    async def _give_up(self, job: Job) -> None:
        args = job.task_kwargs
        request_id, after_id, last_id = str(args["request_id"]), args["after_id"], args["last_id"]
        assert isinstance(after_id, int) and isinstance(last_id, int)  # as plan() queued them
        tries = job.attempts + 1
        reason = (
            f"the worker processing this image died ({tries} attempt{'s' * (tries > 1)}); "
            "given up so that it cannot hold up the other images"
        )
        pending = await self._store.pending_images(request_id, after_id, self._cluster.chunk_size)
        failed = [
            (j, ImageResult(None, reason, error_code=CRASHED_CODE))
            for j in pending
            if j.id <= last_id
        ]
        await self._record_all(failed)
        log.error("job %s failed for good: %s", job.id, reason, extra={"request_id": request_id})
        await self._queue.job_manager.finish_job(job, Status.FAILED, delete_job=False)
        await defer_finish(self._queue, request_id)

    async def _record_all(self, results: Sequence[tuple[ImageJob, ImageResult]]) -> None:
        if results:
            await self._lifecycle.record(results)

    async def requeue_orphans(self, older_than: float) -> int:
        """Queue again the unfinished requests that have no job; how many."""
        orphans = await self._store.unfinished_without_jobs(QUEUE, older_than)
        for request_id in orphans:
            log.warning("request %s has no job left: queued again", request_id)
            await plan(self._queue, self._store, request_id, self._cluster.chunk_size)
        return len(orphans)


class ClusterDispatcher:
    """The Dispatcher in distributed mode: the API side, and a worker when role = "all"."""

    def __init__(
        self,
        settings: Settings,
        store: PostgresStore,
        lifecycle: Lifecycle,
        queue: procrastinate.App,
        worker: ChunkWorker | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._lifecycle = lifecycle
        self._queue = queue
        self._worker = worker
        self._opened = False
        self.stopping = False

    async def start(self) -> None:
        await self._queue.open_async()
        self._opened = True
        if self._worker is not None:
            await self._worker.start()

    async def submit(self, request_id: str) -> None:
        await plan(self._queue, self._store, request_id, self._settings.cluster.chunk_size)

    async def cancel(self, request_id: str) -> bool:
        """Skip the pending images at once; chunks already queued find nothing to do, and
        the finish job writes the output CSV (images in flight have their results dropped)."""
        if not await self._lifecycle.cancel(request_id):
            return False
        log.info("request %s cancelled", request_id, extra={"request_id": request_id})
        await defer_finish(self._queue, request_id)
        return True

    async def retry(self, request_id: str) -> int:
        requeued = await self._lifecycle.retry(request_id)
        await self.submit(request_id)
        return requeued

    def is_busy(self, request_id: str) -> bool:
        """Never, from here: a finish job that races a retry or a removal finds the request
        changed (the lifecycle's conditional moves) and leaves it as it is."""
        return False

    async def drain(self, grace: float) -> None:
        self.stopping = True
        if self._worker is not None:
            await self._worker.drain(grace)

    async def stop(self) -> None:
        self.stopping = True
        if self._worker is not None:
            await self._worker.stop()
        if self._opened:
            await self._queue.close_async()
            self._opened = False
