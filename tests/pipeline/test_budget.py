"""The pixel budget shared by the CPU threads, and the allocator settings beside it."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from csvcompress.config import ImageSettings
from csvcompress.pipeline import imaging, memory
from csvcompress.pipeline.budget import ByteBudget, PixelBudget
from tests import images

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


# --- ByteBudget: bytes arriving and downloaded, held for compression -------------------


async def _turns(n: int = 5) -> None:
    """Let every task that can run do so (no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_bytes_count_as_they_arrive_not_when_the_download_ends() -> None:
    budget = ByteBudget(10)
    async with budget.admit() as ticket:
        await ticket.take(4)
        await ticket.take(4)
        assert (budget.held, budget.downloading) == (8, 1)
        ticket.downloaded()
        assert (budget.held, budget.downloading) == (8, 0)  # held until compressed
    assert (budget.held, budget.downloading) == (0, 0)


async def test_a_younger_download_waits_while_the_budget_is_full() -> None:
    budget = ByteBudget(10)
    async with contextlib.AsyncExitStack() as younger_stack:
        async with contextlib.AsyncExitStack() as older_stack:
            older = await older_stack.enter_async_context(budget.admit())
            younger = await younger_stack.enter_async_context(budget.admit())
            await older.take(8)
            taking = asyncio.create_task(younger.take(4))  # 8 + 4 > 10, and not the oldest
            await _turns()
            assert not taking.done() and budget.held == 8
            older.downloaded()  # held for compression, which will free it: wait for that
            await _turns()
            assert not taking.done() and budget.held == 8
        # The older image is compressed: its bytes are back, and the younger goes on.
        await _turns()
        assert taking.done() and budget.held == 4
        assert younger.paused > 0 and older.paused == 0
        await taking


async def test_downloads_that_finished_keep_the_others_out_one_after_another() -> None:
    # A wave from a far origin: every download arrives at once. Letting the oldest still
    # arriving through while finished ones wait for compression let them all in, one
    # after another (106 MB held against a 24 MiB budget, measured).
    budget = ByteBudget(10)
    async with budget.admit() as first, budget.admit() as second, budget.admit() as third:
        await first.take(6)
        first.downloaded()
        await second.take(4)
        taking = asyncio.create_task(second.take(4))  # the oldest still arriving, but no
        third_taking = asyncio.create_task(third.take(4))
        await _turns()
        assert not taking.done() and not third_taking.done()
        assert budget.held == 10
        first.restart()  # (as if compressed) its 6 bytes go back: one of them fits
        await _turns()
        assert taking.done() and not third_taking.done() and budget.held == 8
        third_taking.cancel()
        await taking


async def test_the_oldest_download_always_goes_on_so_nothing_deadlocks() -> None:
    budget = ByteBudget(10)
    async with budget.admit() as older, budget.admit() as younger:
        await younger.take(9)
        await older.take(9)  # over the limit, but the oldest: let through at once
        assert budget.held == 18
        waiting = asyncio.create_task(younger.take(1))
        await _turns()
        assert not waiting.done()
        older.restart()  # its attempt failed: its bytes go back
        await _turns()
        assert waiting.done() and budget.held == 10
        await waiting


async def test_new_downloads_wait_for_bytes_still_arriving_not_for_finished_ones() -> None:
    budget = ByteBudget(10)
    started = asyncio.Event()

    async def second() -> None:
        async with budget.admit():
            started.set()

    async with budget.admit() as first:
        await first.take(10)
        task = asyncio.create_task(second())
        await _turns()
        assert not started.is_set()  # bytes still arriving fill the budget
        # Now only held for compression, which frees them long before a new request's
        # answer comes from a far origin: holding it back fed the pool in waves.
        first.downloaded()
        await asyncio.wait_for(started.wait(), 5)
        assert budget.held == 10
    await task
    assert (budget.held, budget.downloading) == (0, 0)


async def test_a_failed_download_gives_its_bytes_back() -> None:
    budget = ByteBudget(10)
    with pytest.raises(OSError):
        async with budget.admit() as ticket:
            await ticket.take(7)
            raise OSError("connection reset")
    assert (budget.held, budget.downloading) == (0, 0)


async def test_no_limit_never_waits_for_bytes() -> None:
    budget = ByteBudget(0)
    async with budget.admit() as a, budget.admit() as b:
        await b.take(10**9)
        await a.take(10**9)
        assert budget.held == 2 * 10**9
        assert budget.has_room()
