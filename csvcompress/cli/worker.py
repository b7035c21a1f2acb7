"""`worker` and `migrate`: the commands of distributed mode.

A worker is the service without its web server: it takes chunk and finish jobs
from PostgreSQL, stores images in the configured storage, delivers webhooks and
runs retention. Run any number, on any machine that reaches the database, the
storage and the shared data directory. SIGTERM or SIGINT stops it gracefully
(chunks in flight get `[workers] shutdown_grace` seconds; what is left is queued
again by the other workers); a second signal stops it at once, which loses nothing
either (its jobs are recovered like those of a killed worker).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

from csvcompress.app import open_service
from csvcompress.config import Settings
from csvcompress.errors import ConfigError

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run_worker(settings: Settings, announce: Callable[[str], None] = print) -> int:
    """Work until a stop signal; returns the exit status."""
    if not settings.cluster.distributed:
        raise ConfigError(
            'cluster.mode: a worker needs "distributed" (in single mode, serve does the work)'
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("%s again: stopping now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: stopping once the chunks in flight are done", signal.Signals(signum).name)
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    async with open_service(settings, worker=True) as service:
        announce(f"csvcompress worker {os.getpid()} working (Ctrl+C to stop)")
        await stop.wait()
        await service.dispatcher.drain(settings.workers.shutdown_grace)
    log.info("stopped")
    return 0


def migrate(settings: Settings) -> str:
    """Create or upgrade the database schema; what was done, in a sentence."""
    if settings.cluster.distributed:
        from csvcompress.store.postgres import migrate_blocking

        version = migrate_blocking(settings.database.url)
        return f"PostgreSQL schema at version {version}, procrastinate's queue schema in place"
    from csvcompress.store.sqlite import SqliteStore

    async def open_and_close() -> None:
        store = SqliteStore(settings.database.path)
        await store.open()
        await store.close()

    asyncio.run(open_and_close())
    return f"SQLite schema up to date in {settings.database.path}"
