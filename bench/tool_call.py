"""Measure the latency the gateway adds to a tool call, against a local HTTP tool server.

Self-contained: an embedded Postgres in a temporary directory, the gateway as its own
process (`python -m services.gateway`, token identity, the tool server allowlisted), and an
aiohttp tool server in this process. Each sample is one CallTool as a worker makes it (a
registry read, argument validation against the schema, the guarded HTTP call, the audit row
committed); the baseline is the same HTTP request made directly with httpx. The gateway's
added latency is the difference of the two at each percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import httpx
from agentplatform.gateway.v1 import gateway_service_pb2 as gw
from agentplatform.gateway.v1 import gateway_service_pb2_grpc
from aiohttp import web
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.embedded_pg import EmbeddedPostgres
from devtools.measure import percentile
from services.migrate import migrate_all
from services.rpc.db import role_dsn
from services.rpc.internal_auth import INTERNAL_TOKEN_HEADER

WORKSPACE = f"workspaces/{uuid.uuid4()}"
RUN = f"sessions/{uuid.uuid4()}/runs/{uuid.uuid4()}"


async def tool_server() -> tuple[web.AppRunner, int]:
    """Serve a small JSON echo on a loopback port."""

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"item": request.match_info["item"], "ok": True})

    app = web.Application()
    app.router.add_get("/echo/{item}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


def free_port() -> int:
    """Return a port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_serving(channel: grpc.aio.Channel, deadline: float) -> None:
    """Wait until the gateway's health check says SERVING."""
    health = health_pb2_grpc.HealthStub(channel)
    while True:
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)  # polling a process we started; it offers no other signal


async def bench(args: argparse.Namespace, dsn: str) -> None:
    """Start the gateway, register the tool, and time direct and gateway calls."""
    await migrate_all(dsn)
    runner, tool_port = await tool_server()
    port = free_port()
    admin, worker = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "AP_DATABASE_URL": role_dsn(dsn, "ap_gateway"),
        "AP_GRPC_PORT": str(port),
        "AP_METRICS_PORT": "0",
        "AP_GATEWAY_ADMIN_TOKEN": admin,
        "AP_GATEWAY_CALL_TOKEN": worker,
        "AP_GATEWAY_ALLOWLIST": f"127.0.0.1:{tool_port}",
        "AP_LOG_LEVEL": "warning",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.gateway", env=env, stdout=asyncio.subprocess.DEVNULL
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await wait_serving(channel, time.monotonic() + 30)
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        schema = struct_pb2.Struct()
        schema.update(
            {
                "type": "object",
                "properties": {"item": {"type": "string"}},
                "required": ["item"],
            }
        )
        await stub.CreateTool(
            gw.CreateToolRequest(
                parent=WORKSPACE,
                tool_id="echo",
                tool=gw.Tool(
                    parameters=schema,
                    method="GET",
                    url_template=f"http://127.0.0.1:{tool_port}/echo/{{item}}",
                ),
            ),
            metadata=((INTERNAL_TOKEN_HEADER, admin),),
            timeout=10,
        )
        as_worker = ((INTERNAL_TOKEN_HEADER, worker),)
        request = gw.CallToolRequest(
            run=RUN, workspace=WORKSPACE, tool="echo", arguments_json='{"item": "x"}'
        )
        direct: list[float] = []
        through: list[float] = []
        async with httpx.AsyncClient(trust_env=False) as http:
            url = f"http://127.0.0.1:{tool_port}/echo/x"
            for i in range(args.warmup + args.calls):
                started = time.perf_counter()
                await http.get(url)
                middle = time.perf_counter()
                request.call_id = f"call-{i}"
                reply = await stub.CallTool(request, metadata=as_worker, timeout=10)
                ended = time.perf_counter()
                assert not reply.is_error, reply.result
                if i >= args.warmup:
                    direct.append((middle - started) * 1000)
                    through.append((ended - middle) * 1000)
        print_report(args, direct, through)
    finally:
        await channel.close(None)
        proc.terminate()
        await proc.wait()
        await runner.cleanup()


def print_report(args: argparse.Namespace, direct: list[float], through: list[float]) -> None:
    """Print the conditions and the figures."""
    print(
        f"conditions: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; sequential calls, {args.calls} measured after "
        f"{args.warmup} warm-up; tool server and gateway on loopback; embedded Postgres"
    )
    for p in (50, 99):
        d, t = percentile(direct, p), percentile(through, p)
        print(
            f"  p{p}: direct HTTP {d:.2f} ms, through the gateway {t:.2f} ms, "
            f"gateway added {t - d:.2f} ms"
        )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start Postgres and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args(argv)
    data_dir = Path(tempfile.mkdtemp(prefix="ap-bench-pg-"))
    server = EmbeddedPostgres(data_dir, free_port(), fast_unsafe=True)
    try:
        dsn = server.start()
        asyncio.run(bench(args, dsn))
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
