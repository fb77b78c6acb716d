"""Apply every service's schema migrations: `python -m services.migrate` with an admin URL."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg

from services.rpc.db import SchemaMigrations, apply_migrations

_HERE = Path(__file__).parent

# The services that own state, each with its schema and role; the worker is stateless.
SCHEMAS = (
    SchemaMigrations("control_plane", "ap_control_plane", _HERE / "control_plane" / "migrations"),
    SchemaMigrations("vault", "ap_vault", _HERE / "vault" / "migrations"),
    SchemaMigrations("gateway", "ap_gateway", _HERE / "gateway" / "migrations"),
)


async def migrate_all(admin_dsn: str) -> list[str]:
    """Apply pending migrations of every schema; return what was applied."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        applied: list[str] = []
        for target in SCHEMAS:
            password = os.environ.get(f"AP_DB_PASSWORD_{target.schema.upper()}")
            applied += await apply_migrations(conn, target, password)
        return applied
    finally:
        await conn.close()


def main() -> None:
    """Run migrations against AP_DATABASE_URL."""
    dsn = os.environ.get("AP_DATABASE_URL")
    if not dsn:
        print("AP_DATABASE_URL must name an administrative Postgres URL", file=sys.stderr)
        raise SystemExit(2)
    for name in asyncio.run(migrate_all(dsn)):
        print(f"applied {name}")


if __name__ == "__main__":
    main()
