"""SQL of tenancy: workspaces, users and their profiles, memberships, API keys, invitations.

Changes to who a principal is (a key revoked, a membership removed or its role changed)
NOTIFY `PRINCIPALS_CHANNEL` in the statement that makes them, so the notification is sent at
commit and never for a change that rolled back; every replica ends the affected streams.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from services.control_plane.store.usage import THIS_MONTH
from services.rpc.db import Connection

Record = asyncpg.Record

PRINCIPALS_CHANNEL = "ap_principals"
# Each replica that applied a principal change says so here (revocation.Revocations).
PRINCIPALS_HEARD_CHANNEL = "ap_principals_heard"
# The application_name of a control plane's one LISTEN connection (events.Listener).
LISTENER_APPLICATION = "ap-listener"


async def listening_replicas(conn: Connection) -> int:
    """Count the control-plane replicas listening on this database now."""
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = $1 AND datname = current_database()",
        LISTENER_APPLICATION,
    )
    return int(count)


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
    """Create a workspace with its first user, their profile, membership and personal API key."""
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
            personal=True,
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


# A membership change's notification: "member:{workspace}:{user}:{role}", role empty on removal.
_MEMBER_UPDATE_ROLE = f"""
WITH changed AS (
    UPDATE memberships SET role = $3 WHERE workspace_id = $1 AND user_id = $2
    RETURNING workspace_id, user_id, role
)
SELECT pg_notify('{PRINCIPALS_CHANNEL}', format('member:%s:%s:%s', workspace_id, user_id, role))
FROM changed
"""


async def member_update_role(
    conn: Connection, workspace_id: uuid.UUID, user_id: uuid.UUID, role: str
) -> None:
    """Change a member's role and tell every replica (their streams may need more)."""
    await conn.execute(_MEMBER_UPDATE_ROLE, workspace_id, user_id, role)


_MEMBER_REMOVE = f"""
WITH removed AS (
    DELETE FROM memberships WHERE workspace_id = $1 AND user_id = $2
    RETURNING workspace_id, user_id
)
SELECT pg_notify('{PRINCIPALS_CHANNEL}', format('member:%s:%s:', workspace_id, user_id))
FROM removed
"""


async def member_remove(conn: Connection, workspace_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """Remove a member and tell every replica; their API keys of the workspace go with it."""
    await conn.execute(_MEMBER_REMOVE, workspace_id, user_id)


# ── API keys ────────────────────────────────────────────────────────────────────────────────

_API_KEY_CREATE = """
INSERT INTO api_keys (id, workspace_id, user_id, name, prefix, secret_sha256, personal)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


async def api_key_create(
    conn: Connection,
    *,
    workspace_id: uuid.UUID,
    user_id: uuid.UUID,
    name: str,
    prefix: str,
    secret_sha256: bytes,
    personal: bool = False,
) -> uuid.UUID:
    """Store an API key by its prefix and the hash of its secret part; return its id.

    `personal`: the key's user holds it alone (see the migration 0006); otherwise it is
    delegated and acts in its workspace only.
    """
    key_id = uuid.uuid4()
    await conn.execute(
        _API_KEY_CREATE, key_id, workspace_id, user_id, name, prefix, secret_sha256, personal
    )
    return key_id


_API_KEY_PRINCIPAL = """
SELECT k.id, k.secret_sha256, k.workspace_id, k.user_id, k.last_used_time, k.personal, m.role,
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


# With the key's monthly budget and this month's totals of the runs it created.
_API_KEY_FROM = f"""
SELECT k.id, k.name, k.prefix, k.user_id, m.role, k.personal, k.create_time, k.last_used_time,
       k.budget_monthly_tokens, k.budget_monthly_cost_micros, u.tokens_used, u.cost_used,
       {THIS_MONTH}::timestamp AT TIME ZONE 'UTC' AS period_start
FROM api_keys k JOIN memberships m USING (workspace_id, user_id)
CROSS JOIN LATERAL (
  SELECT coalesce(sum(tokens), 0)::bigint AS tokens_used,
         coalesce(sum(cost_micros), 0)::bigint AS cost_used
  FROM usage_monthly
  WHERE workspace_id = k.workspace_id AND month = {THIS_MONTH} AND api_key_id = k.id) u
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


_API_KEY_REVOKE = f"""
WITH revoked AS (
    UPDATE api_keys SET revoke_time = now()
    WHERE workspace_id = $1 AND id = $2 AND revoke_time IS NULL
    RETURNING id
)
SELECT pg_notify('{PRINCIPALS_CHANNEL}', format('key:%s', id)) FROM revoked
"""


async def api_key_revoke(conn: Connection, workspace_id: uuid.UUID, key_id: uuid.UUID) -> bool:
    """Revoke a live API key of a workspace and tell every replica; say whether there was one."""
    status: str = await conn.execute(_API_KEY_REVOKE, workspace_id, key_id)
    return status != "SELECT 0"


_API_KEY_STANDING = """
SELECT k.id, k.revoke_time IS NOT NULL AS revoked, m.role
FROM api_keys k LEFT JOIN memberships m USING (workspace_id, user_id)
WHERE k.id = ANY($1::uuid[])
"""


async def api_key_standing(conn: Connection, key_ids: list[uuid.UUID]) -> list[Record]:
    """Return, per key that still exists, whether it is revoked and its member's role now.

    A key missing from the answer went with its membership (the member was removed).
    """
    return await conn.fetch(_API_KEY_STANDING, key_ids)


# ── invitations ─────────────────────────────────────────────────────────────────────────────

_INVITATION_COLUMNS = "id, role, display_name, created_by, create_time, expire_time"
_INVITATION_CREATE = f"""
WITH swept AS (
    -- Expired invitations can never be accepted: each new one clears its workspace's.
    DELETE FROM invitations WHERE workspace_id = $2 AND expire_time <= now()
)
INSERT INTO invitations (id, workspace_id, role, display_name, token_sha256, created_by,
                         expire_time)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING {_INVITATION_COLUMNS}
"""


async def invitation_create(
    conn: Connection,
    *,
    workspace_id: uuid.UUID,
    role: str,
    display_name: str,
    token_sha256: bytes,
    created_by: uuid.UUID,
    expire_time: datetime,
) -> Record:
    """Store an invitation by the hash of its token; return it."""
    row = await conn.fetchrow(
        _INVITATION_CREATE,
        uuid.uuid4(),
        workspace_id,
        role,
        display_name,
        token_sha256,
        created_by,
        expire_time,
    )
    assert row is not None
    return row


_INVITATION_GET = f"""
SELECT {_INVITATION_COLUMNS} FROM invitations
WHERE workspace_id = $1 AND id = $2 AND expire_time > now()
"""


async def invitation_get(
    conn: Connection, workspace_id: uuid.UUID, invitation_id: uuid.UUID
) -> Record | None:
    """Get an invitation of a workspace that can still be accepted."""
    return await conn.fetchrow(_INVITATION_GET, workspace_id, invitation_id)


_INVITATION_LIST = f"""
SELECT {_INVITATION_COLUMNS} FROM invitations
WHERE workspace_id = $1 AND expire_time > now()
  AND ($2::timestamptz IS NULL OR (create_time, id) < ($2, $3))
ORDER BY create_time DESC, id DESC
LIMIT $4
"""


async def invitation_list(
    conn: Connection,
    workspace_id: uuid.UUID,
    *,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Record]:
    """List a workspace's invitations that can still be accepted, newest first."""
    time, invitation_id = before or (None, None)
    return await conn.fetch(_INVITATION_LIST, workspace_id, time, invitation_id, limit)


_INVITATION_DELETE = f"""
DELETE FROM invitations WHERE workspace_id = $1 AND id = $2 AND expire_time > now()
RETURNING {_INVITATION_COLUMNS}
"""


async def invitation_delete(
    conn: Connection, workspace_id: uuid.UUID, invitation_id: uuid.UUID
) -> Record | None:
    """Revoke (delete) an invitation that could still be accepted; return what it was."""
    return await conn.fetchrow(_INVITATION_DELETE, workspace_id, invitation_id)


_INVITATION_TAKE = f"""
DELETE FROM invitations WHERE token_sha256 = $1 AND expire_time > now()
RETURNING workspace_id, {_INVITATION_COLUMNS}
"""


async def invitation_take(conn: Connection, token_sha256: bytes) -> Record | None:
    """Consume the live invitation with this token: delete it and return it, or None.

    The delete locks the row, so of two concurrent accepts of one token only one gets it.
    """
    return await conn.fetchrow(_INVITATION_TAKE, token_sha256)
