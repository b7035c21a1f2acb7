"""The pixel budget shared by the CPU threads, and the allocator settings beside it."""

from __future__ import annotations

import asyncio
import platform
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from csvcompress.config import ImageSettings
from csvcompress.pipeline import imaging, memory
from csvcompress.pipeline.budget import ByteBudget, PixelBudget
from tests import images
from tests.waiting import poll

WAIT = 5.0


def test_an_image_that_does_not_fit_waits_for_pixels_to_be_released() -> None:
    budget = PixelBudget(10)
    first_in, release_first, second_in = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with budget.hold(8):
            first_in.set()
            release_first.wait(WAIT)

    def second() -> None:
        with budget.hold(5):
            second_in.set()

    with ThreadPoolExecutor(2) as pool:
        pool.submit(first)
        assert first_in.wait(WAIT)
        pool.submit(second)
        assert not second_in.wait(0.2)  # 8 + 5 > 10
        release_first.set()
        assert second_in.wait(WAIT)
    assert budget.used == 0


def test_images_that_fit_together_run_together() -> None:
    budget = PixelBudget(10)
    both_in = threading.Barrier(2, timeout=WAIT)

    def hold(pixels: int) -> None:
        with budget.hold(pixels):
            both_in.wait()  # raises BrokenBarrierError if the other never gets in

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(hold, 5), pool.submit(hold, 5)]:
            future.result()


def test_an_image_bigger_than_the_budget_runs_alone_rather_than_never() -> None:
    budget = PixelBudget(10)
    with budget.hold(50):
        assert budget.used == 50
    assert budget.used == 0


def test_no_limit_never_waits() -> None:
    budget = PixelBudget(0)
    with budget.hold(10**9), budget.hold(10**9):
        assert budget.used == 2 * 10**9


def test_recompress_holds_the_image_pixels_while_it_decodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held: list[int] = []
    real_hold = imaging.PIXELS.hold

    def spy(pixels: int):  # type: ignore[no-untyped-def]
        held.append(pixels)
        return real_hold(pixels)

    monkeypatch.setattr(imaging.PIXELS, "hold", spy)
    imaging.recompress(images.photo_jpeg(400, 300), ImageSettings())
    assert held == [400 * 300]
    assert imaging.PIXELS.used == 0


def test_configure_sets_the_budget() -> None:
    before = imaging.PIXELS.limit
    try:
        imaging.configure(pixel_budget=1234)
        assert imaging.PIXELS.limit == 1234
    finally:
        imaging.configure(pixel_budget=before)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc allocator settings")
def test_big_buffers_are_returned_on_glibc() -> None:
    assert memory.return_big_buffers() is True
    memory.trim_around(memory.TRIM_AFTER_PIXELS)  # callable, harmless


# --- ByteBudget: downloads held for compression ---------------------------------------


# Each task notes its number in `asked` just before it asks for room. Asking runs to the
# admission or to the wait without yielding, so once `asked` holds a task, it is either
# in (noted in `started`) or waiting: what `started` says then is settled.


async def _admitted(
    budget: ByteBudget, asked: list[int], started: list[int], n: int, size: int
) -> None:
    asked.append(n)
    async with budget.admit() as ticket:
        started.append(n)
        ticket.downloaded(size)
        await asyncio.Event().wait()  # held until cancelled


async def _gated(
    budget: ByteBudget, asked: list[int], started: list[int], n: int, go: asyncio.Event, size: int
) -> None:
    asked.append(n)
    async with budget.admit() as ticket:
        started.append(n)
        await go.wait()  # in flight until the test says go
        ticket.downloaded(size)


async def test_downloads_wait_while_the_budget_is_held_and_start_one_by_one() -> None:
    budget = ByteBudget(10)
    asked: list[int] = []
    started: list[int] = []

    def admitted(n: int) -> asyncio.Task[None]:
        return asyncio.create_task(_admitted(budget, asked, started, n, 8))

    first, second = admitted(0), admitted(1)  # 8 < 10: the second is let in
    await poll(lambda: started == [0, 1], what="the first two downloads to start")
    waiting = [admitted(n) for n in (2, 3, 4)]
    await poll(lambda: len(asked) == 5, what="all five downloads to ask for room")
    assert started == [0, 1] and budget.held == 16

    first.cancel()
    # 8 held: room for one more, and only one.
    await poll(lambda: started != [0, 1], what="a waiting download to start")
    assert started == [0, 1, 2] and budget.held == 16
    second.cancel()
    await poll(lambda: started != [0, 1, 2], what="the next waiting download to start")
    assert started == [0, 1, 2, 3]
    for task in waiting:
        task.cancel()
    await asyncio.gather(first, second, *waiting, return_exceptions=True)
    assert started == [0, 1, 2, 3]
    assert (budget.held, budget.downloading) == (0, 0)


async def test_downloads_in_flight_count_at_the_average_size() -> None:
    budget = ByteBudget(10)
    async with budget.admit() as ticket:
        ticket.downloaded(8)  # the average is now 8
    go = asyncio.Event()
    asked: list[int] = []
    started: list[int] = []
    tasks = [asyncio.create_task(_gated(budget, asked, started, n, go, 8)) for n in range(4)]
    await poll(lambda: len(asked) == 4, what="all four downloads to ask for room")
    # Nothing is held yet, but two downloads in flight (2 x 8) fill the budget of 10.
    assert started == [0, 1]
    go.set()
    await asyncio.gather(*tasks)
    assert started == [0, 1, 2, 3]
    assert (budget.held, budget.downloading) == (0, 0)


async def test_before_any_download_finished_four_start_at_once() -> None:
    budget = ByteBudget(100)
    go = asyncio.Event()
    asked: list[int] = []
    started: list[int] = []
    tasks = [asyncio.create_task(_gated(budget, asked, started, n, go, 1)) for n in range(10)]
    await poll(lambda: len(asked) == 10, what="all ten downloads to ask for room")
    assert started == [0, 1, 2, 3]  # each counted at a quarter of the budget
    go.set()
    await asyncio.gather(*tasks)
    assert len(started) == 10


async def test_a_failed_download_gives_its_place_back() -> None:
    budget = ByteBudget(10)
    with pytest.raises(OSError):
        async with budget.admit():
            assert budget.downloading == 1
            raise OSError("connection reset")
    assert (budget.held, budget.downloading) == (0, 0)


async def test_no_limit_never_waits_for_bytes() -> None:
    budget = ByteBudget(0)
    async with budget.admit() as a, budget.admit() as b:
        a.downloaded(10**9)
        b.downloaded(10**9)
        async with budget.admit():
            assert budget.held == 2 * 10**9
