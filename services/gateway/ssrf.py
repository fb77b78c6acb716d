"""The SSRF guard: which destinations a tool call may reach, checked when it connects.

    URL ─► check_url (scheme, userinfo, host names) ─► resolve ─► every address checked
        ─► dial the first vetted address, keeping Host and SNI (GuardedTransport)

Addresses are refused by an explicit deny list, after unwrapping the IPv4 address that
IPv4-mapped, IPv4-compatible, 6to4, Teredo and NAT64 IPv6 forms carry: Python's
`ipaddress.is_global` calls 224.0.0.1, `64:ff9b::a9fe:a9fe` (the metadata service through
NAT64) and `2002:7f00:1::` global, so it is no filter. A name that resolves to several
addresses is refused when any one of them is. Only the operator's allowlist (exact CIDRs or
host:port destinations) lets a refused destination through.
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

# Docker's pkg/remoteurl list, plus the metadata addresses named on their own for clearer causes.
_DENIED: tuple[tuple[str, str], ...] = (
    ("169.254.169.254/32", "cloud metadata"),
    ("169.254.169.123/32", "cloud metadata"),
    ("fd00:ec2::254/128", "cloud metadata"),
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b::/96", "NAT64"),
    ("64:ff9b:1::/48", "NAT64"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
DENIED_NETWORKS: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(cidr), cause) for cidr, cause in _DENIED
)
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


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address an IPv6 form carries (mapped, compatible, 6to4, Teredo, NAT64)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    packed = int(address)
    if packed >> 32 == 0 and packed > 1:  # ::a.b.c.d, the deprecated IPv4-compatible form
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    if address in ipaddress.IPv6Network("64:ff9b::/96"):
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress) -> str | None:
    """Say why an address is refused (e.g. "loopback"), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            cause = address_refusal(inner)
            if cause is not None:
                return f"{cause} (embedded in {address})"
    for network, cause in DENIED_NETWORKS:
        if address.version == network.version and address in network:
            return cause
    if address.version == 4 and address == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"
    return None


@dataclass(frozen=True)
class Allowlist:
    """Destinations the operator lets through despite the deny list.

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
    """Check URLs and resolve destinations, refusing what the deny list covers."""

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
