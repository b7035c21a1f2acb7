"""Two ways to upload to Cloudinary without blocking the event loop, measured.

(a) "aiohttp": the service's backend, csvcompress.storage.CloudinaryStorage: each
    upload signed with cloudinary.utils.sign_request and POSTed by aiohttp.
(b) "executor": the SDK's blocking cloudinary.uploader.upload run in a thread pool
    of the same size (bounded concurrency), as the alternative would be built.

Both upload the same ~100 KB JPEG N times to the fake Cloudinary API
(tests/fake_cloudinary.py), run in a separate process so that this process's CPU
time is the uploader's alone. Reported per round: wall time, uploads per second,
CPU time of this process per upload, the longest the event loop was kept from
running a 5 ms heartbeat, and how many TCP connections the fake saw.

    .venv/bin/python -m tests.bench_cloudinary [--uploads 200] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp

from csvcompress.config import CloudinarySettings
from csvcompress.storage import CloudinaryStorage
from tests import images

HEARTBEAT = 0.005


@dataclass
class Round:
    wall: float
    cpu: float
    max_lag: float
    connections: int


class LagMeter:
    """How late a task sleeping HEARTBEAT at a time wakes up: the loop's responsiveness."""

    def __init__(self) -> None:
        self.max_lag = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(HEARTBEAT)
            self.max_lag = max(self.max_lag, time.perf_counter() - before - HEARTBEAT)

    def __enter__(self) -> LagMeter:
        self._task = asyncio.create_task(self._beat())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


Uploader = Callable[[int, bytes], Awaitable[str]]


async def run_round(upload: Uploader, uploads: int, data: bytes, stats_url: str) -> Round:
    async with aiohttp.ClientSession() as client:
        await (await client.get(f"{stats_url}?reset=1")).read()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with LagMeter() as lag:
            urls = await asyncio.gather(*(upload(n, data) for n in range(uploads)))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        async with client.get(stats_url) as resp:
            stats = await resp.json()
    assert len(set(urls)) == uploads and stats["assets"] == uploads, stats
    return Round(wall, cpu, lag.max_lag, stats["connections"])


async def aiohttp_uploader(settings: CloudinarySettings) -> tuple[Uploader, Any]:
    storage = CloudinaryStorage(settings)
    await storage.start()

    async def upload(n: int, data: bytes) -> str:
        return await storage.put(f"bench/1-{n}.jpg", data, "image/jpeg")

    return upload, storage.close


async def executor_uploader(settings: CloudinarySettings) -> tuple[Uploader, Any]:
    import cloudinary.uploader

    pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="cloudinary")
    options = {
        "cloud_name": settings.cloud_name,
        "api_key": settings.api_key,
        "api_secret": settings.api_secret,
        "upload_prefix": settings.upload_prefix,
        "folder": settings.folder,
        "overwrite": True,
        "resource_type": "image",
    }

    async def upload(n: int, data: bytes) -> str:
        call = functools.partial(cloudinary.uploader.upload, data, public_id=f"bench/1-{n}")
        result = await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(call, **options)
        )
        return str(result["secure_url"])

    async def close() -> None:
        pool.shutdown(wait=True)

    return upload, close


OPTIONS = {"aiohttp": aiohttp_uploader, "executor": executor_uploader}


async def main(uploads: int, concurrency: int, rounds: int) -> None:
    # The SDK's urllib3 pool says so each time it drops a connection; counted below instead.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_cloudinary", "--port", "0"],
        stdout=subprocess.PIPE,
    )
    try:
        assert fake.stdout is not None
        info = json.loads(fake.stdout.readline())
        key, _, rest = info["cloudinary_url"].removeprefix("cloudinary://").partition(":")
        secret, _, cloud = rest.partition("@")
        settings = CloudinarySettings(
            cloud_name=cloud,
            api_key=key,
            api_secret=secret,
            upload_prefix=info["url"],
            concurrency=concurrency,
        )
        data = images.photo_jpeg(900, 675, quality=90)
        print(
            f"{uploads} uploads of {len(data) // 1024} KB, {concurrency} at a time, "
            f"{rounds} rounds each, alternating; median of rounds:"
        )
        results: dict[str, list[Round]] = {name: [] for name in OPTIONS}
        for _ in range(rounds):
            for name, make in OPTIONS.items():
                upload, close = await make(settings)
                try:
                    results[name].append(
                        await run_round(upload, uploads, data, info["url"] + "/_stats")
                    )
                finally:
                    await close()
        print(
            f"{'option':<10}{'wall s':>8}{'uploads/s':>11}{'CPU ms/upload':>15}"
            f"{'max loop lag ms':>17}{'connections':>13}"
        )
        for name, runs in results.items():
            wall = statistics.median(r.wall for r in runs)
            cpu = statistics.median(r.cpu for r in runs)
            lag = statistics.median(r.max_lag for r in runs)
            conns = statistics.median(r.connections for r in runs)
            print(
                f"{name:<10}{wall:>8.2f}{uploads / wall:>11.0f}{cpu / uploads * 1000:>15.2f}"
                f"{lag * 1000:>17.1f}{conns:>13.0f}"
            )
    finally:
        fake.terminate()
        fake.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.uploads, args.concurrency, args.rounds))
