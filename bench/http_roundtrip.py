"""Measure what the HTTP edge adds: round trips and first events vs gRPC, and SSE fan-out.

Starts its own stack as real processes on loopback (embedded Postgres, a control plane, a
worker, the HTTP edge; the dev model in this process) and prints:

1. unary round trip: GetSession over gRPC vs over HTTP/JSON through the edge;
2. run round trip: CreateRun → terminal event at a streaming client, and → first
   output_text.delta, over gRPC (StreamRunEvents) vs HTTP (POST …/runs, then SSE);
3. fan-out: N concurrent SSE subscribers of one session's stream while a run streams:
   each event's delivery latency (its createTime → arrival at each subscriber), the edge's
   and the control plane's resident memory and TCP connections, and the edge's upstream
   gRPC streams, with one shared key (feeds shared) and with a key per subscriber.

    .venv/bin/python bench/http_roundtrip.py [--runs 200] [--subscribers 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncpg
import grpc
import httpx
from agentplatform.v1 import (
    api_key_pb2,
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)

from devtools.devmodel import DevModel
from devtools.embedded_pg import EmbeddedPostgres
from devtools.measure import percentile
from devtools.processes import Cluster, cluster, free_port
from services.control_plane.bootstrap import create_workspace
from services.migrate import migrate_all
from services.rpc.db import role_dsn

INPUT_TEXT = "[[tokens=20]] [[reasoning=0]] bench"
TERMINAL = ("run.completed", "run.failed", "run.cancelled")
_CREATE_TIME = re.compile(rb'"createTime":"([^"]+)"')
_EVENT = re.compile(rb"^event: (.+)$", re.M)


def describe(label: str, values: list[float]) -> str:
    """Format `label  p50 … p99 …` in milliseconds."""
    if not values:
        return f"  {label:<46} no samples"
    return (
        f"  {label:<46} p50 {percentile(values, 50) * 1000:8.2f} ms   "
        f"p99 {percentile(values, 99) * 1000:8.2f} ms   (n={len(values)})"
    )


def rss_mb(pid: int) -> float:
    """Return a process's resident memory in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tcp_connections(pid: int) -> int:
    """Count a process's established TCP connections (its socket fds in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    established = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "01" and parts[9] in inodes:  # 01 = ESTABLISHED
                established += 1
    return established


@dataclass
class Edge:
    """The edge process."""

    proc: asyncio.subprocess.Process
    url: str
    metrics_url: str

    async def metric(self, http: httpx.AsyncClient, name: str) -> float:
        """Read one sample of the edge's /metrics."""
        text = (await http.get(self.metrics_url)).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


async def start_edge(control_plane: str) -> Edge:
    """Start `python -m services.web` and wait until it is ready."""
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AP_")} | {
        "AP_HTTP_PORT": str(port),
        "AP_METRICS_PORT": str(metrics_port),
        "AP_CONTROL_PLANE_ADDRESS": control_plane,
        "AP_COOKIE_SECRET": secrets.token_urlsafe(32),
        "AP_LOG_LEVEL": "warning",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.web", env=env, start_new_session=True
    )
    edge = Edge(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics")
    async with httpx.AsyncClient() as http, asyncio.timeout(20):
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(edge.url + "/readyz")).status_code == 200:
                    return edge
            await asyncio.sleep(0.05)  # polling another process until it listens


@dataclass
class Paths:
    """The same stack seen over gRPC and over HTTP, with one key."""

    channel: grpc.aio.Channel
    http: httpx.AsyncClient
    key: str
    sessions: session_service_pb2_grpc.SessionServiceAsyncStub = field(init=False)
    runs: run_service_pb2_grpc.RunServiceAsyncStub = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = session_service_pb2_grpc.SessionServiceStub(self.channel)
        self.runs = run_service_pb2_grpc.RunServiceStub(self.channel)

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        """Return the gRPC metadata of the key."""
        return (("authorization", f"Bearer {self.key}"),)

    @property
    def headers(self) -> dict[str, str]:
        """Return the HTTP headers of the key."""
        return {"authorization": f"Bearer {self.key}"}

    async def new_session(self) -> str:
        """Create a session over gRPC."""
        session = await self.sessions.CreateSession(
            session_service_pb2.CreateSessionRequest(session=session_pb2.Session(title="b")),
            metadata=self.md,
        )
        return session.name

    async def grpc_run(self, session: str) -> tuple[float, float]:
        """Return (round trip, first output) of one run over gRPC."""
        start = time.perf_counter()
        run = await self.runs.CreateRun(
            run_service_pb2.CreateRunRequest(
                parent=session, input_text=INPUT_TEXT, concurrency_policy=run_service_pb2.ENQUEUE
            ),
            metadata=self.md,
        )
        first = 0.0
        stream = self.runs.StreamRunEvents(
            run_service_pb2.StreamRunEventsRequest(name=run.name), metadata=self.md
        )
        async for response in stream:
            if not first and response.event.type == "output_text.delta":
                first = time.perf_counter() - start
        return time.perf_counter() - start, first

    async def http_run(self, session: str) -> tuple[float, float]:
        """Return (round trip, first output) of one run over HTTP + SSE."""
        start = time.perf_counter()
        created = await self.http.post(
            f"/v1/{session}/runs",
            json={"inputText": INPUT_TEXT, "concurrencyPolicy": "ENQUEUE"},
            headers=self.headers,
        )
        created.raise_for_status()
        first = 0.0
        url = f"/v1/{created.json()['name']}:streamEvents"
        async with self.http.stream("GET", url, headers=self.headers) as response:
            async for chunk in _events(response):
                if not first and b"event: output_text.delta" in chunk:
                    first = time.perf_counter() - start
        return time.perf_counter() - start, first


async def _events(response: httpx.Response) -> AsyncIterator[bytes]:
    """Yield each raw event of an SSE response."""
    buffer = b""
    async for data in response.aiter_bytes():
        buffer += data
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            yield event


class RawHttp:
    """One keep-alive HTTP/1.1 connection over asyncio streams: a client that costs ~nothing.

    httpx spends ~1 ms of this process's CPU per request (building, parsing, its pool), which
    the bench would otherwise count as the edge's; this is what the edge adds, measured.
    """

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, authorization: str) -> bytes:
        """GET `path` on the connection; return the body (raise on a status other than 200)."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(
            f"GET {path} HTTP/1.1\r\nhost: {self.host}\r\nauthorization: {authorization}"
            "\r\n\r\n".encode()
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        return await self._reader.readexactly(length)

    async def close(self) -> None:
        """Close the connection."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()


async def unary(
    paths: Paths, session: str, count: int, raw: RawHttp | None = None
) -> tuple[list[float], list[float]]:
    """Time GetSession over both paths, alternating (HTTP with httpx, or `raw` if given)."""
    grpc_s, http_s = [], []
    request = session_service_pb2.GetSessionRequest(name=session)
    authorization = f"Bearer {paths.key}"
    for _ in range(count):
        start = time.perf_counter()
        await paths.sessions.GetSession(request, metadata=paths.md)
        grpc_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        if raw is not None:
            await raw.get(f"/v1/{session}", authorization)
        else:
            (await paths.http.get(f"/v1/{session}", headers=paths.headers)).raise_for_status()
        http_s.append(time.perf_counter() - start)
    return grpc_s, http_s


async def fan_out(
    paths: Paths, edge: Edge, keys: list[str], control_plane_pid: int, args: argparse.Namespace
) -> None:
    """Hold one SSE subscriber per key on a session stream while a run streams; report."""
    session = await paths.new_session()
    url = f"{edge.url}/v1/{session}:streamEvents"
    latencies: list[float] = []
    connected = 0
    all_connected = asyncio.Event()
    before = (rss_mb(edge.proc.pid), rss_mb(control_plane_pid))
    own = os.getpid()

    host, port = edge.url.removeprefix("http://").split(":")

    async def subscriber(key: str) -> None:
        # Raw asyncio streams, not httpx: with 1,000 streams the client's own parsing would
        # otherwise take more CPU than the edge and hide its latency.
        nonlocal connected
        reader, writer = await asyncio.open_connection(host, int(port))
        path = url.removeprefix(edge.url)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        connected += 1
        if connected == len(keys):
            all_connected.set()
        buffer = b""
        try:
            while data := await reader.read(65536):
                arrived = time.time()
                buffer += data
                *events, buffer = buffer.split(b"\n\n")
                for raw in events:
                    stamp = _CREATE_TIME.search(raw)
                    kind = _EVENT.search(raw)
                    if stamp is None or kind is None:
                        continue
                    name = kind.group(1).decode()
                    if name != "run.queued":
                        created = datetime.fromisoformat(stamp.group(1).decode()).timestamp()
                        latencies.append(arrived - created)
                    if name in TERMINAL:
                        return
        finally:
            writer.close()

    tasks = [asyncio.create_task(subscriber(key)) for key in keys]
    await asyncio.wait_for(all_connected.wait(), 120)
    peak_rss = (rss_mb(edge.proc.pid), rss_mb(control_plane_pid))
    connections = (tcp_connections(edge.proc.pid), tcp_connections(control_plane_pid))
    upstreams = await edge.metric(paths.http, "ap_sse_upstream_streams")
    guards = await edge.metric(paths.http, "ap_sse_guard_streams")
    cpu = (cpu_seconds(edge.proc.pid), cpu_seconds(control_plane_pid), cpu_seconds(own))
    text = f"[[tokens={args.fanout_tokens}]] [[delay_ms={args.fanout_delay_ms}]] [[reasoning=0]]"
    await paths.runs.CreateRun(
        run_service_pb2.CreateRunRequest(parent=session, input_text=text), metadata=paths.md
    )
    await asyncio.wait_for(asyncio.gather(*tasks), 300)
    cpu = (
        cpu_seconds(edge.proc.pid) - cpu[0],
        cpu_seconds(control_plane_pid) - cpu[1],
        cpu_seconds(own) - cpu[2],
    )
    _report(
        args,
        keys,
        latencies=latencies,
        upstreams=(upstreams, guards),
        rss=(before, peak_rss),
        connections=connections,
        cpu=cpu,
    )


def _report(
    args: argparse.Namespace,
    keys: list[str],
    *,
    latencies: list[float],
    upstreams: tuple[float, float],
    rss: tuple[tuple[float, float], tuple[float, float]],
    connections: tuple[int, int],
    cpu: tuple[float, float, float],
) -> None:
    """Print the fan-out figures."""
    before, peak_rss = rss
    distinct = len(set(keys))
    print(
        f"\n  {len(keys)} SSE subscribers, {distinct} distinct key(s), one run of "
        f"{args.fanout_tokens} tokens every {args.fanout_delay_ms} ms"
    )
    print(describe("event delivery (createTime → subscriber)", latencies))
    print(
        f"  gRPC streams from the edge                     {upstreams[0]:.0f} carrying events, "
        f"{upstreams[1]:.0f} guards (no events; end on revocation)"
    )
    print(
        f"  edge RSS            before {before[0]:7.1f} MB   with subscribers {peak_rss[0]:7.1f} MB"
    )
    print(
        f"  control plane RSS   before {before[1]:7.1f} MB   with subscribers {peak_rss[1]:7.1f} MB"
    )
    print(f"  TCP connections     edge {connections[0]}   control plane {connections[1]}")
    deliveries = max(1, len(latencies))
    print(
        f"  CPU while the run streamed: edge {cpu[0]:.2f} s "
        f"({cpu[0] / deliveries * 1e6:.0f} µs per delivered event), control plane "
        f"{cpu[1]:.2f} s, this client {cpu[2]:.2f} s"
    )


async def make_keys(paths: Paths, count: int) -> list[str]:
    """Mint `count` keys of the owner's workspace (for subscribers that cannot share)."""
    stub = api_key_service_pb2_grpc.ApiKeyServiceStub(paths.channel)
    keys = []
    for index in range(count):
        made = await stub.CreateApiKey(
            api_key_service_pb2.CreateApiKeyRequest(
                api_key=api_key_pb2.ApiKey(display_name=f"bench-{index}")
            ),
            metadata=paths.md,
        )
        keys.append(made.key)
    return keys


async def bench(args: argparse.Namespace) -> None:
    """Start the stack, run the phases, print the figures."""
    data_dir = Path(tempfile.mkdtemp(prefix="ap-bench-http-pg-"))
    server = EmbeddedPostgres(data_dir, fast_unsafe=True)
    admin = await asyncio.to_thread(server.start)
    model = DevModel()
    await model.start()
    try:
        await migrate_all(admin)
        conn = await asyncpg.connect(role_dsn(admin, "ap_control_plane"))
        key = (
            await create_workspace(conn, workspace_display_name="Bench", owner_display_name="B")
        ).api_key
        await conn.close()
        async with cluster(admin, secrets.token_urlsafe(16), model.base_url) as c:
            await run_phases(args, c, key)
    finally:
        await model.stop()
        await asyncio.to_thread(server.stop)


async def unary_phase(
    paths: Paths, edge: Edge, control_plane_pid: int, session: str, count: int
) -> None:
    """Print the unary round trips with a raw client and with httpx, and the CPU per call."""
    raw = RawHttp(edge.url)
    for client, label in ((raw, "raw keep-alive socket"), (None, "httpx")):
        await unary(paths, session, 50, client)
        own = cpu_seconds(os.getpid())
        cpu, cp_cpu = cpu_seconds(edge.proc.pid), cpu_seconds(control_plane_pid)
        grpc_unary, http_unary = await unary(paths, session, count, client)
        cpu = cpu_seconds(edge.proc.pid) - cpu
        cp_cpu = (cpu_seconds(control_plane_pid) - cp_cpu) / 2
        own = cpu_seconds(os.getpid()) - own
        print(f"\n  unary GetSession, {count} each, alternating; HTTP client {label}")
        print(describe("gRPC", grpc_unary))
        print(describe("HTTP/JSON through the edge", http_unary))
        added = percentile(http_unary, 50) - percentile(grpc_unary, 50)
        print(f"  edge adds p50 {added * 1000:.2f} ms")
        print(
            f"  CPU per call: edge {cpu / count * 1000:.3f} ms, "
            f"control plane {cp_cpu / count * 1000:.3f} ms, bench client (both "
            f"paths) {own / count * 1000:.3f} ms"
        )
    await raw.close()


async def run_phases(args: argparse.Namespace, c: Cluster, key: str) -> None:
    """Run every phase against the cluster."""
    cp = await c.control_plane(AP_RUN_RATE_PER_MINUTE="0", AP_LOG_LEVEL="warning")
    await c.worker("w1", cp, AP_WORKER_CONCURRENCY="16", AP_LOG_LEVEL="warning")
    edge = await start_edge(cp.address)
    channel = grpc.aio.insecure_channel(cp.address)
    try:
        async with httpx.AsyncClient(base_url=edge.url, timeout=60) as http:
            paths = Paths(channel, http, key)
            session = await paths.new_session()
            print(
                f"http_roundtrip: {platform.node()} ({os.cpu_count()} cores, load "
                f"{os.getloadavg()[0]:.1f}), Python {platform.python_version()}; dev model "
                f"{INPUT_TEXT!r}, no delay; one client"
            )
            if args.fanout_only:
                await fan_out(paths, edge, [key] * args.subscribers, cp.proc.pid, args)
                if args.distinct_keys:
                    keys = await make_keys(paths, args.subscribers)
                    await fan_out(paths, edge, keys, cp.proc.pid, args)
                return
            for _ in range(0 if args.unary_only else 20):  # warm-up
                await paths.grpc_run(session)
                await paths.http_run(session)
            await unary_phase(paths, edge, cp.proc.pid, session, args.unary)
            if args.unary_only:
                return
            grpc_runs, http_runs = [], []
            cpu, cp_cpu = cpu_seconds(edge.proc.pid), cpu_seconds(cp.proc.pid)
            for _ in range(args.runs):
                grpc_runs.append(await paths.grpc_run(session))
                http_runs.append(await paths.http_run(session))
            cpu = cpu_seconds(edge.proc.pid) - cpu
            cp_cpu = (cpu_seconds(cp.proc.pid) - cp_cpu) / 2
            print(f"\n  run round trip, {args.runs} each, alternating")
            print(describe("gRPC create → terminal", [r for r, _ in grpc_runs]))
            print(describe("HTTP create → terminal (SSE)", [r for r, _ in http_runs]))
            print(describe("gRPC create → first output_text.delta", [f for _, f in grpc_runs]))
            print(describe("HTTP create → first output_text.delta", [f for _, f in http_runs]))
            added = percentile([r for r, _ in http_runs], 50) - percentile(
                [r for r, _ in grpc_runs], 50
            )
            print(f"  edge adds p50 {added * 1000:.2f} ms to a round trip")
            print(
                f"  CPU per run: edge {cpu / args.runs * 1000:.2f} ms (HTTP runs), "
                f"control plane {cp_cpu / args.runs * 1000:.2f} ms"
            )
            await fan_out(paths, edge, [key] * args.subscribers, cp.proc.pid, args)
            if args.distinct_keys:
                keys = await make_keys(paths, args.subscribers)
                await fan_out(paths, edge, keys, cp.proc.pid, args)
    finally:
        await channel.close(None)
        edge.proc.terminate()
        await asyncio.wait_for(edge.proc.wait(), 15)


def main() -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--unary", type=int, default=1000)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--fanout-tokens", type=int, default=30)
    parser.add_argument("--fanout-delay-ms", type=int, default=100)
    parser.add_argument("--fanout-only", action="store_true", help="only the fan-out phases")
    parser.add_argument("--unary-only", action="store_true", help="only the unary round trips")
    parser.add_argument(
        "--no-distinct-keys",
        dest="distinct_keys",
        action="store_false",
        help="skip the phase with a key per subscriber (no sharing)",
    )
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
