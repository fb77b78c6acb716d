"""SQL of tenancy: workspaces, users and their profiles, memberships, API keys."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from services.rpc.db import Connection

Record = asyncpg.Record

# ── workspaces ──────────────────────────────────────────────────────────────────────────────


async def workspace_create(
    conn: Connection,
    *,
    workspace_display_name: str,
    user_display_name: str,
    key_name: str,
    key_prefix: str,
    key_secret_sha256: bytes,
    role: str = "owner",
) -> tuple[uuid.UUID, uuid.UUID]:
    """Create a workspace with its first user, their profile, membership and an API key."""
    workspace_id = uuid.uuid4()
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO workspaces (id, display_name) VALUES ($1, $2)",
            workspace_id,
            workspace_display_name,
        )
        user_id = await user_create(conn, user_display_name)
        await member_add(conn, workspace_id, user_id, role)
        await api_key_create(
            conn,
            workspace_id=workspace_id,
            user_id=user_id,
            name=key_name,
            prefix=key_prefix,
            secret_sha256=key_secret_sha256,
        )
    return workspace_id, user_id


_WORKSPACE_GET = """
SELECT w.id, w.display_name, w.create_time, m.role
FROM workspaces w JOIN memberships m ON m.workspace_id = w.id
WHERE w.id = $1 AND m.user_id = $2
"""


async def workspace_get(
    conn: Connection, workspace_id: uuid.UUID, user_id: uuid.UUID
) -> Record | None:
    """Get a workspace with the user's role in it; None unless the user is a member."""
    return await conn.fetchrow(_WORKSPACE_GET, workspace_id, user_id)


_WORKSPACE_LIST = """
SELECT w.id, w.display_name, w.create_time, m.role
FROM memberships m JOIN workspaces w ON w.id = m.workspace_id
WHERE m.user_id = $1 AND ($2::timestamptz IS NULL OR (w.create_time, w.id) > ($2, $3))
ORDER BY w.create_time, w.id
LIMIT $4
"""


async def workspace_list(
    conn: Connection,
    user_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Record]:
    """List the workspaces a user belongs to, oldest first, after a keyset cursor."""
    time, row_id = after or (None, None)
    return await conn.fetch(_WORKSPACE_LIST, user_id, time, row_id, limit)


async def workspace_rename(conn: Connection, workspace_id: uuid.UUID, display_name: str) -> None:
    """Change a workspace's display name."""
    await conn.execute(
        "UPDATE workspaces SET display_name = $2 WHERE id = $1", workspace_id, display_name
    )


async def workspace_tools_bump(conn: Connection, workspace_id: uuid.UUID) -> None:
    """Record that the workspace's tool registry changed (workers refresh their tool lists)."""
    await conn.execute(
        "UPDATE workspaces SET tools_version = tools_version + 1 WHERE id = $1", workspace_id
    )


async def workspace_count(conn: Connection, *, lock: bool = False) -> int:
    """Count the workspaces; with `lock`, keep others from creating one until commit."""
    if lock:
        await conn.execute("LOCK TABLE workspaces IN EXCLUSIVE MODE")
    count: int = await conn.fetchval("SELECT count(*) FROM workspaces")
    return count


# ── users and profiles ──────────────────────────────────────────────────────────────────────


async def user_create(conn: Connection, display_name: str) -> uuid.UUID:
    """Create a user with a profile; return the user's id."""
    user_id = uuid.uuid4()
    async with conn.transaction():
        await conn.execute("INSERT INTO users (id) VALUES ($1)", user_id)
        await conn.execute(
            "INSERT INTO profiles (user_id, display_name) VALUES ($1, $2)", user_id, display_name
        )
    return user_id


async def user_exists(conn: Connection, user_id: uuid.UUID) -> bool:
    """Say whether a user exists."""
    found: bool = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)", user_id)
    return found


async def profile_get(conn: Connection, user_id: uuid.UUID) -> Record | None:
    """Get a user's profile."""
    return await conn.fetchrow(
        "SELECT user_id, display_name FROM profiles WHERE user_id = $1", user_id
    )


_PROFILE_UPDATE = """
UPDATE profiles SET display_name = $2, update_time = now()
WHERE user_id = $1
RETURNING user_id, display_name
"""


async def profile_update(conn: Connection, user_id: uuid.UUID, display_name: str) -> Record | None:
    """Change a user's display name."""
    return await conn.fetchrow(_PROFILE_UPDATE, user_id, display_name)


# ── memberships ─────────────────────────────────────────────────────────────────────────────

_MEMBER_FROM = """
SELECT m.user_id, m.role, m.create_time, p.display_name
FROM memberships m JOIN profiles p USING (user_id)
"""
_MEMBER_GET = f"{_MEMBER_FROM} WHERE m.workspace_id = $1 AND m.user_id = $2"
_MEMBER_LOCK = f"{_MEMBER_GET} FOR UPDATE OF m"


async def member_add(
    conn: Connection, workspace_id: uuid.UUID, user_id: uuid.UUID, role: str
) -> Record | None:
    """Add a user to a workspace; None when they are a member already."""
    inserted = await conn.fetchval(
        "INSERT INTO memberships (workspace_id, user_id, role) VALUES ($1, $2, $3)"
        " ON CONFLICT DO NOTHING RETURNING user_id",
        workspace_id,
        user_id,
        role,
    )
    return None if inserted is None else await member_get(conn, workspace_id, user_id)


async def member_get(
    conn: Connection, workspace_id: uuid.UUID, user_id: uuid.UUID
) -> Record | None:
    """Get a member of a workspace."""
    return await conn.fetchrow(_MEMBER_GET, workspace_id, user_id)


async def member_lock(
    conn: Connection, workspace_id: uuid.UUID, user_id: uuid.UUID
) -> Record | None:
    """Get a member of a workspace and lock the membership for the transaction."""
    return await conn.fetchrow(_MEMBER_LOCK, workspace_id, user_id)


_MEMBER_LIST = f"""
{_MEMBER_FROM}
WHERE m.workspace_id = $1
  AND ($2::timestamptz IS NULL OR (m.create_time, m.user_id) > ($2, $3))
ORDER BY m.create_time, m.user_id
LIMIT $4
"""


async def member_list(
    conn: Connection,
    workspace_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Record]:
    """List a workspace's members, oldest first, after a keyset cursor."""
    time, user_id = after or (None, None)
    return await conn.fetch(_MEMBER_LIST, workspace_id, time, user_id, limit)


_MEMBER_FIRST_OWNER = """
SELECT m.workspace_id, m.user_id
FROM memberships m JOIN workspaces w ON w.id = m.workspace_id
WHERE m.role = 'owner'
ORDER BY w.create_time, m.create_time
LIMIT 1
"""


async def member_first_owner(conn: Connection) -> Record | None:
    """Return the first owner (workspace_id, user_id) of the oldest workspace."""
    return await conn.fetchrow(_MEMBER_FIRST_OWNER)


async def member_owner_count(conn: Connection, workspace_id: uuid.UUID) -> int:
    """Count a workspace's owners, locking their rows so a concurrent demotion waits."""
    rows = await conn.fetch(
        "SELECT user_id FROM memberships WHERE workspace_id = $1 AND role = 'owner' FOR UPDATE",
        workspace_id,
    )
    return len(rows)


async def member_update_role(
    conn: Connection, workspace_id: uuid.UUID, user_id: uuid.UUID, role: str
) -> None:
    """Change a member's role."""
    await conn.execute(
        "UPDATE memberships SET role = $3 WHERE workspace_id = $1 AND user_id = $2",
        workspace_id,
        user_id,
        role,
    )


async def member_remove(conn: Connection, workspace_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """Remove a member; their API keys of the workspace go with the membership."""
    await conn.execute(
        "DELETE FROM memberships WHERE workspace_id = $1 AND user_id = $2", workspace_id, user_id
    )


# ── API keys ────────────────────────────────────────────────────────────────────────────────

_API_KEY_CREATE = """
INSERT INTO api_keys (id, workspace_id, user_id, name, prefix, secret_sha256)
VALUES ($1, $2, $3, $4, $5, $6)
"""


async def api_key_create(
    conn: Connection,
    *,
    workspace_id: uuid.UUID,
    user_id: uuid.UUID,
    name: str,
    prefix: str,
    secret_sha256: bytes,
) -> uuid.UUID:
    """Store an API key by its prefix and the hash of its secret part; return its id."""
    key_id = uuid.uuid4()
    await conn.execute(_API_KEY_CREATE, key_id, workspace_id, user_id, name, prefix, secret_sha256)
    return key_id


_API_KEY_PRINCIPAL = """
SELECT k.id, k.secret_sha256, k.workspace_id, k.user_id, k.last_used_time, m.role,
       p.display_name
FROM api_keys k
JOIN memberships m USING (workspace_id, user_id)
JOIN profiles p ON p.user_id = k.user_id
WHERE k.prefix = $1 AND k.revoke_time IS NULL
"""


async def api_key_principal(conn: Connection, prefix: str) -> Record | None:
    """Find a live API key by prefix, with its user's role and display name."""
    return await conn.fetchrow(_API_KEY_PRINCIPAL, prefix)


async def api_key_touch(conn: Connection, key_id: uuid.UUID) -> None:
    """Record that a key was used just now."""
    await conn.execute("UPDATE api_keys SET last_used_time = now() WHERE id = $1", key_id)


_API_KEY_FROM = """
SELECT k.id, k.name, k.prefix, k.user_id, m.role, k.create_time, k.last_used_time
FROM api_keys k JOIN memberships m USING (workspace_id, user_id)
"""
_API_KEY_GET = f"""
{_API_KEY_FROM}
WHERE k.workspace_id = $1 AND k.id = $2 AND k.revoke_time IS NULL
"""


async def api_key_get(
    conn: Connection, workspace_id: uuid.UUID, key_id: uuid.UUID
) -> Record | None:
    """Get a live API key of a workspace, with its user's role there."""
    return await conn.fetchrow(_API_KEY_GET, workspace_id, key_id)


_API_KEY_LIST = f"""
{_API_KEY_FROM}
WHERE k.workspace_id = $1 AND k.revoke_time IS NULL
  AND ($2::timestamptz IS NULL OR (k.create_time, k.id) < ($2, $3))
ORDER BY k.create_time DESC, k.id DESC
LIMIT $4
"""


async def api_key_list(
    conn: Connection,
    workspace_id: uuid.UUID,
    *,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Record]:
    """List a workspace's live API keys, newest first, before a keyset cursor."""
    time, key_id = before or (None, None)
    return await conn.fetch(_API_KEY_LIST, workspace_id, time, key_id, limit)


_API_KEY_REVOKE = """
UPDATE api_keys SET revoke_time = now()
WHERE workspace_id = $1 AND id = $2 AND revoke_time IS NULL
"""


async def api_key_revoke(conn: Connection, workspace_id: uuid.UUID, key_id: uuid.UUID) -> bool:
    """Revoke a live API key of a workspace; say whether there was one."""
    status: str = await conn.execute(_API_KEY_REVOKE, workspace_id, key_id)
    return status != "UPDATE 0"
