"""asyncpg pools and the schema migration runner.

Each service owns one schema and connects as its own role. Migrations run once, with an
administrative connection, as `SET ROLE <service role>` so the role owns what it creates.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import asyncpg.pool
import structlog

log = structlog.get_logger()

# What store functions accept: a plain connection or one borrowed from a pool.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


async def create_pool(
    dsn: str, *, min_size: int, max_size: int, application_name: str
) -> asyncpg.Pool:
    """Open a connection pool with the settings every service uses."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        server_settings={
            "application_name": application_name,
            # A transaction left open would hold back vacuum on the hot runs table.
            "idle_in_transaction_session_timeout": "30000",
        },
    )
    assert pool is not None
    return pool


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    # asyncpg's default reset costs a round trip on every release; our pooled connections keep
    # no session state (no SET, LISTEN, cursors or session locks), and an open transaction is
    # still rolled back by the pool before this runs.
    return None


@dataclass(frozen=True)
class SchemaMigrations:
    """One service's schema, its database role and its folder of numbered SQL files."""

    schema: str
    role: str
    directory: Path

    def files(self) -> list[Path]:
        """Return the migration files in the order they apply."""
        return sorted(self.directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def _quote_ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe identifier {name!r}")
    return f'"{name}"'


async def apply_migrations(
    admin: asyncpg.Connection, target: SchemaMigrations, role_password: str | None = None
) -> list[str]:
    """Create the role and schema if missing and apply pending migrations; return their names."""
    schema, role = _quote_ident(target.schema), _quote_ident(target.role)
    applied: list[str] = []
    async with admin.transaction():
        # Concurrent `make migrate` runs (several replicas starting) must not interleave.
        await admin.execute("SELECT pg_advisory_xact_lock(hashtext('ap_migrations'))")
        exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", target.role)
        if not exists:
            await admin.execute(f"CREATE ROLE {role} LOGIN")
        if role_password is not None:
            await admin.execute(f"ALTER ROLE {role} PASSWORD {_literal(role_password)}")
        await admin.execute(f"CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role}")
        await admin.execute(f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC")
        await admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        await admin.execute(f"ALTER ROLE {role} SET search_path = {schema}")
        await admin.execute(f"SET LOCAL ROLE {role}")
        await admin.execute(f"SET LOCAL search_path = {schema}")
        await admin.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["name"]: r["checksum"]
            for r in await admin.fetch("SELECT name, checksum FROM schema_migrations")
        }
        for path in target.files():
            sql = path.read_text()
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if path.name in done:
                if done[path.name] != checksum:
                    raise RuntimeError(f"applied migration {path} was edited; add a new one")
                continue
            await admin.execute(sql)
            await admin.execute(
                "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                path.name,
                checksum,
            )
            applied.append(f"{target.schema}/{path.name}")
        await admin.execute("RESET ROLE")
    return applied


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def role_dsn(admin_dsn: str, role: str, password: str | None = None) -> str:
    """Derive a service role's DSN from the administrative one (same host and database)."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(admin_dsn)
    host = parts.hostname or "127.0.0.1"
    netloc = quote(role) + (":" + quote(password, safe="") if password else "") + "@" + host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
