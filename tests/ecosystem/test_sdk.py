"""The SDK: its client against a real stack, and its wheel on its own in a clean virtualenv."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agentplatform import APError, AsyncClient
from agentplatform.v1 import run_pb2

from tests.harness import Stack

REPO = Path(__file__).resolve().parents[2]
SDK = REPO / "sdk" / "python"
GENERATED = SDK / "src" / "agentplatform"
# A failed connection otherwise waits about a second before the next attempt.
FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
)


def payloads(events: list[run_pb2.RunEvent]) -> list[str | None]:
    """Return the payload kind of each event."""
    return [e.WhichOneof("payload") for e in events]


async def test_send_message_streams_the_run_to_its_terminal_event(stack: Stack) -> None:
    """send_message creates a run and yields its events once each, in order, to run.completed."""
    async with AsyncClient(stack.address, stack.owner.api_key) as client:
        session = await client.create_session(title="sdk")
        run = await client.create_run(session.name, "hi [[tokens=3]] [[reasoning=0]]")
        stream = client.stream_run_events(run.name)
        events = [event async for event in stream]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert payloads(events).count("output_text_delta") == 3
    assert stream.terminal is not None and stream.terminal.type == "run.completed"
    assert stream.name.startswith(session.name + "/runs/")


async def test_cancel_run_ends_the_stream_with_run_cancelled(stack: Stack) -> None:
    """cancel_run on a running run ends its stream with run.cancelled."""
    async with AsyncClient(stack.address, stack.owner.api_key) as client:
        session = await client.create_session(title="sdk cancel")
        run = await client.create_run(session.name, "[[tokens=200]] [[delay_ms=50]]")
        stream = client.stream_run_events(run.name)
        async with contextlib.aclosing(aiter(stream)) as events:
            async for event in events:
                if event.WhichOneof("payload") == "output_text_delta":
                    await client.cancel_run(stream.name)
    assert stream.terminal is not None and stream.terminal.type == "run.cancelled"


class Proxy:
    """A TCP forwarder whose open connections can be cut, as a network failure would."""

    def __init__(self, target_port: int) -> None:
        """Forward to 127.0.0.1:target_port once started."""
        self._target_port = target_port
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Drop every open connection; new ones are still accepted."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def proxy(stack: Stack) -> AsyncIterator[Proxy]:
    """Run a cuttable proxy in front of the stack's control plane."""
    port = int(stack.address.rsplit(":", 1)[1])
    running = Proxy(port)
    await running.start()
    yield running
    await running.stop()


async def test_stream_resumes_after_the_connection_breaks(stack: Stack, proxy: Proxy) -> None:
    """A cut connection mid-stream is resumed from the cursor: no event lost or repeated."""
    reconnects: list[tuple[APError | None, int]] = []
    client = AsyncClient(
        f"127.0.0.1:{proxy.port}", stack.owner.api_key, channel_options=FAST_RECONNECT
    )
    async with client:
        session = await client.create_session(title="sdk resume")
        run = await client.create_run(session.name, "[[tokens=30]] [[delay_ms=20]] [[reasoning=0]]")
        stream = client.stream_run_events(
            run.name, on_reconnect=lambda failure, last: reconnects.append((failure, last))
        )
        events: list[run_pb2.RunEvent] = []
        async for event in stream:
            events.append(event)
            if payloads(events).count("output_text_delta") == 5 and not reconnects:
                proxy.cut()
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert payloads(events).count("output_text_delta") == 30
    assert stream.terminal is not None and stream.terminal.type == "run.completed"
    assert stream.reconnects >= 1
    assert reconnects[0][1] >= 5


def version_floor(requirement: str) -> tuple[int, ...]:
    """Return the lowest version a `name>=X.Y.Z` requirement allows."""
    match = re.search(r">=([\d.]+)", requirement)
    assert match is not None, f"{requirement} has no >= floor"
    return tuple(int(part) for part in match.group(1).split("."))


def test_sdk_dependency_floors_satisfy_the_generated_code() -> None:
    """The wheel's grpcio and protobuf floors are what the generated code checks at import."""
    pyproject = (SDK / "pyproject.toml").read_text()
    requirements = dict(re.findall(r'"((?:grpcio|protobuf))([<>=!~][^"]*)"', pyproject))
    grpc_code = (GENERATED / "v1" / "run_service_pb2_grpc.py").read_text()
    (grpc_generated,) = re.findall(r"GRPC_GENERATED_VERSION = '([\d.]+)'", grpc_code)
    pb_code = (GENERATED / "v1" / "run_pb2.py").read_text()
    (pb_generated,) = re.findall(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", pb_code)
    assert version_floor(requirements["grpcio"]) >= tuple(map(int, grpc_generated.split(".")))
    assert version_floor(requirements["protobuf"]) >= tuple(map(int, pb_generated))
    assert f"<{int(pb_generated[0]) + 1}" in requirements["protobuf"]


def readme_programs() -> list[str]:
    """Return the SDK README's first programs: the blocking one, then the asyncio one."""
    readme = (SDK / "README.md").read_text()
    section = readme.split("## First program", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


async def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command to completion and return its output; fail the test if it fails."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, args),
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{args} failed:\n{text}"
    return text


def copy_sdk(into: Path) -> Path:
    """Copy the SDK's source, so building it leaves nothing behind in the working tree."""
    source = into / "sdk"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(SDK, source, ignore=ignore)
    return source


def built_wheels(folder: Path) -> list[Path]:
    """Return the SDK wheels in a folder."""
    return list(folder.glob("agentplatform_sdk-*.whl"))


@pytest.mark.timeout(180)
async def test_readme_programs_run_from_a_clean_virtualenv_with_only_the_wheel(
    stack: Stack, tmp_path: Path
) -> None:
    """The wheel installs alone (with its PyPI dependencies) and both README programs work."""
    pip = [sys.executable, "-m", "pip"]
    source = copy_sdk(tmp_path)
    await run(*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path, source)
    (wheel,) = built_wheels(tmp_path)
    venv = tmp_path / "venv"
    await run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    await run(*pip, "--python", python, "install", "-q", wheel)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AP_", "PYTHON"))}
    env |= {"AP_ENDPOINT": stack.address, "AP_API_KEY": stack.owner.api_key}
    programs = readme_programs()
    assert len(programs) == 2
    for i, text in enumerate(programs):
        program = tmp_path / f"hello{i}.py"
        program.write_text(text)
        # -I: neither PYTHONPATH nor the working folder can make the repository importable.
        out = await asyncio.wait_for(run(python, "-I", program, cwd=tmp_path, env=env), 60)
        assert out == "alpha bravo charlie delta echo\n"
