"""How many downloads may be in flight: as many as the compression threads need.

By Little's law a pipeline that compresses R images per second from an origin L
seconds away needs R x L downloads in flight to keep its threads fed. A fixed
count (16, before issue 13) fed two cores from a near origin, but an origin 1 s
away then gave 15 img/s against 39 near; on 8 cores it would bite at 400 ms.

So the limit follows the need, measured as the service runs:

    limit = ceil(HEADROOM x R x L) + threads,   R = threads / C

where C is the time one image takes in a compression thread and L the time one
download takes (both moving averages of the last few dozen images). The extra
`threads` keep one image ready per thread. HEADROOM is 2, not the average's 1:
downloads that start together come back together, so the pool is fed in waves;
with 1.25 the threads were seen starving between waves (1 s away, 2 threads).
The limit grows as the origin gets slower or compression faster, and shrinks
back when they change (not while threads wait for input).

Before the first downloads are back there is nothing to measure, so while every
slot is downloading and a compression thread sits idle (and the byte budget has
room), the limit grows by half every WATCH_SECONDS: an origin 1 s away is asked
for a full pipeline within the first second, not only after it.

The limit stays within [MIN_IN_FLIGHT, ceiling]; the ceiling (`fetch.max_in_flight`,
by default 128 per thread and at most half the open-files limit) only keeps
sockets finite. Memory is bounded elsewhere, by the byte budget, which counts
every byte as it arrives (budget.py): a download waiting for its origin holds no
bytes, one that arrives while the budget is full waits with its socket paused, and
no download starts while bytes still arriving fill it, so a far origin costs
sockets, not memory. L is the origin's time: time paused by the budget is left out.

Worked out for the bench's photos (C = 45 ms measured under load, L = 1 s): 2
threads, R = 44/s -> limit 92 (ceiling 256); 8 threads, R = 178/s -> 364 (ceiling
1,024); 32 threads, R = 711/s -> 1,454 (ceiling 4,096, the open-files limit
permitting; C = 22 ms, an idle machine, gives 184, 736 and 2,942, still under).

`fetch.concurrency` set to a number keeps the old rule: that many, fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import resource
from collections import deque
from collections.abc import Callable

from csvcompress.config import FetchSettings

log = logging.getLogger(__name__)

HEADROOM = 2.0
MIN_IN_FLIGHT = 4
# Until the first images are measured: the old fixed count.
START_IN_FLIGHT = 16
IN_FLIGHT_PER_THREAD = 128
# Weight of the newest measurement in the moving averages.
SMOOTHING = 0.1
# While threads starve: how often the limit may grow, and by how much.
WATCH_SECONDS = 0.1
GROWTH = 1.5


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one; the soft limit in force after."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    except (OSError, ValueError):
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return int(soft)


def ceiling(settings: FetchSettings, threads: int) -> int:
    """The most downloads in flight the rule may allow."""
    if settings.max_in_flight:
        return settings.max_in_flight
    return max(MIN_IN_FLIGHT, min(IN_FLIGHT_PER_THREAD * threads, raise_open_files_limit() // 2))


class InFlight:
    """Slots for downloads, as many as Little's law says the threads need."""

    def __init__(
        self, threads: int, ceiling: int, starving: Callable[[], bool] | None = None
    ) -> None:
        self._threads = threads
        self._starving = starving
        self._watching: asyncio.TimerHandle | None = None
        self._ceiling = max(MIN_IN_FLIGHT, ceiling)
        self._download_seconds: float | None = None
        self._compress_seconds: float | None = None
        self._limit = min(START_IN_FLIGHT, self._ceiling)
        self._used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def used(self) -> int:
        return self._used

    def watch(self) -> None:
        """A download started: look now and then whether the threads starve meanwhile."""
        if self._watching is None and self._starving is not None and not self._closed:
            loop = asyncio.get_running_loop()
            self._watching = loop.call_later(WATCH_SECONDS, self._look)

    def _look(self) -> None:
        self._watching = None
        if self._starving is None or not self._starving():
            return
        grown = min(self._ceiling, math.ceil(self._limit * GROWTH))
        if grown > self._limit:
            self._limit = grown
            self._hand_over()
            self.watch()

    def close(self) -> None:
        """Shutting down: every waiter gets a slot at once (no new images are taken)."""
        self._closed = True
        if self._watching is not None:
            self._watching.cancel()
            self._watching = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._used += 1
                waiter.set_result(None)

    async def acquire(self) -> None:
        """Wait for a download slot (first come, first served)."""
        if self._closed or (self._used < self._limit and not self._waiters):
            self._used += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self._used -= 1
        self._hand_over()

    def downloaded(self, seconds: float) -> None:
        """One download took `seconds`, from its first byte asked to its last received."""
        self._download_seconds = _average(self._download_seconds, seconds)
        self._update()

    def compressed(self, seconds: float) -> None:
        """One image took `seconds` in a compression thread."""
        self._compress_seconds = _average(self._compress_seconds, max(seconds, 1e-4))
        self._update()

    def _update(self) -> None:
        if self._download_seconds is None or self._compress_seconds is None:
            return
        rate = self._threads / self._compress_seconds
        needed = math.ceil(HEADROOM * rate * self._download_seconds) + self._threads
        limit = max(MIN_IN_FLIGHT, min(self._ceiling, needed))
        if limit < self._limit and self._starving is not None and self._starving():
            return  # the threads wait for input right now: no time to shrink
        if limit != self._limit:
            if abs(limit - self._limit) * 4 >= self._limit:  # log big moves only
                log.info(
                    "downloads in flight: %d -> %d (download %.0f ms, compress %.0f ms)",
                    self._limit,
                    limit,
                    self._download_seconds * 1000,
                    self._compress_seconds * 1000,
                )
            self._limit = limit
            self._hand_over()

    def _hand_over(self) -> None:
        while self._waiters and self._used < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._used += 1
                waiter.set_result(None)


def _average(current: float | None, sample: float) -> float:
    return sample if current is None else current + SMOOTHING * (sample - current)
