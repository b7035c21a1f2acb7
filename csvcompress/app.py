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

from aiohttp import web

from csvcompress.config import Settings
from csvcompress.http.keys import SERVICE, SETTINGS, Service
from csvcompress.http.middleware import middlewares
from csvcompress.http.routes import add_routes
from csvcompress.jobs.dispatcher import Dispatcher, InProcessDispatcher
from csvcompress.jobs.lifecycle import Lifecycle
from csvcompress.jobs.output import Finisher
from csvcompress.jobs.processor import Processor
from csvcompress.metrics import Metrics
from csvcompress.pipeline import cpupool, imaging
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
        store = create_store(settings)
        await store.open()
        stack.push_async_callback(store.close)
        await storage.start()
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
        log.info("csvcompress ready on %s", settings.server.base_url)
        yield


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=middlewares(settings.server), client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    add_routes(app)
    app.cleanup_ctx.append(_service_ctx)
    return app
