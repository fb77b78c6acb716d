"""Run control planes and workers as real processes (fault tests, the soak benchmark)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.rpc.db import role_dsn

READY_TIMEOUT_S = 20.0

# Short leases so that losing a worker costs seconds, not the production ten; ten heartbeats
# per lease so a busy 2-core machine does not lose a healthy worker's lease by accident.
FAST = {
    "AP_LEASE_SECONDS": "2.0",
    "AP_HEARTBEAT_SECONDS": "0.2",
    "AP_POLL_INTERVAL_SECONDS": "0.2",
    "AP_MAX_ATTEMPTS": "5",
    "AP_SHUTDOWN_GRACE_SECONDS": "5",
    "AP_LOG_FORMAT": "json",
    "AP_LOG_LEVEL": "info",
    "GRPC_ENABLE_FORK_SUPPORT": "false",
}


def free_port() -> int:
    """Return a TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Service:
    """One service process and what it printed."""

    name: str
    proc: asyncio.subprocess.Process
    port: int
    lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    _seen: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str:
        """Return host:port of its gRPC server."""
        return f"127.0.0.1:{self.port}"

    def follow_output(self) -> None:
        """Collect the process's output lines as they come."""
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            self.lines.append(raw.decode(errors="replace"))
            self._seen.set()

    async def wait_for_line(self, needle: str, timeout: float = 10.0) -> str:
        """Wait until the process prints a line containing `needle`."""
        async with asyncio.timeout(timeout):
            checked = 0
            while True:
                for line in self.lines[checked:]:
                    if needle in line:
                        return line
                checked = len(self.lines)
                self._seen.clear()
                await self._seen.wait()

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the process."""
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 15.0) -> int:
        """Wait for the process to exit and return its code."""
        return await asyncio.wait_for(self.proc.wait(), timeout)


async def wait_serving(address: str, timeout: float = READY_TIMEOUT_S) -> None:
    """Wait until a gRPC health check at `address` answers SERVING."""
    async with asyncio.timeout(timeout):
        while True:
            channel = grpc.aio.insecure_channel(address)
            try:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            finally:
                await channel.close(None)
            await asyncio.sleep(0.05)  # polling an external process until it is up


@dataclass
class Cluster:
    """Processes started for one test; everything is killed when the test ends."""

    admin_dsn: str
    internal_token: str
    model_base_url: str
    services: list[Service] = field(default_factory=list)

    async def _spawn(self, name: str, module: str, env: dict[str, str], port: int) -> Service:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
        full_env |= FAST | env
        full_env |= {
            "AP_INTERNAL_TOKEN": self.internal_token,
            "AP_GRPC_PORT": str(port),
            "AP_METRICS_PORT": "0",
            "AP_MODEL_BASE_URL": self.model_base_url,
            "AP_MODEL_NAME": "ap-dev-model",
            "AP_MODEL_IDLE_TIMEOUT_SECONDS": "5",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            env=full_env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        service = Service(name, proc, port)
        service.follow_output()
        self.services.append(service)
        await wait_serving(service.address)
        return service

    async def control_plane(
        self, name: str = "cp", *, port: int | None = None, **env: str
    ) -> Service:
        """Start a control-plane replica (on `port`: to replace one that died there)."""
        db = role_dsn(self.admin_dsn, "ap_control_plane")
        return await self._spawn(
            name, "services.control_plane", {"AP_DATABASE_URL": db, **env}, port or free_port()
        )

    async def worker(self, name: str, control_plane: Service, **env: str) -> Service:
        """Start a worker attached to a control plane."""
        return await self._spawn(
            name,
            "services.worker",
            {
                "AP_CONTROL_PLANE_ADDRESS": control_plane.address,
                "AP_WORKER_ID": name,
                "AP_WORKER_CONCURRENCY": "4",
                **env,
            },
            free_port(),
        )

    async def kill_all(self) -> None:
        """Kill every process still running (SIGCONT first, in case one is paused)."""
        for service in self.services:
            if service.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.proc.pid, signal.SIGCONT)
                    os.killpg(service.proc.pid, signal.SIGKILL)
        for service in self.services:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await asyncio.wait_for(service.proc.wait(), 10)
            if service._reader is not None:
                service._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await service._reader


@contextlib.asynccontextmanager
async def cluster(
    admin_dsn: str, internal_token: str, model_base_url: str
) -> AsyncIterator[Cluster]:
    """Yield a cluster whose processes are all killed afterwards, even on failure."""
    running = Cluster(admin_dsn, internal_token, model_base_url)
    try:
        yield running
    finally:
        await running.kill_all()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Retry an asynchronous check until it holds; it observes state another process changes."""
    async with asyncio.timeout(timeout):
        for _ in iter(int, 1):
            if await check():
                return
            await asyncio.sleep(0.05)
