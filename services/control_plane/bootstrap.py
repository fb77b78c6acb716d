"""First-run set-up: the first workspace, its owner (with a profile) and an owner API key."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass

import asyncpg

from services.control_plane import store
from services.control_plane.auth import NewApiKey, given_api_key, new_api_key
from services.rpc.names import user_name, workspace_name

# Distinct from 1, which an uncaught error (an unreachable database) exits with.
EXIT_ALREADY_BOOTSTRAPPED = 3


@dataclass(frozen=True)
class Bootstrapped:
    """What the set-up created; the key is shown once and never stored in clear."""

    workspace: str
    user: str
    api_key: str


async def create_workspace(
    conn: asyncpg.Connection,
    *,
    workspace_display_name: str,
    owner_display_name: str,
    role: str = "owner",
    key: NewApiKey | None = None,
) -> Bootstrapped:
    """Create a workspace with one user of the given role and an API key (`key`, or new)."""
    key = key or new_api_key()
    workspace_id, user_id = await store.workspace_create(
        conn,
        workspace_display_name=workspace_display_name,
        user_display_name=owner_display_name,
        key_name="bootstrap",
        key_prefix=key.prefix,
        key_secret_sha256=key.secret_sha256,
        role=role,
    )
    return Bootstrapped(workspace_name(workspace_id), user_name(user_id), key.key)


async def bootstrap(
    dsn: str,
    *,
    workspace_display_name: str,
    owner_display_name: str,
    key: NewApiKey | None = None,
) -> Bootstrapped | None:
    """Create the first workspace and owner (with `key`, or a new one); None if one exists."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            # Serialise concurrent bootstraps so only one can see an empty table.
            if await store.workspace_count(conn, lock=True) > 0:
                return None
            return await create_workspace(
                conn,
                workspace_display_name=workspace_display_name,
                owner_display_name=owner_display_name,
                key=key,
            )
    finally:
        await conn.close()


async def issue_owner_key(dsn: str, *, key_name: str = "dev") -> Bootstrapped | None:
    """Issue a new API key for the first workspace's owner; None when not bootstrapped."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await store.member_first_owner(conn)
        if row is None:
            return None
        key = new_api_key()
        await store.api_key_create(
            conn,
            workspace_id=row["workspace_id"],
            user_id=row["user_id"],
            name=key_name,
            prefix=key.prefix,
            secret_sha256=key.secret_sha256,
            # The operator issues it to the owner straight in the database, as at bootstrap.
            personal=True,
        )
        return Bootstrapped(workspace_name(row["workspace_id"]), user_name(row["user_id"]), key.key)
    finally:
        await conn.close()


def build_parser() -> argparse.ArgumentParser:
    """Return the command line of `ap-service bootstrap`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workspace", default="Default workspace")
    parser.add_argument("--display-name", default="Owner")
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="take the owner's key from this environment variable instead of making one, "
        "and print no key (for deployments' one-shot jobs; only its hash is stored)",
    )
    parser.add_argument(
        "--exists-ok",
        action="store_true",
        help="exit 0, not 3, when a workspace exists already (a job that runs on every deploy)",
    )
    return parser


def main() -> None:
    """Run the bootstrap against AP_DATABASE_URL and print the result as JSON."""
    args = build_parser().parse_args()
    dsn = os.environ.get("AP_DATABASE_URL")
    if not dsn:
        print("AP_DATABASE_URL must be set (the control plane's database URL)", file=sys.stderr)
        raise SystemExit(2)
    key = None
    if args.api_key_env:
        key = given_api_key(os.environ.get(args.api_key_env, ""))
        if key is None:
            print(
                f"{args.api_key_env} must hold an API key of the form ap_<12 hex digits>_<43 or "
                "more URL-safe characters>; make one with: python3 -c 'import secrets; "
                'print(f"ap_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}")\'',
                file=sys.stderr,
            )
            raise SystemExit(2)
    done = asyncio.run(
        bootstrap(
            dsn,
            workspace_display_name=args.workspace,
            owner_display_name=args.display_name,
            key=key,
        )
    )
    if done is None:
        print("already bootstrapped: a workspace exists", file=sys.stderr)
        raise SystemExit(0 if args.exists_ok else EXIT_ALREADY_BOOTSTRAPPED)
    made = {"workspace": done.workspace, "user": done.user}
    if key is None:
        made["api_key"] = done.api_key
    print(json.dumps(made))


if __name__ == "__main__":
    main()
