"""`make clean` never leaves a Postgres running without its data; `make run` names an orphan."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from devtools.embedded_pg import SERVER_HOME, EmbeddedPostgres, running_server
from devtools.processes import bind_error
from devtools.stack.layout import StackPorts
from tests.devtools.clones import PrivateClone, free_base_port

pytestmark = pytest.mark.timeout(120)


def test_make_clean_stops_an_orphaned_postgres_before_deleting_var(
    private_clone: PrivateClone,
) -> None:
    """A Postgres that no stack uses is stopped first; var/ (and where var/pg links) go."""
    ports = StackPorts(free_base_port())
    migrated = private_clone.run(
        "-m", "devtools.stack", "migrate", AP_STACK_BASE_PORT=str(ports.base)
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    var_pg = private_clone.root / "var" / "pg"
    data_dir = var_pg.resolve()
    started = private_clone.run(
        "-m", "devtools.embedded_pg", "start", str(data_dir), "--port", str(ports.postgres)
    )
    assert started.returncode == 0, started.stdout + started.stderr
    orphan = running_server(data_dir)
    assert orphan is not None

    cleaned = private_clone.run_program("make", "clean")

    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert f"stopped the embedded Postgres of var/pg (pid {orphan.pid}" in cleaned.stdout
    assert not psutil.pid_exists(orphan.pid)
    assert bind_error("127.0.0.1", ports.postgres) is None
    assert not (private_clone.root / "var").exists()
    assert not data_dir.exists()
    if os.geteuid() == 0:
        assert data_dir.is_relative_to(SERVER_HOME)


def test_make_run_names_the_orphan_holding_the_postgres_port(
    private_clone: PrivateClone, pg_data_dir: Path
) -> None:
    """With its Postgres port taken but no server on var/pg, the stack says what to stop."""
    ports = StackPorts(free_base_port())
    orphan = EmbeddedPostgres(pg_data_dir, ports.postgres, fast_unsafe=True)
    orphan.start()
    try:
        server = running_server(pg_data_dir)
        assert server is not None
        refused = private_clone.run(
            "-m", "devtools.stack", "migrate", AP_STACK_BASE_PORT=str(ports.base)
        )
    finally:
        orphan.stop()
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"127.0.0.1:{ports.postgres}, which is taken by pid {server.pid}" in refused.stderr
    assert f"kill -INT {server.pid}" in refused.stderr
    # Refused before creating a cluster that could never have started.
    assert not (private_clone.root / "var" / "pg" / "PG_VERSION").exists()
