"""Fetcher against real origin servers on 127.0.0.1 (and ::1): limits, redirects, retries."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from csvcompress.config import FetchSettings
from csvcompress.errors import (
    AddressNotAllowed,
    FetchError,
    FetchRetryable,
    TooLarge,
    TooManyRedirects,
)
from csvcompress.pipeline.budget import ByteBudget, Ticket
from csvcompress.pipeline.fetcher import Fetched, Fetcher, _translate
from csvcompress.pipeline.netguard import NetGuard, create_session, guarded_socket_factory
from tests.conftest import MakeListener

IMAGE = os.urandom(200_000)
# Loopback is refused by default; these tests opt in for their origins.
LOCAL = FetchSettings(
    allowed_networks=("127.0.0.0/8",),
    attempts=3,
    backoff=0,
    timeout=5,
    connect_timeout=2,
    read_timeout=3,
)
# A hanging handler gives up after this long even if the test forgets to stop it.
HANG_LIMIT = 10.0


class Origin:
    """An image origin whose paths misbehave in scripted ways; counts hits per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.stop = asyncio.Event()
        self.server: TestServer | None = None
        self.app = web.Application()
        self.app.router.add_get("/img", self.image)
        self.app.router.add_get("/status/{codes}", self.status)
        self.app.router.add_get("/retry-after/{value}", self.retry_after)
        self.app.router.add_get("/claims-huge", self.claims_huge)
        self.app.router.add_get("/endless", self.endless)
        self.app.router.add_get("/drip", self.drip)
        self.app.router.add_get("/stall", self.stall)
        self.app.router.add_get("/hops/{n}", self.hops)
        self.app.router.add_get("/loop", self.loop)
        self.app.router.add_get("/to", self.redirect_to)
        self.app.router.add_get("/empty", self.empty)
        self.app.router.add_get("/gzip-bomb", self.gzip_bomb)

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    @web.middleware
    async def count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.hits[request.path] += 1
        response: web.StreamResponse = await handler(request)
        return response

    async def image(self, request: web.Request) -> web.Response:
        return web.Response(body=IMAGE, content_type="image/png")

    async def status(self, request: web.Request) -> web.Response:
        codes = [int(c) for c in request.match_info["codes"].split(",")]
        code = codes[min(self.hits[request.path], len(codes)) - 1]
        if code == 200:
            return web.Response(body=IMAGE, content_type="image/png")
        return web.Response(status=code, text="nope")

    async def retry_after(self, request: web.Request) -> web.Response:
        if self.hits[request.path] == 1:
            return web.Response(status=429, headers={"Retry-After": request.match_info["value"]})
        return web.Response(body=IMAGE, content_type="image/png")

    async def claims_huge(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 10**12
        await response.prepare(request)
        await response.write(b"\xff" * 1024)
        await self._hang()
        return response

    async def endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"\0" * 65536
        while not self.stop.is_set():
            try:
                await response.write(chunk)
            except (OSError, RuntimeError):
                break
        return response

    async def drip(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 1000
        await response.prepare(request)
        for _ in range(1000):
            try:
                await response.write(b"x")
            except (OSError, RuntimeError):
                break
            if await self._stopped_within(0.1):
                break
        return response

    async def stall(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 1000
        await response.prepare(request)
        await self._hang()
        return response

    async def hops(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        # Relative Location on purpose: it must be resolved against the current URL.
        location = f"../hops/{n - 1}" if n > 1 else self.url("/img")
        return web.Response(status=302 if n % 2 else 307, headers={"Location": location})

    async def loop(self, request: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": "/loop"})

    async def redirect_to(self, request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["url"]})

    async def empty(self, request: web.Request) -> web.Response:
        return web.Response(body=b"", content_type="image/png")

    async def gzip_bomb(self, request: web.Request) -> web.Response:
        body = gzip.compress(b"\0" * 20_000_000)
        return web.Response(
            body=body, headers={"Content-Type": "image/png", "Content-Encoding": "gzip"}
        )

    async def _hang(self) -> None:
        await self._stopped_within(HANG_LIMIT)

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            return False
        return True


ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def origin(aiohttp_server: ServerFactory) -> AsyncIterator[Origin]:
    origin = Origin()
    origin.app.middlewares.append(origin.count)
    origin.server = await aiohttp_server(origin.app)
    yield origin
    origin.stop.set()


MakeFetcher = Callable[..., Fetcher]


@pytest.fixture
async def make_fetcher() -> AsyncIterator[MakeFetcher]:
    sessions: list[aiohttp.ClientSession] = []

    def create(base: FetchSettings = LOCAL, **changes: Any) -> Fetcher:
        settings = dataclasses.replace(base, **changes)
        session = create_session(settings, NetGuard(settings))
        sessions.append(session)
        return Fetcher(settings, session)

    yield create
    for session in sessions:
        await session.close()


# --- success --------------------------------------------------------------------------


async def test_fetch_returns_exact_bytes(origin: Origin, make_fetcher: MakeFetcher) -> None:
    got = await make_fetcher().fetch(origin.url("/img"))
    assert got == Fetched(data=IMAGE, url=origin.url("/img"), content_type="image/png")
    assert origin.hits["/img"] == 1


async def test_content_type_absent_is_none(make_fetcher: MakeFetcher) -> None:
    async def bare(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(bare, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        got = await make_fetcher().fetch(f"http://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()
    assert got.data == b"abc"
    assert got.content_type is None


# --- status codes and retries -------------------------------------------------------------


async def test_404_is_not_retried(origin: Origin, make_fetcher: MakeFetcher) -> None:
    with pytest.raises(FetchError) as info:
        await make_fetcher().fetch(origin.url("/status/404"))
    assert not isinstance(info.value, FetchRetryable)
    assert info.value.message == "HTTP 404 from origin"
    assert origin.hits["/status/404"] == 1


async def test_503_twice_then_success(origin: Origin, make_fetcher: MakeFetcher) -> None:
    got = await make_fetcher().fetch(origin.url("/status/503,503,200"))
    assert got.data == IMAGE
    assert origin.hits["/status/503,503,200"] == 3


async def test_500_forever_fails_after_all_attempts(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    with pytest.raises(FetchRetryable) as info:
        await make_fetcher().fetch(origin.url("/status/500"))
    assert info.value.message == "HTTP 500 from origin (after 3 attempts)"
    assert origin.hits["/status/500"] == 3


async def test_single_attempt_message_has_no_count(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    with pytest.raises(FetchRetryable) as info:
        await make_fetcher(attempts=1).fetch(origin.url("/status/502"))
    assert info.value.message == "HTTP 502 from origin"
    assert origin.hits["/status/502"] == 1


async def test_429_retry_after_is_honoured(origin: Origin, make_fetcher: MakeFetcher) -> None:
    started = time.monotonic()
    got = await make_fetcher(backoff=0).fetch(origin.url("/retry-after/1"))
    elapsed = time.monotonic() - started
    assert got.data == IMAGE
    assert origin.hits["/retry-after/1"] == 2
    assert 0.9 <= elapsed < 4


async def test_backoff_doubles(origin: Origin, make_fetcher: MakeFetcher) -> None:
    started = time.monotonic()
    with pytest.raises(FetchRetryable):
        await make_fetcher(attempts=3, backoff=0.2).fetch(origin.url("/status/503"))
    # Waits of 0.2 s and 0.4 s between the three attempts.
    assert 0.55 <= time.monotonic() - started < 3


async def test_connection_refused_is_retried(make_fetcher: MakeFetcher) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FetchRetryable) as info:
        await make_fetcher().fetch(f"http://127.0.0.1:{port}/img")
    assert info.value.message == "connection failed: Connection refused (after 3 attempts)"


# --- byte limits ---------------------------------------------------------------------------


async def test_content_length_over_limit_is_refused_before_reading(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    started = time.monotonic()
    with pytest.raises(TooLarge) as info:
        await make_fetcher(max_bytes=1_000_000).fetch(origin.url("/claims-huge"))
    # The body never arrives; reading it would have hung until a timeout.
    assert time.monotonic() - started < 5
    assert info.value.message == "image is larger than the limit of 1000000 bytes"
    assert origin.hits["/claims-huge"] == 1


async def test_endless_body_is_cut_at_the_limit(origin: Origin, make_fetcher: MakeFetcher) -> None:
    started = time.monotonic()
    with pytest.raises(TooLarge) as info:
        await make_fetcher(max_bytes=1_000_000).fetch(origin.url("/endless"))
    assert time.monotonic() - started < 5
    assert info.value.message == "image is larger than the limit of 1000000 bytes"
    assert origin.hits["/endless"] == 1


async def test_body_exactly_at_limit_is_fine(origin: Origin, make_fetcher: MakeFetcher) -> None:
    got = await make_fetcher(max_bytes=len(IMAGE)).fetch(origin.url("/img"))
    assert got.data == IMAGE
    with pytest.raises(TooLarge):
        await make_fetcher(max_bytes=len(IMAGE) - 1).fetch(origin.url("/img"))


async def test_decompressed_size_counts(origin: Origin, make_fetcher: MakeFetcher) -> None:
    """A small gzip body that inflates past the limit is cut off while inflating."""
    with pytest.raises(TooLarge):
        await make_fetcher(max_bytes=1_000_000).fetch(origin.url("/gzip-bomb"))


async def test_empty_body_is_an_error(origin: Origin, make_fetcher: MakeFetcher) -> None:
    with pytest.raises(FetchError) as info:
        await make_fetcher().fetch(origin.url("/empty"))
    assert info.value.message == "empty body"
    assert origin.hits["/empty"] == 1


# --- timeouts ----------------------------------------------------------------------------


async def test_slow_drip_is_cut_by_the_total_timeout(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    started = time.monotonic()
    with pytest.raises(FetchRetryable) as info:
        await make_fetcher(timeout=1, read_timeout=5, attempts=1).fetch(origin.url("/drip"))
    assert 0.9 <= time.monotonic() - started < 2.5
    assert info.value.message == "timed out after 1 s"


async def test_timeouts_are_retried(origin: Origin, make_fetcher: MakeFetcher) -> None:
    with pytest.raises(FetchRetryable) as info:
        await make_fetcher(timeout=0.5, attempts=2).fetch(origin.url("/drip"))
    assert info.value.message == "timed out after 0.5 s (after 2 attempts)"
    assert origin.hits["/drip"] == 2


async def test_stalled_body_is_cut_by_the_read_timeout(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    started = time.monotonic()
    with pytest.raises(FetchRetryable) as info:
        await make_fetcher(timeout=5, read_timeout=0.3, attempts=1).fetch(origin.url("/stall"))
    assert time.monotonic() - started < 5
    assert info.value.message == "timed out waiting for data from origin"


# --- redirects ----------------------------------------------------------------------------


async def test_redirect_chain_is_followed(origin: Origin, make_fetcher: MakeFetcher) -> None:
    got = await make_fetcher(max_redirects=5).fetch(origin.url("/hops/4"))
    assert got.data == IMAGE
    assert got.url == origin.url("/img")
    assert [origin.hits[f"/hops/{n}"] for n in (4, 3, 2, 1)] == [1, 1, 1, 1]


async def test_redirect_loop_is_cut(origin: Origin, make_fetcher: MakeFetcher) -> None:
    with pytest.raises(TooManyRedirects) as info:
        await make_fetcher().fetch(origin.url("/loop"))
    assert info.value.message == "too many redirects (more than 5)"
    assert origin.hits["/loop"] == 6


async def test_redirect_limit_counts_hops(origin: Origin, make_fetcher: MakeFetcher) -> None:
    with pytest.raises(TooManyRedirects, match=r"^too many redirects \(more than 3\)$"):
        await make_fetcher(max_redirects=3).fetch(origin.url("/hops/4"))
    with pytest.raises(TooManyRedirects, match=r"^too many redirects \(more than 0\)$"):
        await make_fetcher(max_redirects=0).fetch(origin.url("/hops/1"))


async def test_redirect_to_other_scheme_is_refused(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    with pytest.raises(FetchError) as info:
        await make_fetcher().fetch(origin.url("/to?url=file:///etc/passwd"))
    assert info.value.message == "only http and https URLs can be fetched, not 'file'"


async def test_redirect_to_forbidden_loopback_address(
    origin: Origin, make_fetcher: MakeFetcher, make_listener: MakeListener
) -> None:
    """The origin (127.0.0.1, exempt) points at 127.0.0.2, which is not."""
    inner = await make_listener("127.0.0.2")
    fetcher = make_fetcher(allowed_networks=("127.0.0.1/32",))
    target = f"http://127.0.0.2:{inner.port}/secret"
    with pytest.raises(AddressNotAllowed) as info:
        await fetcher.fetch(origin.url(f"/to?url={target}"))
    assert info.value.message == "address not allowed: 127.0.0.2"
    assert origin.hits["/to"] == 1  # refusals are not retried
    assert inner.connections == 0


async def test_redirect_to_ipv6_loopback(
    origin: Origin, make_fetcher: MakeFetcher, make_listener: MakeListener
) -> None:
    try:
        inner = await make_listener("::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    fetcher = make_fetcher(allowed_networks=("127.0.0.1/32",))
    with pytest.raises(AddressNotAllowed) as info:
        await fetcher.fetch(origin.url(f"/to?url=http://[::1]:{inner.port}/"))
    assert info.value.message == "address not allowed: ::1"
    assert inner.connections == 0


async def test_redirect_to_host_off_the_allow_list(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    fetcher = make_fetcher(allowed_hosts=("127.0.0.1",))
    with pytest.raises(AddressNotAllowed) as info:
        await fetcher.fetch(origin.url("/to?url=http://evil.com/"))
    assert info.value.message == "host not allowed: evil.com"


# --- refused addresses and hosts -------------------------------------------------------------

REFUSED_HOSTS = [
    "localhost",
    "2130706433",
    "0177.0.0.1",
    "0x7f.1",
    "127.1",
    "127.0.0.1",
    "0.0.0.0",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
async def test_loopback_is_refused_by_default(
    host: str, make_fetcher: MakeFetcher, make_listener: MakeListener
) -> None:
    listener = await make_listener("127.0.0.1")
    started = time.monotonic()
    with pytest.raises(AddressNotAllowed, match=r"^address not allowed: "):
        await make_fetcher(FetchSettings(backoff=20)).fetch(f"http://{host}:{listener.port}/x")
    assert time.monotonic() - started < 10  # not retried (a retry would wait 20 s)
    assert listener.connections == 0


@pytest.mark.parametrize("host", ["[::1]", "[0:0:0:0:0:0:0:1]"])
async def test_ipv6_loopback_is_refused_by_default(
    host: str, make_fetcher: MakeFetcher, make_listener: MakeListener
) -> None:
    try:
        listener = await make_listener("::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    with pytest.raises(AddressNotAllowed) as info:
        await make_fetcher(FetchSettings()).fetch(f"http://{host}:{listener.port}/x")
    assert info.value.message == "address not allowed: ::1"
    assert listener.connections == 0


async def test_localhost_message(make_fetcher: MakeFetcher) -> None:
    with pytest.raises(AddressNotAllowed) as info:
        await make_fetcher(FetchSettings()).fetch("http://localhost:9/x")
    assert info.value.message == "address not allowed: 127.0.0.1"


async def test_host_allow_list(origin: Origin, make_fetcher: MakeFetcher) -> None:
    with pytest.raises(AddressNotAllowed) as info:
        await make_fetcher(allowed_hosts=("images.example.com",)).fetch(origin.url("/img"))
    assert info.value.message == "host not allowed: 127.0.0.1"
    assert origin.hits["/img"] == 0
    got = await make_fetcher(allowed_hosts=("127.0.0.1",)).fetch(origin.url("/img"))
    assert got.data == IMAGE


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/a.png", "only http and https URLs can be fetched, not 'ftp'"),
        ("mailto:someone@example.com", "only http and https URLs can be fetched, not 'mailto'"),
        ("/relative.png", "invalid URL: '/relative.png' is not absolute"),
        ("http://[::1", "invalid URL: Invalid IPv6 URL"),
        ("http:///a.png", "invalid URL: no host in 'http:///a.png'"),
    ],
)
async def test_bad_urls(url: str, message: str, make_fetcher: MakeFetcher) -> None:
    with pytest.raises(FetchError) as info:
        await make_fetcher().fetch(url)
    assert not isinstance(info.value, FetchRetryable)
    assert info.value.message == message


async def test_fetcher_needs_a_guarded_session() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TypeError):
            Fetcher(LOCAL, session)


# --- refusals wrapped by aiohttp --------------------------------------------------------------


async def test_socket_level_refusal_is_reported_as_a_refusal(
    make_listener: MakeListener,
) -> None:
    """Should aiohttp ever skip GuardedConnector._resolve_host, the socket factory still
    refuses; the fetcher must then report the refusal, not a retryable connection error."""
    listener = await make_listener("127.0.0.1")
    factory = guarded_socket_factory(NetGuard(FetchSettings()))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=factory)) as s:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await s.get(f"http://127.0.0.1:{listener.port}/")
    refusal = _translate(info.value)
    assert type(refusal) is AddressNotAllowed
    assert refusal.message == "address not allowed: 127.0.0.1"
    assert listener.connections == 0


def test_refusal_behind_a_cause_is_found() -> None:
    wrapped = aiohttp.ClientConnectionError("cannot connect")
    wrapped.__cause__ = AddressNotAllowed("address not allowed: 10.0.0.5")
    refusal = _translate(wrapped)
    assert type(refusal) is AddressNotAllowed
    assert refusal.message == "address not allowed: 10.0.0.5"


# --- bytes in flight count against the byte budget -------------------------------------


class Watched:
    """A budget ticket that records how much the whole budget held at each chunk."""

    def __init__(self, budget: ByteBudget, ticket: Ticket) -> None:
        self.budget = budget
        self.ticket = ticket
        self.peak = 0

    def can_take(self, size: int) -> bool:
        return self.ticket.can_take(size)

    async def take(self, size: int) -> None:
        await self.ticket.take(size)
        self.peak = max(self.peak, self.budget.held)

    def restart(self) -> None:
        self.ticket.restart()


async def _fetch_counted(
    fetcher: Fetcher, budget: ByteBudget, url: str
) -> tuple[Fetched | BaseException, int]:
    async with budget.admit() as ticket:
        watched = Watched(budget, ticket)
        try:
            return await fetcher.fetch(url, watched), watched.peak
        except FetchError as exc:
            return exc, watched.peak


@pytest.mark.parametrize("path", ["/endless", "/gzip-bomb"])
async def test_hostile_downloads_in_flight_are_held_to_the_budget(
    path: str, origin: Origin, make_fetcher: MakeFetcher
) -> None:
    # Eight at once, each refused at 4 MB, sharing a budget of 1 MB: the budget is
    # overrun by at most the one oldest download, never by all eight.
    limit, max_bytes = 1_000_000, 4_000_000
    fetcher = make_fetcher(max_bytes=max_bytes)
    budget = ByteBudget(limit)
    results = await asyncio.gather(
        *(_fetch_counted(fetcher, budget, origin.url(path)) for _ in range(8))
    )
    for outcome, peak in results:
        assert isinstance(outcome, TooLarge), outcome
        assert outcome.message == f"image is larger than the limit of {max_bytes} bytes"
        assert 0 < peak <= limit + max_bytes
    assert (budget.held, budget.downloading) == (0, 0)


async def test_ordinary_downloads_share_a_small_budget_and_all_arrive(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    budget = ByteBudget(len(IMAGE) // 2)  # not even one image fits
    results = await asyncio.gather(
        *(_fetch_counted(make_fetcher(), budget, origin.url("/img")) for _ in range(6))
    )
    for outcome, peak in results:
        assert isinstance(outcome, Fetched) and outcome.data == IMAGE
        assert peak >= len(IMAGE) // 2  # the bytes were counted while they arrived
    assert budget.held == 0
