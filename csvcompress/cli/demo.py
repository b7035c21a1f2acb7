"""`make demo`: the main job end to end, offline.

Starts a local origin serving generated photos, the service on temporary
storage, uploads a sample CSV, waits, prints a summary and the bytes saved, and keeps
the input, the output CSV, the originals and the compressed images in ./csvcompress-demo/.
"""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import socket
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from csvcompress import samples
from csvcompress.app import create_app
from csvcompress.cli.client import format_bytes, is_finished
from csvcompress.config import load_settings, replace_settings

SAMPLE_SIZE = (1600, 1200)
POLL_SECONDS = 0.2
TIMEOUT_SECONDS = 120
# Where the demo's files are kept after it ends, in the current directory.
DEMO_DIR = Path("csvcompress-demo")
DEMO_ALLOWED = ("127.0.0.0/8",)


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


async def _demo(config: str | None, rows: int, keep: Path) -> int:
    images = {
        f"product-{n}-{side}.jpg": samples.photo_jpeg(*SAMPLE_SIZE, seed=n * 2 + i)
        for n in range(1, rows + 1)
        for i, side in enumerate(("front", "back"))
    }
    origin, origin_url = await _start_origin(images)
    # Only what an earlier run left is replaced: --keep may name a folder holding more.
    for name in ("originals", "images"):
        shutil.rmtree(keep / name, ignore_errors=True)
    (keep / "output.csv").unlink(missing_ok=True)
    (keep / "originals").mkdir(parents=True)
    for name, data in images.items():
        (keep / "originals" / name).write_bytes(data)
    csv_bytes = _sample_csv(origin_url, rows)
    (keep / "products.csv").write_bytes(csv_bytes)
    with tempfile.TemporaryDirectory(prefix="csvcompress-demo-") as tmp:
        port = _free_port()
        settings = replace_settings(
            load_settings(config),
            server={"host": "127.0.0.1", "port": port, "public_url": ""},
            database={"path": str(Path(tmp) / "demo.sqlite3")},
            storage={"backend": "local", "dir": str(Path(tmp) / "storage")},
            # The demo origin is on loopback, which the network guard refuses by default.
            fetch={"allowed_networks": DEMO_ALLOWED},
        )
        print(
            f"A local origin serves {len(images)} generated {SAMPLE_SIZE[0]}x{SAMPLE_SIZE[1]}"
            f" photos at {origin_url}/images/; the service runs at {settings.server.base_url}."
        )
        print(
            f"The origin is on loopback, so this run allows it: [fetch] allowed_networks ="
            f' ["{DEMO_ALLOWED[0]}"]. `make serve` refuses loopback unless you allow it too'
            " (README: Try it on your own images)."
        )
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            code, request_id = await _run_job(settings.server.base_url, csv_bytes, keep)
            shutil.copytree(Path(tmp) / "storage" / request_id, keep / "images")
        finally:
            await runner.cleanup()
            await origin.cleanup()
    _list_kept(keep, len(images))
    return code


async def _run_job(base: str, csv_bytes: bytes, keep: Path) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client:
        form = aiohttp.FormData()
        form.add_field("file", csv_bytes, filename="products.csv", content_type="text/csv")
        started = time.monotonic()
        async with client.post(f"{base}/upload", data=form) as resp:
            accepted = await resp.json()
        print(
            f"Uploaded products.csv: {accepted['rows']} rows, {accepted['images']} images"
            f" (request {accepted['request_id']})."
        )
        while True:
            async with client.get(accepted["status_url"]) as resp:
                status = await resp.json()
            if is_finished(status):
                break
            if time.monotonic() - started > TIMEOUT_SECONDS:
                print("Timed out waiting for the request.")
                return 1, accepted["request_id"]
            await asyncio.sleep(POLL_SECONDS)
        elapsed = time.monotonic() - started
        images, size = status["images"], status["bytes"]
        print(
            f"{status['status'].capitalize()} in {elapsed:.1f} s: {images['succeeded']} of"
            f" {images['total']} images compressed, {images['failed']} failed."
        )
        share = f" ({size['saved'] / size['input']:.0%})" if size["input"] else ""
        print(
            f"{format_bytes(size['input'])} in, {format_bytes(size['output'])} out:"
            f" {format_bytes(size['saved'])} saved{share}."
        )
        if status["output_csv_url"]:
            async with client.get(status["output_csv_url"]) as resp:
                (keep / "output.csv").write_bytes(await resp.read())
        ok = status["status"] == "complete" and not images["failed"]
        return (0 if ok else 1), accepted["request_id"]


def _list_kept(keep: Path, count: int) -> None:
    print(f"\nKept in {keep}/ (the demo service has stopped, so the output URLs no longer answer):")
    print("  products.csv   the sample CSV that was uploaded")
    if (keep / "output.csv").exists():
        print("  output.csv     the output CSV: the same rows with the new image URLs")
    print(f"  originals/     the {count} generated photos")
    print("  images/        the compressed images, named row-position (1-1.jpg: row 1, image 1)")


def run_demo(config: str | None, rows: int = 5, keep: Path = DEMO_DIR) -> int:
    return asyncio.run(_demo(config, rows, keep))
