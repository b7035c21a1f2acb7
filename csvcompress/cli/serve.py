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
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

from aiohttp import web

from csvcompress.app import create_app, runner_options
from csvcompress.config import ServerSettings, Settings, replace_settings
from csvcompress.errors import StartupError
from csvcompress.http.keys import SERVICE

log = logging.getLogger(__name__)

# Seconds HTTP requests still being answered get once the workers have stopped.
HTTP_SHUTDOWN_TIMEOUT = 5.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Connections the OS queues while nothing accepts them yet (aiohttp's own default).
LISTEN_BACKLOG = 128


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


def bind(server: ServerSettings) -> list[socket.socket]:
    """The listening sockets, bound before anything else starts: a port in use stops the
    start (StartupError) before any worker, webhook or log line says it is ready.
    Connections that arrive before the service is wired wait in the listen backlog.

    One socket per address the host stands for ("localhost": 127.0.0.1 and ::1), as
    aiohttp's own TCPSite binds; port 0 (any free port) binds the first address only.
    """
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            server.host, server.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in infos))
        for family, address in addresses[:1] if server.port == 0 else addresses:
            sockets.append(socket.create_server(address, family=family, backlog=LISTEN_BACKLOG))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {server.port} on {server.host} is in use by another program; stop it, "
                "or choose another [server] port"
            ) from None
        reason = exc.strerror or str(exc)
        raise StartupError(
            f"cannot listen on {server.host}:{server.port}: {reason}; check [server] host and port"
        ) from None
    return sockets


async def serve(settings: Settings, announce: Callable[[str], None] = print) -> int:
    """Run the service until a stop signal; returns the exit status."""
    sockets = bind(settings.server)
    if settings.server.port == 0:
        # Any free port: the one the OS chose is the service's port from here on, in the
        # line that announces it and in the links to stored images it hands out.
        settings = replace_settings(settings, server={"port": sockets[0].getsockname()[1]})
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=HTTP_SHUTDOWN_TIMEOUT,
        **runner_options(settings),
    )
    try:
        await runner.setup()
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    signals = _Signals()
    loop = asyncio.get_running_loop()
    try:
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, signals, signum)
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        announce(f"csvcompress serving on {settings.server.base_url} (Ctrl+C to stop)")
        await signals.received.wait()
        await app[SERVICE].dispatcher.drain(settings.workers.shutdown_grace)
    finally:
        await runner.cleanup()
    log.info("stopped")
    return 0
