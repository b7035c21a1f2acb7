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
network, but every byte downloaded and not yet compressed is held in memory,
and so is every byte of a download still arriving. Counting only finished
downloads let 16 hostile ones (endless bodies, gzip bombs) hold up to
`fetch.max_bytes` each: 1.96 GB peak RSS measured (issue 13). So each byte
counts as it arrives: a download takes its chunk from the budget before keeping
it, and waits (its socket paused, the origin held back by TCP) while the budget
is full. The oldest download still arriving may always take, so the budget
never deadlocks with every download half-way; the most it overruns by is one
download's `fetch.max_bytes`. A new download starts only while the budget is
not full. With ordinary photos the budget is never reached; when it is, the
pool has seconds of work queued, so it never starves. When the budget has been
drained after holding a lot, the allocator's free memory goes back to the system.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from csvcompress.pipeline import memory

# After the budget held this much and drained, free heap memory is handed back.
TRIM_AFTER_BYTES = 32 * 1024 * 1024


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
    """One download's share of a ByteBudget: the bytes it holds, arriving or arrived."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.size = 0  # bytes held
        self.arriving = True

    def can_take(self, size: int) -> bool:
        """Whether `take(size)` would go through without waiting."""
        return self._budget._may_take(self, size)

    async def take(self, size: int) -> None:
        """Count `size` more bytes before keeping them; wait while the budget is full."""
        await self._budget._take(self, size)

    def restart(self) -> None:
        """A failed attempt's bytes are dropped: give them back before the next."""
        self._budget._give_back(self, self.size)

    def downloaded(self) -> None:
        """The download finished: its bytes stay held until compressed (the `with` ends)."""
        self._budget._downloaded(self)


class ByteBudget:
    """Bytes downloaded or arriving, on the event loop's thread only."""

    def __init__(self, limit: int = 0) -> None:
        self._limit = limit  # 0: no limit
        self._held = 0  # bytes held by all tickets
        self._arriving: dict[Ticket, None] = {}  # downloads still arriving, oldest first
        self._high = 0  # most held since the budget was last empty
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def held(self) -> int:
        return self._held

    @property
    def downloading(self) -> int:
        return len(self._arriving)

    def has_room(self) -> bool:
        return not self._limit or self._held < self._limit

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[Ticket]:
        """Wait until the budget is not full; hold one download's bytes for the `with` block."""
        await self._wait_until(self.has_room)
        ticket = Ticket(self)
        self._arriving[ticket] = None
        try:
            yield ticket
        finally:
            self._arriving.pop(ticket, None)
            self._give_back(ticket, ticket.size)
            if self._held == 0 and self._high >= TRIM_AFTER_BYTES:
                self._high = 0
                memory.trim()

    async def _take(self, ticket: Ticket, size: int) -> None:
        await self._wait_until(lambda: self._may_take(ticket, size))
        ticket.size += size
        self._held += size
        self._high = max(self._high, self._held)

    def _may_take(self, ticket: Ticket, size: int) -> bool:
        if not self._limit or self._held + size <= self._limit:
            return True
        # The oldest download still arriving goes on, so one always finishes.
        return next(iter(self._arriving), None) is ticket

    def _downloaded(self, ticket: Ticket) -> None:
        ticket.arriving = False
        self._arriving.pop(ticket, None)
        self._wake()  # another download may be the oldest now

    def _give_back(self, ticket: Ticket, size: int) -> None:
        ticket.size -= size
        self._held -= size
        self._wake()

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _wake(self) -> None:
        """Every waiter checks again (they are few: downloads held back by the budget)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
