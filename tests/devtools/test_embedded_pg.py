"""Prove the embedded Postgres launcher starts, restarts and stops a real server."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from devtools.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError

Factory = Callable[..., EmbeddedPostgres]


@pytest.fixture
def make_pg(pg_data_dir: Path) -> Iterator[Factory]:
    """Build EmbeddedPostgres instances that are always stopped after the test.

    It takes `pg_data_dir` so that the directory is removed only after the servers stop.
    """
    servers: list[EmbeddedPostgres] = []

    def make(data_dir: Path, port: int | None = None) -> EmbeddedPostgres:
        """Describe a fast, unsafe server in ``data_dir``, registered for teardown."""
        server = EmbeddedPostgres(data_dir, port, fast_unsafe=True)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


async def _fetch(dsn: str, query: str) -> object:
    """Run one query on a fresh connection and return its single value."""
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(query)
    finally:
        await connection.close()


async def test_start_accepts_tcp_connections(make_pg: Factory, pg_data_dir: Path) -> None:
    """start() returns a TCP admin DSN that asyncpg can query, with the configured settings."""
    server = make_pg(pg_data_dir)
    dsn = server.start()
    assert dsn == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    assert await _fetch(dsn, "SELECT 1") == 1
    assert await _fetch(dsn, "SHOW max_connections") == "300"
    assert await _fetch(dsn, "SHOW idle_in_transaction_session_timeout") == "1min"
    assert await _fetch(dsn, "SHOW fsync") == "off"


async def test_restart_keeps_the_port_and_the_data(make_pg: Factory, pg_data_dir: Path) -> None:
    """restart() brings the server back on the same port with the tables created before."""
    server = make_pg(pg_data_dir)
    dsn = server.start()
    await _fetch(dsn, "CREATE TABLE survivor AS SELECT 42 AS id")
    port = server.port
    server.restart()
    assert server.port == port
    assert server.dsn == dsn
    assert await _fetch(dsn, "SELECT id FROM survivor") == 42


async def test_stop_is_idempotent(make_pg: Factory, pg_data_dir: Path) -> None:
    """stop() may be called before start and repeatedly; afterwards nothing listens."""
    server = make_pg(pg_data_dir)
    server.stop()
    dsn = server.start()
    server.stop()
    server.stop()
    with pytest.raises(OSError):
        await _fetch(dsn, "SELECT 1")


async def test_start_reuses_a_running_server(make_pg: Factory, pg_data_dir: Path) -> None:
    """A second launcher on a data dir whose server is running adopts it and its port."""
    first = make_pg(pg_data_dir)
    dsn = first.start()
    second = make_pg(pg_data_dir)
    assert second.start() == dsn
    assert await _fetch(second.dsn, "SELECT 1") == 1


async def test_long_data_dir_path_still_starts(make_pg: Factory, pg_data_dir: Path) -> None:
    """A data dir too long for a unix socket path gets its socket elsewhere and still starts."""
    data_dir = pg_data_dir / ("d" * 60) / ("e" * 60) / "pg"
    server = make_pg(data_dir)
    dsn = server.start()
    assert await _fetch(dsn, "SELECT 1") == 1
    assert not list(data_dir.glob(".s.PGSQL.*"))


def test_failed_start_reports_the_server_log(make_pg: Factory, pg_data_dir: Path) -> None:
    """Starting on a port already in use raises an error carrying the server log tail."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = make_pg(pg_data_dir, port)
        with pytest.raises(EmbeddedPostgresError, match="server log tail") as failure:
            server.start()
    assert "Address already in use" in str(failure.value)
