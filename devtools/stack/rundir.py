"""The live stack's directory, ``var/run/<base port>/``, and how others tell it is alive.

    stack.json     locked (flock) by the running stack for as long as it runs: its pid, its
                   endpoint and its children's process group. `make clean` and the tests
                   read it; a lock nobody holds is a stack that is gone.
    worker.env     what an extra worker needs to join the stack, the internal token among it
    web.env        what an extra HTTP edge needs, the cookie secret among it (both mode 600,
                   written by `devtools.stack.replicas`)

The directory goes when the stack stops: the secrets and certificates die with the run.

Standard library only: `make clean` reads it with whatever Python there is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.stack.console import StackError
from devtools.stack.layout import RUN_DIR, run_dir

LOCK_NAME = "stack.json"
# The files with what extra replicas need to join the stack.
JOIN_FILES = "*.env"


@dataclass(frozen=True)
class LiveStack:
    """A running stack, as its lock file describes it."""

    base_port: int
    pid: int
    endpoint: str
    process_group: int | None


class StackLock:
    """Hold ``var/run/<base port>/stack.json`` locked while this stack runs."""

    def __init__(self, base_port: int) -> None:
        """Name the lock of the stack on `base_port`; nothing is opened yet."""
        self.base_port = base_port
        self.path = run_dir(base_port) / LOCK_NAME
        self._fd: int | None = None
        self._fields: dict[str, Any] = {}

    def acquire(self, endpoint: str) -> None:
        """Take the lock, or fail naming the stack of this clone that holds it."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_live_stack(self.path)
            pid = f" (pid {holder.pid})" if holder else ""
            raise StackError(
                f"a stack of this clone already runs on this base port{pid}; stop it first, "
                "or give this one another AP_STACK_BASE_PORT"
            ) from None
        self._fd = fd
        self.record(pid=os.getpid(), endpoint=endpoint, base_port=self.base_port)

    def record(self, **fields: Any) -> None:
        """Add fields to what the lock file says about this stack."""
        assert self._fd is not None, "record() before acquire()"
        self._fields.update(fields)
        data = json.dumps(self._fields).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Remove the stack's run directory and let go of the lock."""
        if self._fd is None:
            return
        for join_file in self.path.parent.glob(JOIN_FILES):
            with contextlib.suppress(FileNotFoundError):
                join_file.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()
        os.close(self._fd)
        self._fd = None


def read_live_stack(path: Path) -> LiveStack | None:
    """Return the stack holding the lock file at `path`, or None when none holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: a stack is alive
        else:
            return None
        data = json.loads(os.pread(fd, 64 * 1024, 0) or b"{}")
    except ValueError:
        return None
    finally:
        os.close(fd)
    group = data.get("process_group")
    return LiveStack(
        base_port=int(data.get("base_port", 0)),
        pid=int(data.get("pid", 0)),
        endpoint=str(data.get("endpoint", "")),
        process_group=int(group) if group else None,
    )


def live_stacks() -> list[LiveStack]:
    """Return the stacks of this clone that are running now."""
    found = (read_live_stack(path) for path in sorted(RUN_DIR.glob(f"*/{LOCK_NAME}")))
    return [stack for stack in found if stack is not None]
