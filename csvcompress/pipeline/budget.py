"""Budgets that bound memory: pixels being decoded, bytes downloaded ahead.

PixelBudget: a cap on the pixels being decoded and encoded at once, across the
CPU threads.

An image's working memory grows with its pixels, and more than one might think:
JPEG output with optimised Huffman tables (`images.optimize_coding`) makes
libjpeg keep the whole image's DCT coefficients before writing, measured at
about 6.5 bytes per pixel with the libvips wheel's mozjpeg (160 MB for one
24-megapixel photo). Two such photos at once on two threads is 320 MB, so the
pool threads share a budget: a thread whose image would take the total over it
waits until enough pixels are released. An image larger than the whole budget
runs alone. Product photos of ordinary size never wait.

ByteBudget: downloads run ahead of compression so the pool never waits for the
network, but every image downloaded and not yet compressed is held in memory.
With 16 downloads in flight and 24-megapixel photos of 4-10 MB (or 50 MB
images, the fetch limit) that is 100-800 MB. A new download starts only while
the bytes held, plus the downloads in flight counted at the average size seen
so far, stay under the budget (one is always let in). With ordinary photos
the budget is never reached (16 x 0.5 MB); when it is, the pool has seconds of
work queued, so it never starves.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager


class PixelBudget:
    def __init__(self, limit: int = 0) -> None:
        self._limit = limit  # 0: no limit
        self._used = 0
        self._changed = threading.Condition()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def used(self) -> int:
        return self._used

    def set_limit(self, limit: int) -> None:
        with self._changed:
            self._limit = limit
            self._changed.notify_all()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Block until `pixels` fit in the budget, and keep them for the `with` block."""
        with self._changed:
            self._changed.wait_for(lambda: self._fits(pixels))
            self._used += pixels
        try:
            yield
        finally:
            with self._changed:
                self._used -= pixels
                self._changed.notify_all()

    def _fits(self, pixels: int) -> bool:
        return not self._limit or not self._used or self._used + pixels <= self._limit


class Ticket:
    """One image's place in a ByteBudget: expected while it downloads, then its real size."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.size: int | None = None  # None while downloading

    def downloaded(self, size: int) -> None:
        """The download finished: count its real size from now on."""
        self._budget._downloaded(self, size)


class ByteBudget:
    def __init__(self, limit: int = 0) -> None:
        self._limit = limit  # 0: no limit
        self._held = 0  # bytes downloaded and not yet released
        self._downloading = 0  # tickets still downloading
        # Typical download size, to count those in flight; until one has finished, a
        # quarter of the budget, so a burst at the start is four downloads, not all.
        self._average = limit / 4
        self._measured = False
        self._changed = asyncio.Condition()

    @property
    def held(self) -> int:
        return self._held

    @property
    def downloading(self) -> int:
        return self._downloading

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[Ticket]:
        """Wait until there is room for one more download; hold it for the `with` block.

        Downloads in flight count at the average size seen so far, so that waiters
        woken together do not all start at once; one at a time is always let in.
        """
        if not self._has_room():
            async with self._changed:
                await self._changed.wait_for(self._has_room)
        self._downloading += 1
        ticket = Ticket(self)
        try:
            yield ticket
        finally:
            if ticket.size is None:
                self._downloading -= 1
            else:
                self._held -= ticket.size
            async with self._changed:
                self._changed.notify_all()

    def _downloaded(self, ticket: Ticket, size: int) -> None:
        if ticket.size is not None:
            raise RuntimeError("a ticket's download finishes once")
        ticket.size = size
        self._downloading -= 1
        self._held += size
        if self._measured:
            self._average = 0.8 * self._average + 0.2 * size
        else:
            self._average, self._measured = size, True

    def _has_room(self) -> bool:
        if not self._limit or (self._held == 0 and self._downloading == 0):
            return True
        return self._held + self._downloading * self._average < self._limit
