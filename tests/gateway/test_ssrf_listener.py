"""A real loopback listener, not allowlisted, stays out of reach by every IPv6 spelling of it."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import pytest_asyncio
from agentplatform.v1 import tool_pb2, tool_service_pb2

from services.gateway.ssrf import system_resolve
from tests.conftest import clone_database
from tests.gateway.helpers import GatewayStack, ToolServer, start_gateway_stack
from tests.harness import expect_error

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

# 127.0.0.1 in each IPv6 form that carries an IPv4 address.
LOOPBACK_FORMS = {
    "translated": "::ffff:0:7f00:1",
    "mapped": "::ffff:7f00:1",
    "compatible": "::7f00:1",
    "nat64": "64:ff9b::7f00:1",
    "nat64-local": "64:ff9b:1::7f00:1",
    "sixtofour": "2002:7f00:1::1",
    "teredo-server": "2001:0:7f00:1::f7f7:f7f7",
    "teredo-client": "2001:0:4136:e378:8000:63bf:80ff:fffe",
}


def _name(form: str) -> str:
    return f"{form}.loopback.test"


async def _resolve(host: str, port: int) -> list[str]:
    """Answer each `<form>.loopback.test` with that form; other names go to the system."""
    for form, address in LOOPBACK_FORMS.items():
        if host == _name(form):
            return [address]
    return await system_resolve(host, port)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    pg_admin_dsn: str, template_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayStack]:
    """Run a gateway stack whose resolver maps the test names to IPv6 forms of loopback."""
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    async with start_gateway_stack(dsn, tmp_path_factory.mktemp("vault"), resolve=_resolve) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="session")
async def listener() -> AsyncIterator[ToolServer]:
    """Serve HTTP on 127.0.0.1, on a port the gateway does not allowlist."""
    server = ToolServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_the_listener_answers_an_ipv6_spelling_of_loopback(listener: ToolServer) -> None:
    """Without the guard, [::ffff:7f00:1]:PORT reaches it: the refusals below are the guard's."""
    async with httpx.AsyncClient(trust_env=False) as plain:
        response = await plain.get(f"http://[::ffff:7f00:1]:{listener.port}/echo/direct")
    assert response.status_code == 200 and listener.received[-1]["item"] == "direct"


@pytest.mark.parametrize("form", sorted(LOOPBACK_FORMS))
async def test_registering_a_literal_form_is_refused(
    stack: GatewayStack, listener: ToolServer, form: str
) -> None:
    """An HTTP tool at [form of 127.0.0.1]:PORT is refused with DESTINATION_BLOCKED."""
    url = f"http://[{LOOPBACK_FORMS[form]}]:{listener.port}/echo/x"
    info = await expect_error(
        stack.add_http_tool(stack.owner, f"literal-{form}", url),
        grpc.StatusCode.INVALID_ARGUMENT,
        "DESTINATION_BLOCKED",
    )
    assert "carrying 127.0.0.1" in info.metadata["cause"], info.metadata["cause"]


@pytest.mark.parametrize("form", sorted(LOOPBACK_FORMS))
async def test_calling_a_name_that_resolves_to_a_form_is_refused(
    stack: GatewayStack, listener: ToolServer, form: str
) -> None:
    """A tool whose name resolves to a form of 127.0.0.1 fails DESTINATION_BLOCKED, unsent."""
    tool = f"named-{form}"
    await stack.add_http_tool(stack.owner, tool, f"http://{_name(form)}:{listener.port}/echo/x")
    response = await stack.call(stack.owner, tool)
    assert response.error_code == "DESTINATION_BLOCKED"
    row = (await stack.audit())[-1]
    assert row["outcome"] == "DESTINATION_BLOCKED"
    shown = str(ipaddress.ip_address(LOOPBACK_FORMS[form]))
    assert f"resolves to {shown}" in row["detail"], row["detail"]
    assert "carrying 127.0.0.1" in row["detail"], row["detail"]
    assert listener.received == []


async def test_an_mcp_server_by_such_a_name_is_refused(
    stack: GatewayStack, listener: ToolServer
) -> None:
    """Registering an MCP server whose name resolves to ::ffff:0:7f00:1 is refused."""
    api = stack.tool_api(stack.owner)
    await expect_error(
        api.CreateMcpServer(
            tool_service_pb2.CreateMcpServerRequest(
                mcp_server_id="translated",
                mcp_server=tool_pb2.McpServer(
                    url=f"http://{_name('translated')}:{listener.port}/mcp"
                ),
            ),
            metadata=stack.owner.auth,
            timeout=10,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "DESTINATION_BLOCKED",
    )
    assert listener.received == []
