"""The stack's administrative database: AP_DATABASE_URL, else the embedded Postgres."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

from devtools.embedded_pg import EmbeddedPostgres, running_server
from devtools.stack.console import say
from devtools.stack.layout import PG_DATA_DIR, relative
from services.rpc.db import role_dsn


@contextlib.contextmanager
def admin_database(port: int) -> Iterator[str]:
    """Yield an admin DSN: AP_DATABASE_URL, else the embedded server of var/pg on `port`.

    The embedded server is stopped on exit only if this call started it, so a server the
    developer started (or another `run`) keeps running.
    """
    if url := os.environ.get("AP_DATABASE_URL", "").strip():
        yield url
        return
    server = EmbeddedPostgres(PG_DATA_DIR, port)
    already_running = running_server(PG_DATA_DIR) is not None
    where = f"{relative(PG_DATA_DIR)} on 127.0.0.1:{port}"
    say(f"Postgres: embedded, data in {where}" + (" (already running)" if already_running else ""))
    try:
        yield server.start()
    finally:
        if not already_running:
            say("stopping embedded Postgres")
            server.stop()


def service_dsn(admin_dsn: str, schema: str, role: str) -> str:
    """Return a service role's DSN, with the password migrations gave the role, if any."""
    return role_dsn(admin_dsn, role, os.environ.get(f"AP_DB_PASSWORD_{schema.upper()}"))


def report_migrations(applied: Sequence[str]) -> None:
    """Print which migrations were applied."""
    if not applied:
        say("migrations: schema up to date, nothing to apply")
    for name in applied:
        say(f"migrations: applied {name}")
