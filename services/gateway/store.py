"""All of the gateway's SQL: tools, MCP servers, the call audit. Queries are named noun-first."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg import Record

from services.rpc.db import Connection

_TOOL_COLUMNS = (
    "name, description, parameters, method, url_template, credential, credential_injection,"
    " timeout_ms, mcp_server, remote_name, create_time, approval_policy"
)


class AlreadyExistsError(Exception):
    """A tool or server of that name already exists in the workspace."""


@dataclass(frozen=True)
class NewTool:
    """A tool row to insert."""

    name: str
    description: str
    parameters: dict[str, Any]
    method: str = ""
    url_template: str = ""
    credential: str = ""
    credential_injection: str = ""
    timeout_ms: int = 0
    remote_name: str | None = None
    approval_policy: str = "always_allow"


async def tool_create(conn: Connection, workspace_id: uuid.UUID, tool: NewTool) -> Record:
    """Insert an HTTP tool; AlreadyExistsError when the name is taken."""
    try:
        row = await conn.fetchrow(
            "INSERT INTO tools (workspace_id, name, description, parameters, method,"
            " url_template, credential, credential_injection, timeout_ms, approval_policy)"
            " VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7, $8, $9, $10)"
            f" RETURNING {_TOOL_COLUMNS}, parameters::text AS parameters_json",
            workspace_id,
            tool.name,
            tool.description,
            json.dumps(tool.parameters),
            tool.method,
            tool.url_template,
            tool.credential,
            tool.credential_injection,
            tool.timeout_ms,
            tool.approval_policy,
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExistsError(tool.name) from None
    assert row is not None
    return row


async def tool_list(
    conn: Connection, workspace_id: uuid.UUID, *, after: str = "", limit: int = 1000
) -> list[Record]:
    """List a workspace's tools ordered by name, with their MCP server's URL."""
    return await conn.fetch(
        "SELECT t.*, t.parameters::text AS parameters_json,"
        " s.url AS mcp_server_url, s.timeout_ms AS server_timeout_ms"
        " FROM tools t LEFT JOIN mcp_servers s"
        "  ON s.workspace_id = t.workspace_id AND s.id = t.mcp_server"
        " WHERE t.workspace_id = $1 AND t.name > $2 ORDER BY t.name LIMIT $3",
        workspace_id,
        after,
        limit,
    )


async def tool_get(conn: Connection, workspace_id: uuid.UUID, name: str) -> Record | None:
    """Get one tool of a workspace, with its MCP server's URL and timeout."""
    return await conn.fetchrow(
        "SELECT t.*, t.parameters::text AS parameters_json, s.url AS mcp_server_url,"
        " s.timeout_ms AS server_timeout_ms"
        " FROM tools t LEFT JOIN mcp_servers s"
        "  ON s.workspace_id = t.workspace_id AND s.id = t.mcp_server"
        " WHERE t.workspace_id = $1 AND t.name = $2",
        workspace_id,
        name,
    )


async def tool_delete(conn: Connection, workspace_id: uuid.UUID, name: str) -> bool:
    """Delete an HTTP tool (not one discovered on an MCP server); tell whether one was."""
    status = await conn.execute(
        "DELETE FROM tools WHERE workspace_id = $1 AND name = $2 AND mcp_server IS NULL",
        workspace_id,
        name,
    )
    return status != "DELETE 0"


async def mcp_server_create(
    conn: Connection,
    workspace_id: uuid.UUID,
    *,
    server_id: str,
    url: str,
    timeout_ms: int,
    approval_policy: str,
    tools: Sequence[NewTool],
) -> Record:
    """Insert a server and its discovered tools in one transaction; AlreadyExistsError on a clash.

    A clash is the server's id, or one of its tools' names taken by another tool.
    """
    try:
        async with conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO mcp_servers (workspace_id, id, url, timeout_ms, approval_policy)"
                " VALUES ($1, $2, $3, $4, $5)"
                " RETURNING id, url, timeout_ms, create_time, approval_policy",
                workspace_id,
                server_id,
                url,
                timeout_ms,
                approval_policy,
            )
            await conn.executemany(
                "INSERT INTO tools (workspace_id, name, description, parameters, mcp_server,"
                " remote_name, approval_policy) VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7)",
                [
                    (
                        workspace_id,
                        t.name,
                        t.description,
                        json.dumps(t.parameters),
                        server_id,
                        t.remote_name,
                        approval_policy,
                    )
                    for t in tools
                ],
            )
    except asyncpg.UniqueViolationError as err:
        raise AlreadyExistsError(str(err)) from None
    assert row is not None
    return row


async def mcp_server_list(
    conn: Connection, workspace_id: uuid.UUID, *, after: str = "", limit: int = 1000
) -> list[Record]:
    """List a workspace's MCP servers ordered by id."""
    return await conn.fetch(
        "SELECT id, url, timeout_ms, create_time, approval_policy FROM mcp_servers"
        " WHERE workspace_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        workspace_id,
        after,
        limit,
    )


async def mcp_server_tools(
    conn: Connection, workspace_id: uuid.UUID, server_ids: Sequence[str]
) -> list[Record]:
    """List the tools of some servers, ordered by name."""
    return await conn.fetch(
        f"SELECT {_TOOL_COLUMNS}, parameters::text AS parameters_json FROM tools"
        " WHERE workspace_id = $1 AND mcp_server = ANY($2::text[]) ORDER BY name",
        workspace_id,
        list(server_ids),
    )


async def tool_approval_policy_update(
    conn: Connection, workspace_id: uuid.UUID, name: str, policy: str
) -> bool:
    """Set one tool's approval policy (HTTP or of an MCP server); tell whether it exists."""
    status = await conn.execute(
        "UPDATE tools SET approval_policy = $3 WHERE workspace_id = $1 AND name = $2",
        workspace_id,
        name,
        policy,
    )
    return status != "UPDATE 0"


async def mcp_server_approval_policy_update(
    conn: Connection, workspace_id: uuid.UUID, server_id: str, policy: str
) -> Record | None:
    """Set a server's approval policy and its tools' in one statement; None if no such server."""
    return await conn.fetchrow(
        "WITH s AS (UPDATE mcp_servers SET approval_policy = $3"
        "  WHERE workspace_id = $1 AND id = $2"
        "  RETURNING id, url, timeout_ms, create_time, approval_policy),"
        " t AS (UPDATE tools SET approval_policy = $3"
        "  WHERE workspace_id = $1 AND mcp_server = (SELECT id FROM s))"
        " SELECT * FROM s",
        workspace_id,
        server_id,
        policy,
    )


async def mcp_server_delete(conn: Connection, workspace_id: uuid.UUID, server_id: str) -> bool:
    """Delete a server (its tools go with it); tell whether one was."""
    status = await conn.execute(
        "DELETE FROM mcp_servers WHERE workspace_id = $1 AND id = $2", workspace_id, server_id
    )
    return status != "DELETE 0"


@dataclass(frozen=True)
class AuditEntry:
    """The metadata of one tool call: never argument values, results or secret values."""

    workspace_id: uuid.UUID
    run: str
    call_id: str
    tool: str
    kind: str
    argument_shape: dict[str, str]
    credential: str
    destination: str
    outcome: str
    http_status: int | None
    response_bytes: int
    truncated: bool
    detail: str
    duration_ms: int


async def call_audit_insert(conn: Connection, entry: AuditEntry) -> None:
    """Record one call's metadata."""
    await conn.execute(
        "INSERT INTO call_audit (workspace_id, run, call_id, tool, kind, argument_shape,"
        " credential, destination, outcome, http_status, response_bytes, truncated, detail,"
        " duration_ms) VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8, $9, $10, $11, $12,"
        " $13, $14)",
        entry.workspace_id,
        entry.run,
        entry.call_id,
        entry.tool,
        entry.kind,
        json.dumps(entry.argument_shape),
        entry.credential,
        entry.destination,
        entry.outcome,
        entry.http_status,
        entry.response_bytes,
        entry.truncated,
        entry.detail,
        entry.duration_ms,
    )
