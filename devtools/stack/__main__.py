"""Run a stack command: ``python -m devtools.stack run|migrate|clean``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import devtools.stack


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the command."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.stack",
        description=(devtools.stack.__doc__ or "").split("\n\n", 1)[0],
    )
    parser.add_argument("command", choices=["clean", "migrate", "run"])
    args = parser.parse_args(argv)
    # Imported per command: `clean` must run on a bare Python (make clean may follow a venv
    # that is gone), and the others need gRPC, which must not load before the next line.
    if args.command == "clean":
        from devtools.stack.clean import command_clean

        return command_clean()
    # Every child is exec'd right after fork, so gRPC's fork handlers have nothing to
    # protect, and left on they log "skipping fork() handlers" on some starts.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from devtools.stack.run import command_migrate, command_run

    return command_migrate() if args.command == "migrate" else command_run()


if __name__ == "__main__":
    sys.exit(main())
