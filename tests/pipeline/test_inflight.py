"""Downloads in flight follow the need: the rule alone, then a real service and a slow origin."""

from __future__ import annotations

import asyncio

from aiohttp import web

from csvcompress.config import FetchSettings
from csvcompress.pipeline import inflight
from csvcompress.pipeline.inflight import InFlight
from tests import images
from tests.conftest import Origin, ServiceFactory, csv_bytes


def settle(rule: InFlight, download: float, compress: float, times: int = 200) -> int:
    for _ in range(times):
        rule.downloaded(download)
        rule.compressed(compress)
    return rule.limit


def test_before_anything_is_measured_the_old_count_applies() -> None:
    assert InFlight(threads=2, ceiling=128).limit == inflight.START_IN_FLIGHT


def test_the_limit_is_littles_law_with_headroom() -> None:
    # 2 threads at 40 ms an image compress 50 images/s; an origin 1 s away needs 50 in
    # flight, and the rule keeps twice that plus one ready per thread.
    assert settle(InFlight(threads=2, ceiling=512), download=1.0, compress=0.04) == 102
    assert settle(InFlight(threads=8, ceiling=512), download=1.0, compress=0.04) == 408


def test_the_limit_follows_latency_up_and_back_down() -> None:
    rule = InFlight(threads=2, ceiling=512)
    near = settle(rule, download=0.01, compress=0.04)
    far = settle(rule, download=1.0, compress=0.04)
    back = settle(rule, download=0.01, compress=0.04)
    assert near == inflight.MIN_IN_FLIGHT < far
    assert back == near


def test_the_ceiling_and_floor_hold() -> None:
    assert settle(InFlight(threads=2, ceiling=30), download=10.0, compress=0.01) == 30
    assert settle(InFlight(threads=1, ceiling=30), download=0.0, compress=1.0) == 4


def test_automatic_ceiling_scales_with_threads() -> None:
    settings = FetchSettings()
    assert inflight.ceiling(settings, 2) == min(256, inflight.raise_open_files_limit() // 2)
    assert inflight.ceiling(FetchSettings(max_in_flight=40), 32) == 40


async def test_waiters_get_slots_as_the_limit_grows() -> None:
    rule = InFlight(threads=1, ceiling=100)
    for _ in range(rule.limit):
        await rule.acquire()
    waiting = [asyncio.create_task(rule.acquire()) for _ in range(10)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in waiting)
    settle(rule, download=1.0, compress=0.05)  # the origin turned out to be far
    await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert rule.used == inflight.START_IN_FLIGHT + 10


async def test_closing_lets_every_waiter_go() -> None:
    rule = InFlight(threads=1, ceiling=4)
    for _ in range(rule.limit):
        await rule.acquire()
    waiting = asyncio.create_task(rule.acquire())
    await asyncio.sleep(0)
    rule.close()
    await asyncio.wait_for(waiting, 5)


async def test_a_slow_origin_gets_more_downloads_in_flight_than_the_old_fixed_cap(
    create_service: ServiceFactory, origin: Origin
) -> None:
    """The service, its dispatcher and a real origin that answers after a delay."""
    data = images.photo_jpeg(40, 30, seed=3)
    in_flight = [0]
    peak = [0]
    release = asyncio.Event()

    async def far(request: web.Request) -> web.Response:
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        try:
            # Slow until the service has shown it asks for many at once, then quick.
            if not release.is_set():
                await asyncio.wait_for(release.wait(), 0.3)
        except TimeoutError:
            pass
        finally:
            in_flight[0] -= 1
        if peak[0] > 2 * inflight.START_IN_FLIGHT:
            release.set()
        return web.Response(body=data, content_type="image/jpeg")

    urls = [origin.route(f"far/{n}.jpg", far) for n in range(400)]
    service = await create_service(workers={"threads": 2})
    rows = [[str(n + 1), f"P{n}", url] for n, url in enumerate(urls)]
    request_id = await service.submit(csv_bytes(rows))
    doc = await service.wait(request_id, timeout=60)
    assert doc["images"]["succeeded"] == len(urls)
    assert peak[0] > 2 * inflight.START_IN_FLIGHT, peak[0]


async def test_before_any_download_is_back_starving_threads_grow_the_limit() -> None:
    starving = [True]
    rule = InFlight(threads=2, ceiling=100, starving=lambda: starving[0])
    seen = [rule.limit]
    rule.watch()  # the rule keeps looking while the threads starve

    async def at_ceiling() -> None:
        while rule.limit < 100:
            await asyncio.sleep(inflight.WATCH_SECONDS / 4)
            if rule.limit != seen[-1]:
                seen.append(rule.limit)

    await asyncio.wait_for(at_ceiling(), 10)
    assert seen == [16, 24, 36, 54, 81, 100]  # by half each look, up to the ceiling


async def test_fed_threads_do_not_grow_the_limit() -> None:
    rule = InFlight(threads=2, ceiling=100, starving=lambda: False)
    rule.watch()
    await asyncio.sleep(inflight.WATCH_SECONDS * 2)
    assert rule.limit == inflight.START_IN_FLIGHT
