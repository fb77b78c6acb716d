"""ListToolCalls over every run of a workspace ("sessions/-/runs/-", AIP-159)."""

from __future__ import annotations

import grpc
from agentplatform.v1 import tool_pb2, tool_service_pb2

from tests.gateway.helpers import GatewayStack
from tests.harness import Client, expect_error

EVERY_RUN = "sessions/-/runs/-"


async def _list(
    gw_stack: GatewayStack, client: Client, page_size: int = 0, token: str = ""
) -> tool_service_pb2.ListToolCallsResponse:
    return await gw_stack.tool_api(client).ListToolCalls(
        tool_service_pb2.ListToolCallsRequest(
            parent=EVERY_RUN, page_size=page_size, page_token=token
        ),
        metadata=client.auth,
        timeout=10,
    )


async def test_every_runs_tool_calls_newest_first_in_pages(gw_stack: GatewayStack) -> None:
    """Calls of several runs and sessions come newest first, page by page, with their runs."""
    owner = await gw_stack.stack.new_workspace("Calls")
    await gw_stack.add_http_tool(owner, "ping", gw_stack.tools.base + "/echo")
    first, _ = await gw_stack.run(owner, "[[tool=ping]] [[tool=ping]]")
    second, _ = await gw_stack.run(owner, "[[tool=ping]]")
    page = await _list(gw_stack, owner, page_size=2)
    rest = await _list(gw_stack, owner, page_size=2, token=page.next_page_token)
    calls = [*page.tool_calls, *rest.tool_calls]
    assert not rest.next_page_token
    assert [c.name.split("/toolCalls/")[0] for c in calls] == [second, first, first]
    assert len({c.name for c in calls}) == 3
    assert all(c.state == tool_pb2.ToolCall.SUCCEEDED and c.tool == "ping" for c in calls)
    assert calls[0].start_time.ToDatetime() >= calls[-1].start_time.ToDatetime()


async def test_another_workspace_sees_none_of_them(gw_stack: GatewayStack) -> None:
    """The wildcard reads the caller's workspace only; a malformed one is INVALID_ARGUMENT."""
    owner = await gw_stack.stack.new_workspace("Mine")
    await gw_stack.add_http_tool(owner, "ping", gw_stack.tools.base + "/echo")
    await gw_stack.run(owner, "[[tool=ping]]")
    stranger = await gw_stack.stack.new_workspace("Theirs")
    assert list((await _list(gw_stack, stranger)).tool_calls) == []
    await expect_error(
        gw_stack.tool_api(owner).ListToolCalls(
            tool_service_pb2.ListToolCallsRequest(parent="sessions/-/runs/x"),
            metadata=owner.auth,
            timeout=10,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
