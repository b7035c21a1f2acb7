"""The image origin, run as its own process: `python -m csvcompress.bench.origin DIR [DELAY]`.

Serves DIR/<set>/<file> from memory as /<set>/<anything>/<file>, so a few files
stand behind any number of distinct URLs; everything else is a 404. With DELAY
(seconds) every image is answered that long after it is asked for: an origin far
away. Two hostile paths: /hostile/<anything>/endless streams bytes until the
client hangs up, /hostile/<anything>/bomb is a 1 MiB body with
`Content-Encoding: gzip` that inflates to 1 GiB. Prints `PORT <n>` once
listening on 127.0.0.1 and runs until terminated.

A process of its own so that serving images neither competes with the
driver's latency client for one event loop nor hides inside the service's CPU.
"""

from __future__ import annotations

import asyncio
import functools
import mimetypes
import signal
import sys
import zlib
from pathlib import Path

from aiohttp import web


def load(root: Path) -> dict[tuple[str, str], tuple[bytes, str]]:
    files: dict[tuple[str, str], tuple[bytes, str]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            files[(folder.name, path.name)] = (path.read_bytes(), content_type)
    return files


MIB = 1024 * 1024
BOMB_INFLATED = 1024 * MIB
GZIP_WBITS = 31


@functools.cache
def gzip_bomb() -> bytes:
    """1 GiB of zeros, gzipped (about 1 MiB); made once, in about a second."""
    packer = zlib.compressobj(9, zlib.DEFLATED, GZIP_WBITS)
    block = bytes(16 * MIB)
    parts = [packer.compress(block) for _ in range(BOMB_INFLATED // len(block))]
    return b"".join(parts) + packer.flush()


async def endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunk = b"\xff\xd8\xff" + bytes(64 * 1024 - 3)
    while True:
        try:
            await response.write(chunk)
        except (OSError, RuntimeError):  # the client hung up
            return response


async def bomb(request: web.Request) -> web.Response:
    return web.Response(
        body=gzip_bomb(), headers={"Content-Type": "image/jpeg", "Content-Encoding": "gzip"}
    )


async def serve(root: Path, delay: float = 0.0) -> None:
    files = load(root)
    hostile = {"endless": endless, "bomb": bomb}

    async def image(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if request.match_info["set"] == "hostile" and name in hostile:
            return await hostile[name](request)
        found = files.get((request.match_info["set"], name))
        if found is None:
            raise web.HTTPNotFound()
        if delay:
            await asyncio.sleep(delay)
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
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    asyncio.run(serve(Path(sys.argv[1]), delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
