"""The SSRF guard: which destinations a tool call may reach, checked when it connects.

    URL ─► check_url (scheme, userinfo, host names) ─► resolve ─► every address checked
        ─► dial the first vetted address, keeping Host and SNI (GuardedTransport)

An address passes only when it is globally reachable unicast (`address_refusal`):

 1. every IPv4 address an IPv6 form carries passes (IPv4-mapped, -translated, -compatible,
    NAT64 well-known and local-use, 6to4, Teredo server and client);
 2. every row of the IANA special-purpose registries covering it says "globally reachable:
    True" — False, N/A and a terminated row all refuse, and so does a non-reachable parent
    row over a reachable child (192.0.0.9 inside 192.0.0.0/24);
 3. it is not multicast, and an IPv6 address lies in 2000::/3, the only space IANA allocates
    as global unicast, unless a reachable row covers it (64:ff9b::/96).

So only the NAT64 well-known prefix passes an embedded IPv4 address on its merit: it maps
one to one, while a 6to4 or Teredo address reaches a host behind its IPv4 address. A name
passes when every address it resolves to does. Only the operator's allowlist (exact CIDRs or
host:port destinations) lets a refused destination through. Python's `ipaddress.is_global`
is no filter: it calls 224.0.0.1 and `64:ff9b::a9fe:a9fe` (metadata through NAT64) global.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) → the addresses it resolves to, as strings.
Resolver = Callable[[str, int], Awaitable[list[str]]]


@dataclass(frozen=True)
class AddressBlock:
    """One row of an IANA address registry: the block, its name, its RFCs, its reachability.

    `globally_reachable` is the registry's column; None where it says N/A or leaves it blank
    (a terminated row).
    """

    network: Network
    name: str
    rfc: str
    globally_reachable: bool | None

    def __str__(self) -> str:
        return f"{self.name} ({self.network}, {self.rfc})"


def _rows(*rows: tuple[str, str, str, bool | None]) -> tuple[AddressBlock, ...]:
    return tuple(AddressBlock(ipaddress.ip_network(c), n, r, g) for c, n, r, g in rows)


# The IANA IPv4 Special-Purpose Address Registry, every row, as updated 2025-10-09
# (https://www.iana.org/assignments/iana-ipv4-special-registry). When IANA adds a row, add it
# here and to docs/gateway.md (a test fails when the page misses one).
IPV4_SPECIAL_PURPOSE = _rows(
    ("0.0.0.0/8", '"This network"', "RFC 791, Section 3.2", False),
    ("0.0.0.0/32", '"This host on this network"', "RFC 1122, Section 3.2.1.3", False),
    ("10.0.0.0/8", "Private-Use", "RFC 1918", False),
    ("100.64.0.0/10", "Shared Address Space", "RFC 6598", False),
    ("127.0.0.0/8", "Loopback", "RFC 1122, Section 3.2.1.3", False),
    ("169.254.0.0/16", "Link Local", "RFC 3927", False),
    ("172.16.0.0/12", "Private-Use", "RFC 1918", False),
    ("192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890, Section 2.1", False),
    ("192.0.0.0/29", "IPv4 Service Continuity Prefix", "RFC 7335", False),
    ("192.0.0.8/32", "IPv4 dummy address", "RFC 7600", False),
    ("192.0.0.9/32", "Port Control Protocol Anycast", "RFC 7723", True),
    ("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", "RFC 8155", True),
    ("192.0.0.170/32", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050 Section 2.2", False),
    ("192.0.0.171/32", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050 Section 2.2", False),
    ("192.0.2.0/24", "Documentation (TEST-NET-1)", "RFC 5737", False),
    ("192.31.196.0/24", "AS112-v4", "RFC 7535", True),
    ("192.52.193.0/24", "AMT", "RFC 7450", True),
    ("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", "RFC 7526", None),
    ("192.88.99.2/32", "6a44-relay anycast address", "RFC 6751", False),
    ("192.168.0.0/16", "Private-Use", "RFC 1918", False),
    ("192.175.48.0/24", "Direct Delegation AS112 Service", "RFC 7534", True),
    ("198.18.0.0/15", "Benchmarking", "RFC 2544", False),
    ("198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737", False),
    ("203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737", False),
    ("240.0.0.0/4", "Reserved", "RFC 1112, Section 4", False),
    ("255.255.255.255/32", "Limited Broadcast", "RFC 8190, RFC 919 Section 7", False),
)

# The IANA IPv6 Special-Purpose Address Registry, every row, as updated 2025-10-09
# (https://www.iana.org/assignments/iana-ipv6-special-registry).
IPV6_SPECIAL_PURPOSE = _rows(
    ("::1/128", "Loopback Address", "RFC 4291", False),
    ("::/128", "Unspecified Address", "RFC 4291", False),
    ("::ffff:0:0/96", "IPv4-mapped Address", "RFC 4291", False),
    ("64:ff9b::/96", "IPv4-IPv6 Translat.", "RFC 6052", True),
    ("64:ff9b:1::/48", "IPv4-IPv6 Translat.", "RFC 8215", False),
    ("100::/64", "Discard-Only Address Block", "RFC 6666", False),
    ("100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780", False),
    ("2001::/23", "IETF Protocol Assignments", "RFC 2928", False),
    ("2001::/32", "TEREDO", "RFC 4380, RFC 8190", None),
    ("2001:1::1/128", "Port Control Protocol Anycast", "RFC 7723", True),
    ("2001:1::2/128", "Traversal Using Relays around NAT Anycast", "RFC 8155", True),
    ("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", "RFC 9665", True),
    ("2001:2::/48", "Benchmarking", "RFC 5180, RFC Errata 1752", False),
    ("2001:3::/32", "AMT", "RFC 7450", True),
    ("2001:4:112::/48", "AS112-v6", "RFC 7535", True),
    ("2001:10::/28", "Deprecated (previously ORCHID)", "RFC 4843", None),
    ("2001:20::/28", "ORCHIDv2", "RFC 7343", True),
    ("2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", "RFC 9374", True),
    ("2001:db8::/32", "Documentation", "RFC 3849", False),
    ("2002::/16", "6to4", "RFC 3056", None),
    ("2620:4f:8000::/48", "Direct Delegation AS112 Service", "RFC 7534", True),
    ("3fff::/20", "Documentation", "RFC 9637", False),
    ("5f00::/16", "Segment Routing (SRv6) SIDs", "RFC 9602", False),
    ("fc00::/7", "Unique-Local", "RFC 4193, RFC 8190", False),
    ("fe80::/10", "Link-Local Unicast", "RFC 4291", False),
)

# Not unicast: the multicast address space registries (not special-purpose rows).
MULTICAST = _rows(
    ("224.0.0.0/4", "Multicast", "RFC 5771", False),
    ("ff00::/8", "Multicast", "RFC 4291, Section 2.7", False),
)
# The IPv6 Address Space registry allocates only this block as global unicast; the rest is
# reserved by the IETF (::/8 holds the embedded-IPv4 forms, fec0::/10 the deprecated
# site-local addresses).
IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def _low32(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


def _sixtofour(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)


def _teredo_server(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address((int(address) >> 64) & 0xFFFFFFFF)


def _teredo_client(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(~int(address) & 0xFFFFFFFF)  # stored bit-inverted


@dataclass(frozen=True)
class Embedding:
    """An IPv6 form that carries an IPv4 address, and where in the form it sits."""

    network: ipaddress.IPv6Network
    form: str
    extract: Callable[[ipaddress.IPv6Address], ipaddress.IPv4Address]


def _embedding(
    cidr: str, form: str, extract: Callable[[ipaddress.IPv6Address], ipaddress.IPv4Address]
) -> Embedding:
    return Embedding(ipaddress.IPv6Network(cidr), form, extract)


EMBEDDINGS = (
    _embedding("::ffff:0:0/96", "IPv4-mapped (RFC 4291, Section 2.5.5.2)", _low32),
    _embedding("::ffff:0:0:0/96", "IPv4-translated (RFC 2765, Section 2.1)", _low32),
    _embedding("::/96", "IPv4-compatible (RFC 4291, Section 2.5.5.1)", _low32),
    _embedding("64:ff9b::/96", "NAT64 well-known prefix (RFC 6052)", _low32),
    # Refused whole (not globally reachable); its operator may embed at any RFC 6052 prefix
    # length, so the /96 reading only sharpens the reason given.
    _embedding("64:ff9b:1::/48", "NAT64 local-use prefix (RFC 8215)", _low32),
    _embedding("2002::/16", "6to4 (RFC 3056)", _sixtofour),
    _embedding("2001::/32", "Teredo server (RFC 4380)", _teredo_server),
    _embedding("2001::/32", "Teredo client, obfuscated (RFC 4380)", _teredo_client),
)


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """Return every IPv4 address an IPv6 address carries, each with the form carrying it."""
    if int(address) <= 1:
        return []  # :: and ::1 are themselves, not IPv4-compatible 0.0.0.0 and 0.0.0.1
    return [(e.form, e.extract(address)) for e in EMBEDDINGS if address in e.network]


def _covering_rows(address: IPAddress) -> list[AddressBlock]:
    tables = (IPV4_SPECIAL_PURPOSE, IPV6_SPECIAL_PURPOSE, MULTICAST)
    return [
        block
        for table in tables
        for block in table
        if block.network.version == address.version and address in block.network
    ]


def address_refusal(address: IPAddress) -> str | None:
    """Say why an address is not a globally reachable unicast destination, or None."""
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(int(address))  # a zone (%eth0) only picks a link
        for form, inner in embedded_ipv4(address):
            cause = address_refusal(inner)
            if cause is not None:
                return f"{form} carrying {inner}, which is {cause}"
    blocks = _covering_rows(address)
    # The most specific unreachable row names the cause (192.0.0.8 is "IPv4 dummy address").
    for block in sorted(blocks, key=lambda b: -b.network.prefixlen):
        if block.globally_reachable is not True:
            return str(block)
    if (
        address.version == 6
        and address not in IPV6_GLOBAL_UNICAST
        and not any(b.globally_reachable for b in blocks)
    ):
        return f"outside {IPV6_GLOBAL_UNICAST}, the IPv6 global unicast space (RFC 4291)"
    return None


_DENIED_NAMES = frozenset(
    {"localhost", "metadata", "metadata.google.internal", "metadata.azure.internal"}
)
_DENIED_SUFFIXES = (".localhost", ".local", ".localdomain", ".internal")
ALLOWED_SCHEMES = frozenset({"http", "https"})


class DestinationBlockedError(Exception):
    """The guard refused a destination; `cause` says why, without any secret."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


@dataclass(frozen=True)
class Allowlist:
    """Destinations the operator lets through although the guard refuses them.

    Entries: a CIDR or an address ("127.0.0.1", "10.1.0.0/16"), or one destination
    "host:port" ("127.0.0.1:8080", "[::1]:8080", "tools.corp:443").
    """

    networks: tuple[Network, ...] = ()
    destinations: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        """Parse entries; ValueError names a malformed or everything-wide entry."""
        networks: list[Network] = []
        destinations: set[tuple[str, int]] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                host, sep, port = entry.rpartition(":")
                if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                    raise ValueError(
                        f"allowlist entry {entry!r} is neither a CIDR nor host:port"
                    ) from None
                destinations.add((_normal_host(host), int(port)))
                continue
            if network.prefixlen == 0:
                raise ValueError(f"allowlist entry {entry!r} would allow every address")
            networks.append(network)
        return cls(tuple(networks), frozenset(destinations))

    def allows(self, host: str, port: int, address: IPAddress | None = None) -> bool:
        """Tell whether this destination (or this resolved address of it) is allowlisted."""
        if (_normal_host(host), port) in self.destinations:
            return True
        if address is None:
            return False
        if (str(address), port) in self.destinations:
            return True
        return any(address.version == n.version and address in n for n in self.networks)


def _normal_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


async def system_resolve(host: str, port: int) -> list[str]:
    """Resolve a host with the system resolver (getaddrinfo also reads numeric encodings)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Guard:
    """Check URLs and resolve destinations, refusing all but globally reachable unicast."""

    def __init__(self, allowlist: Allowlist, resolve: Resolver = system_resolve) -> None:
        self.allowlist = allowlist
        self._resolve = resolve

    def check_url(self, url: httpx.URL) -> tuple[str, int]:
        """Check a URL's form (scheme, userinfo, host name); return its host and port."""
        if url.scheme not in ALLOWED_SCHEMES:
            raise DestinationBlockedError(f"scheme {url.scheme or '(none)'!r} is not allowed")
        if url.userinfo:
            raise DestinationBlockedError("URLs with user information are not allowed")
        host = _normal_host(url.host)
        if not host:
            raise DestinationBlockedError("the URL has no host")
        port = url.port or (443 if url.scheme == "https" else 80)
        if self.allowlist.allows(host, port):
            return host, port
        if host in _DENIED_NAMES or host.endswith(_DENIED_SUFFIXES):
            raise DestinationBlockedError(f"host name {host!r} is internal")
        return host, port

    async def vet(self, host: str, port: int) -> list[IPAddress]:
        """Resolve a destination and check every address; return them, in resolver order."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                resolved = await self._resolve(host, port)
            except OSError as err:
                # Fail closed: a name we cannot resolve now is not dialled by some other path.
                raise DestinationBlockedError(f"cannot resolve {host!r}: {err}") from None
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolved]
        if not addresses:
            raise DestinationBlockedError(f"{host!r} resolved to no address")
        for address in addresses:
            if self.allowlist.allows(host, port, address):
                continue
            cause = address_refusal(address)
            if cause is not None:
                shown = host if literal is not None else f"{host!r} resolves to {address}, which"
                raise DestinationBlockedError(f"{shown} is {cause}")
        return addresses


class GuardedTransport(httpx.AsyncBaseTransport):
    """Dial only vetted addresses: resolve and check at connect time, then pin the address.

    The request keeps its Host header and, for https, its SNI name and certificate check,
    so a DNS answer that changes between check and use (rebinding) cannot redirect it.
    """

    def __init__(self, guard: Guard, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._guard = guard
        self._inner = inner or httpx.AsyncHTTPTransport(retries=0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Vet the destination, pin its first address and send the request there."""
        host, port = self._guard.check_url(request.url)
        addresses = await self._guard.vet(host, port)
        pinned = addresses[0]
        if request.url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": host}
        request.url = request.url.copy_with(host=str(pinned))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._inner.aclose()
