"""create_app(settings): wires the database, storage, HTTP client, CPU pool and workers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from aiohttp import web

from csvcompress.config import Settings
from csvcompress.http.keys import SERVICE, SETTINGS, Service
from csvcompress.http.middleware import middlewares
from csvcompress.http.routes import add_routes
from csvcompress.jobs.dispatcher import InProcessDispatcher
from csvcompress.jobs.lifecycle import Lifecycle
from csvcompress.jobs.output import Finisher
from csvcompress.jobs.processor import Processor
from csvcompress.metrics import Metrics
from csvcompress.pipeline import cpupool, imaging
from csvcompress.pipeline.fetcher import Fetcher
from csvcompress.pipeline.netguard import NetGuard, create_session
from csvcompress.pipeline.thumbnails import Thumbnails
from csvcompress.retention import Retention
from csvcompress.storage import create_storage
from csvcompress.store import create_store
from csvcompress.webhooks import WebhookSender

log = logging.getLogger(__name__)


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    imaging.configure(concurrency=1, pixel_budget=settings.workers.pixel_budget)
    # First, so a storage that cannot be configured stops the start before anything opens.
    storage = create_storage(settings)
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
            store, lifecycle, settings.outputs_dir, on_finished=webhooks.request_finished
        )
        dispatcher = InProcessDispatcher(settings, store, processor, finisher, lifecycle, metrics)
        retention = Retention(settings, store, storage, dispatcher)
        thumbnails = Thumbnails(
            settings.thumbnails_dir,
            fetcher,
            storage.local_file,
            pool,
            f"{settings.server.base_url}/files/",
            settings.images.max_pixels,
        )
        app[SERVICE] = Service(
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
        )
        stack.push_async_callback(webhooks.close)
        await webhooks.start()
        stack.push_async_callback(dispatcher.stop)
        await dispatcher.start()
        stack.push_async_callback(retention.close)
        await retention.start()
        log.info("csvcompress ready on %s", settings.server.base_url)
        yield


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=middlewares(settings.server), client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    add_routes(app)
    app.cleanup_ctx.append(_service_ctx)
    return app
