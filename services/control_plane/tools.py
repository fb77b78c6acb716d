"""ToolService: public tool administration forwarded to the gateway, and tool call records.

The control plane checks the caller's role, turns public names (`tools/{tool}`,
`mcpServers/{server}`, `secrets/{secret}`, the workspace implied by the API key) into the
gateway's (`workspaces/{w}/...`), and calls the gateway as the control plane's service
identity. Tool call records are the control plane's own (`store.tool_call_list`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import grpc
import structlog
from agentplatform.gateway.v1 import gateway_service_pb2 as gw
from agentplatform.gateway.v1 import gateway_service_pb2_grpc
from agentplatform.v1 import tool_pb2, tool_service_pb2, tool_service_pb2_grpc
from google.protobuf import empty_pb2

from services.control_plane import store
from services.control_plane.auth import Principal
from services.control_plane.runtime import Runtime
from services.control_plane.settings import ControlPlaneSettings
from services.rpc.errors import ApiError, Reason, invalid_argument, not_found
from services.rpc.interceptors import current_principal
from services.rpc.internal_auth import InternalClient
from services.rpc.names import (
    mcp_server_name,
    parse_mcp_server_name,
    parse_run_name,
    parse_secret_name,
    parse_tool_name,
    parse_workspace_mcp_server_name,
    parse_workspace_secret_name,
    parse_workspace_tool_name,
    secret_name,
    tool_name,
    workspace_mcp_server_name,
    workspace_name,
    workspace_secret_name,
    workspace_tool_name,
)
from services.rpc.pagination import POSITION, Page
from services.rpc.server import ServiceBinding

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

log = structlog.get_logger()

# Discovering an MCP server's tools connects to it; leave room for a slow one.
_GATEWAY_TIMEOUT_S = 150.0
_STATES = {
    "running": tool_pb2.ToolCall.RUNNING,
    "succeeded": tool_pb2.ToolCall.SUCCEEDED,
    "failed": tool_pb2.ToolCall.FAILED,
}


class GatewayClient(InternalClient["gateway_service_pb2_grpc.GatewayServiceAsyncStub"]):
    """A channel to the gateway, authenticated as the control plane."""

    def __init__(self, settings: ControlPlaneSettings) -> None:
        """Open the channel (inside the running loop): mTLS if AP_TLS_* is set, else a token."""
        assert settings.gateway_address is not None
        token = settings.gateway_admin_token
        super().__init__(
            service="gateway",
            address=settings.gateway_address,
            tls=settings.service_tls(),
            token=token.get_secret_value() if token else None,
            needs="AP_GATEWAY_ADMIN_TOKEN",
            stub=gateway_service_pb2_grpc.GatewayServiceStub,
            timeout=_GATEWAY_TIMEOUT_S,
        )


def _public_tool(tool: gw.Tool) -> tool_pb2.Tool:
    public = tool_pb2.Tool(
        name=tool_name(parse_workspace_tool_name(tool.name)[1]),
        description=tool.description,
        parameters=tool.parameters,
        timeout_ms=tool.timeout_ms,
        approval_policy=tool.approval_policy,
    )
    if tool.mcp_server:
        public.mcp_server = mcp_server_name(parse_workspace_mcp_server_name(tool.mcp_server)[1])
    else:
        public.http.CopyFrom(
            tool_pb2.HttpEndpoint(
                method=tool.method,
                url_template=tool.url_template,
                credential=(
                    secret_name(str(parse_workspace_secret_name(tool.credential)[1]))
                    if tool.credential
                    else ""
                ),
                credential_injection=tool.credential_injection,
            )
        )
    public.create_time.CopyFrom(tool.create_time)
    return public


def _public_server(server: gw.McpServer) -> tool_pb2.McpServer:
    public = tool_pb2.McpServer(
        name=mcp_server_name(parse_workspace_mcp_server_name(server.name)[1]),
        url=server.url,
        tools=[_public_tool(t) for t in server.tools],
        timeout_ms=server.timeout_ms,
        approval_policy=server.approval_policy,
    )
    public.create_time.CopyFrom(server.create_time)
    return public


def _tool_call(record: asyncpg.Record, run: str) -> tool_pb2.ToolCall:
    call = tool_pb2.ToolCall(
        name=f"{run}/toolCalls/{record['call_id']}",
        tool=record["tool"],
        arguments_json=record["arguments_json"],
        state=_STATES[record["state"]],
        result=record["result"],
        error_code=record["error_code"],
        truncated=record["truncated"],
        attempt=record["attempt"],
        duration_ms=record["duration_ms"],
    )
    call.start_time.FromDatetime(record["start_time"])
    if record["end_time"] is not None:
        call.end_time.FromDatetime(record["end_time"])
    return call


_OUTCOME_UNKNOWN = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


def _approval_policy_mask(paths: list[str], resource: str) -> None:
    """Refuse an update mask naming anything but the approval policy (the one mutable field)."""
    for path in paths:
        if path not in ("approval_policy", "*"):
            raise invalid_argument(
                "update_mask",
                f"{resource}.{path} cannot be changed; only approval_policy can.",
            )


class ToolService(tool_service_pb2_grpc.ToolServiceServicer):
    """Serve the caller's workspace's tools: owners and admins write, everyone reads."""

    def __init__(self, runtime: Runtime, gateway: GatewayClient | None) -> None:
        self._rt = runtime
        self._gateway = gateway

    def _gw(self) -> GatewayClient:
        if self._gateway is None:
            raise ApiError(
                grpc.StatusCode.UNIMPLEMENTED,
                Reason.NOT_IMPLEMENTED,
                "This deployment has no gateway configured (AP_GATEWAY_ADDRESS), so it has no "
                "tools.",
            )
        return self._gateway

    async def _changing_registry(self, principal: Principal, change: Awaitable[T]) -> T:
        """Make a registry change, then bump the workspace's registry version.

        Workers reuse a tool list until the version changes. A change the gateway refused
        leaves the version alone; one whose outcome is unknown (it may have committed before
        failing) bumps it too: an extra refresh costs a ListRunTools, a stale list a tool.
        """
        try:
            result = await change
        except ApiError as err:
            if err.code in _OUTCOME_UNKNOWN:
                await self._bump_registry_version(principal)
            raise
        await self._bump_registry_version(principal)
        return result

    async def _bump_registry_version(self, principal: Principal) -> None:
        async with self._rt.pool.acquire() as conn:
            await store.workspace_tools_bump(conn, principal.workspace_id)

    async def _call(self, public: str, method: Callable[..., Awaitable[T]], request: object) -> T:
        try:
            return await self._gw().call(method, request)
        except ApiError as err:
            if err.reason == Reason.NOT_FOUND:
                raise not_found(public) from None  # the public name, not the gateway's
            raise

    async def CreateTool(
        self, request: tool_service_pb2.CreateToolRequest, context: Context
    ) -> tool_pb2.Tool:
        principal: Principal = current_principal()
        return await self._changing_registry(principal, self._create_tool(principal, request))

    async def _create_tool(
        self, principal: Principal, request: tool_service_pb2.CreateToolRequest
    ) -> tool_pb2.Tool:
        workspace = workspace_name(principal.workspace_id)
        tool, http = request.tool, request.tool.http
        credential = ""
        if http.credential:
            secret = parse_secret_name(http.credential, "tool.http.credential")
            credential = workspace_secret_name(principal.workspace_id, str(secret))
        gateway = self._gw()
        created = await gateway.call(
            gateway.stub.CreateTool,
            gw.CreateToolRequest(
                parent=workspace,
                tool_id=request.tool_id,
                tool=gw.Tool(
                    description=tool.description,
                    parameters=tool.parameters,
                    method=http.method,
                    url_template=http.url_template,
                    credential=credential,
                    credential_injection=http.credential_injection,
                    timeout_ms=tool.timeout_ms,
                    approval_policy=tool.approval_policy,
                ),
            ),
        )
        return _public_tool(created)

    async def ListTools(
        self, request: tool_service_pb2.ListToolsRequest, context: Context
    ) -> tool_service_pb2.ListToolsResponse:
        principal: Principal = current_principal()
        gateway = self._gw()
        listed = await gateway.call(
            gateway.stub.ListTools,
            gw.ListToolsRequest(
                parent=workspace_name(principal.workspace_id),
                page_size=request.page_size,
                page_token=request.page_token,
            ),
        )
        return tool_service_pb2.ListToolsResponse(
            tools=[_public_tool(t) for t in listed.tools], next_page_token=listed.next_page_token
        )

    async def GetTool(
        self, request: tool_service_pb2.GetToolRequest, context: Context
    ) -> tool_pb2.Tool:
        principal: Principal = current_principal()
        name = workspace_tool_name(principal.workspace_id, parse_tool_name(request.name))
        found = await self._call(
            request.name, self._gw().stub.GetTool, gw.GetToolRequest(name=name)
        )
        return _public_tool(found)

    async def UpdateTool(
        self, request: tool_service_pb2.UpdateToolRequest, context: Context
    ) -> tool_pb2.Tool:
        principal: Principal = current_principal()
        name = workspace_tool_name(principal.workspace_id, parse_tool_name(request.tool.name))
        _approval_policy_mask(list(request.update_mask.paths), "tool")
        updated = await self._changing_registry(
            principal,
            self._call(
                request.tool.name,
                self._gw().stub.UpdateToolApprovalPolicy,
                gw.UpdateToolApprovalPolicyRequest(
                    name=name, approval_policy=request.tool.approval_policy
                ),
            ),
        )
        return _public_tool(updated)

    async def DeleteTool(
        self, request: tool_service_pb2.DeleteToolRequest, context: Context
    ) -> empty_pb2.Empty:
        principal: Principal = current_principal()
        return await self._changing_registry(principal, self._delete_tool(principal, request))

    async def _delete_tool(
        self, principal: Principal, request: tool_service_pb2.DeleteToolRequest
    ) -> empty_pb2.Empty:
        name = workspace_tool_name(principal.workspace_id, parse_tool_name(request.name))
        await self._call(request.name, self._gw().stub.DeleteTool, gw.DeleteToolRequest(name=name))
        return empty_pb2.Empty()

    async def CreateMcpServer(
        self, request: tool_service_pb2.CreateMcpServerRequest, context: Context
    ) -> tool_pb2.McpServer:
        principal: Principal = current_principal()
        return await self._changing_registry(principal, self._create_mcp_server(principal, request))

    async def _create_mcp_server(
        self, principal: Principal, request: tool_service_pb2.CreateMcpServerRequest
    ) -> tool_pb2.McpServer:
        gateway = self._gw()
        created = await gateway.call(
            gateway.stub.CreateMcpServer,
            gw.CreateMcpServerRequest(
                parent=workspace_name(principal.workspace_id),
                mcp_server_id=request.mcp_server_id,
                mcp_server=gw.McpServer(
                    url=request.mcp_server.url,
                    timeout_ms=request.mcp_server.timeout_ms,
                    approval_policy=request.mcp_server.approval_policy,
                ),
            ),
        )
        return _public_server(created)

    async def ListMcpServers(
        self, request: tool_service_pb2.ListMcpServersRequest, context: Context
    ) -> tool_service_pb2.ListMcpServersResponse:
        principal: Principal = current_principal()
        gateway = self._gw()
        listed = await gateway.call(
            gateway.stub.ListMcpServers,
            gw.ListMcpServersRequest(
                parent=workspace_name(principal.workspace_id),
                page_size=request.page_size,
                page_token=request.page_token,
            ),
        )
        return tool_service_pb2.ListMcpServersResponse(
            mcp_servers=[_public_server(s) for s in listed.mcp_servers],
            next_page_token=listed.next_page_token,
        )

    async def UpdateMcpServer(
        self, request: tool_service_pb2.UpdateMcpServerRequest, context: Context
    ) -> tool_pb2.McpServer:
        principal: Principal = current_principal()
        name = workspace_mcp_server_name(
            principal.workspace_id, parse_mcp_server_name(request.mcp_server.name)
        )
        _approval_policy_mask(list(request.update_mask.paths), "mcp_server")
        updated = await self._changing_registry(
            principal,
            self._call(
                request.mcp_server.name,
                self._gw().stub.UpdateMcpServerApprovalPolicy,
                gw.UpdateMcpServerApprovalPolicyRequest(
                    name=name, approval_policy=request.mcp_server.approval_policy
                ),
            ),
        )
        return _public_server(updated)

    async def DeleteMcpServer(
        self, request: tool_service_pb2.DeleteMcpServerRequest, context: Context
    ) -> empty_pb2.Empty:
        principal: Principal = current_principal()
        return await self._changing_registry(principal, self._delete_mcp_server(principal, request))

    async def _delete_mcp_server(
        self, principal: Principal, request: tool_service_pb2.DeleteMcpServerRequest
    ) -> empty_pb2.Empty:
        name = workspace_mcp_server_name(
            principal.workspace_id, parse_mcp_server_name(request.name)
        )
        await self._call(
            request.name, self._gw().stub.DeleteMcpServer, gw.DeleteMcpServerRequest(name=name)
        )
        return empty_pb2.Empty()

    async def ListToolCalls(
        self, request: tool_service_pb2.ListToolCallsRequest, context: Context
    ) -> tool_service_pb2.ListToolCallsResponse:
        principal: Principal = current_principal()
        run = parse_run_name(request.parent, "parent")
        page = Page.of(request, f"tool_calls:{request.parent}", POSITION, default=100, maximum=1000)
        async with self._rt.pool.acquire() as conn:
            found = await store.run_get(conn, principal.workspace_id, run.session_id, run.run_id)
            if found is None:
                raise not_found(request.parent)
            rows = await store.tool_call_list(
                conn, run.run_id, after_sequence=page.after or 0, limit=page.fetch
            )
        rows, token = page.cut(rows, lambda r: r["start_sequence"])
        return tool_service_pb2.ListToolCallsResponse(
            tool_calls=[_tool_call(r, request.parent) for r in rows], next_page_token=token
        )


def tool_bindings(runtime: Runtime, gateway: GatewayClient | None) -> list[ServiceBinding]:
    """Return the public ToolService, for the control plane's server."""
    return [
        ServiceBinding(
            tool_service_pb2.DESCRIPTOR.services_by_name["ToolService"].full_name,
            lambda s: tool_service_pb2_grpc.add_ToolServiceServicer_to_server(
                ToolService(runtime, gateway), s
            ),
        )
    ]
