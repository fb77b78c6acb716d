"""SQL of sessions and their transcripts (messages)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime

import asyncpg

from services.rpc.db import Connection

Record = asyncpg.Record

_SESSION_COLUMNS = """
  s.id, s.title, s.instructions, s.metadata, s.model, s.run_timeout_seconds,
  s.tool_approval_overrides,
  s.create_time, s.update_time,
  (SELECT r.id FROM runs r WHERE r.session_id = s.id
   AND r.state IN ('queued', 'running', 'requires_action'))
    AS active_run_id"""

_SESSION_CREATE = """
INSERT INTO sessions (id, workspace_id, created_by, title, instructions, metadata, model,
                      request_id, run_timeout_seconds, tool_approval_overrides)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (workspace_id, request_id) DO NOTHING
RETURNING id
"""


async def session_create(
    conn: Connection,
    *,
    workspace_id: uuid.UUID,
    created_by: uuid.UUID,
    title: str,
    instructions: str,
    metadata: dict[str, str],
    model: str,
    request_id: str | None,
    run_timeout_seconds: float | None,
    tool_approval_overrides: dict[str, str] | None = None,
) -> Record:
    """Insert a session, or return the one an earlier call with the same request_id made."""
    session_id = await conn.fetchval(
        _SESSION_CREATE,
        uuid.uuid4(),
        workspace_id,
        created_by,
        title,
        instructions,
        metadata,
        model,
        request_id,
        run_timeout_seconds,
        tool_approval_overrides or {},
    )
    if session_id is None:
        session_id = await conn.fetchval(
            "SELECT id FROM sessions WHERE workspace_id = $1 AND request_id = $2",
            workspace_id,
            request_id,
        )
    got = await session_get(conn, workspace_id, session_id)
    assert got is not None
    return got


_SESSION_GET = f"""
SELECT {_SESSION_COLUMNS} FROM sessions s WHERE s.workspace_id = $1 AND s.id = $2
"""


async def session_get(
    conn: Connection, workspace_id: uuid.UUID, session_id: uuid.UUID
) -> Record | None:
    """Get a session of the workspace."""
    return await conn.fetchrow(_SESSION_GET, workspace_id, session_id)


async def session_exists(conn: Connection, workspace_id: uuid.UUID, session_id: uuid.UUID) -> bool:
    """Tell whether the workspace has the session."""
    found = await conn.fetchval(
        "SELECT 1 FROM sessions WHERE workspace_id = $1 AND id = $2", workspace_id, session_id
    )
    return found is not None


async def session_lock(conn: Connection, workspace_id: uuid.UUID, session_id: uuid.UUID) -> bool:
    """Lock a session row of the workspace for the transaction; False if there is none."""
    found = await conn.fetchval(
        "SELECT 1 FROM sessions WHERE id = $1 AND workspace_id = $2 FOR UPDATE",
        session_id,
        workspace_id,
    )
    return found is not None


_SESSION_CREATOR = "SELECT created_by FROM sessions WHERE workspace_id = $1 AND id = $2"
_SESSION_CREATOR_LOCK = f"{_SESSION_CREATOR} FOR UPDATE"


async def session_creator(
    conn: Connection, workspace_id: uuid.UUID, session_id: uuid.UUID, *, lock: bool = False
) -> uuid.UUID | None:
    """Return the user who created a session of the workspace; None if it has no such session.

    With `lock`, the session row is locked for the transaction.
    """
    creator: uuid.UUID | None = await conn.fetchval(
        _SESSION_CREATOR_LOCK if lock else _SESSION_CREATOR, workspace_id, session_id
    )
    return creator


_SESSION_UPDATE = f"""
UPDATE sessions s SET
  title = CASE WHEN 'title' = ANY($3::text[]) THEN $4::text ELSE s.title END,
  instructions = CASE WHEN 'instructions' = ANY($3::text[]) THEN $5::text ELSE s.instructions END,
  metadata = CASE WHEN 'metadata' = ANY($3::text[]) THEN $6::jsonb ELSE s.metadata END,
  tool_approval_overrides = CASE WHEN 'tool_approval_overrides' = ANY($3::text[])
                                 THEN $7::jsonb ELSE s.tool_approval_overrides END,
  update_time = now()
WHERE s.workspace_id = $1 AND s.id = $2
RETURNING {_SESSION_COLUMNS}
"""


async def session_update(
    conn: Connection,
    workspace_id: uuid.UUID,
    session_id: uuid.UUID,
    *,
    fields: Collection[str],
    title: str = "",
    instructions: str = "",
    metadata: dict[str, str] | None = None,
    tool_approval_overrides: dict[str, str] | None = None,
) -> Record | None:
    """Set the named fields (title, instructions, metadata, overrides) of a session.

    Returns the session as it is now, None if the workspace has no such session.
    """
    return await conn.fetchrow(
        _SESSION_UPDATE,
        workspace_id,
        session_id,
        list(fields),
        title,
        instructions,
        metadata or {},
        tool_approval_overrides or {},
    )


async def session_delete(conn: Connection, session_id: uuid.UUID) -> None:
    """Delete a session with its messages, runs, run events and tool call records.

    The foreign keys cascade. The caller's transaction holds the locks (deletion.py says
    which, and in what order).
    """
    await conn.execute("DELETE FROM sessions WHERE id = $1", session_id)


_SESSION_LIST = f"""
SELECT {_SESSION_COLUMNS} FROM sessions s
WHERE s.workspace_id = $1 AND ($2::timestamptz IS NULL OR (s.create_time, s.id) < ($2, $3))
ORDER BY s.create_time DESC, s.id DESC
LIMIT $4
"""


async def session_list(
    conn: Connection,
    workspace_id: uuid.UUID,
    *,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Record]:
    """List the workspace's sessions, newest first, before a keyset cursor."""
    time, row_id = before or (None, None)
    return await conn.fetch(_SESSION_LIST, workspace_id, time, row_id, limit)


async def session_last_sequences(
    conn: Connection, session_ids: Sequence[uuid.UUID]
) -> list[Record]:
    """Return (id, last_event_sequence) of each of the sessions."""
    return await conn.fetch(
        "SELECT id, last_event_sequence FROM sessions WHERE id = ANY($1::uuid[])", session_ids
    )


_MESSAGE_LIST = """
SELECT m.id, m.position, m.role, m.text, m.run_id, m.create_time,
       coalesce(p.display_name, '') AS author_display_name
FROM messages m LEFT JOIN profiles p ON p.user_id = m.author_user_id
WHERE m.session_id = $1 AND m.position > $2
ORDER BY m.position
LIMIT $3
"""


async def message_list(
    conn: Connection, session_id: uuid.UUID, *, after_position: int, limit: int
) -> list[Record]:
    """List a session's messages in transcript order, with their authors' display names."""
    return await conn.fetch(_MESSAGE_LIST, session_id, after_position, limit)
