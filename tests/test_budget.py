"""The pixel budget shared by the CPU threads, and the allocator settings beside it."""

from __future__ import annotations

import platform
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from csvcompress import imaging, memory
from csvcompress.budget import PixelBudget
from csvcompress.config import ImageSettings
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
