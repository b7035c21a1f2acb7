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
is full. When every byte held belongs to downloads still arriving, the oldest of
them may take anyway, so the budget never deadlocks with every download half-way;
otherwise compression frees bytes, so the most the budget overruns by is one
download's `fetch.max_bytes`. (Letting the oldest go on whatever else was held let
a wave of downloads from an origin 1 s away through one after another: 106 MB held
against 24 MiB.)

A new download starts while the bytes still arriving leave room, whatever the
images already downloaded hold: a request to a far origin holds nothing for a
second and by then compression has freed bytes. Gating new requests on the whole
budget fed a far origin in waves: the budget filled, no request left for the
2.5 s it took to compress, then 160 left at once and the pool sat idle for the
second they took to come (0.83-0.90 of the near rate). When the budget has been
drained after holding a lot, the allocator's free memory goes back to the system.
"""

from __future__ import annotations

import asyncio
import threading
import time
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
        self.paused = 0.0  # seconds spent waiting for the budget

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
        self._arrived = 0  # of which by downloads that have finished
        self._arriving: dict[Ticket, None] = {}  # downloads still arriving, oldest first
        self._high = 0  # most held since the budget was last empty
        # Downloads held back, oldest first, each with what it waits for.
        self._waiters: dict[asyncio.Future[None], Callable[[], bool]] = {}

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

    def _room_to_start(self) -> bool:
        return not self._limit or self._held - self._arrived < self._limit

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[Ticket]:
        """Wait while downloads still arriving fill the budget; hold one download's bytes
        for the `with` block."""
        await self._wait_until(self._room_to_start)
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
        if not self._may_take(ticket, size):
            paused = time.monotonic()
            await self._wait_until(lambda: self._may_take(ticket, size))
            ticket.paused += time.monotonic() - paused
        ticket.size += size
        self._held += size
        self._high = max(self._high, self._held)

    def _may_take(self, ticket: Ticket, size: int) -> bool:
        if not self._limit or self._held + size <= self._limit:
            return True
        # Only downloads still arriving hold bytes: the oldest goes on, so one finishes.
        return not self._arrived and next(iter(self._arriving), None) is ticket

    def _downloaded(self, ticket: Ticket) -> None:
        ticket.arriving = False
        self._arriving.pop(ticket, None)
        self._arrived += ticket.size
        self._wake()  # another download may be the oldest now

    def _give_back(self, ticket: Ticket, size: int) -> None:
        ticket.size -= size
        self._held -= size
        if not ticket.arriving:
            self._arrived -= size
        self._wake()

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[waiter] = ready
            try:
                await waiter
            finally:
                self._waiters.pop(waiter, None)

    def _wake(self) -> None:
        """Wake the waiters that may go on now, oldest first; the others sleep on.

        Waking every waiter to check for itself cost ~50 task switches per image (0.6 ms of
        the event loop's CPU) with a far origin, whose waves of downloads fill the budget.
        """
        for waiter, ready in list(self._waiters.items()):
            if not waiter.done() and ready():
                del self._waiters[waiter]
                waiter.set_result(None)
