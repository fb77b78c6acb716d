"""The stack's administrative database: AP_DATABASE_URL, else the embedded Postgres."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.embedded_pg import (
    PG_SYSTEM_USER,
    SERVER_HOME,
    EmbeddedPostgres,
    running_server,
    server_can_enter,
)
from devtools.processes import bind_error, port_holder
from devtools.stack.console import StackError, say
from devtools.stack.layout import PG_DATA_DIR, REPO_ROOT, VAR_DIR, relative
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
    data_dir = embedded_data_dir()
    running = running_server(data_dir)
    if running is not None:
        port = running.port
    elif bind_error("127.0.0.1", port) is not None:
        raise StackError(orphan_hint(port))
    # pg_stat_statements, for the statements per run that bench/ prints.
    server = EmbeddedPostgres(data_dir, port, track_statements=True)
    summary = f"embedded, data in {relative(PG_DATA_DIR)}"
    if data_dir != PG_DATA_DIR:
        summary += f" -> {data_dir}"
    if running is not None:
        summary += f" on 127.0.0.1:{port}, already running (left running on exit)"
    say(f"Postgres: {summary}" + ("" if running else f", starting on 127.0.0.1:{port}"))
    try:
        yield AdminDatabase(server.start(), summary, port)
    finally:
        if running is None:
            say("stopping embedded Postgres")
            server.stop()


def orphan_hint(port: int) -> str:
    """Explain a Postgres port taken while var/pg has no server: most likely an orphan."""
    holder = port_holder(port)
    who = f" by {holder}" if holder else ""
    pid = holder.pid if holder else "PID"
    return (
        f"the embedded Postgres needs 127.0.0.1:{port}, which is taken{who}, while "
        f"{relative(PG_DATA_DIR)} has no server running. If that is a Postgres whose data "
        "directory was deleted under it (`rm -rf var`, or an old `make clean` while a stack "
        f"ran), stop it with `kill -INT {pid}`; else give this stack another "
        "AP_STACK_BASE_PORT"
    )


def embedded_data_dir() -> Path:
    """Return where the embedded Postgres keeps this clone's data: var/pg, or where it links.

    Under root the server runs as ap_postgres. When that account cannot enter var/ (a clone
    in root's home or in a `mktemp -d` directory), the data lives in its own area instead,
    with var/pg a symlink to it: no permission of the user's directories changes, and
    `make clean` removes both.
    """
    if PG_DATA_DIR.is_symlink():
        return PG_DATA_DIR.resolve()
    VAR_DIR.mkdir(exist_ok=True)
    if server_can_enter(VAR_DIR):
        return PG_DATA_DIR
    if PG_DATA_DIR.exists():
        raise StackError(
            f"{relative(PG_DATA_DIR)} exists, but {PG_SYSTEM_USER}, which runs Postgres under "
            "root, cannot enter the directories above it; move the clone where it can, or "
            f"remove {relative(PG_DATA_DIR)} (its data is lost) to keep the data in {SERVER_HOME}"
        )
    digest = hashlib.sha256(os.fsencode(REPO_ROOT)).hexdigest()[:12]
    target = SERVER_HOME / "clusters" / f"{REPO_ROOT.name}-{digest}"
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    PG_DATA_DIR.symlink_to(target, target_is_directory=True)
    say(
        f"Postgres: {PG_SYSTEM_USER}, which runs it under root, cannot enter this clone's "
        f"directories, so its data lives in {target} ({relative(PG_DATA_DIR)} links there); "
        "no permissions were changed"
    )
    return target


def service_dsn(admin_dsn: str, schema: str, role: str) -> str:
    """Return a service role's DSN, with the password migrations gave the role, if any."""
    return role_dsn(admin_dsn, role, os.environ.get(f"AP_DB_PASSWORD_{schema.upper()}"))


def report_migrations(applied: Sequence[str]) -> None:
    """Print which migrations were applied."""
    if not applied:
        say("migrations: schema up to date, nothing to apply")
    for name in applied:
        say(f"migrations: applied {name}")
