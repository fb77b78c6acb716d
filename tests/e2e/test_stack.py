"""Run `python -m devtools.stack run` for real and drive it with the `ap` CLI and gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import stat
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import httpx
import pytest
from agentplatform.v1 import run_pb2, run_service_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from devtools.processes import free_port, wait_http_ok
from devtools.stack.banner import NAME_WIDTH
from devtools.stack.layout import PORTS_PER_STACK, StackPorts, pki_dir, run_dir
from devtools.stack.run import STACK_IDENTITY
from devtools.stack.rundir import LOCK_NAME
from devtools.stack.settings import Probe, service
from services.control_plane.bootstrap import bootstrap
from services.rpc.db import role_dsn
from services.rpc.tls import ServiceTls
from tests.harness import Client
from tests.integration.helpers import new_run, new_session

REPO = Path(__file__).resolve().parents[2]
AP = Path(sys.executable).with_name("ap")
READY = "AP stack ready on"
BANNER_END = "Press Ctrl-C to stop."
GRPC_SERVICES = ("control_plane", "worker", "vault", "gateway")
SERVICES = (*GRPC_SERVICES, "web")

SERVING = health_pb2.HealthCheckResponse.SERVING

_READY_TIMEOUT_S = 60.0  # a busy shared CI machine starts five processes slowly
_STOP_TIMEOUT_S = 15.0
_CLI_TIMEOUT_S = 20.0


def _port_free(port: int) -> bool:
    """Tell whether nothing listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port() -> int:
    """Pick a base port whose whole block of stack ports is free."""
    rng = random.SystemRandom()
    for _ in range(200):
        # Below Linux's ephemeral range, so outgoing connections do not take them meanwhile.
        base = rng.randrange(20000, 32000 - PORTS_PER_STACK)
        if all(_port_free(port) for port in StackPorts(base).all()):
            return base
    raise RuntimeError(f"no {PORTS_PER_STACK} free consecutive ports found")


def stack_env(admin_dsn: str, config_home: Path) -> dict[str, str]:
    """Return the environment of a stack (and of `ap`) isolated from the developer's own."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AP_")}
    env.update(
        AP_DATABASE_URL=admin_dsn,
        AP_STACK_BASE_PORT=str(free_base_port()),
        AP_OWNER_NAME="E2E owner",
        XDG_CONFIG_HOME=str(config_home),
    )
    return env


def stack_ports(env: dict[str, str]) -> StackPorts:
    """Return the port block of a stack environment."""
    return StackPorts(int(env["AP_STACK_BASE_PORT"]))


def ports(env: dict[str, str]) -> list[int]:
    """Return the service ports of a stack environment, in SERVICES order."""
    return [service_port(env, name) for name in SERVICES]


def service_port(env: dict[str, str], name: str) -> int:
    """Return the port of one service of a stack environment."""
    return stack_ports(env).service(service(name).slot)


def edge_url(env: dict[str, str]) -> str:
    """Return the base URL of a stack's HTTP edge."""
    return f"http://127.0.0.1:{service_port(env, 'web')}"


def client_config(config_home: Path) -> dict[str, str]:
    """Read the client config file the stack wrote."""
    data: dict[str, str] = json.loads((config_home / "agentplatform" / "client.json").read_text())
    return data


class StackProcess:
    """A running `devtools.stack run` and the output it has printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        """Follow a started stack process."""
        self.proc = proc
        self.lines: list[str] = []
        self._rest: asyncio.Task[None] | None = None

    @property
    def output(self) -> str:
        """Return everything printed so far."""
        return "\n".join(self.lines)

    async def _readline(self) -> str | None:
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            return None
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        self.lines.append(line)
        return line

    async def wait_ready(self) -> str:
        """Read output to the end of the ready banner; return the endpoint it names."""
        endpoint = None
        try:
            async with asyncio.timeout(_READY_TIMEOUT_S):
                while (line := await self._readline()) is not None:
                    if line.startswith(READY):
                        endpoint = line.removeprefix(READY).strip()
                    if endpoint is not None and line == BANNER_END:
                        break
                else:
                    raise AssertionError(f"the stack exited before it was ready:\n{self.output}")
        except TimeoutError:
            raise AssertionError(f"the stack was not ready in time:\n{self.output}") from None
        # Keep draining, or a full pipe would block the stack's logging.
        self._rest = asyncio.create_task(self._read_rest())
        return endpoint

    async def _read_rest(self) -> None:
        while await self._readline() is not None:
            pass

    async def stop(self) -> int:
        """Send SIGTERM and return the exit code, which must come within a bound."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), _STOP_TIMEOUT_S)
        except TimeoutError:
            raise AssertionError(f"the stack did not stop in time:\n{self.output}") from None
        await self.finish_reading()
        return code

    async def finish_reading(self) -> None:
        """Read the output up to its end."""
        if self._rest is None:
            self._rest = asyncio.create_task(self._read_rest())
        await asyncio.wait_for(self._rest, 5)


def children_group(pid: int, base_port: int) -> int | None:
    """Return the process group the stack `pid` recorded for its children, if it did."""
    try:
        data = json.loads((run_dir(base_port) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    group = data.get("process_group")
    # A file left by an earlier stack on this port names a group that may be reused now.
    return int(group) if group and data.get("pid") == pid else None


def kill_stack(pid: int, base_port: int) -> None:
    """SIGKILL a stack's process group and its children's."""
    for group in (children_group(pid, base_port), pid):
        if group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)


@pytest.fixture
def process_groups() -> Iterator[list[tuple[int, int]]]:
    """Collect the stacks (pid, base port) a test starts; kill them all afterwards."""
    stacks: list[tuple[int, int]] = []
    yield stacks
    # Runs even when pytest-timeout interrupts the test before its own clean-up.
    for pid, base_port in stacks:
        kill_stack(pid, base_port)


@contextlib.asynccontextmanager
async def running_stack(
    env: dict[str, str], stacks: list[tuple[int, int]]
) -> AsyncIterator[StackProcess]:
    """Start a stack in a session of its own; kill it and its children on the way out."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devtools.stack",
        "run",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=REPO,
        start_new_session=True,
        limit=1024 * 1024,
    )
    base_port = int(env["AP_STACK_BASE_PORT"])
    stacks.append((proc.pid, base_port))
    stack = StackProcess(proc)
    try:
        yield stack
    finally:
        kill_stack(proc.pid, base_port)
        await proc.wait()
        await stack.finish_reading()


async def clean_guard() -> tuple[int, str]:
    """Run what `make clean` runs before it deletes anything; return its code and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devtools.stack", "clean", cwd=REPO, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def run_cli(env: dict[str, str], *args: str, stdin: str = "") -> tuple[int, str]:
    """Run the real `ap` and return its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        str(AP),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin.encode()), _CLI_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", errors="replace")


def readme_block(heading: str, index: int = 0) -> str:
    """Return a shell block of a README section, the `index`-th under its `## ` heading."""
    readme = (REPO / "README.md").read_text()
    section = readme.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```sh\n")[index + 1].split("```", 1)[0]


async def start_script(script: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start a README shell block at the repository root, in a process group of its own."""
    return await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )


async def run_readme_walkthrough(
    heading: str, env: dict[str, str], default: str, actual: str
) -> tuple[int, str]:
    """Run a README walk-through as written, its `default` address replaced by this stack's."""
    script = readme_block(heading)
    assert default in script, f"{heading} does not use {default}"
    proc = await start_script(script.replace(default, actual), env)
    out, _ = await asyncio.wait_for(proc.communicate(), _CLI_TIMEOUT_S)
    return proc.returncode or 0, out.decode()


def event_streams(out: str) -> list[list[dict[str, str]]]:
    """Split the output of `curl -N`s into their event streams (each opens with `retry:`)."""
    streams: list[list[dict[str, str]]] = []
    for block in re.split(r"\n{2,}", out.strip()):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        fields = dict(line.split(": ", 1) for line in lines)
        if fields.pop("retry", None) is not None:
            streams.append([])
        if fields:
            assert streams, f"an event before any stream opened:\n{out}"
            streams[-1].append(fields)
    return streams


def assert_edge_stopped_between_worker_and_control_plane(output: str, after: int) -> None:
    """The edge stops once the worker has (it streams the worker's runs), then the control plane."""
    worker_stopped = log_line(output, "worker", "service_stopped", after)
    edge_stopping = log_line(output, "web", "service_stopping", worker_stopped)
    edge_stopped = log_line(output, "web", "service_stopped", edge_stopping)
    log_line(output, "control_plane", "service_stopping", edge_stopped)


def log_line(output: str, name: str, needle: str, after: int = 0) -> int:
    """Return the position of the first line `name` printed with `needle`, past `after`."""
    prefix = f"{name:<{NAME_WIDTH}} | "
    lines = output.splitlines()
    for number in range(after, len(lines)):
        if lines[number].startswith(prefix) and needle in lines[number]:
            return number
    raise AssertionError(f"{name} printed no {needle!r} after line {after}:\n{output}")


async def scrape_metrics(port: int) -> str:
    """Return the Prometheus text served on a metrics port."""
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        reply = await http.get(f"http://127.0.0.1:{port}/metrics")
    reply.raise_for_status()
    return reply.text


async def health_status(port: int, *, pki: Path | None = None) -> int:
    """Return the overall gRPC health status of the server on a port (over mTLS with `pki`)."""
    address = f"127.0.0.1:{port}"
    if pki is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        tls = ServiceTls.load(
            pki / "ca.pem", pki / f"{STACK_IDENTITY}.pem", pki / f"{STACK_IDENTITY}-key.pem"
        )
        channel = grpc.aio.secure_channel(address, tls.channel_credentials())
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        status: int = reply.status
        return status


async def reflected_services(port: int) -> set[str]:
    """List the services the server on a port reports through reflection."""
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        names: set[str] = set()
        async for reply in stub.ServerReflectionInfo(iter([request]), timeout=5):
            names.update(s.name for s in reply.list_services_response.service)
        return names


async def answers(port: int) -> bool:
    """Tell whether anything accepts TCP connections on 127.0.0.1:port."""
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def count_workspaces(admin_dsn: str) -> int:
    """Count the workspaces in a database."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM control_plane.workspaces")
        return count
    finally:
        await conn.close()


async def check_http_edge(env: dict[str, str], api_key: str) -> None:
    """Run the README's curl walk-through against the stack's edge; check what else it serves."""
    edge = edge_url(env)
    # The curl walk-through: a run's events as SSE, then resumed after event 4.
    code, out = await run_readme_walkthrough(
        "## curl walk-through", env, "http://127.0.0.1:50055", edge
    )
    assert code == 0, out
    first, resumed = event_streams(out)
    assert [int(event["id"]) for event in first] == list(range(1, len(first) + 1)), out
    assert [event["event"] for event in first].count("output_text.delta") == 5
    assert first[-1]["event"] == "run.completed"
    for event in first:
        data = json.loads(event["data"])
        assert (data["sequence"], data["type"]) == (event["id"], event["event"])
    assert resumed == first[4:]
    async with httpx.AsyncClient(base_url=edge, trust_env=False, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        dashboard = await http.get("/")
        assert dashboard.status_code == 200
        assert dashboard.headers["content-type"].startswith("text/html")
        profile = await http.get(
            "/v1/users/me/profile", headers={"Authorization": f"Bearer {api_key}"}
        )
        assert (profile.status_code, profile.json()["role"]) == (200, "owner")
        assert (await http.get("/v1/users/me/profile")).status_code == 401


async def check_metrics(env: dict[str, str], *, runs_completed: int) -> None:
    """Check every service's metrics after the test's runs and the curl walk-through."""
    block = stack_ports(env)
    metrics_ports = [block.metrics(service(name).slot) for name in SERVICES]
    scraped = dict(zip(SERVICES, [await scrape_metrics(p) for p in metrics_ports], strict=True))
    for name, text in scraped.items():
        kind = "http" if name == "web" else "grpc"
        assert f"# TYPE ap_{kind}_requests_total counter" in text, name
        assert "process_resident_memory_bytes" in text
    assert (
        f'ap_runs_finished_total{{status="completed"}} {runs_completed}.0'
        in scraped["control_plane"]
    )
    assert f"ap_run_time_to_first_event_seconds_count {runs_completed}.0" in scraped["worker"]
    for route, count in (("CreateSession", 1), ("CreateRun", 1), ("StreamRunEvents", 2)):
        sample = f'ap_http_requests_total{{route="{route}",status="200"}} {count}.0'
        assert sample in scraped["web"], route
    assert "ap_sse_subscribers 0.0" in scraped["web"]


@pytest.mark.timeout(90)
async def test_stack_serves_the_cli_http_health_and_reflection_then_stops_on_sigterm(
    database: str, tmp_path: Path, process_groups: list[tuple[int, int]]
) -> None:
    """`stack run` serves `ap chat`, HTTP, health and reflection, and exits 0 on SIGTERM."""
    env = stack_env(database, tmp_path)
    async with running_stack(env, process_groups) as stack:
        endpoint = await stack.wait_ready()
        assert endpoint == f"127.0.0.1:{env['AP_STACK_BASE_PORT']}"
        assert "NOT a real LLM" in stack.output
        # Every port of the block is printed, and nothing outside it is used.
        banner = stack.output.split(READY, 1)[1]
        for port in stack_ports(env).all():
            assert re.search(rf"(?<![\w-]){port}(?![\w-])", banner), f"{port} not in:\n{banner}"
        config = client_config(tmp_path)
        assert config["endpoint"] == endpoint
        assert config["api_key"] in stack.output
        assert (tmp_path / "agentplatform" / "client.json").stat().st_mode & 0o777 == 0o600
        edge = edge_url(env)
        assert f"  HTTP API     {edge}/v1  (" in banner
        assert f"  dashboard    {edge}/  (" in banner

        code, out = await run_cli(env, "chat", stdin="hello from e2e [[tokens=4]]\n")
        assert code == 0, out
        assert "alpha bravo charlie delta" in out
        code, out = await run_cli(env, "sessions", "list")
        assert code == 0, out
        assert "sessions/" in out

        code, out = await run_readme_walkthrough(
            "## grpcurl walk-through", env, "127.0.0.1:50051", endpoint
        )
        assert code == 0, out
        assert "agentplatform.v1.RunService" in out
        assert "message CreateRunRequest {" in out
        assert "string input_text = " in out
        assert '"type": "run.completed"' in out
        assert out.count('"type": "output_text.delta"') == 5

        await check_http_edge(env, config["api_key"])

        # The control plane reaches the vault over mTLS with the certificates `stack run` made.
        code, out = await run_cli(env, "secrets", "put", "E2E_TOKEN", stdin="e2e-value\n")
        assert (code, out.strip()) == (0, "secrets/E2E_TOKEN version 1"), out
        code, out = await run_cli(env, "secrets", "list")
        assert code == 0 and "secrets/E2E_TOKEN" in out and "e2e-value" not in out, out
        code, out = await run_cli(env, "vault", "status")
        assert code == 0 and "every data key is wrapped under the active version 1" in out, out
        code, out = await run_cli(env, "secrets", "rm", "E2E_TOKEN")
        assert code == 0, out

        for name in GRPC_SERVICES:
            mtls = service(name).probe is Probe.GRPC_MTLS
            pki = pki_dir(int(env["AP_STACK_BASE_PORT"])) if mtls else None
            assert await health_status(service_port(env, name), pki=pki) == SERVING
        assert "agentplatform.v1.RunService" in await reflected_services(ports(env)[0])

        # Three runs completed: chat and the two walk-throughs.
        await check_metrics(env, runs_completed=3)

        stopping = len(stack.output.splitlines())
        assert await stack.stop() == 0, stack.output
        assert "stack stopped" in stack.output
        for port in ports(env):
            assert not await answers(port), f"port {port} still answers"
    assert_edge_stopped_between_worker_and_control_plane(stack.output, stopping)
    # The key is printed once on the terminal by design, and never written to a service log.
    secret = config["api_key"].rsplit("_", 1)[1]
    for log_file in (REPO / "var" / "logs").glob("*.log"):
        assert secret not in log_file.read_text(errors="replace"), f"API key in {log_file}"


@pytest.mark.timeout(90)
async def test_second_run_on_the_same_database_reuses_workspace_and_stored_key(
    database: str, tmp_path: Path, process_groups: list[tuple[int, int]]
) -> None:
    """A second run on the same database skips the bootstrap and the stored key still works."""
    env = stack_env(database, tmp_path)
    async with running_stack(env, process_groups) as first:
        await first.wait_ready()
        assert await first.stop() == 0, first.output
    assert "bootstrap: created" in first.output
    key = client_config(tmp_path)["api_key"]

    env = stack_env(database, tmp_path)
    async with running_stack(env, process_groups) as second:
        await second.wait_ready()
        # `make clean` refuses to delete var/ under a live stack.
        code, err = await clean_guard()
        assert code == 1, err
        assert f"a stack of this clone is running (pid {second.proc.pid}" in err
        assert "bootstrap: created" not in second.output
        assert "reusing the API key" in second.output
        assert client_config(tmp_path) == {"endpoint": f"127.0.0.1:{ports(env)[0]}", "api_key": key}
        code, out = await run_cli(env, "sessions", "list")
        assert code == 0, out
        assert await second.stop() == 0, second.output
    assert await count_workspaces(database) == 1


@pytest.mark.timeout(60)
async def test_a_service_dying_stops_the_stack_with_exit_code_1(
    database: str, tmp_path: Path, process_groups: list[tuple[int, int]]
) -> None:
    """When a service dies while the stack runs, the stack reports it, stops all, exits 1."""
    env = stack_env(database, tmp_path)
    async with running_stack(env, process_groups) as stack:
        await stack.wait_ready()
        found = await asyncio.create_subprocess_exec(
            "pgrep",
            "-P",
            str(stack.proc.pid),
            "-f",
            "services.vault",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await found.communicate()
        (vault_pid,) = [int(pid) for pid in out.split()]
        os.kill(vault_pid, signal.SIGKILL)
        assert await asyncio.wait_for(stack.proc.wait(), _STOP_TIMEOUT_S) == 1
        await stack.finish_reading()
        assert "vault exited unexpectedly" in stack.output
        for port in ports(env):
            assert not await answers(port), f"port {port} still answers"


@pytest.mark.timeout(60)
async def test_run_without_a_stored_key_issues_a_new_owner_key(
    database: str, tmp_path: Path, process_groups: list[tuple[int, int]]
) -> None:
    """With a workspace but no client config, a run issues a fresh owner key that works."""
    made = await bootstrap(
        role_dsn(database, "ap_control_plane"),
        workspace_display_name="Existing",
        owner_display_name="Someone",
    )
    assert made is not None
    env = stack_env(database, tmp_path)
    async with running_stack(env, process_groups) as stack:
        await stack.wait_ready()
        assert "issued a new API key" in stack.output
        key = client_config(tmp_path)["api_key"]
        assert key != made.api_key
        code, out = await run_cli(env, "sessions", "list")
        assert code == 0, out
        assert await stack.stop() == 0, stack.output
    assert await count_workspaces(database) == 1


async def stored_run(admin_dsn: str, run: str) -> tuple[str, list[run_pb2.RunEvent]]:
    """Return a run's stored state and events, read straight from the database."""
    run_id = uuid.UUID(run.rsplit("/", 1)[1])
    conn = await asyncpg.connect(admin_dsn)
    try:
        state: str = await conn.fetchval(
            "SELECT state FROM control_plane.runs WHERE id = $1", run_id
        )
        rows = await conn.fetch(
            "SELECT body, attempt FROM control_plane.run_events WHERE run_id = $1"
            " ORDER BY sequence",
            run_id,
        )
    finally:
        await conn.close()
    events = [run_pb2.RunEvent.FromString(row["body"]) for row in rows]
    for event, row in zip(events, rows, strict=True):
        event.attempt = row["attempt"]  # stored beside the body, not in it
    return state, events


@pytest.mark.timeout(90)
async def test_ctrl_c_stops_the_worker_first_so_a_run_in_flight_is_not_lost(
    database: str, tmp_path: Path, process_groups: list[tuple[int, int]]
) -> None:
    """Ctrl-C mid-run: the worker drains it (or hands it back) before the control plane stops.

    A terminal's Ctrl-C reaches its whole foreground process group, so the test sends
    SIGINT to the stack's group, as a terminal would.
    """
    env = stack_env(database, tmp_path)
    async with running_stack(env, process_groups) as stack:
        endpoint = await stack.wait_ready()
        key = client_config(tmp_path)["api_key"]
        run = await wait_streaming(endpoint, key, "in flight [[tokens=40]] [[delay_ms=50]]")

        os.killpg(stack.proc.pid, signal.SIGINT)
        assert await asyncio.wait_for(stack.proc.wait(), 30) == 0, stack.output
        await stack.finish_reading()
    state, events = await stored_run(database, run)
    types = [event.type for event in events]
    drained = events[-1].type == "run.attempt_started"
    if drained:
        # Handed back for the next worker (the stack's next start) to claim at once.
        assert (state, events[-1].run_attempt_started.reason) == ("queued", "WORKER_DRAINED")
    else:
        assert (state, types[-1]) == ("completed", "run.completed"), types
        assert "run.attempt_started" not in types, types
    worker_stopped = stack.output.index(
        "worker        | ", stack.output.index("stopping the stack")
    )
    assert "service_stopped" in stack.output[worker_stopped:]


async def wait_streaming(endpoint: str, api_key: str, text: str) -> str:
    """Create a run and return its name once its model output has begun."""
    client = Client(grpc.aio.insecure_channel(endpoint), api_key)
    try:
        session = await new_session(client)
        run = await new_run(client, session.name, text)
        call = client.runs.StreamRunEvents(
            run_service_pb2.StreamRunEventsRequest(name=run.name), metadata=client.auth
        )
        async for response in call:
            if response.event.type == "output_text.delta":
                break
        call.cancel()
    finally:
        await client.channel.close(None)
    return run.name


@pytest.mark.timeout(150)
async def test_ctrl_c_past_the_grace_hands_the_run_back_and_a_watcher_notes_it_once(
    database: str, tmp_path: Path, process_groups: list[tuple[int, int]]
) -> None:
    """A run longer than the drain grace is handed back, not lost; the next stack finishes it.

    `ap runs watch` follows it throughout and says once, not once per retry, that the stream
    broke while the stack was down.
    """
    env = stack_env(database, tmp_path) | {"AP_SHUTDOWN_GRACE_SECONDS": "0.5"}
    async with running_stack(env, process_groups) as stack:
        endpoint = await stack.wait_ready()
        key = client_config(tmp_path)["api_key"]
        run = await wait_streaming(endpoint, key, "hand me back [[tokens=80]] [[delay_ms=50]]")
        watcher = await asyncio.create_subprocess_exec(
            str(AP),
            "runs",
            "watch",
            run,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            os.killpg(stack.proc.pid, signal.SIGINT)
            assert await asyncio.wait_for(stack.proc.wait(), 30) == 0, stack.output
            await stack.finish_reading()
            state, events = await stored_run(database, run)
            assert (state, events[-1].run_attempt_started.reason) == ("queued", "WORKER_DRAINED")

            async with running_stack(env, process_groups) as again:
                await again.wait_ready()
                out, err = await asyncio.wait_for(watcher.communicate(), 60)
                assert await again.stop() == 0, again.output
        finally:
            if watcher.returncode is None:
                watcher.kill()
                await watcher.wait()
    assert watcher.returncode == 0, (out.decode(), err.decode())
    state, events = await stored_run(database, run)
    assert (state, events[-1].type, events[-1].attempt) == ("completed", "run.completed", 2)
    assert err.decode().count("[stream interrupted") == 1, err.decode()


MORE_REPLICAS = "## More workers and edges"


@pytest.mark.timeout(120)
async def test_an_extra_worker_attaches_with_the_readme_commands(
    database: str, tmp_path: Path, process_groups: list[tuple[int, int]]
) -> None:
    """worker.env (mode 600, never printed) lets a second worker join and take runs."""
    # One run at a time per worker: two concurrent runs then need both workers.
    env = stack_env(database, tmp_path) | {"AP_WORKER_CONCURRENCY": "1"}
    async with running_stack(env, process_groups) as stack:
        endpoint = await stack.wait_ready()
        base = int(env["AP_STACK_BASE_PORT"])
        worker_env = run_dir(base) / "worker.env"
        assert f"workers      add more with {worker_env.relative_to(REPO)}" in stack.output
        assert stat.S_IMODE(worker_env.stat().st_mode) == 0o600
        settings = dict(
            line.split("=", 1) for line in worker_env.read_text().splitlines() if "=" in line
        )
        token = settings["AP_INTERNAL_TOKEN"].strip("'")
        assert len(token) > 20 and token not in stack.output

        metrics = free_port()
        script = readme_block(MORE_REPLICAS).replace("var/run/50051/", f"var/run/{base}/")
        extra = await start_script(
            script, env | {"AP_METRICS_PORT": str(metrics), "AP_WORKER_ID": "extra"}
        )
        try:
            await wait_http_ok(f"http://127.0.0.1:{metrics}/metrics", timeout=30)
            key = client_config(tmp_path)["api_key"]
            first = await wait_streaming(endpoint, key, "one [[tokens=30]] [[delay_ms=50]]")
            second = await wait_streaming(endpoint, key, "two [[tokens=3]]")
            scraped = await scrape_metrics(metrics)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(extra.pid, signal.SIGTERM)
            out, _ = await asyncio.wait_for(extra.communicate(), 30)
        assert extra.returncode == 0, out.decode()
        # Each worker ran one of the two: the one already busy could not take the second.
        assert "ap_run_time_to_first_event_seconds_count 1.0" in scraped, scraped
        assert await stack.stop() == 0, stack.output
    for run in (first, second):
        state, _events = await stored_run(database, run)
        assert state == "completed", run
    assert not worker_env.exists()
    assert token not in out.decode()


async def login_cookie(edge: str, api_key: str) -> str:
    """Sign in on an edge as the dashboard does; return the session cookie's value."""
    async with httpx.AsyncClient(base_url=edge, trust_env=False, timeout=10) as http:
        reply = await http.post("/auth/login", json={"apiKey": api_key})
    assert reply.status_code == 200, reply.text
    cookie = reply.cookies.get("ap_session")
    assert cookie, reply.headers
    return cookie


@pytest.mark.timeout(120)
async def test_an_extra_edge_attaches_with_the_readme_commands_and_shares_sign_ins(
    database: str, tmp_path: Path, process_groups: list[tuple[int, int]]
) -> None:
    """A second edge started from web.env accepts a sign-in made on the first.

    web.env (mode 600, never printed) holds the stack's cookie secret, which seals the
    cookie; an edge without it would refuse the cookie as invalid.
    """
    env = stack_env(database, tmp_path)
    async with running_stack(env, process_groups) as stack:
        await stack.wait_ready()
        base = int(env["AP_STACK_BASE_PORT"])
        web_env = run_dir(base) / "web.env"
        assert f"edges        add more with {web_env.relative_to(REPO)}" in stack.output
        assert stat.S_IMODE(web_env.stat().st_mode) == 0o600
        settings = dict(
            line.split("=", 1) for line in web_env.read_text().splitlines() if "=" in line
        )
        secret = settings["AP_COOKIE_SECRET"].strip("'")
        assert len(secret) >= 32 and secret not in stack.output
        assert "AP_INTERNAL_TOKEN" not in settings, "the edge is no internal service"

        port, metrics = free_port(), free_port()
        script = readme_block(MORE_REPLICAS, 1).replace("var/run/50051/", f"var/run/{base}/")
        extra = await start_script(
            script, env | {"AP_HTTP_PORT": str(port), "AP_METRICS_PORT": str(metrics)}
        )
        try:
            second = f"http://127.0.0.1:{port}"
            await wait_http_ok(f"{second}/readyz", timeout=30)
            key = client_config(tmp_path)["api_key"]
            cookie = await login_cookie(edge_url(env), key)
            async with httpx.AsyncClient(
                base_url=second, trust_env=False, timeout=10, cookies={"ap_session": cookie}
            ) as http:
                profile = await http.get("/v1/users/me/profile")
                session = await http.get("/auth/session")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(extra.pid, signal.SIGTERM)
            out, _ = await asyncio.wait_for(extra.communicate(), 30)
        assert extra.returncode == 0, out.decode()
        assert (profile.status_code, profile.json()["role"]) == (200, "owner"), profile.text
        assert session.status_code == 200, session.text
        assert await stack.stop() == 0, stack.output
    assert not web_env.exists()
    for text in (out.decode(), *(log.read_text() for log in (REPO / "var" / "logs").glob("*.log"))):
        assert secret not in text
