"""create_app(settings): wires the database, storage, HTTP client, CPU pool and workers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
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
from csvcompress.jobs.dispatcher import InProcessDispatcher
from csvcompress.jobs.lifecycle import Lifecycle
from csvcompress.jobs.output import Finisher
from csvcompress.jobs.processor import Processor
from csvcompress.metrics import Metrics
from csvcompress.pipeline import cpupool, imaging
from csvcompress.pipeline.fetcher import Fetcher
from csvcompress.pipeline.netguard import NetGuard, create_session
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
        # Before anything reads the data directory: one service at a time works on it.
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
        processor = Processor(settings, Fetcher(settings.fetch, session), storage, pool, metrics)
        lifecycle = Lifecycle(store)
        finisher = Finisher(
            store,
            lifecycle,
            settings.outputs_dir,
            on_finished=webhooks.request_finished,
            escape_formulas=settings.output.escape_formulas,
        )
        dispatcher = InProcessDispatcher(settings, store, processor, finisher, lifecycle, metrics)
        retention = Retention(settings, store, storage, dispatcher)
        app[SERVICE] = Service(
            settings, store, storage, guard, session, pool, dispatcher, webhooks, metrics, retention
        )
        stack.push_async_callback(webhooks.close)
        await webhooks.start()
        stack.push_async_callback(dispatcher.stop)
        await dispatcher.start()
        stack.push_async_callback(retention.close)
        await retention.start()
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
