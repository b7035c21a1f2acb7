"""Trying again: one back-off rule and one reading of Retry-After for every caller.

A `Backoff` is a policy: how many attempts in all, and the wait before each one
(`waits[n - 1]` before attempt n; the first is usually 0), each stretched or shrunk
at random by up to `jitter` of it. `Backoff.exponential` builds the usual doubling
sequence, capped. Whatever the policy says, a wait is never shorter than what the
other side asked for with Retry-After (which `parse_retry_after` reads and caps).

Two ways to use a policy:
- in-process retries, on tenacity: `await policy.run(call)` calls until it succeeds,
  fails with an error that is not `retryable`, or runs out of attempts, and re-raises
  the last error (`retrying()` gives the tenacity controller itself);
- scheduled retries, whose next attempt time is stored (webhook deliveries):
  `policy.delay(attempt, retry_after)` is the wait before attempt `attempt`.

What is worth another try is decided by the error hierarchy: `is_retryable` reads
`CsvCompressError.retryable`, and the wait honours `CsvCompressError.retry_after`.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from csvcompress.errors import CsvCompressError

T = TypeVar("T")

# The longest wait a Retry-After header may ask for, unless the caller caps it otherwise.
MAX_RETRY_AFTER = 60.0

# Jitter for callers that pass no generator of their own.
_RNG = random.Random()

BeforeSleep = Callable[[RetryCallState], None]


def is_retryable(exc: BaseException) -> bool:
    """Whether trying again could help: what the error hierarchy says, and nothing else."""
    return isinstance(exc, CsvCompressError) and exc.retryable


def retry_after_of(exc: BaseException | None) -> float | None:
    """The seconds an error says the other side asked to wait, if it said."""
    return exc.retry_after if isinstance(exc, CsvCompressError) else None


def parse_retry_after(
    value: str | None, now: datetime | None = None, *, cap: float = MAX_RETRY_AFTER
) -> float | None:
    """Seconds a Retry-After header asks to wait (delta-seconds or HTTP date), capped.

    None when there is no header or it says nothing we can read; a date in the past
    is 0.
    """
    if not value or not value.strip():
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), cap)


# keep_trying: the first wait, and the longest, between tries of a write that must happen.
KEEP_TRYING_FIRST = 0.1
KEEP_TRYING_LONGEST = 5.0
# Seconds a write is retried while its disk stays full before the image or request fails
# with the reason: long enough for an operator to free space, short enough to be seen.
DISK_FULL_PATIENCE = 300.0


async def keep_trying(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    log: logging.Logger,
    give_up: Callable[[], bool] = lambda: False,
    patience: float | None = None,
    first: float = KEEP_TRYING_FIRST,
    longest: float = KEEP_TRYING_LONGEST,
) -> T:
    """`await call()` until it does not fail with a retryable error, waiting `first`
    seconds doubling up to `longest` between tries; for a write that must happen (an
    image's result, a request's final state) and that only something outside the
    service prevents for a while (a full disk).

    One WARNING when it starts failing, one INFO when it works again: a long outage is
    two lines, not a flood. Once `give_up()` says so (the service stops), or after
    `patience` seconds of failures, the last error is raised instead of trying again.
    """
    failures = 0
    wait = first
    loop = asyncio.get_running_loop()
    deadline = None if patience is None else loop.time() + patience
    while True:
        try:
            result = await call()
        except Exception as exc:
            out_of_time = deadline is not None and loop.time() + wait > deadline
            if not is_retryable(exc) or give_up() or out_of_time:
                if failures:
                    log.warning("%s failed for good: %s", what, exc)
                raise
            failures += 1
            if failures == 1:
                log.warning("%s failed: %s; trying again until it succeeds", what, exc)
            await asyncio.sleep(wait)
            wait = min(wait * 2, longest)
            continue
        if failures:
            log.info("%s succeeded after %d failed tries", what, failures)
        return result


@dataclass(frozen=True)
class Backoff:
    """When to try again: the wait before each attempt, and so how many attempts in all."""

    waits: tuple[float, ...]
    jitter: float = 0.0  # each wait is multiplied by a random 1 - jitter .. 1 + jitter

    def __post_init__(self) -> None:
        if not self.waits:
            raise ValueError("a back-off needs at least one attempt")
        if any(not wait >= 0 for wait in self.waits):
            raise ValueError(f"waits must be 0 or more, not {self.waits}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be at least 0 and below 1, not {self.jitter}")

    @classmethod
    def exponential(
        cls,
        attempts: int,
        initial: float,
        *,
        multiplier: float = 2.0,
        max_delay: float = math.inf,
        jitter: float = 0.0,
    ) -> Backoff:
        """`attempts` in all: the first at once, then `initial` seconds before the second,
        `multiplier` times longer before each next one, never more than `max_delay`."""
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        waits = [0.0]
        wait = float(initial)
        for _ in range(attempts - 1):
            waits.append(min(wait, max_delay))
            wait = min(wait * multiplier, max_delay)  # capped as it grows: never overflows
        return cls(tuple(waits), jitter)

    @property
    def attempts(self) -> int:
        return len(self.waits)

    def delay(
        self, attempt: int, retry_after: float | None = None, *, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before attempt `attempt` (1 is the first), jittered, and never
        less than `retry_after`, what the other side asked for."""
        if not 1 <= attempt <= self.attempts:
            raise ValueError(f"attempt {attempt} is not one of the {self.attempts} attempts")
        wait = self.waits[attempt - 1]
        if self.jitter:
            wait *= (rng or _RNG).uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait

    def retrying(self, *, done: int = 0, before_sleep: BeforeSleep | None = None) -> AsyncRetrying:
        """Tenacity's controller for this policy, `done` attempts having been made already
        (elsewhere): retryable errors are tried again, the last error is re-raised."""
        if not 0 <= done < self.attempts:
            raise ValueError(f"{done} attempts done leaves none of {self.attempts} to make")

        def wait(state: RetryCallState) -> float:
            upcoming = done + state.attempt_number + 1
            if upcoming > self.attempts:
                return 0.0  # tenacity asks for the wait before it checks whether to stop
            exc = state.outcome.exception() if state.outcome is not None else None
            return self.delay(upcoming, retry_after_of(exc))

        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts - done),
            wait=wait,
            retry=retry_if_exception(is_retryable),
            before_sleep=before_sleep,
            reraise=True,
        )

    async def run(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        done: int = 0,
        before_sleep: BeforeSleep | None = None,
    ) -> T:
        """`await call()` until it succeeds, fails for good or the attempts run out.

        `done` attempts were made already (a first try in a thread, say): the wait
        before the next one comes first, then the rest of the attempts.
        """
        retrying = self.retrying(done=done, before_sleep=before_sleep)
        if (first := self.delay(done + 1)) > 0:
            await asyncio.sleep(first)
        async for attempt in retrying:
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity neither returned nor raised")
