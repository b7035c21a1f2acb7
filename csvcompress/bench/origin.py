"""The image origin, run as its own process: `python -m csvcompress.bench.origin DIR`.

Serves DIR/<set>/<file> from memory as /<set>/<anything>/<file>, so a few files
stand behind any number of distinct URLs; everything else is a 404. Prints
`PORT <n>` once listening on 127.0.0.1 and runs until terminated.

A process of its own so that serving images neither competes with the
driver's latency client for one event loop nor hides inside the service's CPU.
"""

from __future__ import annotations

import asyncio
import mimetypes
import signal
import sys
from pathlib import Path

from aiohttp import web


def load(root: Path) -> dict[tuple[str, str], tuple[bytes, str]]:
    files: dict[tuple[str, str], tuple[bytes, str]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            files[(folder.name, path.name)] = (path.read_bytes(), content_type)
    return files


async def serve(root: Path) -> None:
    files = load(root)

    async def image(request: web.Request) -> web.Response:
        found = files.get((request.match_info["set"], request.match_info["name"]))
        if found is None:
            raise web.HTTPNotFound()
        return web.Response(body=found[0], content_type=found[1])

    app = web.Application()
    app.router.add_get("/{set}/{key}/{name}", image)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    asyncio.run(serve(Path(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
