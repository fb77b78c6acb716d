"""The stack's administrative database: AP_DATABASE_URL, else the embedded Postgres."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from devtools.embedded_pg import EmbeddedPostgres, running_server
from devtools.stack.console import say
from devtools.stack.layout import PG_DATA_DIR, relative
from services.rpc.db import role_dsn


@dataclass(frozen=True)
class AdminDatabase:
    """An administrative DSN, and what it is, for the banner."""

    dsn: str
    summary: str
    embedded_port: int | None = None


@contextlib.contextmanager
def admin_database(port: int) -> Iterator[AdminDatabase]:
    """Yield AP_DATABASE_URL, else the embedded server of var/pg (started on `port`).

    A server already running on var/pg is used on whatever port it has; it is stopped on
    exit only if this call started it, so a server the developer started (or another
    stack's) keeps running.
    """
    if url := os.environ.get("AP_DATABASE_URL", "").strip():
        yield AdminDatabase(url, "AP_DATABASE_URL")
        return
    running = running_server(PG_DATA_DIR)
    if running is not None:
        port = running.port
    server = EmbeddedPostgres(PG_DATA_DIR, port)
    summary = f"embedded, data in {relative(PG_DATA_DIR)}"
    if running is not None:
        summary += f" on 127.0.0.1:{port}, already running (left running on exit)"
    say(f"Postgres: {summary}" + ("" if running else f", starting on 127.0.0.1:{port}"))
    try:
        yield AdminDatabase(server.start(), summary, port)
    finally:
        if running is None:
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
