"""The edge as a real process: ready, metrics, logs without secrets, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from devtools.processes import free_port
from services.web.login import COOKIE_NAME
from tests.harness import Stack
from tests.integration.helpers import new_session
from tests.logcheck import API_KEY


class EdgeProcess:
    """`python -m services.web` and what it wrote to stderr."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, metrics_port: int) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.stderr = b""

    async def wait_ready(self) -> None:
        """Wait until /readyz answers 200 (polling another process: it has no event to await)."""
        async with httpx.AsyncClient() as http, asyncio.timeout(20):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(self.url + "/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)


@pytest_asyncio.fixture(loop_scope="session")
async def edge_process(stack: Stack) -> AsyncIterator[EdgeProcess]:
    """Run the edge as a process in front of the module's stack; kill it if still running."""
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AP_")} | {
        "AP_HTTP_PORT": str(port),
        "AP_METRICS_PORT": str(metrics_port),
        "AP_CONTROL_PLANE_ADDRESS": stack.address,
        "AP_COOKIE_SECRET": secrets.token_urlsafe(32),
        "AP_LOG_LEVEL": "debug",
        "AP_SHUTDOWN_GRACE_SECONDS": "2",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.web",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    edge = EdgeProcess(proc, port, metrics_port)
    try:
        await edge.wait_ready()
        yield edge
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigterm_ends_streams_cleanly_and_logs_no_secret(
    stack: Stack, edge_process: EdgeProcess
) -> None:
    """Metrics count the open stream; SIGTERM ends it cleanly and exits 0; no key or cookie
    reaches the log, though the key signed in and the cookie authenticated."""
    session = await new_session(stack.owner)
    async with httpx.AsyncClient(base_url=edge_process.url, timeout=15) as http:
        login = await http.post("/auth/login", json={"apiKey": stack.owner.api_key})
        assert login.status_code == 200
        cookie = http.cookies[COOKIE_NAME]
        async with http.stream("GET", f"/v1/{session.name}:streamEvents") as stream:
            assert stream.status_code == 200
            metrics = (await http.get(edge_process.metrics_url)).text
            assert "ap_sse_subscribers 1.0" in metrics
            assert 'ap_http_logins_total{outcome="ok"} 1.0' in metrics
            edge_process.proc.send_signal(signal.SIGTERM)
            remainder = [line async for line in stream.aiter_lines()]  # ends, no error
        assert all(line.startswith(("retry:", ":")) or not line for line in remainder)
    assert await asyncio.wait_for(edge_process.proc.wait(), 15) == 0
    assert edge_process.proc.stderr is not None
    log = (await edge_process.proc.stderr.read()).decode()
    assert '"event": "http_request"' in log  # it does log each request
    assert not API_KEY.search(log), "an API key in the edge's log"
    assert cookie not in log
