"""`make demo`: the main job end to end, offline.

Starts a local origin serving generated photos, the service on temporary
storage, uploads a sample CSV, waits, and prints the output CSV and the bytes saved.
"""

from __future__ import annotations

import asyncio
import csv
import io
import socket
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from csvcompress import samples
from csvcompress.app import create_app
from csvcompress.config import load_settings, replace_settings

SAMPLE_SIZE = (1600, 1200)
POLL_SECONDS = 0.2
TIMEOUT_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _start_origin(images: dict[str, bytes]) -> tuple[web.AppRunner, str]:
    async def serve(request: web.Request) -> web.Response:
        data = images.get(request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/images/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def _sample_csv(origin: str, rows: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    for n in range(1, rows + 1):
        urls = [f"{origin}/images/product-{n}-{side}.jpg" for side in ("front", "back")]
        writer.writerow([n, f"Sample product {n}", ", ".join(urls)])
    return out.getvalue().encode()


async def _demo(config: str | None, rows: int) -> int:
    images = {
        f"product-{n}-{side}.jpg": samples.photo_jpeg(*SAMPLE_SIZE, seed=n * 2 + i)
        for n in range(1, rows + 1)
        for i, side in enumerate(("front", "back"))
    }
    origin, origin_url = await _start_origin(images)
    with tempfile.TemporaryDirectory(prefix="csvcompress-demo-") as tmp:
        port = _free_port()
        settings = replace_settings(
            load_settings(config),
            server={"host": "127.0.0.1", "port": port, "public_url": ""},
            database={"path": str(Path(tmp) / "demo.sqlite3")},
            storage={"backend": "local", "dir": str(Path(tmp) / "storage")},
            # The demo origin is on loopback, which the network guard refuses by default.
            fetch={"allowed_networks": ("127.0.0.0/8",)},
        )
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            return await _run_job(settings.server.base_url, _sample_csv(origin_url, rows))
        finally:
            await runner.cleanup()
            await origin.cleanup()


async def _run_job(base: str, csv_bytes: bytes) -> int:
    async with aiohttp.ClientSession() as client:
        form = aiohttp.FormData()
        form.add_field("file", csv_bytes, filename="products.csv", content_type="text/csv")
        started = time.monotonic()
        async with client.post(f"{base}/upload", data=form) as resp:
            accepted = await resp.json()
        print(f"uploaded: {accepted['rows']} rows, {accepted['images']} images")
        print(f"request id: {accepted['request_id']}")
        while True:
            async with client.get(accepted["status_url"]) as resp:
                status = await resp.json()
            if status["status"] in ("complete", "failed"):
                break
            if time.monotonic() - started > TIMEOUT_SECONDS:
                print("timed out waiting for the request")
                return 1
            await asyncio.sleep(POLL_SECONDS)
        elapsed = time.monotonic() - started
        print(f"status: {status['status']} in {elapsed:.1f} s, images: {status['images']}")
        if status["output_csv_url"]:
            async with client.get(status["output_csv_url"]) as resp:
                print(f"\noutput CSV ({status['output_csv_url']}):\n")
                print(await resp.text())
        saved = status["bytes"]
        ratio = saved["output"] / saved["input"] if saved["input"] else 0
        print(
            f"bytes in: {saved['input']:,}  out: {saved['output']:,}  "
            f"saved: {saved['saved']:,} ({1 - ratio:.0%})"
        )
        return 0 if status["status"] == "complete" and not status["images"]["failed"] else 1


def run_demo(config: str | None, rows: int = 5) -> int:
    return asyncio.run(_demo(config, rows))
