"""A clone in a private (0700) directory runs embedded Postgres as root, changing no permission.

Under root the server runs as ap_postgres, which cannot enter a `mktemp -d` directory or
root's home. These tests build such a clone, with the Postgres wheel's files inside the
private directory as in a clone's own virtualenv, and run the launcher and `make migrate`
from it. As another user they run the same way and must pass just the same.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import asyncpg
import pytest

from devtools.embedded_pg import SERVER_HOME
from tests.devtools.clones import PrivateClone, free_base_port

pytestmark = pytest.mark.timeout(120)


def private_mode(path: Path) -> int:
    """Return the permission bits of a directory."""
    return stat.S_IMODE(path.stat().st_mode)


async def test_postgres_starts_from_a_wheel_inside_a_private_directory(
    private_clone: PrivateClone, pg_data_dir: Path
) -> None:
    """`make test`'s case: the binaries sit in the private clone, the data in the temp dir."""
    started = private_clone.run("-m", "devtools.embedded_pg", "start", str(pg_data_dir))
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        conn = await asyncpg.connect(started.stdout.strip())
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        stopped = private_clone.run("-m", "devtools.embedded_pg", "stop", str(pg_data_dir))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert private_mode(private_clone.private) == 0o700


async def test_make_migrate_works_in_a_private_clone(private_clone: PrivateClone) -> None:
    """`make run`'s case: var/pg lies inside the clone; under root its data moves, linked."""
    base = str(free_base_port())
    migrated = await asyncio.to_thread(
        private_clone.run, "-m", "devtools.stack", "migrate", AP_STACK_BASE_PORT=base
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "migrations: applied control_plane/0001_init.sql" in migrated.stdout
    var_pg = private_clone.root / "var" / "pg"
    if os.geteuid() == 0:
        assert var_pg.is_symlink()
        assert var_pg.resolve().parent == SERVER_HOME / "clusters"
        assert (var_pg.resolve() / "PG_VERSION").is_file()
    else:
        assert (var_pg / "PG_VERSION").is_file()
    assert private_mode(private_clone.private) == 0o700
    # A second run finds the same data: nothing left to apply.
    again = await asyncio.to_thread(
        private_clone.run, "-m", "devtools.stack", "migrate", AP_STACK_BASE_PORT=base
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to apply" in again.stdout
