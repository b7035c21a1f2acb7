"""Fetcher against real origin servers on 127.0.0.1 (and ::1): limits, redirects, retries."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

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
from tests.conftest import MakeListener, refused
from tests.servers import Origin, Reply, free_port, status

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
    url = origin.add("img", IMAGE, "image/png")
    got = await make_fetcher().fetch(url)
    assert got == Fetched(data=IMAGE, url=url, content_type="image/png")
    assert origin.hits["img"] == 1


async def test_content_type_absent_is_none(
    make_fetcher: MakeFetcher, make_listener: MakeListener
) -> None:
    # The listener answers "ok" with no Content-Type (aiohttp would always send one).
    plain = await make_listener("127.0.0.1")
    got = await make_fetcher().fetch(f"http://{plain.netloc}/")
    assert got.data == b"ok"
    assert got.content_type is None


# --- status codes and retries -------------------------------------------------------------


async def test_404_is_not_retried(origin: Origin, make_fetcher: MakeFetcher) -> None:
    with pytest.raises(FetchError) as info:
        await make_fetcher().fetch(origin.add("img", b"nope", "text/plain", status=404))
    assert not isinstance(info.value, FetchRetryable)
    assert info.value.message == "HTTP 404 from origin"
    assert origin.hits["img"] == 1


async def test_503_twice_then_success(origin: Origin, make_fetcher: MakeFetcher) -> None:
    url = origin.script("img", status(503), status(503), Reply(IMAGE, "image/png"))
    got = await make_fetcher().fetch(url)
    assert got.data == IMAGE
    assert origin.hits["img"] == 3


async def test_500_forever_fails_after_all_attempts(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    with pytest.raises(FetchRetryable) as info:
        await make_fetcher().fetch(origin.script("img", status(500)))
    assert info.value.message == "HTTP 500 from origin (after 3 attempts)"
    assert origin.hits["img"] == 3


async def test_single_attempt_message_has_no_count(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    with pytest.raises(FetchRetryable) as info:
        await make_fetcher(attempts=1).fetch(origin.script("img", status(502)))
    assert info.value.message == "HTTP 502 from origin"
    assert origin.hits["img"] == 1


async def test_429_retry_after_is_honoured(
    origin: Origin, make_fetcher: MakeFetcher, slept: list[float]
) -> None:
    url = origin.script("img", status(429, **{"Retry-After": "1"}), Reply(IMAGE, "image/png"))
    got = await make_fetcher(backoff=0).fetch(url)
    assert got.data == IMAGE
    assert origin.hits["img"] == 2
    assert slept == [1.0]  # the one wait is the one the origin asked for


async def test_backoff_doubles(
    origin: Origin, make_fetcher: MakeFetcher, slept: list[float]
) -> None:
    url = origin.script("img", status(503))
    with pytest.raises(FetchRetryable):
        await make_fetcher(attempts=3, backoff=0.2).fetch(url)
    assert origin.hits["img"] == 3
    assert slept == [0.2, 0.4]  # between the three attempts


async def test_connection_refused_is_retried(make_fetcher: MakeFetcher) -> None:
    with pytest.raises(FetchRetryable) as info:
        await make_fetcher().fetch(f"http://127.0.0.1:{free_port()}/img")
    assert info.value.message == "connection failed: Connection refused (after 3 attempts)"


# --- byte limits ---------------------------------------------------------------------------


async def test_content_length_over_limit_is_refused_before_reading(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.stall("claims-huge", length=10**12, sent=b"\xff" * 1024)
    with pytest.raises(TooLarge) as info:
        await make_fetcher(max_bytes=1_000_000, attempts=1).fetch(url)
    # The body never arrives: reading it would have ended in a timeout, not this refusal.
    assert info.value.message == "image is larger than the limit of 1000000 bytes"
    assert origin.hits["claims-huge"] == 1


async def test_endless_body_is_cut_at_the_limit(origin: Origin, make_fetcher: MakeFetcher) -> None:
    url = origin.endless("endless")
    with pytest.raises(TooLarge) as info:
        await make_fetcher(max_bytes=1_000_000).fetch(url)
    assert info.value.message == "image is larger than the limit of 1000000 bytes"
    assert origin.hits["endless"] == 1


async def test_body_exactly_at_limit_is_fine(origin: Origin, make_fetcher: MakeFetcher) -> None:
    url = origin.add("img", IMAGE, "image/png")
    got = await make_fetcher(max_bytes=len(IMAGE)).fetch(url)
    assert got.data == IMAGE
    with pytest.raises(TooLarge):
        await make_fetcher(max_bytes=len(IMAGE) - 1).fetch(url)


async def test_decompressed_size_counts(origin: Origin, make_fetcher: MakeFetcher) -> None:
    """A small gzip body that inflates past the limit is cut off while inflating."""
    bomb = gzip.compress(b"\0" * 20_000_000)
    url = origin.add("gzip-bomb", bomb, "image/png", headers={"Content-Encoding": "gzip"})
    with pytest.raises(TooLarge):
        await make_fetcher(max_bytes=1_000_000).fetch(url)


async def test_empty_body_is_an_error(origin: Origin, make_fetcher: MakeFetcher) -> None:
    with pytest.raises(FetchError) as info:
        await make_fetcher().fetch(origin.add("empty", b"", "image/png"))
    assert info.value.message == "empty body"
    assert origin.hits["empty"] == 1


# --- timeouts ----------------------------------------------------------------------------


async def test_slow_drip_is_cut_by_the_total_timeout(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.drip("drip", IMAGE[:1000], every=0.1)
    with pytest.raises(FetchRetryable) as info:
        await make_fetcher(timeout=1, read_timeout=5, attempts=1).fetch(url)
    # The drip never stalls for the 5 s read timeout: only the total timeout can cut it.
    assert info.value.message == "timed out after 1 s"


async def test_timeouts_are_retried(origin: Origin, make_fetcher: MakeFetcher) -> None:
    url = origin.drip("drip", IMAGE[:1000], every=0.1)
    with pytest.raises(FetchRetryable) as info:
        await make_fetcher(timeout=0.5, attempts=2).fetch(url)
    assert info.value.message == "timed out after 0.5 s (after 2 attempts)"
    assert origin.hits["drip"] == 2


async def test_stalled_body_is_cut_by_the_read_timeout(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    url = origin.stall("stall", length=1000)
    with pytest.raises(FetchRetryable) as info:
        await make_fetcher(timeout=5, read_timeout=0.3, attempts=1).fetch(url)
    assert info.value.message == "timed out waiting for data from origin"


# --- redirects ----------------------------------------------------------------------------


def redirect(origin: Origin, path: str, location: str, code: int = 302) -> str:
    return origin.add(path, status=code, headers={"Location": location})


def hops(origin: Origin, count: int) -> str:
    """A chain of `count` redirects (302 and 307 in turn) ending at the image."""
    image = origin.add("img", IMAGE, "image/png")
    for n in range(1, count + 1):
        # Relative Location on purpose: it must be resolved against the current URL.
        redirect(origin, f"hops/{n}", f"../hops/{n - 1}" if n > 1 else image, 302 if n % 2 else 307)
    return f"{origin.url}/hops/{count}"


async def test_redirect_chain_is_followed(origin: Origin, make_fetcher: MakeFetcher) -> None:
    got = await make_fetcher(max_redirects=5).fetch(hops(origin, 4))
    assert got.data == IMAGE
    assert got.url == f"{origin.url}/img"
    assert [origin.hits[f"hops/{n}"] for n in (4, 3, 2, 1)] == [1, 1, 1, 1]


async def test_redirect_loop_is_cut(origin: Origin, make_fetcher: MakeFetcher) -> None:
    with pytest.raises(TooManyRedirects) as info:
        await make_fetcher().fetch(redirect(origin, "loop", "/loop", 301))
    assert info.value.message == "too many redirects (more than 5)"
    assert origin.hits["loop"] == 6


async def test_redirect_limit_counts_hops(origin: Origin, make_fetcher: MakeFetcher) -> None:
    four = hops(origin, 4)
    with pytest.raises(TooManyRedirects, match=r"^too many redirects \(more than 3\)$"):
        await make_fetcher(max_redirects=3).fetch(four)
    with pytest.raises(TooManyRedirects, match=r"^too many redirects \(more than 0\)$"):
        await make_fetcher(max_redirects=0).fetch(f"{origin.url}/hops/1")


async def test_redirect_to_other_scheme_is_refused(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    with pytest.raises(FetchError) as info:
        await make_fetcher().fetch(redirect(origin, "to", "file:///etc/passwd"))
    assert info.value.message == "only http and https URLs can be fetched, not 'file'"


async def test_redirect_to_forbidden_loopback_address(
    origin: Origin, make_fetcher: MakeFetcher, make_listener: MakeListener
) -> None:
    """The origin (127.0.0.1, exempt) points at 127.0.0.2, which is not."""
    inner = await make_listener("127.0.0.2")
    fetcher = make_fetcher(allowed_networks=("127.0.0.1/32",))
    target = f"http://127.0.0.2:{inner.port}/secret"
    with pytest.raises(AddressNotAllowed) as info:
        await fetcher.fetch(redirect(origin, "to", target))
    assert info.value.message == refused("127.0.0.2")
    assert origin.hits["to"] == 1  # refusals are not retried
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
        await fetcher.fetch(redirect(origin, "to", f"http://[::1]:{inner.port}/"))
    assert info.value.message == refused("::1")
    assert inner.connections == 0


async def test_redirect_to_host_off_the_allow_list(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    fetcher = make_fetcher(allowed_hosts=("127.0.0.1",))
    with pytest.raises(AddressNotAllowed) as info:
        await fetcher.fetch(redirect(origin, "to", "http://evil.com/"))
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
    host: str, make_fetcher: MakeFetcher, make_listener: MakeListener, slept: list[float]
) -> None:
    listener = await make_listener("127.0.0.1")
    with pytest.raises(AddressNotAllowed, match=r"^address not allowed: "):
        await make_fetcher(FetchSettings(backoff=20)).fetch(f"http://{host}:{listener.port}/x")
    assert slept == []  # not retried: a retry would first wait 20 s
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
    assert info.value.message == refused("::1")
    assert listener.connections == 0


async def test_localhost_message(make_fetcher: MakeFetcher) -> None:
    with pytest.raises(AddressNotAllowed) as info:
        await make_fetcher(FetchSettings()).fetch(f"http://localhost:{free_port()}/x")
    assert info.value.message == refused("127.0.0.1")


async def test_host_allow_list(origin: Origin, make_fetcher: MakeFetcher) -> None:
    url = origin.add("img", IMAGE, "image/png")
    with pytest.raises(AddressNotAllowed) as info:
        await make_fetcher(allowed_hosts=("images.example.com",)).fetch(url)
    assert info.value.message == "host not allowed: 127.0.0.1"
    assert origin.hits["img"] == 0
    got = await make_fetcher(allowed_hosts=("127.0.0.1",)).fetch(url)
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
    assert refusal.message == refused("127.0.0.1")
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
    if path == "/endless":
        url = origin.endless("endless")
    else:
        bomb = gzip.compress(b"\0" * 20_000_000)
        url = origin.add("gzip-bomb", bomb, "image/png", headers={"Content-Encoding": "gzip"})
    fetcher = make_fetcher(max_bytes=max_bytes)
    budget = ByteBudget(limit)
    results = await asyncio.gather(*(_fetch_counted(fetcher, budget, url) for _ in range(8)))
    for outcome, peak in results:
        assert isinstance(outcome, TooLarge), outcome
        assert outcome.message == f"image is larger than the limit of {max_bytes} bytes"
        assert 0 < peak <= limit + max_bytes
    assert (budget.held, budget.downloading) == (0, 0)


async def test_ordinary_downloads_share_a_small_budget_and_all_arrive(
    origin: Origin, make_fetcher: MakeFetcher
) -> None:
    budget = ByteBudget(len(IMAGE) // 2)  # not even one image fits
    url = origin.add("img", IMAGE, "image/png")
    results = await asyncio.gather(*(_fetch_counted(make_fetcher(), budget, url) for _ in range(6)))
    for outcome, peak in results:
        assert isinstance(outcome, Fetched) and outcome.data == IMAGE
        assert peak >= len(IMAGE) // 2  # the bytes were counted while they arrived
    assert budget.held == 0
