"""NetGuard: the address policy, and the connector that enforces it at connect time.

Connection tests only ever dial loopback listeners started here; "public"
addresses are checked with check_address alone and never connected to.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Callable, Sequence

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.tracing import Trace
from hypothesis import given
from hypothesis import strategies as st

from csvcompress.config import FetchSettings
from csvcompress.errors import AddressNotAllowed, ConfigError
from csvcompress.pipeline.netguard import (
    AddressRefusedError,
    GuardedConnector,
    NetGuard,
    check_destination,
    create_session,
    embedded_ipv4,
    find_refusal,
    guarded_socket_factory,
    legacy_ipv4,
)
from tests.conftest import MakeListener, refused
from tests.servers import Origin
from tests.waiting import never

DEFAULT_GUARD = NetGuard(FetchSettings())


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")


# --- check_address ----------------------------------------------------------------

REFUSED = [
    # IPv4 special-purpose ranges
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.5",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.169.254",
    "169.254.0.1",
    "0.0.0.0",
    "0.1.2.3",
    "192.0.0.8",
    "192.0.2.1",
    "198.18.0.1",
    "198.19.255.255",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    # IPv6 special-purpose ranges
    "::",
    "::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fe80::1%eth0",
    "ff02::1",
    "2001:db8::1",
    "3fff::1",
    "2001:10::1",
    "64:ff9b:1::7f00:1",
    "100::1",
    # IPv4 carried inside IPv6
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",
    "::10.0.0.1",
    "2002:7f00:0001::",
    "2002:a9fe:a9fe::1",
    "64:ff9b::7f00:1",
    "64:ff9b::a00:1",
    "64:ff9b::169.254.169.254",
    # Teredo: server 65.54.227.120, client 127.0.0.1 (stored inverted: 80ff:fffe)
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
    # Teredo: server 10.0.0.1, client 93.184.216.34 (inverted: a247:27dd)
    "2001:0:a00:1::a247:27dd",
]

# Public addresses, each with a refused address spelled the same way: the guard allows the
# first for what it is, not because it lets that form of address through.
ALLOWED = {
    "93.184.216.34": "10.0.0.1",
    "1.1.1.1": "127.0.0.1",
    "8.8.8.8": "169.254.169.254",
    "2606:4700::1111": "fc00::1111",
    "2a00:1450:4001:80b::200e": "fe80::200e",
    "::ffff:93.184.216.34": "::ffff:10.0.0.1",
    "64:ff9b::5db8:d822": "64:ff9b::a00:1",
    "2002:5db8:d822::1": "2002:c0a8:101::1",
    # Teredo: server 65.54.227.120, client 93.184.216.34 (and, refused, client 127.0.0.1)
    "2001:0:4136:e378:8000:63bf:a247:27dd": "2001:0:4136:e378:8000:63bf:80ff:fffe",
}


@pytest.mark.parametrize("ip", REFUSED)
def test_check_address_refuses(ip: str) -> None:
    with pytest.raises(AddressNotAllowed, match=r"^address not allowed: "):
        DEFAULT_GUARD.check_address(ip)


@pytest.mark.parametrize(("ip", "twin"), ALLOWED.items())
def test_check_address_allows_public(ip: str, twin: str) -> None:
    assert DEFAULT_GUARD.check_address(ip) is None
    with pytest.raises(AddressNotAllowed, match=r"^address not allowed: "):
        DEFAULT_GUARD.check_address(twin)


def test_check_address_messages() -> None:
    with pytest.raises(AddressNotAllowed) as info:
        DEFAULT_GUARD.check_address("10.0.0.5")
    assert info.value.message == refused("10.0.0.5")
    with pytest.raises(AddressNotAllowed) as info:
        DEFAULT_GUARD.check_address("::ffff:127.0.0.1")
    assert info.value.message == refused("::ffff:7f00:1, which carries 127.0.0.1")
    with pytest.raises(AddressNotAllowed) as info:
        DEFAULT_GUARD.check_address(ipaddress.ip_address("::1"))
    assert info.value.message == refused("::1")
    with pytest.raises(AddressNotAllowed) as info:
        DEFAULT_GUARD.check_address("example.com")
    assert info.value.message == "address not allowed: 'example.com' is not an IP address"


def test_embedded_ipv4_decodes_every_transition_form() -> None:
    def decode(ip: str) -> list[str] | None:
        found = embedded_ipv4(ipaddress.IPv6Address(ip))
        return None if found is None else [str(a) for a in found]

    assert decode("::ffff:7f00:1") == ["127.0.0.1"]
    assert decode("::7f00:1") == ["127.0.0.1"]
    assert decode("64:ff9b::a9fe:a9fe") == ["169.254.169.254"]
    assert decode("2002:c0a8:0101::") == ["192.168.1.1"]
    assert decode("2001:0:4136:e378:8000:63bf:80ff:fffe") == ["65.54.227.120", "127.0.0.1"]
    assert decode("2606:4700::1111") is None
    assert decode("::1") is None
    assert decode("::") is None


def test_allowed_networks_exempt_addresses() -> None:
    guard = NetGuard(FetchSettings(allowed_networks=("127.0.0.0/8", "::1/128", "10.1.0.0/16")))
    for ip in ("127.0.0.1", "127.9.9.9", "::1", "10.1.2.3", "::ffff:127.0.0.1", "64:ff9b::7f00:1"):
        guard.check_address(ip)
    for ip in ("10.2.0.1", "192.168.0.1", "::2", "169.254.169.254", "::ffff:10.2.0.1"):
        with pytest.raises(AddressNotAllowed):
            guard.check_address(ip)


def test_allowed_networks_exemption_is_exact() -> None:
    guard = NetGuard(FetchSettings(allowed_networks=("127.0.0.1/32",)))
    guard.check_address("127.0.0.1")
    with pytest.raises(AddressNotAllowed, match=re.escape(refused("127.0.0.2"))):
        guard.check_address("127.0.0.2")


def test_guard_validates_its_settings() -> None:
    with pytest.raises(ConfigError):
        NetGuard(FetchSettings(allowed_networks=("not-a-network",)))


def test_stdlib_non_global_ipv4_is_always_refused() -> None:
    # What the standard library calls not global, the guard refuses, to the last address.
    for net in ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16"):
        network = ipaddress.IPv4Network(net)
        for addr in (network[1], network[-1]):
            assert not addr.is_global
            with pytest.raises(AddressNotAllowed, match=f"^{re.escape(refused(str(addr)))}$"):
                DEFAULT_GUARD.check_address(addr)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_no_stdlib_non_global_ipv4_is_allowed(value: int) -> None:
    addr = ipaddress.IPv4Address(value)
    if not addr.is_global or addr.is_multicast or addr.is_reserved:
        with pytest.raises(AddressNotAllowed):
            DEFAULT_GUARD.check_address(addr)


# --- IPv4 hidden inside IPv6 (property) ----------------------------------------------

PRIVATE_V4_NETS = [
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
]


@st.composite
def private_ipv4(draw: st.DrawFn) -> ipaddress.IPv4Address:
    net = draw(st.sampled_from(PRIVATE_V4_NETS))
    offset = draw(st.integers(min_value=0, max_value=net.num_addresses - 1))
    return net[offset]


def _embed(form: str, v4: ipaddress.IPv4Address, noise: int) -> ipaddress.IPv6Address:
    n = int(v4)
    if form == "mapped":
        return ipaddress.IPv6Address((0xFFFF << 32) | n)
    if form == "compatible":
        return ipaddress.IPv6Address(max(n, 2))  # ::0.0.0.0 and ::0.0.0.1 are :: and ::1
    if form == "nat64":
        return ipaddress.IPv6Address((0x64FF9B << 96) | n)
    if form == "6to4":
        return ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | (noise & (2**80 - 1)))
    if form == "teredo-server":
        return ipaddress.IPv6Address((0x20010000 << 96) | (n << 64) | (noise & (2**64 - 1)))
    assert form == "teredo-client"
    public_server = int(ipaddress.IPv4Address("65.54.227.120"))
    return ipaddress.IPv6Address(
        (0x20010000 << 96) | (public_server << 64) | ((noise & 0xFFFFFFFF) << 32) | (n ^ 0xFFFFFFFF)
    )


@given(
    v4=private_ipv4(),
    form=st.sampled_from(
        ["mapped", "compatible", "nat64", "6to4", "teredo-server", "teredo-client"]
    ),
    noise=st.integers(min_value=0, max_value=2**80 - 1),
)
def test_private_ipv4_inside_ipv6_is_always_refused(
    v4: ipaddress.IPv4Address, form: str, noise: int
) -> None:
    addr = _embed(form, v4, noise)
    with pytest.raises(AddressNotAllowed):
        DEFAULT_GUARD.check_address(addr)
    with pytest.raises(AddressNotAllowed):
        DEFAULT_GUARD.check_address(str(addr))


# --- check_host and spellings ------------------------------------------------------------


def test_check_host_without_allow_list_allows_all() -> None:
    assert DEFAULT_GUARD.check_host("evil.com") is None
    assert DEFAULT_GUARD.check_host(None) is None
    with pytest.raises(AddressNotAllowed, match=r"^host not allowed: evil\.com$"):
        NetGuard(FetchSettings(allowed_hosts=("images.example.com",))).check_host("evil.com")


def test_check_host_allow_list() -> None:
    guard = NetGuard(FetchSettings(allowed_hosts=("images.example.com", "*.cdn.example.net")))
    for host in (
        "images.example.com",
        "IMAGES.Example.COM",
        "images.example.com.",
        "a.cdn.example.net",
    ):
        guard.check_host(host)
    guard.check_host("a.b.cdn.example.net")
    for host in ("evil.com", "cdn.example.net", "example.com", "xcdn.example.net", "127.0.0.1", ""):
        with pytest.raises(AddressNotAllowed, match=r"^host not allowed: "):
            guard.check_host(host)
    with pytest.raises(AddressNotAllowed) as info:
        guard.check_host("evil.com")
    assert info.value.message == "host not allowed: evil.com"


def test_check_host_idna_entries() -> None:
    guard = NetGuard(FetchSettings(allowed_hosts=("bücher.example",)))
    guard.check_host("xn--bcher-kva.example")


@pytest.mark.parametrize(
    ("host", "meaning"),
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7F.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("1572395042", "93.184.216.34"),
    ],
)
def test_legacy_ipv4_spellings_are_decoded(host: str, meaning: str) -> None:
    assert legacy_ipv4(host) == ipaddress.IPv4Address(meaning)
    with pytest.raises(AddressNotAllowed):
        DEFAULT_GUARD.check_host_spelling(host)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "93.184.216.34", "example.com", "cafe.be", "::1", ""]
)
def test_ordinary_hosts_are_not_legacy(host: str) -> None:
    assert legacy_ipv4(host) is None
    DEFAULT_GUARD.check_host_spelling(host)


def test_legacy_spelling_message_names_the_address() -> None:
    with pytest.raises(AddressNotAllowed) as info:
        DEFAULT_GUARD.check_host_spelling("0x7f.1")
    assert info.value.message == refused("127.0.0.1")
    with pytest.raises(AddressNotAllowed) as info:
        DEFAULT_GUARD.check_host_spelling("1572395042")
    assert info.value.message == (
        "address not allowed: 1572395042 (an unusual spelling of 93.184.216.34)"
    )


# --- enforcement at connect time, against real loopback listeners -------------------------------


MakeSession = Callable[..., aiohttp.ClientSession]


@pytest.fixture
async def make_session() -> AsyncIterator[MakeSession]:
    made: list[aiohttp.ClientSession] = []

    def create(settings: FetchSettings | None = None, **kwargs: object) -> aiohttp.ClientSession:
        settings = settings or FetchSettings(timeout=5, connect_timeout=2)
        session = create_session(settings, NetGuard(settings))
        made.append(session)
        return session

    yield create
    for session in made:
        await session.close()


V4_LITERALS = [
    "2130706433",
    "0177.0.0.1",
    "0x7f.1",
    "0x7f000001",
    "127.1",
    "127.0.0.1",
    "localhost",
    "LocalHost",
    "0.0.0.0",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",
    "[64:ff9b::7f00:1]",
]
V6_LITERALS = ["[::1]", "[0:0:0:0:0:0:0:1]"]


@pytest.mark.parametrize("host", V4_LITERALS)
async def test_loopback_in_any_spelling_is_refused_before_connecting(
    host: str, make_listener: MakeListener, make_session: MakeSession
) -> None:
    listener = await make_listener("127.0.0.1")
    session = make_session()
    with pytest.raises(AddressNotAllowed, match=r"^address not allowed: "):
        await session.get(f"http://{host}:{listener.port}/")
    assert listener.connections == 0


@needs_ipv6
@pytest.mark.parametrize("host", V6_LITERALS)
async def test_ipv6_loopback_is_refused_before_connecting(
    host: str, make_listener: MakeListener, make_session: MakeSession
) -> None:
    listener = await make_listener("::1")
    session = make_session()
    with pytest.raises(AddressNotAllowed, match=re.escape(refused("::1"))):
        await session.get(f"http://{host}:{listener.port}/")
    assert listener.connections == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_listener_counts_connections_when_exempt(
    host: str, make_listener: MakeListener, make_session: MakeSession
) -> None:
    """The control for the refusal tests: an exempt address is reached and counted."""
    listener = await make_listener("127.0.0.1")
    session = make_session(FetchSettings(allowed_networks=("127.0.0.0/8",)))
    async with session.get(f"http://{host}:{listener.port}/") as resp:
        assert await resp.text() == "ok"
    assert listener.connections == 1


@needs_ipv6
async def test_ipv6_exemption(make_listener: MakeListener, make_session: MakeSession) -> None:
    listener = await make_listener("::1")
    session = make_session(FetchSettings(allowed_networks=("::1/128",)))
    async with session.get(f"http://{listener.netloc}/") as resp:
        assert await resp.text() == "ok"
    assert listener.connections == 1


class FakeResolver(AbstractResolver):
    """Answers from a script of address lists, one per lookup, like a rebinding DNS server."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        pass


async def test_name_with_any_forbidden_address_is_refused(make_listener: MakeListener) -> None:
    listener = await make_listener("127.0.0.1")
    guard = NetGuard(FetchSettings(allowed_networks=("127.0.0.1/32",)))
    resolver = FakeResolver(["127.0.0.1", "127.0.0.2"])
    async with aiohttp.ClientSession(connector=GuardedConnector(guard, resolver=resolver)) as s:
        with pytest.raises(AddressNotAllowed, match=re.escape(refused("127.0.0.2"))):
            await s.get(f"http://images.test:{listener.port}/")
    assert listener.connections == 0


async def test_dns_rebinding_is_refused(make_listener: MakeListener) -> None:
    """The second lookup answers a forbidden address; the connection goes nowhere."""
    listener = await make_listener("127.0.0.1")
    guard = NetGuard(FetchSettings(allowed_networks=("127.0.0.1/32",)))
    resolver = FakeResolver(["127.0.0.1"], ["127.0.0.2"])
    connector = GuardedConnector(guard, resolver=resolver, use_dns_cache=False, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"http://rebind.test:{listener.port}/") as resp:
            assert await resp.text() == "ok"
        with pytest.raises(AddressNotAllowed, match=re.escape(refused("127.0.0.2"))):
            await session.get(f"http://rebind.test:{listener.port}/")
    assert resolver.lookups == 2
    assert listener.connections == 1


# --- pins on the aiohttp internals we rely on -----------------------------------------------


def test_pin_resolve_host_signature() -> None:
    """GuardedConnector overrides TCPConnector._resolve_host(host, port, traces).

    If aiohttp renames or reshapes it, the override silently stops running;
    this test (and the literal refusals above, which expect AddressNotAllowed
    itself rather than an aiohttp error) must then fail.
    """
    params = list(inspect.signature(aiohttp.TCPConnector._resolve_host).parameters)
    assert params == ["self", "host", "port", "traces"]
    assert inspect.iscoroutinefunction(aiohttp.TCPConnector._resolve_host)


async def test_pin_literal_hosts_pass_through_resolve_host() -> None:
    """aiohttp does not send IP literals to the resolver, but does to _resolve_host."""
    seen: list[str] = []

    class Spy(aiohttp.TCPConnector):
        async def _resolve_host(
            self, host: str, port: int, traces: Sequence[Trace] | None = None
        ) -> list[ResolveResult]:
            seen.append(host)
            raise AddressNotAllowed("stop")

    async with aiohttp.ClientSession(connector=Spy()) as session:
        for url in ("http://127.0.0.1:1/", "http://[::1]:1/", "http://example.invalid:1/"):
            with pytest.raises(AddressNotAllowed):
                await session.get(url)
    assert seen == ["127.0.0.1", "::1", "example.invalid"]


async def test_pin_socket_factory_refuses_with_a_plain_connector(
    make_listener: MakeListener,
) -> None:
    """The last line of defence: aiohttp dials through the socket factory."""
    listener = await make_listener("127.0.0.1")
    connector = aiohttp.TCPConnector(socket_factory=guarded_socket_factory(DEFAULT_GUARD))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await session.get(f"http://127.0.0.1:{listener.port}/")
    assert isinstance(info.value.os_error, AddressRefusedError)
    assert info.value.os_error.refusal.message == refused("127.0.0.1")
    assert listener.connections == 0


async def test_guarded_connector_keeps_its_socket_factory() -> None:
    with pytest.raises(TypeError):
        GuardedConnector(DEFAULT_GUARD, socket_factory=lambda info: socket.socket())


# --- reading a refusal back ----------------------------------------------------------------


def test_find_refusal_reads_through_aiohttp_wrappers() -> None:
    refused = AddressRefusedError(AddressNotAllowed("address not allowed: 10.0.0.5"))
    wrapped = aiohttp.ClientConnectionError("cannot connect")
    wrapped.__context__ = refused
    found = find_refusal(wrapped)
    assert type(found) is AddressNotAllowed and found.message == "address not allowed: 10.0.0.5"


def test_find_refusal_is_none_for_other_errors_even_in_a_loop() -> None:
    first = aiohttp.ClientConnectionError("reset")
    second = OSError("broken pipe")
    first.__cause__, second.__cause__ = second, first
    assert find_refusal(first) is None


# --- create_session ------------------------------------------------------------------------


async def test_create_session_shape(make_session: MakeSession) -> None:
    settings = FetchSettings(concurrency=7, timeout=30, connect_timeout=3, read_timeout=4)
    session = make_session(settings)
    assert isinstance(session.connector, GuardedConnector)
    assert session.connector.limit == 7
    assert session.trust_env is False
    assert isinstance(session.cookie_jar, aiohttp.DummyCookieJar)
    assert session.timeout.total == 30
    assert session.timeout.sock_connect == 3
    assert session.timeout.sock_read == 4
    assert session.headers["User-Agent"] == settings.user_agent
    assert session.auto_decompress is True


async def test_create_session_total_timeout_override() -> None:
    settings = FetchSettings()
    session = create_session(settings, NetGuard(settings), total_timeout=15)
    try:
        assert session.timeout.total == 15
    finally:
        await session.close()


async def test_proxy_from_environment_is_ignored(
    make_listener: MakeListener, make_session: MakeSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = await make_listener("127.0.0.1")
    proxy = await make_listener("127.0.0.1")
    monkeypatch.setenv("HTTP_PROXY", f"http://{proxy.netloc}")
    monkeypatch.setenv("http_proxy", f"http://{proxy.netloc}")
    session = make_session(FetchSettings(allowed_networks=("127.0.0.1/32",)))
    async with session.get(f"http://{origin.netloc}/") as resp:
        assert await resp.text() == "ok"
    assert (origin.connections, proxy.connections) == (1, 0)


async def test_user_agent_is_sent(origin: Origin) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("User-Agent", ""))

    url = origin.route("echo", echo)
    settings = FetchSettings(allowed_networks=("127.0.0.1/32",), user_agent="test-agent/1")
    async with (
        create_session(settings, NetGuard(settings)) as session,
        session.get(url) as resp,
    ):
        assert await resp.text() == "test-agent/1"


async def test_per_host_caps_the_connections_to_one_origin(origin: Origin) -> None:
    # An origin that holds every request until released and counts the connections busy
    # with one at once; five images from it are asked for, with room for ten in all.
    busy: set[object] = set()
    most = 0
    gate = origin.gate()

    async def held(request: web.Request) -> web.Response:
        nonlocal most
        assert request.transport is not None
        peer = request.transport.get_extra_info("peername")
        busy.add(peer)
        most = max(most, len(busy))
        try:
            await gate.wait()
            return web.Response(text="ok")
        finally:
            busy.discard(peer)

    url = origin.route("held", held)
    settings = FetchSettings(concurrency=10, per_host=2, allowed_networks=("127.0.0.1/32",))

    async def get(session: aiohttp.ClientSession) -> str:
        async with session.get(url) as resp:
            return await resp.text()

    async with create_session(settings, NetGuard(settings)) as session:
        gets = asyncio.gather(*(get(session) for _ in range(5)))
        await origin.wait_for_hits(2, "held")
        await never(
            lambda: origin.hits["held"] > 2,
            what="a third connection reached the origin while two were busy",
            within=0.5,
        )
        origin.release()
        assert await gets == ["ok"] * 5
    assert (origin.hits["held"], most) == (5, 2)


# --- checking ahead of time (webhook URLs at upload) ------------------------------------------


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("10.0.0.5", refused("10.0.0.5")),
        (
            "::ffff:a00:5",
            refused(f"{ipaddress.ip_address('::ffff:a00:5')}, which carries 10.0.0.5"),
        ),
        ("fe80::1%25eth0", refused("fe80::1")),
        ("localhost", refused("127.0.0.1")),
        ("0x7f.1", refused("127.0.0.1")),
        (
            "0x8.0x8.0x8.0x8",
            "address not allowed: 0x8.0x8.0x8.0x8 (an unusual spelling of 8.8.8.8)",
        ),
    ],
)
async def test_check_destination_refuses(host: str, message: str) -> None:
    with pytest.raises(AddressNotAllowed) as info:
        await check_destination(DEFAULT_GUARD, host, 80)
    assert info.value.message == message


async def test_check_destination_allows_exempt_names_and_public_literals() -> None:
    await check_destination(
        NetGuard(FetchSettings(allowed_networks=("127.0.0.0/8",))), "localhost", 80
    )
    # A literal is judged without a lookup (nothing is resolved, nothing dialled).
    await check_destination(DEFAULT_GUARD, "93.184.215.14", 443)
    await check_destination(DEFAULT_GUARD, "2606:2800:21f:cb07:6820:80da:af6b:8b2c", 443)


async def test_check_destination_unresolvable_name_is_an_oserror(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The resolver's answer is scripted: a test asks no DNS server anything.
    looked_up: list[str] = []

    async def getaddrinfo(host: str, *args: object, **kwargs: object) -> list[object]:
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    with pytest.raises(socket.gaierror):
        await check_destination(DEFAULT_GUARD, "nothing.invalid", 80)
    assert looked_up == ["nothing.invalid"]
