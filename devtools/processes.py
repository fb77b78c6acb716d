"""Start, follow and stop the platform's processes: the one supervisor of child processes.

`make run` (`devtools.stack`), the fault tests and the soak benchmark start every service
through it:

    Service.start(...)     spawn with stdout and stderr merged into one pipe, follow its lines
    wait_serving(...)      poll gRPC health until SERVING (plaintext, or mTLS with `tls`)
    wait_http_ok(...)      poll an HTTP URL until it answers 200 (the dev model)
    Service.stop()         SIGTERM, wait up to its stop timeout, then SIGKILL
    Supervisor             services started in waves and stopped wave by wave in reverse
    Cluster / cluster()    control planes and workers of one fault test, killed afterwards
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.rpc.db import role_dsn
from services.rpc.tls import ServiceTls

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
_POLL_INTERVAL_S = 0.05
# Long enough for any log line a service writes; longer ones are replaced, not fatal.
_LINE_LIMIT = 1024 * 1024
_TAIL_LINES = 30

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


class NotReadyError(Exception):
    """Report that a process exited, or stayed silent, before it was ready."""


def free_port() -> int:
    """Return a TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bind_error(host: str, port: int) -> OSError | None:
    """Return why a server could not listen on host:port now, or None when it could."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Like the servers: a port left in TIME_WAIT by a previous process is free to use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            return err
    return None


@dataclass(frozen=True)
class PortHolder:
    """The process listening on a port."""

    pid: int
    command: str

    def __str__(self) -> str:
        """Show it as "pid N: command"."""
        return f"pid {self.pid}: {shorten(self.command)}"


def port_holder(port: int) -> PortHolder | None:
    """Return the process listening on TCP `port`, when this user may see which it is."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return None  # another user's process; only root may see which
            try:
                command = " ".join(psutil.Process(conn.pid).cmdline())
            except psutil.Error:
                command = "?"
            return PortHolder(conn.pid, command)
    return None


def shorten(text: str, limit: int = 160) -> str:
    """Cut `text` to `limit` characters, marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Service:
    """A child process serving on a port, and the lines it has printed.

    `lines` keeps the last `keep_lines` lines (all of them when None); `on_line` sees each
    line as it comes, e.g. to copy it to a terminal and a log file.
    """

    def __init__(
        self,
        name: str,
        proc: asyncio.subprocess.Process,
        port: int,
        *,
        keep_lines: int | None = None,
        on_line: Callable[[str], None] | None = None,
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> None:
        """Take over a started process and start following its output."""
        self.name = name
        self.proc = proc
        self.port = port
        self.stop_timeout = stop_timeout
        self.lines: deque[str] = deque(maxlen=keep_lines)
        self._printed = 0
        self._new_line = asyncio.Condition()
        self._on_line = on_line
        self._reader = asyncio.create_task(self._read(), name=f"output-{name}")

    @classmethod
    async def start(
        cls,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        port: int,
        cwd: Path | None = None,
        process_group: int = 0,
        keep_lines: int | None = None,
        on_line: Callable[[str], None] | None = None,
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> Service:
        """Start `args` in process group `process_group` (0: a new one led by the child).

        A group of its own keeps a terminal's Ctrl-C, which reaches the whole foreground
        group, away from the child: whoever started it decides when and in which order it
        stops.
        """
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            process_group=process_group,
            limit=_LINE_LIMIT,
        )
        return cls(
            name, proc, port, keep_lines=keep_lines, on_line=on_line, stop_timeout=stop_timeout
        )

    @property
    def address(self) -> str:
        """Return host:port of its server on the loopback interface."""
        return f"127.0.0.1:{self.port}"

    @property
    def returncode(self) -> int | None:
        """Return the exit code, or None while the process runs."""
        return self.proc.returncode

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except ValueError:
                raw = b"[a line longer than the limit was dropped]\n"
            if not raw:
                return
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            async with self._new_line:
                self.lines.append(line)
                self._printed += 1
                self._new_line.notify_all()
            if self._on_line is not None:
                self._on_line(line)

    async def wait_for_line(self, needle: str, timeout: float = 10.0) -> str:
        """Wait until the process prints a line containing `needle`; return that line."""
        checked = 0
        async with asyncio.timeout(timeout), self._new_line:
            while True:
                first = self._printed - len(self.lines)
                for number, line in enumerate(self.lines, start=first):
                    if number >= checked and needle in line:
                        return line
                checked = self._printed
                await self._new_line.wait()

    def describe_tail(self) -> str:
        """Return its last lines of output, indented, for error messages."""
        lines = list(self.lines)[-_TAIL_LINES:]
        return "\n".join(f"  {line}" for line in lines) or "  (no output)"

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the process."""
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 15.0) -> int:
        """Wait for the process to exit and return its code."""
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self, *, on_kill: Callable[[Service], None] | None = None) -> None:
        """Send SIGTERM and wait for the exit; SIGKILL after `stop_timeout`."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), self.stop_timeout)
            except TimeoutError:
                if on_kill is not None:
                    on_kill(self)
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        await self.finish_output()

    async def finish_output(self) -> None:
        """Wait briefly for the last lines; a grandchild holding the pipe must not hang us."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def wait_serving(
    address: str,
    *,
    timeout: float = READY_TIMEOUT_S,
    tls: ServiceTls | None = None,
    service: Service | None = None,
) -> None:
    """Poll the gRPC health check at `address` until it says SERVING.

    With `tls` the check speaks mutual TLS; with `service` it fails as soon as that process
    exits instead of waiting out the timeout.
    """
    serving = health_pb2.HealthCheckResponse.SERVING

    async def healthy() -> bool:
        # A fresh channel per attempt: a failed one would wait out its reconnect backoff.
        channel = (
            grpc.aio.insecure_channel(address)
            if tls is None
            else grpc.aio.secure_channel(address, tls.channel_credentials())
        )
        async with channel:
            with contextlib.suppress(grpc.aio.AioRpcError):
                stub = health_pb2_grpc.HealthStub(channel)
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                return bool(reply.status == serving)
        return False

    await _poll(healthy, f"did not report SERVING on {address}", timeout, service)


async def wait_http_ok(
    url: str, *, timeout: float = READY_TIMEOUT_S, service: Service | None = None
) -> None:
    """Poll `url` until it answers 200; fail early when `service` exits."""
    async with httpx.AsyncClient(trust_env=False, timeout=1.0) as http:

        async def answers() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return (await http.get(url)).status_code == 200
            return False

        await _poll(answers, f"did not answer {url}", timeout, service)


async def _poll(
    ready: Callable[[], Awaitable[bool]], failure: str, timeout: float, service: Service | None
) -> None:
    """Poll another process's readiness: there is nothing it could notify us with."""
    what = service.name if service is not None else "the server"
    try:
        async with asyncio.timeout(timeout):
            while True:
                if service is not None and service.returncode is not None:
                    raise NotReadyError(
                        f"{what} exited with code {service.returncode} before it was ready"
                    )
                if await ready():
                    return
                await asyncio.sleep(_POLL_INTERVAL_S)
    except TimeoutError:
        raise NotReadyError(f"{what} {failure} within {timeout:g}s") from None


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Retry an asynchronous check until it holds; it observes state another process changes."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(_POLL_INTERVAL_S)


class Supervisor:
    """Services started in waves, sharing one process group, stopped in reverse wave order.

    The group is the first child's; every later child joins it, so one `killpg` ends them
    all and a terminal's Ctrl-C reaches none of them.
    """

    def __init__(self) -> None:
        """Start with no children."""
        self._waves: list[list[Service]] = []
        self.process_group: int | None = None

    @property
    def children(self) -> list[Service]:
        """Return every child started so far, in start order."""
        return [child for wave in self._waves for child in wave]

    def new_wave(self) -> None:
        """Begin a wave: its children stop before those of earlier waves."""
        self._waves.append([])

    async def start(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        port: int,
        cwd: Path | None = None,
        keep_lines: int | None = None,
        on_line: Callable[[str], None] | None = None,
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> Service:
        """Start a child in the current wave."""
        if not self._waves:
            self.new_wave()
        child = await Service.start(
            name,
            args,
            env,
            port=port,
            cwd=cwd,
            process_group=self.process_group or 0,
            keep_lines=keep_lines,
            on_line=on_line,
            stop_timeout=stop_timeout,
        )
        if self.process_group is None:
            self.process_group = child.proc.pid
        self._waves[-1].append(child)
        return child

    async def watch(self, stopping: asyncio.Event) -> Service | None:
        """Wait for a stop request (None) or a child's exit (that child)."""
        exits = {asyncio.create_task(child.proc.wait()): child for child in self.children}
        stop = asyncio.create_task(stopping.wait())
        done, pending = await asyncio.wait({*exits, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if stop in done:
            return None
        return next(exits[task] for task in done if task in exits)

    async def stop_all(self, *, on_kill: Callable[[Service], None] | None = None) -> None:
        """Stop the latest wave first, each wave's children concurrently."""
        for wave in reversed(self._waves):
            await asyncio.gather(*(child.stop(on_kill=on_kill) for child in wave))
        self._waves.clear()


@dataclass
class Cluster:
    """Processes started for one fault test; everything is killed when the test ends."""

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
        # A group per process, so a kill reaches exactly one service.
        service = await Service.start(name, [sys.executable, "-m", module], full_env, port=port)
        self.services.append(service)
        await wait_serving(service.address, service=service)
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
            await service.finish_output()


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
