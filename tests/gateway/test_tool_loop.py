"""End to end: runs call credentialed HTTP tools and MCP tools through the gateway."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from agentplatform.gateway.v1 import gateway_service_pb2 as gw
from agentplatform.v1 import (
    run_service_pb2,
    secret_service_pb2,
    secret_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    tool_pb2,
    tool_service_pb2,
)

from tests.gateway.helpers import GatewayStack
from tests.harness import Client, expect_error

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

ITEM_SCHEMA = {
    "type": "object",
    "properties": {"item": {"type": "string"}, "count": {"type": "integer"}},
    "required": ["item"],
    "additionalProperties": False,
}


async def _put_secret(
    gw_stack: GatewayStack, name: str, value: bytes, client: Client | None = None
) -> None:
    client = client or gw_stack.owner
    stub = secret_service_pb2_grpc.SecretServiceStub(client.channel)
    await stub.PutSecret(
        secret_service_pb2.PutSecretRequest(name=f"secrets/{name}", value=value),
        metadata=client.auth,
        timeout=10,
    )


async def test_run_calls_credentialed_http_tool(gw_stack: GatewayStack) -> None:
    """A run calls an HTTP tool; the tool receives the vault's credential; events and records."""
    value = gw_stack.guard.plant("github")
    await _put_secret(gw_stack, "github", value)
    await gw_stack.add_http_tool(
        gw_stack.owner,
        "lookup",
        gw_stack.tools.base + "/echo/{item}",
        parameters=ITEM_SCHEMA,
        credential="secrets/github",
        injection="header:X-Api-Key",
    )
    run, events = await gw_stack.run(
        gw_stack.owner, 'Look it up [[tool=lookup args={"item": "a/b", "count": 2}]]'
    )
    types = [e.type for e in events]
    assert types.index("tool_call.started") < types.index("tool_call.completed")
    assert types[-1] == "run.completed"
    received = gw_stack.tools.received[-1]
    assert received["x_api_key"].encode("utf-8", "surrogateescape") == value
    assert received["item"] == "a/b" and received["query"] == {"count": "2"}
    completed = next(e.tool_call_completed for e in events if e.type == "tool_call.completed")
    assert not completed.is_error and "[REDACTED]" in completed.result
    reply = "".join(e.output_text_delta.text for e in events if e.type == "output_text.delta")
    assert "Tool lookup returned:" in reply and "a/b" in reply
    calls = await gw_stack.tool_api(gw_stack.owner).ListToolCalls(
        tool_service_pb2.ListToolCallsRequest(parent=run), metadata=gw_stack.owner.auth, timeout=10
    )
    (call,) = calls.tool_calls
    assert call.tool == "lookup" and call.state == call.SUCCEEDED
    assert json.loads(call.arguments_json) == {"item": "a/b", "count": 2}
    assert call.name == f"{run}/toolCalls/{completed.call_id}" and call.end_time.seconds
    audit = (await gw_stack.audit())[-1]
    assert audit["outcome"] == "OK" and audit["credential"] == "github"
    assert json.loads(audit["argument_shape"]) == {"item": "str", "count": "int"}


async def test_run_calls_mcp_tool(gw_stack: GatewayStack) -> None:
    """An MCP server's tools are discovered with a prefix, and a run calls one."""
    api = gw_stack.tool_api(gw_stack.owner)
    server = await api.CreateMcpServer(
        tool_service_pb2.CreateMcpServerRequest(
            mcp_server_id="calc",
            mcp_server=tool_pb2.McpServer(url=gw_stack.mcp.url),
        ),
        metadata=gw_stack.owner.auth,
        timeout=20,
    )
    assert sorted(t.name for t in server.tools) == ["tools/calc__add", "tools/calc__text_shout"]
    _, events = await gw_stack.run(
        gw_stack.owner,
        'Add [[tool=calc__add args={"a": 2, "b": 40}]]'
        ' [[tool=calc__text_shout args={"text": "hi"}]]',
    )
    results = {
        e.tool_call_completed.call_id: e.tool_call_completed.result
        for e in events
        if e.type == "tool_call.completed"
    }
    assert sorted(results.values()) == ["42", "HI"]
    assert events[-1].type == "run.completed"


@pytest.mark.parametrize(
    ("path", "arguments", "code"),
    [
        ("/fail", "{}", "HTTP_STATUS"),
        ("/big", "{}", ""),
        ("/bomb", "{}", ""),
        ("/redirect", "{}", "HTTP_REDIRECT"),
    ],
)
async def test_tool_failures_reach_the_model(
    gw_stack: GatewayStack, path: str, arguments: str, code: str
) -> None:
    """A 500, an oversized or zip-bomb body and a redirect each give a readable result."""
    tool_id = "t" + path.strip("/")
    await gw_stack.add_http_tool(gw_stack.owner, tool_id, gw_stack.tools.base + path)
    response = await gw_stack.call(gw_stack.owner, tool_id, arguments)
    assert response.error_code == code
    if not code:
        assert response.truncated and "[truncated" in response.result
        assert len(response.result.encode()) < 4096 + 100
    else:
        assert response.is_error and response.result.startswith(f"Error {code}")


async def test_invalid_arguments_and_timeout_keep_the_run_going(gw_stack: GatewayStack) -> None:
    """Invalid arguments and a timeout are tool errors; the run continues to completion."""
    await gw_stack.add_http_tool(
        gw_stack.owner, "strict", gw_stack.tools.base + "/echo", parameters=ITEM_SCHEMA
    )
    await gw_stack.add_http_tool(
        gw_stack.owner, "slow", gw_stack.tools.base + "/wait", timeout_ms=300
    )
    _, events = await gw_stack.run(
        gw_stack.owner,
        'Try [[tool=strict args={"item": 1, "extra": true}]] [[tool=slow]]',
    )
    completed = {
        e.tool_call_completed.error_code for e in events if e.type == "tool_call.completed"
    }
    assert completed == {"INVALID_ARGUMENTS", "TOOL_TIMEOUT"}
    assert events[-1].type == "run.completed"


async def test_workspace_cannot_use_another_workspaces_tools(gw_stack: GatewayStack) -> None:
    """Another workspace neither lists nor calls this workspace's tools."""
    await gw_stack.add_http_tool(gw_stack.owner, "private", gw_stack.tools.base + "/echo")
    other = await gw_stack.stack.new_workspace("Other")
    listed = await gw_stack.tool_api(other).ListTools(
        tool_service_pb2.ListToolsRequest(), metadata=other.auth, timeout=10
    )
    assert listed.tools == []
    response = await gw_stack.call(other, "private")
    assert response.error_code == "UNKNOWN_TOOL"


async def test_members_read_and_admins_write(gw_stack: GatewayStack) -> None:
    """A member lists tools but cannot register one."""
    member = await gw_stack.stack.new_workspace("Members", role="member")
    await gw_stack.tool_api(member).ListTools(
        tool_service_pb2.ListToolsRequest(), metadata=member.auth, timeout=10
    )
    await expect_error(
        gw_stack.add_http_tool(member, "nope", gw_stack.tools.base + "/echo"),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )


async def test_run_fails_at_max_steps(gw_stack: GatewayStack) -> None:
    """A model that keeps calling tools ends the run with MAX_STEPS."""
    await gw_stack.add_http_tool(gw_stack.owner, "again", gw_stack.tools.base + "/echo")
    _, events = await gw_stack.run(gw_stack.owner, "[[tool=again]] [[tool_steps=50]]")
    assert events[-1].type == "run.failed"
    assert events[-1].run_failed.reason == "MAX_STEPS"


async def test_cancel_during_a_tool_call(gw_stack: GatewayStack) -> None:
    """Cancelling a run while a tool call runs stops the call and records it as cancelled."""
    await gw_stack.add_http_tool(
        gw_stack.owner, "hold", gw_stack.tools.base + "/wait", timeout_ms=10_000
    )
    client = gw_stack.owner
    session = await client.sessions.CreateSession(
        session_service_pb2.CreateSessionRequest(session=session_pb2.Session(title="c")),
        metadata=client.auth,
        timeout=10,
    )
    run = await client.runs.CreateRun(
        run_service_pb2.CreateRunRequest(parent=session.name, input_text="[[tool=hold]]"),
        metadata=client.auth,
        timeout=10,
    )
    stream = client.runs.StreamRunEvents(
        run_service_pb2.StreamRunEventsRequest(name=run.name), metadata=client.auth, timeout=30
    )
    events = []
    async for response in stream:
        events.append(response.event)
        if response.event.type == "tool_call.progress":
            await client.runs.CancelRun(
                run_service_pb2.CancelRunRequest(name=run.name), metadata=client.auth, timeout=10
            )
            break
    events += await client.stream(run.name, after=events[-1].sequence)
    assert events[-1].type == "run.cancelled"
    await asyncio.wait_for(gw_stack.tools.abandoned.wait(), timeout=10)
    completed = [e.tool_call_completed for e in events if e.type == "tool_call.completed"]
    assert [c.error_code for c in completed] == ["CANCELLED"]
    calls = await gw_stack.tool_api(client).ListToolCalls(
        tool_service_pb2.ListToolCallsRequest(parent=run.name), metadata=client.auth, timeout=10
    )
    assert [c.state for c in calls.tool_calls] == [tool_pb2.ToolCall.FAILED]


async def test_echoed_credential_is_redacted(gw_stack: GatewayStack) -> None:
    """A tool that echoes the injected credential has it redacted from the result."""
    value = gw_stack.guard.plant("echoed")
    await _put_secret(gw_stack, "echoed", value)
    await gw_stack.add_http_tool(
        gw_stack.owner,
        "reflect",
        gw_stack.tools.base + "/echo",
        credential="secrets/echoed",
        injection="bearer",
    )
    response = await gw_stack.call(gw_stack.owner, "reflect")
    assert "[REDACTED]" in response.result
    assert not gw_stack.guard.find_in(response.result)


async def test_path_arguments_cannot_change_the_path(gw_stack: GatewayStack) -> None:
    """A path argument with ../, ? and # is percent-encoded into one path segment."""
    await gw_stack.add_http_tool(
        gw_stack.owner, "pathy", gw_stack.tools.base + "/echo/{item}", parameters=ITEM_SCHEMA
    )
    response = await gw_stack.call(gw_stack.owner, "pathy", '{"item": "../admin?x=1#y"}')
    seen = json.loads(response.result)
    assert seen["item"] == "../admin?x=1#y" and seen["query"] == {}


async def test_remote_ref_schema_is_refused(gw_stack: GatewayStack) -> None:
    """A parameters schema with a remote $ref is refused at registration."""
    await expect_error(
        gw_stack.add_http_tool(
            gw_stack.owner,
            "refs",
            gw_stack.tools.base + "/echo",
            parameters={"type": "object", "$ref": "http://169.254.169.254/schema.json"},
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


async def test_runs_see_registry_changes_at_once(gw_stack: GatewayStack) -> None:
    """Workers reuse a workspace's tool list only until a tool is added or removed."""
    client = await gw_stack.stack.new_workspace("Registry")
    model = gw_stack.stack.devmodel

    def offered() -> list[str]:
        return sorted(t["function"]["name"] for t in model.requests[-1].get("tools") or [])

    await gw_stack.run(client, "no tools yet [[tokens=1]]")
    assert offered() == []
    await gw_stack.add_http_tool(client, "first", gw_stack.tools.base + "/echo")
    await gw_stack.run(client, "one tool [[tokens=1]]")
    assert offered() == ["first"]
    await gw_stack.run(client, "same registry [[tokens=1]]")
    assert offered() == ["first"]
    await gw_stack.add_http_tool(client, "second", gw_stack.tools.base + "/echo")
    await gw_stack.run(client, "two tools [[tokens=1]]")
    assert offered() == ["first", "second"]
    await gw_stack.tool_api(client).DeleteTool(
        tool_service_pb2.DeleteToolRequest(name="tools/first"), metadata=client.auth, timeout=10
    )
    await gw_stack.run(client, "one left [[tokens=1]]")
    assert offered() == ["second"]


async def test_get_tool_answers_what_list_tools_lists(gw_stack: GatewayStack) -> None:
    """GetTool returns one HTTP or MCP tool by name; unknown and foreign names are NOT_FOUND."""
    client = await gw_stack.stack.new_workspace("Getter")
    api = gw_stack.tool_api(client)
    value = gw_stack.guard.plant("getter")
    await _put_secret(gw_stack, "getter_token", value, client)
    created = await gw_stack.add_http_tool(
        client,
        "fetch",
        gw_stack.tools.base + "/echo/{item}",
        parameters=ITEM_SCHEMA,
        credential="secrets/getter_token",
        injection="bearer",
        timeout_ms=1500,
    )
    server = await api.CreateMcpServer(
        tool_service_pb2.CreateMcpServerRequest(
            mcp_server_id="maths", mcp_server=tool_pb2.McpServer(url=gw_stack.mcp.url)
        ),
        metadata=client.auth,
        timeout=20,
    )
    listed = await api.ListTools(tool_service_pb2.ListToolsRequest(), metadata=client.auth)
    assert len(listed.tools) == 3
    for tool in listed.tools:
        got = await api.GetTool(
            tool_service_pb2.GetToolRequest(name=tool.name), metadata=client.auth
        )
        assert got == tool
    fetched = await api.GetTool(
        tool_service_pb2.GetToolRequest(name="tools/fetch"), metadata=client.auth
    )
    assert fetched == created
    assert fetched.http.credential == "secrets/getter_token"
    assert server.tools[0] == await api.GetTool(
        tool_service_pb2.GetToolRequest(name=server.tools[0].name), metadata=client.auth
    )
    assert "workspaces/" not in str(fetched), "the gateway's internal names stay inside"

    info = await expect_error(
        api.GetTool(tool_service_pb2.GetToolRequest(name="tools/nope"), metadata=client.auth),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
    assert dict(info.metadata) == {"resource": "tools/nope"}
    await expect_error(
        gw_stack.tool_api(gw_stack.owner).GetTool(
            tool_service_pb2.GetToolRequest(name="tools/fetch"), metadata=gw_stack.owner.auth
        ),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
    await expect_error(
        api.GetTool(tool_service_pb2.GetToolRequest(name="tools/"), metadata=client.auth),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


async def test_workers_may_not_read_the_registry_with_get_tool(gw_stack: GatewayStack) -> None:
    """The gateway's GetTool is the control plane's, like the rest of the administration."""
    await expect_error(
        gw_stack.gateway_stub().GetTool(
            gw.GetToolRequest(name=f"{gw_stack.owner.workspace}/tools/anything"),
            metadata=gw_stack.as_worker(),
            timeout=10,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "SERVICE_NOT_ALLOWED",
    )
