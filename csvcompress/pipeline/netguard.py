"""Which addresses may be fetched, and the connector that enforces it.

Addresses are judged when a connection is made, not when a URL is parsed:
`GuardedConnector` checks every address aiohttp is about to dial, whether it
came from DNS, from aiohttp's DNS cache or from an IP literal in the URL. The
socket is then opened to exactly that address, so redirects, DNS rebinding and
odd spellings of an address ("http://2130706433/", "http://0x7f.1/",
"http://[::ffff:127.0.0.1]/") cannot slip past. A socket factory repeats the
check on the very address handed to ``connect()`` as a last line of defence.

Refused by default: everything that is not a globally reachable unicast
address (loopback, private, link-local and cloud metadata, shared address
space, multicast, reserved, unspecified, broadcast, documentation and
benchmarking ranges), and IPv6 forms that carry such an IPv4 address inside
them (IPv4-mapped, IPv4-compatible, 6to4, NAT64, Teredo). Networks listed in
``fetch.allowed_networks`` are exempt.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohappyeyeballs import AddrInfoType, SocketFactoryType
from aiohttp.abc import ResolveResult

from csvcompress.config import FetchSettings
from csvcompress.errors import AddressNotAllowed, ConfigError

if TYPE_CHECKING:
    from aiohttp.tracing import Trace

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Said with every refused address: a first try on a local folder of images (URLs on
# 127.0.0.1) is refused, and the reason itself must say how to allow it.
ALLOW_HINT = (
    "private and loopback addresses are refused; allow a network with [fetch] allowed_networks"
)

# IPv4 ranges that are not globally reachable unicast (IANA special-purpose
# registry, plus multicast and the reserved class E). Spelled out rather than
# taken from `ipaddress.is_global`, whose answer has changed between Python
# releases.
_FORBIDDEN_V4 = tuple(
    ipaddress.IPv4Network(cidr)
    for cidr in (
        "0.0.0.0/8",  # "this network", includes the unspecified 0.0.0.0
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, includes the 169.254.169.254 metadata service
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes the broadcast 255.255.255.255
    )
)

# Only global unicast IPv6 (2000::/3) may be reached, minus these ranges.
# Everything outside 2000::/3 is refused: ::, ::1, fc00::/7, fe80::/10,
# ff00::/8, 64:ff9b:1::/48 (local-use NAT64), ::ffff:0:0:0/96 (SIIT) and more.
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_FORBIDDEN_V6 = tuple(
    ipaddress.IPv6Network(cidr)
    for cidr in (
        "2001::/23",  # IETF protocol assignments (Teredo, 2001::/32, is decoded instead)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
    )
)

# IPv6 forms that carry an IPv4 address; they are judged by what they carry.
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_LOW_32_BITS = 0xFFFFFFFF

# Characters of the legacy IPv4 spellings inet_aton() accepts: 2130706433,
# 0177.0.0.1, 0x7f.1, 127.1.
_LEGACY_IPV4_CHARS = frozenset("0123456789abcdefx.")


class AddressRefusedError(PermissionError):
    """The guard refused an address at socket level (the last line of defence).

    An OSError, so that aiohttp and aiohappyeyeballs treat it as a failed
    connection attempt; `find_refusal` turns it back into `refusal`.
    """

    def __init__(self, refusal: AddressNotAllowed) -> None:
        super().__init__(errno.EACCES, refusal.message)
        self.refusal = refusal


def embedded_ipv4(addr: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 addresses an IPv6 transition form carries, or None for other addresses."""
    if addr in _MAPPED or addr in _NAT64 or (addr in _COMPATIBLE and int(addr) > 1):
        return (ipaddress.IPv4Address(int(addr) & _LOW_32_BITS),)
    if addr in _SIX_TO_FOUR:
        assert addr.sixtofour is not None
        return (addr.sixtofour,)
    if addr in _TEREDO:
        assert addr.teredo is not None
        server, client = addr.teredo
        return (server, client)
    return None


def legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address a legacy numeric host spelling means, or None if `host` is not one.

    "2130706433", "0177.0.0.1", "0x7f.1" and "127.1" all mean 127.0.0.1 to
    inet_aton() and getaddrinfo(). A canonical dotted quad is not legacy.
    """
    lowered = host.lower().rstrip(".")
    if not lowered or not set(lowered) <= _LEGACY_IPV4_CHARS:
        return None
    try:
        packed = socket.inet_aton(lowered)
    except OSError:
        return None
    addr = ipaddress.IPv4Address(packed)
    return None if str(addr) == lowered else addr


class NetGuard:
    """Decides which addresses and host names may be fetched."""

    def __init__(self, settings: FetchSettings) -> None:
        settings.validate()
        self._exempt: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in settings.allowed_networks
        )
        self._hosts = frozenset(_allowed_host_entry(h) for h in settings.allowed_hosts if h)

    def check_address(self, ip: str | IPAddress) -> None:
        """Raise AddressNotAllowed unless `ip` may be connected to."""
        addr = _parse_address(ip)
        if self._is_exempt(addr):
            return
        if isinstance(addr, ipaddress.IPv4Address):
            if _is_forbidden_v4(addr):
                raise _refused(str(addr))
            return
        carried = embedded_ipv4(addr)
        if carried is None:
            if _is_forbidden_v6(addr):
                raise _refused(str(addr))
            return
        for v4 in carried:
            if not self._is_exempt(v4) and _is_forbidden_v4(v4):
                raise _refused(f"{addr}, which carries {v4}")

    def check_host(self, host: str | None) -> None:
        """Raise AddressNotAllowed if fetch.allowed_hosts is set and `host` is not on it.

        Names match exactly, ignoring case and a trailing dot; an entry
        "*.example.com" matches every name below example.com, not example.com.
        """
        if not self._hosts:
            return
        name = _normalise_host(host or "")
        if name in self._hosts:
            return
        labels = name.split(".")
        for i in range(1, len(labels)):
            if "*." + ".".join(labels[i:]) in self._hosts:
                return
        raise AddressNotAllowed(f"host not allowed: {host}")

    def check_host_spelling(self, host: str) -> None:
        """Refuse legacy numeric spellings of IPv4 addresses ("http://0x7f.1/").

        The address they mean is refused as usual; a public address spelled
        that way is refused too, since no honest URL needs it.
        """
        addr = legacy_ipv4(host)
        if addr is None:
            return
        self.check_address(addr)
        raise AddressNotAllowed(f"address not allowed: {host} (an unusual spelling of {addr})")

    def _is_exempt(self, addr: IPAddress) -> bool:
        return any(addr.version == net.version and addr in net for net in self._exempt)


def _refused(address: str) -> AddressNotAllowed:
    """The refusal of a forbidden address, naming the setting that would allow it."""
    return AddressNotAllowed(f"address not allowed: {address} ({ALLOW_HINT})")


def _parse_address(ip: str | IPAddress) -> IPAddress:
    if not isinstance(ip, str):
        return ip
    try:
        # getaddrinfo() may answer "fe80::1%eth0"; the zone does not change the verdict.
        return ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        raise AddressNotAllowed(f"address not allowed: {ip!r} is not an IP address") from None


def _is_forbidden_v4(addr: ipaddress.IPv4Address) -> bool:
    return any(addr in net for net in _FORBIDDEN_V4)


def _is_forbidden_v6(addr: ipaddress.IPv6Address) -> bool:
    return addr not in _GLOBAL_UNICAST_V6 or any(addr in net for net in _FORBIDDEN_V6)


def _normalise_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def _allowed_host_entry(entry: str) -> str:
    """An allowed_hosts entry as URLs spell it: lower case, IDNA-encoded."""
    name = _normalise_host(entry)
    if name.isascii():
        return name
    prefix, rest = ("*.", name[2:]) if name.startswith("*.") else ("", name)
    try:
        return prefix + rest.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(f"fetch.allowed_hosts: {entry!r} is not a host name") from None


# --- enforcement ----------------------------------------------------------------


def guarded_socket_factory(guard: NetGuard) -> SocketFactoryType:
    """A socket factory for aiohappyeyeballs that refuses forbidden addresses.

    aiohttp hands it each (family, type, proto, canonname, sockaddr) right
    before connecting the socket to sockaddr.
    """

    def create(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        try:
            guard.check_address(str(sockaddr[0]))
        except AddressNotAllowed as exc:
            log.warning("refused to connect: %s", exc.message)
            raise AddressRefusedError(exc) from None
        return socket.socket(family=family, type=type_, proto=proto)

    return create


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that only connects to addresses the guard allows.

    aiohttp routes every direct connection, and the connection to a proxy,
    through `_resolve_host`, which returns the addresses it will then dial:
    IP literals come back unresolved, names from the resolver or the DNS cache.
    Checking its result covers all of them; if any address is refused, the
    host is refused, before any connection is attempted.
    """

    def __init__(self, guard: NetGuard, **kwargs: Any) -> None:
        if "socket_factory" in kwargs:
            raise TypeError("GuardedConnector sets its own socket_factory")
        super().__init__(socket_factory=guarded_socket_factory(guard), **kwargs)
        self.guard = guard

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Trace] | None = None
    ) -> list[ResolveResult]:
        self.guard.check_host_spelling(host)
        hosts = await super()._resolve_host(host, port, traces=traces)
        for entry in hosts:
            self.guard.check_address(entry["host"])
        return hosts


def find_refusal(exc: BaseException) -> AddressNotAllowed | None:
    """The guard's refusal behind a failed connection, however aiohttp wrapped it.

    For every client of a guarded session (the fetcher, webhook deliveries): a refused
    address must be reported as a refusal, not as a connection error worth retrying.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, AddressNotAllowed):
            # A fresh error: re-raising `current` "from" its own wrapper would chain in a loop.
            return AddressNotAllowed(current.message)
        if isinstance(current, AddressRefusedError):
            return AddressNotAllowed(current.refusal.message)
        if isinstance(current, aiohttp.ClientConnectorError):
            current = current.os_error
        else:
            current = current.__cause__ or current.__context__
    return None


def create_session(
    settings: FetchSettings, guard: NetGuard, *, total_timeout: float | None = None
) -> aiohttp.ClientSession:
    """The one way to make a session for URLs from outside (images, webhooks).

    Keep-alive pooling with at most `settings.concurrency` connections in use
    (`max_in_flight` when the count follows the need, see inflight.py; 0: no cap)
    and `per_host` to one host, no cookies, no proxies from the environment, and
    every connection guarded. Must be called with an event loop running; the
    caller closes the session.
    """
    connector = GuardedConnector(
        guard,
        limit=settings.concurrency or settings.max_in_flight,
        limit_per_host=settings.per_host,
    )
    timeout = aiohttp.ClientTimeout(
        total=settings.timeout if total_timeout is None else total_timeout,
        sock_connect=settings.connect_timeout,
        sock_read=settings.read_timeout,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers={"User-Agent": settings.user_agent},
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=True,
    )


# --- checking ahead of time -----------------------------------------------------


async def check_destination(guard: NetGuard, host: str, port: int) -> None:
    """Check now every address `host` stands for, without connecting to any.

    For URLs that are accepted now and dialled later, such as a webhook URL
    given at upload: the user hears at once that it can never be reached. It
    does not replace the connector's check when the connection is made (the
    name may resolve differently by then). `host` is as a URL carries it
    (IPv6 without brackets, IDNA-encoded). Raises AddressNotAllowed for a
    refused address or spelling; OSError (socket.gaierror) when the name does
    not resolve. Wrap it in asyncio.timeout: resolving may take long.
    """
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        literal = None
    if literal is not None:
        guard.check_address(literal)
        return
    guard.check_host_spelling(host)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise socket.gaierror(socket.EAI_NONAME, f"no address for {host}")
    for _family, _type, _proto, _canon, sockaddr in infos:
        guard.check_address(str(sockaddr[0]))
