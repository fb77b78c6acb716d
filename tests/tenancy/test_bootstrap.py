"""`ap admin bootstrap`: the first workspace, owner and key, once."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys

from agentplatform.v1 import profile_service_pb2

from services.control_plane.bootstrap import EXIT_ALREADY_BOOTSTRAPPED
from services.rpc.db import role_dsn
from tests.harness import start_stack


async def _ap_bootstrap(dsn: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ap_cli.main",
        "admin",
        "bootstrap",
        "--json",
        "--display-name",
        "Ada",
        env={**os.environ, "AP_DATABASE_URL": dsn},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_bootstrap_creates_an_owner_key_once(database: str) -> None:
    """The first run prints a working owner key; the second refuses and changes nothing."""
    dsn = role_dsn(database, "ap_control_plane")
    code, out = await _ap_bootstrap(dsn)
    assert code == 0, out
    made = json.loads(out)
    assert made["workspace"].startswith("workspaces/") and made["api_key"].startswith("ap_")
    code, out = await _ap_bootstrap(dsn)
    assert (code, out) == (EXIT_ALREADY_BOOTSTRAPPED, "")
    async with start_stack(
        database, internal_token=secrets.token_urlsafe(16), with_worker=False
    ) as stack:
        client = stack.client(made["api_key"])
        profile = await client.profiles.GetProfile(
            profile_service_pb2.GetProfileRequest(name="users/me/profile"),
            metadata=client.auth,
            timeout=10,
        )
    assert (profile.display_name, profile.role, profile.workspace) == (
        "Ada",
        "owner",
        made["workspace"],
    )
