"""A gateway stack for tests: real HTTP and MCP tool servers on loopback, vault, gateway."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import secrets
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import uvicorn
from agentplatform.gateway.v1 import gateway_service_pb2 as gw
from agentplatform.gateway.v1 import gateway_service_pb2_grpc
from agentplatform.v1 import (
    run_pb2,
    run_service_pb2,
    session_pb2,
    session_service_pb2,
    tool_pb2,
    tool_service_pb2,
    tool_service_pb2_grpc,
)
from aiohttp import web
from google.protobuf import struct_pb2
from mcp.server.fastmcp import FastMCP
from pydantic import SecretStr

from services.gateway.app import Gateway
from services.gateway.settings import GatewaySettings
from services.gateway.ssrf import Resolver, system_resolve
from services.rpc.db import role_dsn
from services.rpc.internal_auth import INTERNAL_TOKEN_HEADER
from tests.harness import Client, Stack, start_stack
from tests.vault.helpers import Identities, LeakGuard, start_vault, write_key_file

CAP = 4096


class ToolServer:
    """A real HTTP tool server on 127.0.0.1 that records what it receives."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.abandoned = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base(self) -> str:
        """Return the server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_route("*", "/echo/{item}", self._echo)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_get("/fail", self._fail)
        app.router.add_get("/big", self._big)
        app.router.add_get("/bomb", self._bomb)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/wait", self._wait)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.text()
        seen = {
            "method": request.method,
            "item": request.match_info.get("item", ""),
            "path": request.raw_path,
            "query": dict(request.query),
            "authorization": request.headers.get("authorization", ""),
            "x_api_key": request.headers.get("x-api-key", ""),
            "body": body,
        }
        self.received.append(seen)
        return web.json_response(seen)

    async def _fail(self, request: web.Request) -> web.Response:
        return web.Response(status=500, text="the tool broke")

    async def _big(self, request: web.Request) -> web.Response:
        return web.Response(text="x" * (CAP * 3))

    async def _bomb(self, request: web.Request) -> web.Response:
        body = gzip.compress(b"0" * (CAP * 1000))
        return web.Response(body=body, headers={"content-encoding": "gzip"})

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    async def _wait(self, request: web.Request) -> web.Response:
        # Answers only when the test releases it: timeouts and cancels need a call in flight.
        self.received.append({"path": "/wait"})
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.abandoned.set()  # the caller hung up while we were answering
            raise
        return web.Response(text="released")


def mcp_app() -> FastMCP:
    """Build the MCP server the tests call: two small tools."""
    server = FastMCP("test-tools", host="127.0.0.1", stateless_http=True, json_response=True)

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool(name="text.shout")
    def shout(text: str) -> str:
        """Upper-case a text."""
        return text.upper()

    return server


class McpServer:
    """The FastMCP server over streamable HTTP, served by uvicorn on a loopback socket."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        # Listening before uvicorn starts: early connections wait in the backlog, no race.
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(mcp_app().streamable_http_app(), log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Return the MCP endpoint."""
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        """Start serving in a task."""
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))

    async def stop(self) -> None:
        """Stop serving."""
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self._sock.close()


@dataclass
class GatewayStack:
    """A control plane, worker, vault and gateway, with tool servers they may reach."""

    stack: Stack
    gateway: Gateway
    tools: ToolServer
    mcp: McpServer
    guard: LeakGuard
    tokens: dict[str, str]
    _stubs: list[Any] = field(default_factory=list)

    @property
    def owner(self) -> Client:
        """Return the first workspace's owner."""
        return self.stack.owner

    def tool_api(self, client: Client) -> tool_service_pb2_grpc.ToolServiceAsyncStub:
        """Return the public ToolService on a client's channel."""
        return tool_service_pb2_grpc.ToolServiceStub(client.channel)

    def gateway_stub(self) -> gateway_service_pb2_grpc.GatewayServiceAsyncStub:
        """Return a stub on the gateway (callers add their own identity)."""
        opened = grpc.aio.insecure_channel(self.gateway.address)
        self.stack._channels.append(opened)
        return gateway_service_pb2_grpc.GatewayServiceStub(opened)

    def as_worker(self) -> tuple[tuple[str, str], ...]:
        """Return the metadata a worker's calls to the gateway carry."""
        return ((INTERNAL_TOKEN_HEADER, self.tokens["worker"]),)

    def as_control_plane(self) -> tuple[tuple[str, str], ...]:
        """Return the metadata the control plane's calls to the gateway carry."""
        return ((INTERNAL_TOKEN_HEADER, self.tokens["control_plane"]),)

    async def add_http_tool(
        self,
        client: Client,
        tool_id: str,
        url: str,
        *,
        method: str = "GET",
        parameters: dict[str, Any] | None = None,
        credential: str = "",
        injection: str = "",
        timeout_ms: int = 0,
    ) -> tool_pb2.Tool:
        """Register an HTTP tool through the public API."""
        schema = struct_pb2.Struct()
        schema.update(parameters or {"type": "object"})
        return await self.tool_api(client).CreateTool(
            tool_service_pb2.CreateToolRequest(
                tool_id=tool_id,
                tool=tool_pb2.Tool(
                    description=f"The {tool_id} tool.",
                    parameters=schema,
                    timeout_ms=timeout_ms,
                    http=tool_pb2.HttpEndpoint(
                        method=method,
                        url_template=url,
                        credential=credential,
                        credential_injection=injection,
                    ),
                ),
            ),
            metadata=client.auth,
            timeout=10,
        )

    async def call(
        self, client: Client, tool: str, arguments: str = "{}", run: str = ""
    ) -> gw.CallToolResponse:
        """Call a tool as a worker would, for a run of the client's workspace."""
        return await self.gateway_stub().CallTool(
            gw.CallToolRequest(
                run=run or f"sessions/{_uuid()}/runs/{_uuid()}",
                workspace=client.workspace,
                tool=tool,
                arguments_json=arguments,
                call_id="call-1",
            ),
            metadata=self.as_worker(),
            timeout=10,
        )

    async def run(self, client: Client, text: str) -> tuple[str, list[run_pb2.RunEvent]]:
        """Create a session and a run of `text`; return the run's name and all its events."""
        session = await client.sessions.CreateSession(
            session_service_pb2.CreateSessionRequest(session=session_pb2.Session(title="t")),
            metadata=client.auth,
            timeout=10,
        )
        run = await client.runs.CreateRun(
            run_service_pb2.CreateRunRequest(parent=session.name, input_text=text),
            metadata=client.auth,
            timeout=10,
        )
        return run.name, await client.stream(run.name)

    async def audit(self) -> list[Any]:
        """Read the gateway's call audit, oldest first."""
        conn = await asyncpg.connect(role_dsn(self.stack.admin_dsn, "ap_gateway"))
        try:
            return list(await conn.fetch("SELECT * FROM call_audit ORDER BY id"))
        finally:
            await conn.close()


def _uuid() -> str:
    return str(uuid.uuid4())


@contextlib.asynccontextmanager
async def start_gateway_stack(
    admin_dsn: str,
    key_dir: Path,
    *,
    guard: LeakGuard | None = None,
    resolve: Resolver = system_resolve,
    model_settings: dict[str, Any] | None = None,
    control_plane_settings: dict[str, Any] | None = None,
    **gateway_settings: Any,
) -> AsyncIterator[GatewayStack]:
    """Start tool servers, a vault, a gateway allowlisting exactly those servers, and a stack."""
    guard = guard or LeakGuard()
    tokens = {
        "control_plane": secrets.token_urlsafe(24),
        "worker": secrets.token_urlsafe(24),
        "vault_admin": secrets.token_urlsafe(24),
        "vault_resolve": secrets.token_urlsafe(24),
        "internal": secrets.token_urlsafe(24),
    }
    identities = Identities(
        None,
        None,
        {"control_plane": tokens["vault_admin"], "gateway": tokens["vault_resolve"]},
    )
    tools = ToolServer()
    await tools.start()
    mcp = McpServer()
    mcp.start()
    with guard.capturing():
        vault = await start_vault(admin_dsn, identities, write_key_file(key_dir))
        settings: dict[str, Any] = {
            "database_url": role_dsn(admin_dsn, "ap_gateway"),
            "grpc_port": 0,
            "gateway_admin_token": SecretStr(tokens["control_plane"]),
            "gateway_call_token": SecretStr(tokens["worker"]),
            "vault_address": vault.address,
            "vault_resolve_token": SecretStr(tokens["vault_resolve"]),
            "gateway_allowlist": f"127.0.0.1:{tools.port},127.0.0.1:{mcp.port}",
            "gateway_default_timeout_seconds": 5.0,
            "gateway_max_timeout_seconds": 10.0,
            "gateway_max_response_bytes": CAP,
            "shutdown_grace_seconds": 0.5,
        }
        gateway = Gateway(GatewaySettings(**(settings | gateway_settings)), resolve)
        await gateway.start()
        try:
            async with start_stack(
                admin_dsn,
                internal_token=tokens["internal"],
                model_settings=model_settings,
                vault_address=vault.address,
                vault_admin_token=SecretStr(tokens["vault_admin"]),
                gateway_address=gateway.address,
                gateway_admin_token=SecretStr(tokens["control_plane"]),
                worker_settings={
                    "gateway_address": gateway.address,
                    "gateway_call_token": SecretStr(tokens["worker"]),
                    "max_steps": 3,
                    "tool_progress_seconds": 0.2,
                },
                **(control_plane_settings or {}),
            ) as stack:
                yield GatewayStack(stack, gateway, tools, mcp, guard, tokens)
        finally:
            tools.release.set()
            await gateway.stop()
            await vault.stop()
            await mcp.stop()
            await tools.stop()
    if guard.planted:
        await guard.check(admin_dsn)
