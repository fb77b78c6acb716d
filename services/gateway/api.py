"""GatewayService: translate between protos and the registry and call functions."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import grpc
import httpx
from agentplatform.gateway.v1 import gateway_service_pb2 as pb
from agentplatform.gateway.v1 import gateway_service_pb2_grpc
from google.protobuf import empty_pb2, json_format, struct_pb2

from services.gateway import registry, store
from services.gateway.calls import ToolCaller
from services.gateway.ssrf import Guard
from services.rpc.errors import invalid_argument, not_found
from services.rpc.names import (
    parse_run_name,
    parse_workspace_mcp_server_name,
    parse_workspace_name,
    parse_workspace_secret_name,
    parse_workspace_tool_name,
    workspace_name,
)
from services.rpc.pagination import NAME, Page

Context = grpc.aio.ServicerContext[Any, Any]


def _struct(text: str) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(json.loads(text))
    return out


def tool_proto(workspace_id: uuid.UUID, row: asyncpg.Record) -> pb.Tool:
    """Build a Tool message from a stored row."""
    tool = pb.Tool(
        name=f"{workspace_name(workspace_id)}/tools/{row['name']}",
        description=row["description"],
        parameters=_struct(row["parameters_json"]),
        method=row["method"],
        url_template=row["url_template"],
        credential=(
            f"{workspace_name(workspace_id)}/secrets/{row['credential']}"
            if row["credential"]
            else ""
        ),
        credential_injection=row["credential_injection"],
        timeout_ms=row["timeout_ms"],
        approval_policy=registry.STORED_POLICIES[row["approval_policy"]],
    )
    if row["mcp_server"]:
        tool.mcp_server = f"{workspace_name(workspace_id)}/mcpServers/{row['mcp_server']}"
        if "mcp_server_url" in row:
            tool.mcp_server_url = row["mcp_server_url"] or ""
    tool.create_time.FromDatetime(row["create_time"])
    return tool


class GatewayApi(gateway_service_pb2_grpc.GatewayServiceServicer):
    """Serve the registry to the control plane and tool calls to workers."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        guard: Guard,
        caller: ToolCaller,
        mcp_http: httpx.AsyncClient,
    ) -> None:
        self._pool = pool
        self._guard = guard
        self._caller = caller
        self._mcp_http = mcp_http

    async def CreateTool(self, request: pb.CreateToolRequest, context: Context) -> pb.Tool:
        workspace_id = parse_workspace_name(request.parent, "parent")
        tool = request.tool
        credential = ""
        if tool.credential:
            owner, secret = parse_workspace_secret_name(tool.credential, "tool.credential")
            credential = str(secret)
            if owner != workspace_id:
                raise invalid_argument("tool.credential", "The credential must be the workspace's.")
        row = await registry.http_tool_create(
            self._pool,
            self._guard,
            workspace_id,
            registry.HttpToolSpec(
                tool_id=request.tool_id,
                description=tool.description,
                parameters=json_format.MessageToDict(tool.parameters),
                method=tool.method,
                url_template=tool.url_template,
                credential=credential,
                credential_injection=tool.credential_injection,
                timeout_ms=tool.timeout_ms,
                approval_policy=registry.approval_policy(
                    tool.approval_policy, "tool.approval_policy"
                ),
            ),
            self._caller.limits.max_timeout,
        )
        return tool_proto(workspace_id, row)

    async def ListTools(
        self, request: pb.ListToolsRequest, context: Context
    ) -> pb.ListToolsResponse:
        workspace_id = parse_workspace_name(request.parent, "parent")
        page = Page.of(request, f"tools:{workspace_id}", NAME, default=100, maximum=1000)
        async with self._pool.acquire() as conn:
            rows = await store.tool_list(
                conn, workspace_id, after=page.after or "", limit=page.fetch
            )
        rows, token = page.cut(rows, lambda r: r["name"])
        return pb.ListToolsResponse(
            tools=[tool_proto(workspace_id, r) for r in rows], next_page_token=token
        )

    async def GetTool(self, request: pb.GetToolRequest, context: Context) -> pb.Tool:
        workspace_id, tool_id = parse_workspace_tool_name(request.name)
        async with self._pool.acquire() as conn:
            row = await store.tool_get(conn, workspace_id, tool_id)
        if row is None:
            raise not_found(request.name)
        return tool_proto(workspace_id, row)

    async def UpdateToolApprovalPolicy(
        self, request: pb.UpdateToolApprovalPolicyRequest, context: Context
    ) -> pb.Tool:
        workspace_id, tool_id = parse_workspace_tool_name(request.name)
        policy = registry.approval_policy(request.approval_policy)
        async with self._pool.acquire() as conn:
            if not await store.tool_approval_policy_update(conn, workspace_id, tool_id, policy):
                raise not_found(request.name)
            row = await store.tool_get(conn, workspace_id, tool_id)
        if row is None:
            raise not_found(request.name)
        return tool_proto(workspace_id, row)

    async def UpdateMcpServerApprovalPolicy(
        self, request: pb.UpdateMcpServerApprovalPolicyRequest, context: Context
    ) -> pb.McpServer:
        workspace_id, server_id = parse_workspace_mcp_server_name(request.name)
        policy = registry.approval_policy(request.approval_policy)
        async with self._pool.acquire() as conn:
            row = await store.mcp_server_approval_policy_update(
                conn, workspace_id, server_id, policy
            )
            if row is None:
                raise not_found(request.name)
            tools = await store.mcp_server_tools(conn, workspace_id, [server_id])
        return self._server_proto(workspace_id, row, tools)

    async def DeleteTool(self, request: pb.DeleteToolRequest, context: Context) -> empty_pb2.Empty:
        workspace_id, tool_id = parse_workspace_tool_name(request.name)
        async with self._pool.acquire() as conn:
            if not await store.tool_delete(conn, workspace_id, tool_id):
                raise not_found(request.name)
        return empty_pb2.Empty()

    async def ListRunTools(
        self, request: pb.ListRunToolsRequest, context: Context
    ) -> pb.ListRunToolsResponse:
        parse_run_name(request.run, "run")
        workspace_id = parse_workspace_name(request.workspace, "workspace")
        async with self._pool.acquire() as conn:
            rows = await store.tool_list(conn, workspace_id)
        return pb.ListRunToolsResponse(tools=[tool_proto(workspace_id, r) for r in rows])

    async def CallTool(self, request: pb.CallToolRequest, context: Context) -> pb.CallToolResponse:
        parse_run_name(request.run, "run")
        workspace_id = parse_workspace_name(request.workspace, "workspace")
        if not request.tool or len(request.tool) > 128:
            raise invalid_argument("tool", "tool is required (at most 128 characters).")
        if not request.call_id or len(request.call_id) > 128:
            raise invalid_argument("call_id", "call_id is required (at most 128 characters).")
        result = await self._caller.call(
            workspace_id, request.run, request.tool, request.arguments_json, request.call_id
        )
        return pb.CallToolResponse(
            result=result.text,
            is_error=result.is_error,
            truncated=result.truncated,
            error_code=result.error_code,
        )

    async def CreateMcpServer(
        self, request: pb.CreateMcpServerRequest, context: Context
    ) -> pb.McpServer:
        workspace_id = parse_workspace_name(request.parent, "parent")
        server = request.mcp_server
        limits = self._caller.limits
        row, _ = await registry.mcp_server_create(
            self._pool,
            self._guard,
            http=self._mcp_http,
            workspace_id=workspace_id,
            server_id=request.mcp_server_id,
            url_text=server.url,
            timeout_ms=server.timeout_ms,
            timeout_s=limits.timeout(server.timeout_ms),
            max_s=limits.max_timeout,
            approval_policy=registry.approval_policy(
                server.approval_policy, "mcp_server.approval_policy"
            ),
        )
        async with self._pool.acquire() as conn:
            tools = await store.mcp_server_tools(conn, workspace_id, [row["id"]])
        return self._server_proto(workspace_id, row, tools)

    async def ListMcpServers(
        self, request: pb.ListMcpServersRequest, context: Context
    ) -> pb.ListMcpServersResponse:
        workspace_id = parse_workspace_name(request.parent, "parent")
        page = Page.of(request, f"mcp_servers:{workspace_id}", NAME, default=100, maximum=1000)
        async with self._pool.acquire() as conn:
            rows = await store.mcp_server_list(
                conn, workspace_id, after=page.after or "", limit=page.fetch
            )
            rows, token = page.cut(rows, lambda r: r["id"])
            tools = await store.mcp_server_tools(conn, workspace_id, [r["id"] for r in rows])
        return pb.ListMcpServersResponse(
            mcp_servers=[self._server_proto(workspace_id, r, tools) for r in rows],
            next_page_token=token,
        )

    async def DeleteMcpServer(
        self, request: pb.DeleteMcpServerRequest, context: Context
    ) -> empty_pb2.Empty:
        workspace_id, server_id = parse_workspace_mcp_server_name(request.name)
        async with self._pool.acquire() as conn:
            if not await store.mcp_server_delete(conn, workspace_id, server_id):
                raise not_found(request.name)
        return empty_pb2.Empty()

    @staticmethod
    def _server_proto(
        workspace_id: uuid.UUID, row: asyncpg.Record, tools: list[asyncpg.Record]
    ) -> pb.McpServer:
        server = pb.McpServer(
            name=f"{workspace_name(workspace_id)}/mcpServers/{row['id']}",
            url=row["url"],
            tool_prefix=f"{row['id']}__",
            timeout_ms=row["timeout_ms"],
            approval_policy=registry.STORED_POLICIES[row["approval_policy"]],
            tools=[tool_proto(workspace_id, t) for t in tools if t["mcp_server"] == row["id"]],
        )
        server.create_time.FromDatetime(row["create_time"])
        return server
