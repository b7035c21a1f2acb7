"""Serving until told to stop.

The first SIGTERM or SIGINT starts a graceful stop: uploads are refused with
503 (and /healthz says "stopping") while the images in flight get up to
`[workers] shutdown_grace` seconds to finish; everything else stays pending in
SQLite for the next start; the process exits 0. A second signal exits at once.
That loses nothing either: an image is marked done only after it is stored,
so whatever was in flight is simply done again by the next start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from csvcompress.app import create_app, runner_options
from csvcompress.config import Settings
from csvcompress.http.keys import SERVICE

log = logging.getLogger(__name__)

# Seconds HTTP requests still being answered get once the workers have stopped.
HTTP_SHUTDOWN_TIMEOUT = 5.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _exit_now(signum: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    # The shell's convention for "ended by signal N"; nothing is lost (see above).
    os._exit(128 + signum)


class _Signals:
    """Counts stop signals: the first sets `received`, the second ends the process."""

    def __init__(self) -> None:
        self.received = asyncio.Event()

    def __call__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.received.is_set():
            log.warning(
                "%s again: stopping now; unfinished images stay pending for the next start", name
            )
            _exit_now(signum)
        log.info(
            "%s: stopping once the images in flight are done (%s again stops at once)", name, name
        )
        self.received.set()


async def serve(settings: Settings, announce: Callable[[str], None] = print) -> int:
    """Run the service until a stop signal; returns the exit status."""
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=HTTP_SHUTDOWN_TIMEOUT,
        **runner_options(settings),
    )
    await runner.setup()
    signals = _Signals()
    loop = asyncio.get_running_loop()
    try:
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, signals, signum)
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        await site.start()
        announce(f"csvcompress serving on {settings.server.base_url} (Ctrl+C to stop)")
        await signals.received.wait()
        await app[SERVICE].dispatcher.drain(settings.workers.shutdown_grace)
    finally:
        await runner.cleanup()
    log.info("stopped")
    return 0
