"""create_app(settings): wires the database, storage, HTTP client, CPU pool and workers.

`open_service` is the wiring itself, shared by `serve` (inside the web app) and, in
distributed mode, by `worker` (no web app). The modes differ only in the Store and
the Dispatcher chosen here; nothing else knows which mode it runs in.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from csvcompress import logs
from csvcompress.config import Settings
from csvcompress.datadir import DataDirLock, access_advice, remove_partial_uploads
from csvcompress.errors import StartupError
from csvcompress.http.keys import SERVICE, SETTINGS, Service
from csvcompress.http.middleware import middlewares
from csvcompress.http.routes import add_routes
from csvcompress.http.uploads import UPLOAD_SLOTS, UploadSlots
from csvcompress.jobs.dispatcher import Dispatcher, InProcessDispatcher
from csvcompress.jobs.lifecycle import Lifecycle
from csvcompress.jobs.output import Finisher
from csvcompress.jobs.processor import Processor
from csvcompress.metrics import Metrics
from csvcompress.pipeline import codec, cpupool, imaging
from csvcompress.pipeline.fetcher import Fetcher
from csvcompress.pipeline.netguard import NetGuard, create_session
from csvcompress.pipeline.thumbnails import Thumbnails
from csvcompress.retention import Retention
from csvcompress.storage import create_files, create_storage
from csvcompress.store import Store, create_store
from csvcompress.webhooks import WebhookSender

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_service(settings: Settings, *, worker: bool) -> AsyncIterator[Service]:
    """Every part of the service, opened in order and closed in reverse.

    `worker` says whether this process does image work: always in single mode; in
    distributed mode for `worker` processes and for `serve` with `[cluster] role = "all"`.
    """
    imaging.configure(concurrency=1, pixel_budget=settings.workers.pixel_budget)
    # First, so a storage that cannot be configured stops the start before anything opens.
    storage = create_storage(settings)
    files = create_files(settings)
    # Whatever opened is closed again, in reverse order, even when a later step fails
    # the start: an open aiosqlite thread would otherwise keep the process from exiting.
    async with AsyncExitStack() as stack:
        # Before anything reads the data directory: one service at a time works on its
        # SQLite file. (Distributed mode keeps its state in PostgreSQL, which any number of
        # processes share, so it has nothing here to guard.)
        if not settings.cluster.distributed:
            lock = DataDirLock(settings.data_dir)
            lock.acquire()
            stack.callback(lock.release)
        remove_partial_uploads(settings.uploads_dir)
        store = create_store(settings)
        await store.open()
        stack.push_async_callback(store.close)
        try:
            await storage.start()
        except OSError as exc:
            raise StartupError(access_advice(Path(settings.storage.dir), exc)) from None
        stack.push_async_callback(storage.close)
        guard = NetGuard(settings.fetch)
        session = create_session(settings.fetch, guard)
        stack.push_async_callback(session.close)
        pool = cpupool.create(settings.workers)
        stack.callback(pool.shutdown, wait=True, cancel_futures=True)
        metrics = Metrics()
        webhooks = WebhookSender(settings, store, guard, metrics)
        fetcher = Fetcher(settings.fetch, session)
        processor = Processor(settings, fetcher, storage, pool, metrics)
        lifecycle = Lifecycle(store)
        finisher = Finisher(
            store,
            lifecycle,
            settings.outputs_dir,
            on_finished=webhooks.request_finished,
            files=files,
            escape_formulas=settings.output.escape_formulas,
        )
        parts = _Parts(settings, store, processor, finisher, lifecycle, metrics)
        dispatcher = _dispatcher(parts, worker=worker)
        retention = Retention(settings, store, storage, dispatcher, files)
        thumbnails = Thumbnails(
            settings.thumbnails_dir,
            fetcher,
            storage.local_file,
            pool,
            f"{settings.server.base_url}/files/",
            settings.images.max_pixels,
        )
        service = Service(
            settings,
            store,
            storage,
            guard,
            session,
            pool,
            dispatcher,
            webhooks,
            metrics,
            retention,
            thumbnails,
            files,
        )
        stack.push_async_callback(webhooks.close)
        await webhooks.start()
        stack.push_async_callback(dispatcher.stop)
        await dispatcher.start()
        stack.push_async_callback(retention.close)
        await retention.start()
        yield service


@dataclass(frozen=True)
class _Parts:
    settings: Settings
    store: Store
    processor: Processor
    finisher: Finisher
    lifecycle: Lifecycle
    metrics: Metrics


def _dispatcher(parts: _Parts, *, worker: bool) -> Dispatcher:
    """The in-process queue (single mode), or procrastinate on PostgreSQL (distributed)."""
    settings = parts.settings
    if not settings.cluster.distributed:
        return InProcessDispatcher(
            settings, parts.store, parts.processor, parts.finisher, parts.lifecycle, parts.metrics
        )
    # Imported here: single mode never loads procrastinate or psycopg (an optional extra).
    from csvcompress.jobs.cluster import ChunkWorker, ClusterDispatcher, create_queue
    from csvcompress.store.postgres import PostgresStore

    store = parts.store
    assert isinstance(store, PostgresStore)  # create_store's choice in distributed mode
    queue = create_queue(settings)
    chunks = (
        ChunkWorker(
            settings,
            store,
            parts.processor,
            parts.finisher,
            parts.lifecycle,
            queue,
            parts.metrics,
        )
        if worker
        else None
    )
    return ClusterDispatcher(settings, store, parts.lifecycle, queue, chunks)


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    cluster = settings.cluster
    worker = not cluster.distributed or cluster.role == "all"
    async with open_service(settings, worker=worker) as service:
        app[SERVICE] = service
        # Once started: a start that fails says so in one line, and nothing else.
        codec.log_in_use()
        log.info("csvcompress ready on %s", settings.server.base_url)
        yield


def runner_options(settings: Settings) -> dict[str, Any]:
    """How the service's HTTP server treats connections, for every runner that serves it.

    aiohttp's keep-alive timer runs from the moment a connection opens, and closes a
    connection still waiting for a whole request when it fires, so it is the limit on
    sending headers (a client trickling them a byte a second is cut off) as well as on
    idle kept-alive connections.
    """
    return {
        "access_log_class": logs.AccessLogger,
        "keepalive_timeout": settings.limits.header_timeout,
    }


def create_app(settings: Settings) -> web.Application:
    logs.quiet_client_faults()
    app = web.Application(middlewares=middlewares(settings.server), client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app[UPLOAD_SLOTS] = UploadSlots(settings.limits.max_uploads_in_progress)
    add_routes(app)
    app.cleanup_ctx.append(_service_ctx)
    return app
