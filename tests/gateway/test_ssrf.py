"""The SSRF guard: literal, encoded, named and resolved destinations, pinning, proxies."""

from __future__ import annotations

import grpc
import httpx
import pytest

from services.gateway.app import guarded_client
from services.gateway.ssrf import Allowlist, DestinationBlockedError, Guard
from tests.gateway.helpers import GatewayStack, ToolServer
from tests.harness import expect_error

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

REFUSED_URLS = [
    # IPv4 literals
    "http://127.0.0.1/",
    "http://127.0.0.2/",
    "http://0.0.0.0/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.169.123/",
    "http://100.64.0.1/",
    "http://198.18.0.1/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    # IPv6 literals and IPv4 embedded in IPv6
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:7f00:1::]/",
    "http://[::127.0.0.1]/",
    "http://[::ffff:0:7f00:1]/",
    "http://[::ffff:0:a9fe:a9fe]/",
    "http://[64:ff9b:1::a9fe:a9fe]/",
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
    "http://[2001:2::1]/",
    "http://[3fff::1]/",
    "http://[5f00::1]/",
    "http://[100:0:0:1::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fc00::1]/",
    "http://[fd00:ec2::254]/",
    "http://[fe80::1]/",
    "http://[ff02::1]/",
    # numeric encodings of loopback
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://017700000001/",
    # internal names
    "http://localhost/",
    "http://foo.localhost/",
    "http://metadata.google.internal/",
    "http://metadata.azure.internal/",
    "http://anything.internal/",
    "http://printer.local/",
    "http://api.default.svc.cluster.local/",
    # schemes and userinfo
    "file:///etc/passwd",
    "ftp://example.com/",
    "gopher://example.com/",
    "https://user:pass@example.com/",
    "https://good.com@127.0.0.1/",
]


async def _no_dns(host: str, port: int) -> list[str]:
    raise OSError("the test resolver knows no names")


@pytest.mark.parametrize("url", REFUSED_URLS)
async def test_guard_refuses(url: str) -> None:
    """Each internal, encoded, embedded, named or malformed destination is refused."""
    guard = Guard(Allowlist(), _no_dns)
    # httpx itself refuses some spellings (0177.0.0.1) as invalid URLs: refused too.
    with pytest.raises((DestinationBlockedError, httpx.InvalidURL)):
        host, port = guard.check_url(httpx.URL(url))
        await guard.vet(host, port)


def _resolver(answers: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    return resolve


@pytest.mark.parametrize(
    "answer",
    [
        ["10.1.2.3"],
        ["93.184.216.34", "10.0.0.1"],
        ["::ffff:169.254.169.254"],
        ["::ffff:0:7f00:1"],
        ["93.184.216.34", "::ffff:0:a9fe:a9fe"],
        ["2001:2::1"],
        ["3fff::1"],
        ["fe80::1%eth0"],
        [],
    ],
)
async def test_names_resolving_to_internal_addresses_are_refused(answer: list[str]) -> None:
    """A name resolving to a refused address, alone or beside a public one, is refused."""
    guard = Guard(Allowlist(), _resolver({"tools.example": answer}))
    with pytest.raises(DestinationBlockedError) as refused:
        await guard.vet("tools.example", 443)
    assert "tools.example" in refused.value.cause


async def test_public_answer_passes() -> None:
    """A name resolving only to public addresses passes."""
    guard = Guard(Allowlist(), _resolver({"tools.example": ["93.184.216.34", "2606:2800::1"]}))
    assert len(await guard.vet("tools.example", 443)) == 2


async def test_allowlist_lets_exactly_that_destination_through() -> None:
    """An allowlisted host:port passes; another port on the same address does not."""
    guard = Guard(Allowlist.parse(["127.0.0.1:8080"]), _no_dns)
    await guard.vet("127.0.0.1", 8080)
    with pytest.raises(DestinationBlockedError):
        await guard.vet("127.0.0.1", 8081)


async def test_allowlist_does_not_extend_to_ipv6_forms_of_an_entry() -> None:
    """Allowlisting 127.0.0.1:8080 or 10.0.0.0/8 lets no IPv6 form of them through."""
    guard = Guard(Allowlist.parse(["127.0.0.1:8080", "10.0.0.0/8"]), _no_dns)
    for host in ("::ffff:7f00:1", "::ffff:0:7f00:1", "64:ff9b::7f00:1", "::ffff:a00:1"):
        with pytest.raises(DestinationBlockedError):
            await guard.vet(host, 8080)
    await guard.vet("10.9.8.7", 8080)


async def test_allowlist_refuses_everything_wide_entries() -> None:
    """An allowlist entry that would allow every address is a configuration error."""
    for entry in ("0.0.0.0/0", "::/0", "nonsense"):
        with pytest.raises(ValueError, match="allowlist entry"):
            Allowlist.parse([entry])


async def test_transport_dials_the_vetted_address_keeping_host() -> None:
    """The connection goes to the checked address, with the original Host header."""
    server = ToolServer()
    await server.start()
    try:
        calls = {"n": 0}

        async def rebinding(host: str, port: int) -> list[str]:
            calls["n"] += 1
            return ["127.0.0.1"]

        guard = Guard(Allowlist.parse([f"127.0.0.1:{server.port}"]), rebinding)
        async with guarded_client(guard) as client:
            response = await client.get(f"http://tools.example:{server.port}/echo/x")
        assert response.status_code == 200 and calls["n"] == 1
        assert response.json()["item"] == "x"
    finally:
        await server.stop()


async def test_proxy_variables_do_not_route_around_the_guard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY in the environment is ignored: the guarded client connects directly."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    server = ToolServer()
    await server.start()
    try:
        guard = Guard(Allowlist.parse([f"127.0.0.1:{server.port}"]), _no_dns)
        async with guarded_client(guard) as client:
            response = await client.get(f"{server.base}/echo/y")
        assert response.status_code == 200
    finally:
        await server.stop()


async def test_registration_refuses_internal_destinations(gw_stack: GatewayStack) -> None:
    """Registering a tool or MCP server at an internal address fails with DESTINATION_BLOCKED."""
    for url in ("http://169.254.169.254/x", "http://0x7f000001/", "http://localhost:80/"):
        await expect_error(
            gw_stack.add_http_tool(gw_stack.owner, "bad", url),
            grpc.StatusCode.INVALID_ARGUMENT,
            "DESTINATION_BLOCKED",
        )


async def test_call_time_refusal_is_audited(gw_stack: GatewayStack) -> None:
    """A name that fails to resolve at call time is refused (fail closed) and audited."""
    await gw_stack.add_http_tool(gw_stack.owner, "unresolvable", "http://tools.invalid/x")
    response = await gw_stack.call(gw_stack.owner, "unresolvable")
    assert response.error_code == "DESTINATION_BLOCKED"
    row = (await gw_stack.audit())[-1]
    assert row["outcome"] == "DESTINATION_BLOCKED" and "tools.invalid" in row["detail"]
