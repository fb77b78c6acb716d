"""The SSRF guard's address policy, table-driven from the IANA registries it carries.

Every row is sampled at its first, middle and last address; every refused IPv4 sample is
also tried inside each IPv6 form that embeds IPv4, built here from the RFCs' bit layouts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest

from services.gateway.ssrf import (
    EMBEDDINGS,
    IPV4_SPECIAL_PURPOSE,
    IPV6_GLOBAL_UNICAST,
    IPV6_SPECIAL_PURPOSE,
    MULTICAST,
    AddressBlock,
    IPAddress,
    Network,
    address_refusal,
)

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
PUBLIC_V4 = V4("93.184.216.34")

# The rows that pass by the registry: reachable, and no unreachable row above them. The
# reachable rows nested in an unreachable parent (192.0.0.9 in 192.0.0.0/24, 2001:1::1 in
# 2001::/23, ...) are refused with it. 64:ff9b::/96 passes or not by its embedded address.
PASSING_ROWS = frozenset(
    {"192.31.196.0/24", "192.52.193.0/24", "192.175.48.0/24", "2620:4f:8000::/48"}
)
NAT64_WELL_KNOWN = "64:ff9b::/96"


def _mask32(value: int) -> int:
    return value & 0xFFFFFFFF


# Each IPv6 form that carries an IPv4 address, assembled from its RFC's layout; the Teredo
# forms carry a public address in their other IPv4 field.
FORMS: dict[str, Callable[[V4], V6]] = {
    "mapped ::ffff:a.b.c.d": lambda v4: V6((0xFFFF << 32) | int(v4)),
    "translated ::ffff:0:a.b.c.d": lambda v4: V6((0xFFFF << 48) | int(v4)),
    "compatible ::a.b.c.d": lambda v4: V6(int(v4)),
    "NAT64 64:ff9b::a.b.c.d": lambda v4: V6((0x64FF9B << 96) | int(v4)),
    "NAT64 local 64:ff9b:1::a.b.c.d": lambda v4: V6((0x64FF9B0001 << 80) | int(v4)),
    "6to4 2002:V4::1": lambda v4: V6((0x2002 << 112) | (int(v4) << 80) | 1),
    "Teredo server": lambda v4: V6((0x20010000 << 96) | (int(v4) << 64) | _mask32(~int(PUBLIC_V4))),
    "Teredo client": lambda v4: V6(
        (0x20010000 << 96) | (int(PUBLIC_V4) << 64) | (0x8000 << 48) | _mask32(~int(v4))
    ),
}


def _samples(network: Network) -> list[IPAddress]:
    first, last = int(network.network_address), int(network.broadcast_address)
    return [ipaddress.ip_address(n) for n in sorted({first, (first + last) // 2, last})]


def _cases(rows: tuple[AddressBlock, ...]) -> list[tuple[str, IPAddress]]:
    return [(str(row.network), address) for row in rows for address in _samples(row.network)]


def _refused_rows(rows: tuple[AddressBlock, ...]) -> tuple[AddressBlock, ...]:
    return tuple(r for r in rows if str(r.network) not in PASSING_ROWS | {NAT64_WELL_KNOWN})


REFUSED_V4 = _cases(_refused_rows(IPV4_SPECIAL_PURPOSE) + MULTICAST[:1])
REFUSED_V6 = _cases(_refused_rows(IPV6_SPECIAL_PURPOSE) + MULTICAST[1:])
PASSING = _cases(
    tuple(r for r in IPV4_SPECIAL_PURPOSE + IPV6_SPECIAL_PURPOSE if str(r.network) in PASSING_ROWS)
)


@pytest.mark.parametrize(("row", "address"), REFUSED_V4 + REFUSED_V6)
def test_every_unreachable_row_is_refused(row: str, address: IPAddress) -> None:
    """The first, middle and last address of each not-globally-reachable row are refused."""
    assert address_refusal(address) is not None, f"{address} of {row} passed"


@pytest.mark.parametrize(("row", "address"), REFUSED_V4)
@pytest.mark.parametrize("form", sorted(FORMS))
def test_refused_ipv4_is_refused_in_every_ipv6_form(row: str, address: V4, form: str) -> None:
    """A refused IPv4 address is refused inside every IPv6 form, for what it carries."""
    wrapped = FORMS[form](address)
    cause = address_refusal(wrapped)
    assert cause is not None, f"{wrapped} ({form} of {address}, {row}) passed"
    if int(address) > 1:  # ::0.0.0.0 and ::0.0.0.1 are :: and ::1, refused as themselves
        assert f"carrying {address}," in cause, cause


@pytest.mark.parametrize(("row", "address"), PASSING)
def test_reachable_rows_pass(row: str, address: IPAddress) -> None:
    """Rows the registry calls globally reachable, under no unreachable parent, pass."""
    assert address_refusal(address) is None


@pytest.mark.parametrize("address", [PUBLIC_V4, V4("8.8.8.8"), V4("192.31.196.1")])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_public_ipv4_passes_only_through_the_nat64_well_known_prefix(
    address: V4, form: str
) -> None:
    """64:ff9b::/96 maps one to one; the other forms are refused whatever they carry."""
    wrapped = FORMS[form](address)
    assert (address_refusal(wrapped) is None) == form.startswith("NAT64 64:ff9b::"), wrapped


def _covered(address: IPAddress) -> bool:
    rows = IPV4_SPECIAL_PURPOSE + IPV6_SPECIAL_PURPOSE + MULTICAST
    in_a_row = any(r.network.version == address.version and address in r.network for r in rows)
    return in_a_row or (address.version == 6 and address not in IPV6_GLOBAL_UNICAST)


def _neighbours() -> list[IPAddress]:
    """Return the addresses just outside each row that no row covers."""
    found: set[IPAddress] = set()
    for row in IPV4_SPECIAL_PURPOSE + IPV6_SPECIAL_PURPOSE + MULTICAST:
        kind = V4 if row.network.version == 4 else V6
        for value in (int(row.network.network_address) - 1, int(row.network.broadcast_address) + 1):
            if 0 <= value < 2**row.network.max_prefixlen and not _covered(kind(value)):
                found.add(kind(value))
    return sorted(found, key=lambda a: (a.version, int(a)))


@pytest.mark.parametrize("address", _neighbours(), ids=str)
def test_addresses_next_to_a_row_pass(address: IPAddress) -> None:
    """The guard refuses no more than the rows: the address beside each one passes."""
    assert address_refusal(address) is None


@pytest.mark.parametrize(
    ("address", "named"),
    [
        # what the outside test reached, and what else it named (issue 10, item 3)
        (
            "::ffff:0:7f00:1",
            "IPv4-translated (RFC 2765, Section 2.1) carrying 127.0.0.1, which is Loopback",
        ),
        ("::ffff:0:a9fe:a9fe", "carrying 169.254.169.254, which is Link Local (169.254.0.0/16"),
        ("2001:2::1", "Benchmarking (2001:2::/48, RFC 5180"),
        ("3fff::1", "Documentation (3fff::/20, RFC 9637)"),
        ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", "Documentation (3fff::/20, RFC 9637)"),
        ("5f00::1", "Segment Routing (SRv6) SIDs (5f00::/16, RFC 9602)"),
        ("64:ff9b:1::808:808", "IPv4-IPv6 Translat. (64:ff9b:1::/48, RFC 8215)"),
        ("100::1", "Discard-Only Address Block (100::/64, RFC 6666)"),
        ("100:0:0:1::1", "Dummy IPv6 Prefix (100:0:0:1::/64, RFC 9780)"),
        ("2002:808:808::1", "6to4 (2002::/16, RFC 3056)"),
        (
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "Teredo client, obfuscated (RFC 4380) carrying 192.0.2.45",
        ),
        ("2001:1::1", "IETF Protocol Assignments (2001::/23, RFC 2928)"),
        ("192.0.0.9", "IETF Protocol Assignments (192.0.0.0/24"),
        ("192.88.99.1", "Deprecated (6to4 Relay Anycast) (192.88.99.0/24, RFC 7526)"),
        ("240.0.0.1", "Reserved (240.0.0.0/4"),
        ("0.1.2.3", '"This network" (0.0.0.0/8'),
        ("0.0.0.0", '"This host on this network" (0.0.0.0/32'),
        ("fec0::1", "outside 2000::/3"),
        ("::ffff:0:808:808", "outside 2000::/3"),
        ("fe80::1%eth0", "Link-Local Unicast (fe80::/10"),
        # cloud metadata services: AWS, AWS over IPv6, ECS tasks, Alibaba, Oracle
        ("169.254.169.254", "Link Local"),
        ("fd00:ec2::254", "Unique-Local (fc00::/7"),
        ("169.254.170.2", "Link Local"),
        ("100.100.100.200", "Shared Address Space (100.64.0.0/10"),
        ("192.0.0.192", "IETF Protocol Assignments (192.0.0.0/24"),
    ],
)
def test_refusals_name_the_registry_row(address: str, named: str) -> None:
    """The reason names the most specific row refused, and the IPv4 address a form carries."""
    cause = address_refusal(ipaddress.ip_address(address))
    assert cause is not None and named in cause, cause


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001::200e",
        "64:ff9b::808:808",
        "2620:4f:8000::1",
    ],
)
def test_public_addresses_pass(address: str) -> None:
    """Ordinary public unicast addresses, and NAT64 of a public one, pass."""
    assert address_refusal(ipaddress.ip_address(address)) is None


def test_the_tables_hold_the_current_registries() -> None:
    """Every row of both registries (2025-10-09) is carried, the issue's ones among them."""
    v4 = {str(r.network) for r in IPV4_SPECIAL_PURPOSE}
    v6 = {str(r.network) for r in IPV6_SPECIAL_PURPOSE}
    assert len(v4) == len(IPV4_SPECIAL_PURPOSE) == 26
    assert len(v6) == len(IPV6_SPECIAL_PURPOSE) == 25
    assert {"0.0.0.0/8", "192.88.99.0/24", "240.0.0.0/4", "192.0.0.8/32"} <= v4
    assert {
        "3fff::/20",
        "5f00::/16",
        "2001:2::/48",
        "64:ff9b:1::/48",
        "100::/64",
        "100:0:0:1::/64",
        "2002::/16",
        "2001::/32",
        "::ffff:0:0/96",
    } <= v6


def test_the_docs_list_every_refused_block() -> None:
    """docs/gateway.md lists each registry row, the multicast blocks and every IPv4 form."""
    docs = (Path(__file__).parents[2] / "docs" / "gateway.md").read_text()
    rows = IPV4_SPECIAL_PURPOSE + IPV6_SPECIAL_PURPOSE + MULTICAST
    missing = [str(r.network) for r in rows if f"`{r.network}`" not in docs]
    missing += [str(e.network) for e in EMBEDDINGS if f"`{e.network}`" not in docs]
    if f"`{IPV6_GLOBAL_UNICAST}`" not in docs:
        missing.append(str(IPV6_GLOBAL_UNICAST))
    assert not missing, f"docs/gateway.md does not list {missing}"
