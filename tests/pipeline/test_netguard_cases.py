"""NetGuard: cases the mutation run showed no test would notice going wrong.

Every refused range at both of its ends, spellings with a trailing dot or a zone, wildcard and
IDNA entries of allowed_hosts, what the socket-level refusal says, and the socket factory a
GuardedConnector must keep. Addresses are judged without connecting; the only connections go
to loopback listeners started here.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

import aiohttp
import pytest

from csvcompress.config import FetchSettings
from csvcompress.errors import AddressNotAllowed, ConfigError
from csvcompress.pipeline.netguard import (
    AddressRefusedError,
    GuardedConnector,
    NetGuard,
    embedded_ipv4,
    find_refusal,
    guarded_socket_factory,
    legacy_ipv4,
)
from tests.conftest import MakeListener
from tests.conftest import refused as reason

DEFAULT_GUARD = NetGuard(FetchSettings())

# Every IPv4 range the guard refuses, as the IANA special-purpose registry names it.
REFUSED_V4 = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
]


def refused(guard: NetGuard, ip: str) -> str | None:
    """The guard's refusal message for `ip`, or None when it may be dialled."""
    try:
        guard.check_address(ip)
    except AddressNotAllowed as exc:
        return exc.message
    return None


@pytest.mark.parametrize("cidr", REFUSED_V4)
def test_every_refused_ipv4_range_is_refused_from_its_first_to_its_last_address(
    cidr: str,
) -> None:
    net = ipaddress.IPv4Network(cidr)
    for addr in (net[0], net[1], net[net.num_addresses // 2], net[-1]):
        assert refused(DEFAULT_GUARD, str(addr)) == reason(str(addr))


@pytest.mark.parametrize("cidr", REFUSED_V4)
def test_the_public_neighbours_of_a_refused_range_are_allowed(cidr: str) -> None:
    net = ipaddress.IPv4Network(cidr)
    for neighbour in (int(net[0]) - 1, int(net[-1]) + 1):
        if not 0 <= neighbour < 2**32:
            continue
        addr = ipaddress.IPv4Address(neighbour)
        if any(addr in ipaddress.IPv4Network(other) for other in REFUSED_V4):
            continue  # 192.0.0.0/24 and 192.0.2.0/24, say, are neighbours of each other
        assert refused(DEFAULT_GUARD, str(addr)) is None, addr


def test_the_upper_half_of_the_shared_address_space_is_refused() -> None:
    # 100.64.0.0/10 ends at 100.127.255.255; a /16 typo would let 100.65.x.x through.
    assert refused(DEFAULT_GUARD, "100.127.255.254") == reason("100.127.255.254")
    assert refused(DEFAULT_GUARD, "100.128.0.1") is None


def test_ipv6_outside_global_unicast_and_its_reserved_ranges_are_refused() -> None:
    for ip in ("fc00::1", "fdff::1", "fe80::1", "ff02::1", "2001:db8::1", "3fff::1", "2001:2::1"):
        assert refused(DEFAULT_GUARD, ip) == reason(str(ip))
    for ip in ("2001:4860:4860::8888", "2a00:1450:4001:80b::200e", "3ffe::1"):
        assert refused(DEFAULT_GUARD, ip) is None


def test_an_address_with_a_zone_is_judged_and_named_without_it() -> None:
    # getaddrinfo() answers link-local addresses with their interface: "fe80::1%eth0".
    assert refused(DEFAULT_GUARD, "fe80::1%eth0") == reason("fe80::1")


def test_the_first_ipv4_compatible_address_carries_its_ipv4_address() -> None:
    # ::1 is the IPv6 loopback itself; from ::2 on, ::/96 carries an IPv4 address.
    assert embedded_ipv4(ipaddress.IPv6Address("::1")) is None
    assert embedded_ipv4(ipaddress.IPv6Address("::2")) == (ipaddress.IPv4Address("0.0.0.2"),)
    assert refused(DEFAULT_GUARD, "::2") == reason("::2, which carries 0.0.0.2")


# --- spellings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "meaning"),
    [("2130706433.", "127.0.0.1"), ("0x7f.1.", "127.0.0.1"), ("127.1.", "127.0.0.1")],
)
def test_a_legacy_spelling_with_a_trailing_dot_is_still_that_address(
    host: str, meaning: str
) -> None:
    # "http://2130706433./" reaches 127.0.0.1 as surely as "http://2130706433/".
    assert legacy_ipv4(host) == ipaddress.IPv4Address(meaning)
    with pytest.raises(AddressNotAllowed) as info:
        DEFAULT_GUARD.check_host_spelling(host)
    assert info.value.message == reason(meaning)


def test_a_canonical_address_with_a_trailing_dot_is_not_a_legacy_spelling() -> None:
    assert legacy_ipv4("93.184.216.34.") is None


def test_a_name_that_starts_like_an_address_is_not_that_address() -> None:
    # inet_aton() stops reading at a space; the guard must not stop with it.
    assert legacy_ipv4("127.1 images.example.com") is None


# --- allowed_networks and allowed_hosts as operators write them ---------------------------------


def test_an_allowed_network_written_with_host_bits_exempts_the_whole_network() -> None:
    # An operator writes the address they know, "10.1.2.3/16", meaning 10.1.0.0/16.
    guard = NetGuard(FetchSettings(allowed_networks=("10.1.2.3/16",)))
    assert refused(guard, "10.1.200.7") is None
    assert refused(guard, "10.2.0.1") == reason("10.2.0.1")


def test_allowed_host_names_ignore_case_and_a_trailing_dot_on_both_sides() -> None:
    guard = NetGuard(FetchSettings(allowed_hosts=("CDN.BOX.",)))
    guard.check_host("cdn.box")
    guard.check_host("Cdn.Box.")
    with pytest.raises(AddressNotAllowed, match=r"^host not allowed: cdn\.bo$"):
        guard.check_host("cdn.bo")


def test_a_wildcard_idna_entry_allows_the_names_below_it_only() -> None:
    guard = NetGuard(FetchSettings(allowed_hosts=("*.bücher.example",)))
    guard.check_host("shop.xn--bcher-kva.example")
    guard.check_host("a.b.xn--bcher-kva.example")
    for host in ("xn--bcher-kva.example", "shop.bcher.example", "shop.xn--bcher-kva.exampl"):
        with pytest.raises(AddressNotAllowed, match=r"^host not allowed: "):
            guard.check_host(host)


def test_an_allowed_host_that_is_no_host_name_says_which_entry() -> None:
    with pytest.raises(ConfigError, match=r"^fetch\.allowed_hosts: 'ü+' is not a host name$"):
        NetGuard(FetchSettings(allowed_hosts=("ü" * 64,)))


# --- the socket-level refusal --------------------------------------------------------------------


def test_the_socket_factory_refuses_a_forbidden_address_as_permission_denied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    create = guarded_socket_factory(DEFAULT_GUARD)
    with (
        caplog.at_level(logging.WARNING, logger="csvcompress.pipeline.netguard"),
        pytest.raises(AddressRefusedError) as info,
    ):
        create((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", 80)))
    # What aiohttp shows in its connection error, and what the operator reads in the log.
    assert info.value.errno == errno.EACCES
    assert info.value.strerror == reason("10.0.0.5")
    assert str(info.value) == f"[Errno 13] {reason('10.0.0.5')}"
    assert caplog.messages == [f"refused to connect: {reason('10.0.0.5')}"]


async def test_a_guarded_connector_refuses_at_the_socket_even_if_its_lookup_check_is_skipped(
    make_listener: MakeListener,
) -> None:
    """The backstop: were aiohttp ever to dial without GuardedConnector._resolve_host, the
    socket factory the connector installs still refuses the address."""
    listener = await make_listener("127.0.0.1")
    connector = GuardedConnector(DEFAULT_GUARD)
    unguarded = aiohttp.TCPConnector._resolve_host.__get__(connector)
    connector._resolve_host = unguarded  # type: ignore[method-assign]
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await session.get(f"http://127.0.0.1:{listener.port}/")
    found = find_refusal(info.value)
    assert found is not None
    assert found.message == reason("127.0.0.1")
    assert listener.connections == 0


def test_a_guarded_connector_will_not_take_another_socket_factory() -> None:
    with pytest.raises(TypeError, match=r"^GuardedConnector sets its own socket_factory$"):
        GuardedConnector(DEFAULT_GUARD, socket_factory=lambda info: socket.socket())


# --- reading a refusal back --------------------------------------------------------------------


def test_a_plain_error_is_no_refusal() -> None:
    assert find_refusal(ValueError("a bug")) is None
    assert find_refusal(aiohttp.ClientPayloadError("cut off")) is None


def test_a_refusal_raised_inside_aiohttp_is_found_with_its_message() -> None:
    try:
        try:
            raise AddressNotAllowed("address not allowed: 169.254.169.254")
        except AddressNotAllowed as exc:
            raise aiohttp.ClientConnectionError("cannot connect") from exc
    except aiohttp.ClientConnectionError as wrapped:
        found = find_refusal(wrapped)
    assert found is not None
    assert found.message == "address not allowed: 169.254.169.254"


def test_a_connector_error_is_read_through_its_os_error() -> None:
    refusal = AddressNotAllowed("address not allowed: 10.0.0.5")
    error = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("h", 80, False, True, None, None, None),
        AddressRefusedError(refusal),
    )
    found = find_refusal(error)
    assert found is not None
    assert found.message == "address not allowed: 10.0.0.5"
