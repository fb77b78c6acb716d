"""MCP servers over streamable HTTP, through the `mcp` SDK on the gateway's guarded client.

One short-lived session per discovery or call, opened and closed in the calling task: pooled
sessions shared across tasks break anyio cancel scopes (python-sdk#915).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client

from services.gateway.ssrf import DestinationBlockedError

NAME_LIMIT = 64
SEPARATOR = "__"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class McpUnavailableError(Exception):
    """The MCP server could not be reached or broke the protocol; the message says how."""


def exposed_name(server_id: str, remote_name: str) -> str:
    """Name a server's tool for the model: "{server}__{tool}", safe characters, ≤ 64 long.

    Characters outside [A-Za-z0-9_-] become "_"; a name too long keeps its head and gets a
    hash of the whole remote name, so two long names differing only at the end stay apart.
    """
    name = f"{server_id}{SEPARATOR}{_UNSAFE.sub('_', remote_name)}"
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(remote_name.encode()).hexdigest()[:8]
    return f"{name[: NAME_LIMIT - 9]}_{digest}"


def _cause(err: BaseException) -> str:
    if isinstance(err, BaseExceptionGroup):
        return "; ".join(_cause(e) for e in err.exceptions)
    if isinstance(err, DestinationBlockedError):
        return f"destination blocked: {err.cause}"
    if isinstance(err, httpx.HTTPStatusError):
        return f"HTTP {err.response.status_code}"
    return f"{type(err).__name__}: {err}"[:300]


def _blocked(err: BaseException) -> DestinationBlockedError | None:
    if isinstance(err, DestinationBlockedError):
        return err
    if isinstance(err, BaseExceptionGroup):
        for inner in err.exceptions:
            found = _blocked(inner)
            if found is not None:
                return found
    return None


@contextlib.asynccontextmanager
async def _session(
    url: str, http: httpx.AsyncClient, timeout: float
) -> AsyncIterator[ClientSession]:
    async with (
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write, read_timeout_seconds=timedelta(seconds=timeout)) as session,
    ):
        await session.initialize()
        yield session


async def _guarded(coro: Any) -> Any:
    """Await an SDK operation, turning its many failure shapes into our two errors."""
    task = asyncio.current_task()
    try:
        return await coro
    except asyncio.CancelledError:
        # The SDK reports a failed POST as a cancellation (python-sdk#3560); only a cancel
        # of our own task is one.
        if task is not None and task.cancelling():
            raise
        raise McpUnavailableError("the MCP server connection failed") from None
    except TimeoutError:
        raise
    except Exception as err:
        blocked = _blocked(err)
        if blocked is not None:
            raise blocked from None
        raise McpUnavailableError(_cause(err)) from None


async def list_remote_tools(url: str, http: httpx.AsyncClient, timeout: float) -> list[types.Tool]:
    """Discover every tool of an MCP server, following its pagination."""

    async def run() -> list[types.Tool]:
        async with _session(url, http, timeout) as session:
            tools: list[types.Tool] = []
            cursor: str | None = None
            while True:
                page = await session.list_tools(
                    params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
                )
                tools += page.tools
                cursor = page.nextCursor
                if not cursor or len(tools) > 1000:
                    return tools

    async with asyncio.timeout(timeout):
        result: list[types.Tool] = await _guarded(run())
        return result


async def call_remote_tool(
    url: str, http: httpx.AsyncClient, name: str, arguments: dict[str, Any], timeout: float
) -> tuple[str, bool]:
    """Call a tool on an MCP server; return its result as text and whether it is an error."""

    async def run() -> types.CallToolResult:
        async with _session(url, http, timeout) as session:
            return await session.call_tool(name, arguments)

    async with asyncio.timeout(timeout):
        result: types.CallToolResult = await _guarded(run())
    return result_text(result), result.isError


def result_text(result: types.CallToolResult) -> str:
    """Flatten an MCP result for the model: text blocks, then structured content as JSON."""
    parts = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{block.type} content omitted]")
    if result.structuredContent is not None and not parts:
        parts.append(json.dumps(result.structuredContent, separators=(",", ":")))
    return "\n".join(parts)
