"""The first workspace's owner key, and the client config file `ap` reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from devtools.stack.console import StackError, say
from devtools.stack.database import service_dsn
from services.control_plane.bootstrap import EXIT_ALREADY_BOOTSTRAPPED, issue_owner_key

WORKSPACE_DISPLAY_NAME = "Default workspace"


def read_stored_key(path: Path) -> str | None:
    """Return the API key in the client config file, or None if it has none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    key = data.get("api_key") if isinstance(data, dict) else None
    return key.strip() if isinstance(key, str) and key.strip() else None


async def admin_bootstrap(dsn: str, owner_name: str) -> dict[str, str] | None:
    """Run `ap admin bootstrap`, the operator's entry point; None when already bootstrapped."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ap_cli.main",
        "admin",
        "bootstrap",
        "--json",
        "--workspace",
        WORKSPACE_DISPLAY_NAME,
        "--display-name",
        owner_name,
        env={**os.environ, "AP_DATABASE_URL": dsn},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode == EXIT_ALREADY_BOOTSTRAPPED:
        return None
    if proc.returncode != 0:
        raise StackError(f"ap admin bootstrap failed: {err.decode().strip()}")
    made: dict[str, str] = json.loads(out)
    return made


async def owner_key(admin_dsn: str, owner_name: str, config_path: Path) -> str:
    """Bootstrap the first workspace, or find a key for the existing one's owner."""
    dsn = service_dsn(admin_dsn, "control_plane", "ap_control_plane")
    made = await admin_bootstrap(dsn, owner_name)
    if made is not None:
        say(f"bootstrap: created {made['workspace']} ({WORKSPACE_DISPLAY_NAME!r})")
        say(f"bootstrap: owner {made['user']} ({owner_name!r}), new API key {made['api_key']}")
        return made["api_key"]
    # The file's key is trusted as is: checking it would need the running control plane.
    if stored := read_stored_key(config_path):
        say(f"bootstrap: a workspace exists; reusing the API key in {config_path}")
        return stored
    issued = await issue_owner_key(dsn)
    if issued is None:
        raise StackError("a workspace exists but has no owner to issue an API key for")
    say(f"bootstrap: a workspace exists; issued a new API key for the owner of {issued.workspace}")
    return issued.api_key


def write_private_file(path: Path, text: str) -> None:
    """Write a file atomically, readable by its owner only (its directory too, if new)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    try:
        # mkstemp creates the file 0600, so the contents are never readable by others.
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_client_config(path: Path, endpoint: str, api_key: str) -> None:
    """Write the client config file `ap` reads (mode 600)."""
    write_private_file(
        path, json.dumps({"endpoint": endpoint, "api_key": api_key}, indent=2) + "\n"
    )
