"""`ap-service`, the image's entry point: its health check against a real server."""

from __future__ import annotations

import asyncio
import sys

from tests.harness import Stack


async def ap_service(*args: str) -> tuple[int, str]:
    """Run `python -m services ARGS` and return its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_healthcheck_passes_on_a_serving_server(stack: Stack) -> None:
    """`healthcheck HOST:PORT` exits 0 when the server reports SERVING."""
    assert await ap_service("healthcheck", stack.address) == (0, "SERVING\n")


async def test_healthcheck_fails_when_nothing_answers() -> None:
    """`healthcheck` exits 1 when nothing listens at the address."""
    code, out = await ap_service("healthcheck", "127.0.0.1:1", "--timeout", "0.5")
    assert (code, out) == (1, "NOT SERVING\n")


async def test_an_unknown_command_is_a_usage_error() -> None:
    """Anything but a known command prints the usage and exits 2."""
    code, out = await ap_service("scheduler")
    assert code == 2
    assert out.startswith("usage: ap-service {control_plane|worker|vault|gateway|web|migrate|")
