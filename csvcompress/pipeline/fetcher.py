"""The one HTTP client for images: limits, redirects, retries.

One download is one *attempt* of at most `fetch.timeout` seconds, covering
every redirect hop and the whole body. Attempts that fail for a reason worth
another try (connection errors, timeouts, HTTP 5xx and 429) are repeated up
to `fetch.attempts` times in all, waiting `fetch.backoff` seconds, doubling
each time up to MAX_BACKOFF, or as long as the origin's Retry-After asks if that
is longer (capped at retry.MAX_RETRY_AFTER): the rule of csvcompress.retry. A
download therefore gives up after at most about attempts x timeout plus the waits.

Redirects are followed here, one hop at a time, so that each hop's host is
checked against `fetch.allowed_hosts`; the address each hop connects to is
checked by the session's GuardedConnector (see netguard).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from tenacity import RetryCallState
from yarl import URL

from csvcompress.config import FetchSettings
from csvcompress.errors import (
    FetchError,
    FetchRetryable,
    TooLarge,
    TooManyRedirects,
)
from csvcompress.pipeline.netguard import GuardedConnector, NetGuard, find_refusal
from csvcompress.retry import Backoff, parse_retry_after

log = logging.getLogger(__name__)

ALLOWED_SCHEMES = frozenset({"http", "https"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# The longest back-off between attempts (a Retry-After may ask for longer).
MAX_BACKOFF = 30.0
ACCEPT = "image/*, */*;q=0.5"


class Hold(Protocol):
    """Where a download's bytes are counted as they arrive (budget.Ticket)."""

    def can_take(self, size: int) -> bool: ...

    async def take(self, size: int) -> None: ...

    def restart(self) -> None: ...


class _Unbounded:
    def can_take(self, size: int) -> bool:
        return True

    async def take(self, size: int) -> None:
        return None

    def restart(self) -> None:
        return None


@dataclass(frozen=True)
class Fetched:
    data: bytes
    url: str  # final URL after redirects
    content_type: str | None


class Fetcher:
    """Downloads images from URLs found in uploaded CSVs."""

    def __init__(self, settings: FetchSettings, session: aiohttp.ClientSession) -> None:
        settings.validate()
        if not isinstance(session.connector, GuardedConnector):
            raise TypeError("Fetcher needs a session from netguard.create_session")
        self._settings = settings
        self._session = session
        self._guard = NetGuard(settings)
        # Whole-attempt limit is applied with asyncio.timeout in _attempt, so it
        # covers all redirect hops and the body, but not the wait for a slot.
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )
        # A fixed count is kept here; a count that follows the need is kept by the
        # dispatcher's workers (inflight.py), which ask before taking an image.
        self._slots: asyncio.Semaphore | contextlib.nullcontext[None] = (
            asyncio.Semaphore(settings.concurrency)
            if settings.concurrency
            else contextlib.nullcontext()
        )
        self._retry = Backoff.exponential(
            settings.attempts, settings.backoff, max_delay=MAX_BACKOFF
        )

    async def fetch(self, url: str, hold: Hold | None = None) -> Fetched:
        """Download `url`, following redirects; raise a FetchError subclass on failure.

        Each chunk of the body is counted in `hold` before it is kept, and the
        download waits while `hold` has no room; the time waited does not count
        against `fetch.timeout` (the origin is not the slow one then).
        """
        attempt = functools.partial(self._attempt, url, hold or _Unbounded())
        try:
            return await self._retry.run(attempt, before_sleep=_log_retry)
        except FetchRetryable as exc:
            attempts = self._retry.attempts
            if attempts == 1:
                raise
            raise FetchRetryable(
                f"{exc.message} (after {attempts} attempts)", exc.retry_after
            ) from exc

    async def _attempt(self, url: str, hold: Hold) -> Fetched:
        hold.restart()  # a failed attempt's chunks are gone
        async with self._slots:
            try:
                async with asyncio.timeout(self._settings.timeout) as deadline:
                    return await self._follow(url, _Paused(hold, deadline))
            except TimeoutError:
                raise FetchRetryable(f"timed out after {self._settings.timeout:g} s") from None

    async def _follow(self, url: str, hold: Hold) -> Fetched:
        current = _parse_url(url)
        for _hop in range(self._settings.max_redirects + 1):
            self._guard.check_host(current.raw_host)
            target = await self._get(current, hold)
            if isinstance(target, Fetched):
                return target
            current = target
        raise TooManyRedirects(f"too many redirects (more than {self._settings.max_redirects})")

    async def _get(self, url: URL, hold: Hold) -> Fetched | URL:
        """One hop: the image, or the URL it redirects to."""
        try:
            async with self._session.get(
                url,
                allow_redirects=False,
                timeout=self._timeout,
                headers={"Accept": ACCEPT},
            ) as resp:
                if resp.status in REDIRECT_STATUSES and resp.headers.get("Location"):
                    return _redirect_target(url, resp.headers["Location"])
                _check_status(resp)
                data = await self._read_body(resp, hold)
                content_type = resp.content_type if "Content-Type" in resp.headers else None
                return Fetched(data=data, url=str(url), content_type=content_type)
        except aiohttp.ClientError as exc:
            raise _translate(exc) from exc

    async def _read_body(self, resp: aiohttp.ClientResponse, hold: Hold) -> bytes:
        limit = self._settings.max_bytes
        too_large = f"image is larger than the limit of {limit} bytes"
        if resp.content_length is not None and resp.content_length > limit:
            raise TooLarge(too_large)
        # Whatever has arrived, in one piece per read, joined once at the end: a quarter
        # of the event loop's time per image less than growing a buffer 64 KiB at a time.
        # The sum is checked as it grows: a compressed body may exceed its Content-Length.
        chunks: list[bytes] = []
        size = 0
        # Chunks are the decoded bytes: aiohttp inflates a compressed body a bounded
        # piece at a time, so a gzip bomb meets the limit like any other body.
        try:
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(too_large)
                await hold.take(len(chunk))
                chunks.append(chunk)
                # Let the loop's other work in between: a body arriving faster than it
                # is read would otherwise be read in one go, status pages waiting.
                await asyncio.sleep(0)
        except BaseException:
            # The exception's traceback keeps this frame, and with it the chunks, until
            # the cyclic collector runs (tenacity's retry state makes a cycle): up to
            # max_bytes each that the budget no longer counts. Drop them now.
            chunks.clear()
            raise
        if not size:
            raise FetchError("empty body")
        return b"".join(chunks)


class _Paused:
    """A Hold whose waits push the attempt's deadline back by as long as they took."""

    def __init__(self, hold: Hold, deadline: asyncio.Timeout) -> None:
        self._hold = hold
        self._deadline = deadline

    def can_take(self, size: int) -> bool:
        return self._hold.can_take(size)

    async def take(self, size: int) -> None:
        when = self._deadline.when()
        if self._hold.can_take(size) or when is None:
            await self._hold.take(size)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._deadline.reschedule(None)  # the clock stops while the budget is full
        try:
            await self._hold.take(size)
        finally:
            self._deadline.reschedule(when + loop.time() - started)

    def restart(self) -> None:
        self._hold.restart()


def _parse_url(url: str) -> URL:
    try:
        parsed = URL(url)
    except (TypeError, ValueError) as exc:
        raise FetchError(f"invalid URL: {exc}") from None
    _check_target(parsed)
    return parsed


def _check_target(url: URL) -> None:
    if not url.scheme:
        raise FetchError(f"invalid URL: {str(url)!r} is not absolute")
    if url.scheme not in ALLOWED_SCHEMES:
        raise FetchError(f"only http and https URLs can be fetched, not {url.scheme!r}")
    if not url.raw_host:
        raise FetchError(f"invalid URL: no host in {str(url)!r}")


def _redirect_target(current: URL, location: str) -> URL:
    try:
        target = current.join(URL(location)).with_fragment(None)
    except (TypeError, ValueError) as exc:
        raise FetchError(f"invalid redirect target {location!r}: {exc}") from None
    _check_target(target)
    return target


def _check_status(resp: aiohttp.ClientResponse) -> None:
    status = resp.status
    if 200 <= status < 300:
        return
    reason = f"HTTP {status} from origin"
    if status == 429 or status >= 500:
        raise FetchRetryable(reason, parse_retry_after(resp.headers.get("Retry-After")))
    raise FetchError(reason)


def _translate(exc: aiohttp.ClientError) -> FetchError:
    """The FetchError a failed aiohttp request stands for."""
    refusal = find_refusal(exc)
    if refusal is not None:
        return refusal
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return FetchRetryable("connection timed out")
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return FetchRetryable("timed out waiting for data from origin")
    if isinstance(exc, aiohttp.InvalidURL):
        return FetchError(f"invalid URL: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return FetchRetryable(f"connection failed: cannot resolve {exc.host}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return FetchRetryable(f"connection failed: {_describe(exc.os_error)}")
    if isinstance(exc, aiohttp.ClientResponseError):
        # The response could not be parsed: a broken or hostile origin.
        return FetchError(f"invalid response from origin: {exc.message}")
    return FetchRetryable(f"connection failed: {exc}")


def _describe(error: OSError) -> str:
    """ "Connection refused" rather than "[Errno 111] Connect call failed ('1.2.3.4', 80)"."""
    if error.errno:
        return os.strerror(error.errno)
    return error.strerror or str(error) or type(error).__name__


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.info("fetch attempt %d failed (%s), retrying in %.1f s", state.attempt_number, exc, wait)
