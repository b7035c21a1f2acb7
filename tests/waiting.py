"""Waiting in tests: for an observable state (poll), for a change a server announces
(Changes), for a request's status (RequestWaits), or through a while during which
something must not happen (never). No test waits a fixed time for something to have
happened."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from csvcompress.models import FINISHED_STATUSES

T = TypeVar("T")

# Seconds a poll waits for its state unless told otherwise; well under the per-test timeout.
TIMEOUT = 15.0
# Seconds between two looks at a state that announces no change of its own.
INTERVAL = 0.02


async def _value(check: Callable[[], T | Awaitable[T]]) -> T:
    got = check()
    return await got if inspect.isawaitable(got) else got


async def poll(
    check: Callable[[], T | Awaitable[T]],
    *,
    what: str,
    until: Callable[[T], Any] = bool,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
) -> T:
    """Evaluate `check` (plain or async) until `until` holds for its value, and return it.

    Past `timeout` seconds, fail with what was waited for and the last value seen.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while not until(value := await _value(check)):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}; last saw {value!r}")
        await asyncio.sleep(interval)
    return value


async def never(check: Callable[[], Any], *, what: str, within: float) -> None:
    """Watch `check` for `within` seconds and fail as soon as it holds.

    For the negative half of a scenario ("no ninth delivery arrives"): the wait is how
    long the unwanted event would take to show up, were it going to.
    """
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() >= deadline:
            return
        await asyncio.sleep(INTERVAL)
    raise AssertionError(f"{what} (within {within:g} s)")


class Changes:
    """What a server notifies each time its record grows, for tests to wait on."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait_until(
        self,
        check: Callable[[], Any],
        *,
        what: str,
        show: Callable[[], Any] = lambda: None,
        timeout: float = TIMEOUT,
    ) -> None:
        """Return once `check` holds, looking again at each change. Past `timeout` seconds,
        fail with what was waited for and what `show` says of the state."""
        try:
            async with asyncio.timeout(timeout):
                while not check():
                    self._event.clear()
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(f"waited {timeout:g} s for {what}; last saw {show()!r}") from None


class RequestWaits:
    """Waiting on a request's status document, for whatever can fetch it (the service in
    the test's process, or one in a process of its own)."""

    async def status(self, request_id: str) -> dict[str, Any]:
        raise NotImplementedError

    async def wait_until(
        self,
        request_id: str,
        check: Callable[[dict[str, Any]], Any],
        what: str,
        timeout: float = TIMEOUT,
    ) -> dict[str, Any]:
        """The request's status document, once `check` holds for it."""
        return await poll(lambda: self.status(request_id), until=check, what=what, timeout=timeout)

    async def wait(self, request_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """The status document once the request has finished."""
        return await self.wait_until(
            request_id,
            lambda doc: doc["status"] in FINISHED_STATUSES,
            f"request {request_id} to finish",
            timeout,
        )
