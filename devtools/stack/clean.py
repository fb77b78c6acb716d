"""What `make clean` does before it deletes var/: refuse while a stack runs, stop orphans.

Deleting var/ under a live Postgres leaves it running without its data directory, holding
its port, so this refuses while a stack of this clone runs, stops an embedded Postgres that
no stack uses any more, and removes the cluster var/pg links to when it lives outside the
clone (see `devtools.stack.database.embedded_data_dir`).

Standard library only: it runs with whatever Python there is, even after the venv is gone.
"""

from __future__ import annotations

import shutil

from devtools.embedded_pg import SERVER_HOME, EmbeddedPostgresError, stop_running_server
from devtools.stack.console import say, warn
from devtools.stack.layout import PG_DATA_DIR, relative
from devtools.stack.rundir import live_stacks


def command_clean() -> int:
    """Get var/ ready to delete: 0 when it may go, 1 while a stack of this clone runs."""
    running = live_stacks()
    for stack in running:
        warn(
            f"make clean: a stack of this clone is running (pid {stack.pid}, on "
            f"{stack.endpoint}); stop it first (Ctrl-C where it runs, or kill -INT {stack.pid})"
        )
    if running:
        return 1
    data_dir = PG_DATA_DIR.resolve()
    try:
        stopped = stop_running_server(data_dir)
    except EmbeddedPostgresError as err:
        warn(f"make clean: {err}")
        return 1
    if stopped is not None:
        say(
            f"make clean: stopped the embedded Postgres of {relative(PG_DATA_DIR)} "
            f"(pid {stopped.pid}, port {stopped.port}), which no stack was using"
        )
    if PG_DATA_DIR.is_symlink() and data_dir.is_relative_to(SERVER_HOME):
        shutil.rmtree(data_dir, ignore_errors=True)
        say(f"make clean: removed {data_dir}, where {relative(PG_DATA_DIR)} linked")
    return 0
