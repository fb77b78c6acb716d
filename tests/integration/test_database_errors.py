"""Database connections that break: UNAVAILABLE then recovery, and logs that stay JSON.

When Postgres ends a session (a restart, an operator's pg_terminate_backend) it sends a FATAL
error and closes the socket. Between the two, asyncpg's protocol is stuck in the error and
fails the next statement with `InternalClientError: cannot switch to state …; another
operation is in progress`. A relay between the services and Postgres that forwards the error
but holds back the close makes that window last, so the tests can look at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
import structlog
from agentplatform.v1 import profile_service_pb2

from services.rpc.db import create_pool, role_dsn
from services.rpc.errors import reason_of
from services.rpc.logging import configure_logging
from tests.harness import Stack, start_stack


class HalfCloseRelay:
    """Relay TCP to Postgres, forwarding its bytes but holding back its end of a connection."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._held: list[asyncio.StreamWriter] = []
        self._holding = True
        self._ended = 0
        self._ended_changed = asyncio.Event()
        self.port = 0

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        self._writers += [client_w, server_w]
        server_gone = asyncio.Event()

        async def server_to_client() -> None:
            while data := await server_r.read(65536):
                client_w.write(data)
                await client_w.drain()
            server_gone.set()
            self._ended += 1
            self._ended_changed.set()
            if self._holding:
                self._held.append(client_w)  # Postgres has gone; the client is not told yet
            else:
                client_w.close()

        async def client_to_server() -> None:
            while data := await client_r.read(65536):
                if server_gone.is_set():
                    # Writing to a closed peer resets the connection: the client learns now.
                    client_w.close()
                    return
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(client_to_server(), server_to_client())

    async def wait_ended(self, count: int) -> None:
        """Wait until Postgres has ended `count` relayed connections (its bytes all relayed)."""
        async with asyncio.timeout(10):
            while self._ended < count:
                self._ended_changed.clear()
                await self._ended_changed.wait()

    def let_go(self) -> None:
        """Pass on every close held back so far, and every later one at once."""
        self._holding = False
        for writer in self._held:
            writer.close()

    def dsn(self, dsn: str) -> str:
        """Return `dsn` pointed at the relay."""
        parts = urlsplit(dsn)
        netloc = parts.netloc.rsplit(":", 1)[0] + f":{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    async def stop(self) -> None:
        """Close every relayed connection and stop listening."""
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def relay(database: str) -> AsyncIterator[HalfCloseRelay]:
    """Relay to the test's Postgres server."""
    port = urlsplit(database).port
    assert port is not None
    running = HalfCloseRelay(port)
    await running.start()
    yield running
    await running.stop()


async def terminate_sessions(admin_dsn: str, application_name: str) -> int:
    """End every server session of one application, as a restart would; return how many.

    Returns once the sessions' processes have exited, their FATAL error sent.
    """
    admin = await asyncpg.connect(admin_dsn)
    try:
        ended: int = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
            " WHERE application_name = $1",
            application_name,
        )
        return ended
    finally:
        await admin.close()


@pytest.fixture
async def relayed_stack(database: str, relay: HalfCloseRelay) -> AsyncIterator[Stack]:
    """Run a control plane whose every database connection goes through the relay."""
    dsn = relay.dsn(role_dsn(database, "ap_control_plane"))
    async with start_stack(
        database,
        internal_token=secrets.token_urlsafe(24),
        with_worker=False,
        database_url=dsn,
        # No maintenance pass in between: the test's calls are the ones to meet the breakage.
        poll_interval_seconds=60,
    ) as running:
        yield running
        relay.let_go()  # so that the control plane's pool can close


async def test_a_broken_connection_answers_unavailable_and_the_next_call_succeeds(
    relayed_stack: Stack, relay: HalfCloseRelay, database: str
) -> None:
    """Never INTERNAL: the caller is told to retry, and a retry finds a fresh connection."""
    client = relayed_stack.owner
    request = profile_service_pb2.GetProfileRequest(name="users/me/profile")

    async def outcome() -> tuple[str, str | None]:
        try:
            await client.profiles.GetProfile(request, metadata=client.auth, timeout=10)
        except grpc.aio.AioRpcError as err:
            return err.code().name, reason_of(err)
        return "OK", None

    assert await outcome() == ("OK", None)
    ended = await terminate_sessions(database, "ap-control-plane")
    assert ended >= 1
    await relay.wait_ended(ended)  # the FATAL errors are on their way to idle connections
    # Each pooled connection that broke fails one call; then the calls are served again.
    outcomes = [await outcome()]
    while (
        outcomes[-1][0] != "OK"
        and len(outcomes) <= relayed_stack.control_plane.settings.db_pool_max
    ):
        outcomes.append(await outcome())
    assert outcomes[-1] == ("OK", None), outcomes
    failures = outcomes[:-1]
    assert failures, "no call met a broken connection: the test proved nothing"
    assert set(failures) == {("UNAVAILABLE", "DATABASE_UNAVAILABLE")}, failures


class _Seen(logging.Handler):
    """Set an event when a record containing `needle` is logged."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.event.set()


async def test_the_drivers_tracebacks_are_logged_as_one_json_object(
    database: str, relay: HalfCloseRelay
) -> None:
    """asyncpg's own warning with a traceback, while Postgres is unreachable, is one JSON line."""
    output = io.StringIO()
    saved = structlog.get_config()
    seen = _Seen("pool connection floor")
    pool_logger = logging.getLogger("asyncpg.pool")
    pool_logger.addHandler(seen)
    configure_logging(level="info", fmt="json", logger_factory=structlog.PrintLoggerFactory(output))
    try:
        dsn = relay.dsn(role_dsn(database, "ap_control_plane"))
        pool = await create_pool(dsn, min_size=1, max_size=1, application_name="ap-test-floor")
        try:
            await relay.stop()  # connections closed, nothing listening: the database is away
            await asyncio.wait_for(seen.event.wait(), 10)
        finally:
            pool.terminate()
    finally:
        pool_logger.removeHandler(seen)
        structlog.configure(**saved)
    lines = output.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) for r in records), lines
    floor = next(r for r in records if "pool connection floor" in r["event"])
    assert floor["logger"] == "asyncpg.pool" and floor["level"] == "warning"
    assert "Traceback (most recent call last)" in floor["exception"]
    assert "ConnectionRefusedError" in floor["exception"]
