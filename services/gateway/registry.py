"""Register tools: check an HTTP tool's definition, discover an MCP server's tools."""

from __future__ import annotations

import ipaddress
import re
import socket
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import httpx
import structlog
from agentplatform.v1 import tool_pb2

from services.gateway import store
from services.gateway.http_tool import (
    METHODS,
    Injection,
    RegistrationError,
    check_url_template,
    placeholders,
)
from services.gateway.mcp_tool import McpUnavailableError, exposed_name, list_remote_tools
from services.gateway.schemas import SchemaError, check_parameters_schema
from services.gateway.ssrf import DestinationBlockedError, Guard
from services.rpc.errors import ApiError, Reason, invalid_argument

log = structlog.get_logger(service="gateway")

TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
SERVER_ID = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
MAX_DESCRIPTION = 2048
SECRET_ID = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,62}$")


# How each approval policy is stored; unset means the default, ALWAYS_ALLOW.
APPROVAL_POLICIES: dict[int, str] = {
    tool_pb2.APPROVAL_POLICY_UNSPECIFIED: "always_allow",
    tool_pb2.ALWAYS_ALLOW: "always_allow",
    tool_pb2.ALWAYS_ASK: "always_ask",
    tool_pb2.NEVER: "never",
}
STORED_POLICIES: dict[str, tool_pb2.ApprovalPolicy.ValueType] = {
    "always_allow": tool_pb2.ALWAYS_ALLOW,
    "always_ask": tool_pb2.ALWAYS_ASK,
    "never": tool_pb2.NEVER,
}


def approval_policy(value: int, field: str = "approval_policy") -> str:
    """Return the stored form of an approval policy; INVALID_ARGUMENT for an unknown value."""
    stored = APPROVAL_POLICIES.get(value)
    if stored is None:
        raise invalid_argument(field, f"Unknown approval policy {value}.")
    return stored


@dataclass(frozen=True)
class HttpToolSpec:
    """An HTTP tool as the administrator describes it."""

    tool_id: str
    description: str
    parameters: dict[str, Any]
    method: str
    url_template: str
    credential: str  # the secret's id in the workspace, or ""
    credential_injection: str
    timeout_ms: int
    approval_policy: str = "always_allow"


def _blocked(field: str, err: DestinationBlockedError) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.DESTINATION_BLOCKED,
        f"The gateway's network policy refuses this destination: {err.cause}.",
        metadata={"cause": err.cause},
        field=field,
    )


def _exists(what: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.ALREADY_EXISTS,
        Reason.ALREADY_EXISTS,
        f"{what} already exists in this workspace.",
        metadata={"resource": what},
    )


def _numeric_host(host: str) -> bool:
    """Tell whether a host is an address in some numeric spelling (127.1, 0x7f000001, ...)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


async def _check_destination(guard: Guard, url: httpx.URL, field: str, *, resolve: bool) -> None:
    """Refuse a URL the guard refuses; resolve names only when asked (we connect anyway)."""
    try:
        host, port = guard.check_url(url)
        if resolve or _numeric_host(host):
            await guard.vet(host, port)
    except DestinationBlockedError as err:
        log.warning("destination_blocked", at="registration", field=field, cause=err.cause)
        raise _blocked(field, err) from None


def _check_timeout(timeout_ms: int, max_seconds: float) -> None:
    if not 0 <= timeout_ms <= max_seconds * 1000:
        raise invalid_argument(
            "timeout_ms", f"timeout_ms must be between 0 and {int(max_seconds * 1000)}."
        )


def _check_schema(parameters: dict[str, Any], field: str) -> None:
    try:
        check_parameters_schema(parameters)
    except SchemaError as err:
        raise invalid_argument(field, f"{field}: {err}") from None


async def http_tool_create(
    pool: asyncpg.Pool, guard: Guard, workspace_id: uuid.UUID, spec: HttpToolSpec, max_s: float
) -> asyncpg.Record:
    """Check and store an HTTP tool."""
    if not TOOL_ID.match(spec.tool_id) or "__" in spec.tool_id:
        raise invalid_argument(
            "tool_id", 'tool_id must match ^[a-zA-Z0-9_-]{1,64}$ without "__" (MCP prefixes).'
        )
    if len(spec.description) > MAX_DESCRIPTION:
        raise invalid_argument("description", f"At most {MAX_DESCRIPTION} characters.")
    _check_schema(spec.parameters, "parameters")
    method = spec.method.upper()
    if method not in METHODS:
        raise invalid_argument("method", f"method must be one of {', '.join(sorted(METHODS))}.")
    try:
        url = check_url_template(spec.url_template)
        if spec.credential:
            Injection.parse(spec.credential_injection)
    except RegistrationError as err:
        raise invalid_argument(err.field, str(err)) from None
    required = set(spec.parameters.get("required") or [])
    missing = [p for p in placeholders(spec.url_template) if p not in required]
    if missing:
        raise invalid_argument(
            "url_template", f"Path placeholders must be required parameters: {missing}."
        )
    if spec.credential and not SECRET_ID.match(spec.credential):
        raise invalid_argument("credential", "credential must name a secret of the workspace.")
    _check_timeout(spec.timeout_ms, max_s)
    await _check_destination(guard, url, "url_template", resolve=False)
    async with pool.acquire() as conn:
        try:
            return await store.tool_create(
                conn,
                workspace_id,
                store.NewTool(
                    name=spec.tool_id,
                    description=spec.description,
                    parameters=spec.parameters,
                    method=method,
                    url_template=spec.url_template,
                    credential=spec.credential,
                    credential_injection=spec.credential_injection if spec.credential else "",
                    timeout_ms=spec.timeout_ms,
                    approval_policy=spec.approval_policy,
                ),
            )
        except store.AlreadyExistsError:
            raise _exists(f"tools/{spec.tool_id}") from None


async def mcp_server_create(
    pool: asyncpg.Pool,
    guard: Guard,
    *,
    http: httpx.AsyncClient,
    workspace_id: uuid.UUID,
    server_id: str,
    url_text: str,
    timeout_ms: int,
    timeout_s: float,
    max_s: float,
    approval_policy: str = "always_allow",
) -> tuple[asyncpg.Record, list[store.NewTool]]:
    """Check a server's URL, discover its tools and store both."""
    if not SERVER_ID.match(server_id):
        raise invalid_argument("mcp_server_id", "mcp_server_id must match ^[a-z][a-z0-9-]{0,19}$.")
    _check_timeout(timeout_ms, max_s)
    try:
        url = httpx.URL(url_text)
    except httpx.InvalidURL as err:
        raise invalid_argument("url", f"url is not a URL: {err}") from None
    await _check_destination(guard, url, "url", resolve=True)
    try:
        remote = await list_remote_tools(url_text, http, timeout_s)
    except DestinationBlockedError as err:
        raise _blocked("url", err) from None
    except (McpUnavailableError, TimeoutError) as err:
        cause = str(err) or "timed out"
        raise ApiError(
            grpc.StatusCode.UNAVAILABLE,
            Reason.TOOL_SERVER_UNAVAILABLE,
            f"The MCP server could not be listed: {cause}.",
            metadata={"cause": cause},
        ) from None
    tools: list[store.NewTool] = []
    seen: set[str] = set()
    for tool in remote:
        name = exposed_name(server_id, tool.name)
        if name in seen:
            raise _exists(f"tools/{name}")
        seen.add(name)
        _check_schema(tool.inputSchema, f"tools[{tool.name}].inputSchema")
        tools.append(
            store.NewTool(
                name=name,
                description=(tool.description or "")[:MAX_DESCRIPTION],
                parameters=tool.inputSchema,
                remote_name=tool.name,
            )
        )
    async with pool.acquire() as conn:
        try:
            row = await store.mcp_server_create(
                conn,
                workspace_id,
                server_id=server_id,
                url=url_text,
                timeout_ms=timeout_ms,
                approval_policy=approval_policy,
                tools=tools,
            )
        except store.AlreadyExistsError:
            raise _exists(f"mcpServers/{server_id} or one of its tool names") from None
    return row, tools
