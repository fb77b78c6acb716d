"""SQL of the control plane, one function per query, named noun-first (run_claim, run_get…)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.rpc.db import Connection

Record = asyncpg.Record

ACTIVE_STATES = ("queued", "running")


# ── tenancy and keys ────────────────────────────────────────────────────────────────────────


async def workspace_create_with_owner(
    conn: Connection,
    *,
    workspace_display_name: str,
    user_display_name: str,
    key_name: str,
    key_prefix: str,
    key_secret_sha256: bytes,
    role: str = "owner",
) -> tuple[uuid.UUID, uuid.UUID]:
    """Create a workspace, a user with a profile, their membership and an API key."""
    workspace_id, user_id = uuid.uuid4(), uuid.uuid4()
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO workspaces (id, display_name) VALUES ($1, $2)",
            workspace_id,
            workspace_display_name,
        )
        await conn.execute("INSERT INTO users (id) VALUES ($1)", user_id)
        await conn.execute(
            "INSERT INTO profiles (user_id, display_name) VALUES ($1, $2)",
            user_id,
            user_display_name,
        )
        await conn.execute(
            "INSERT INTO memberships (workspace_id, user_id, role) VALUES ($1, $2, $3)",
            workspace_id,
            user_id,
            role,
        )
        await api_key_insert(
            conn,
            workspace_id=workspace_id,
            user_id=user_id,
            name=key_name,
            prefix=key_prefix,
            secret_sha256=key_secret_sha256,
        )
    return workspace_id, user_id


async def workspace_tools_changed(conn: Connection, workspace_id: uuid.UUID) -> None:
    """Record that the workspace's tool registry changed."""
    await conn.execute(
        "UPDATE workspaces SET tools_version = tools_version + 1 WHERE id = $1", workspace_id
    )


async def workspace_count(conn: Connection) -> int:
    """Count the workspaces."""
    count: int = await conn.fetchval("SELECT count(*) FROM workspaces")
    return count


async def api_key_insert(
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
    await conn.execute(
        "INSERT INTO api_keys (id, workspace_id, user_id, name, prefix, secret_sha256)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        key_id,
        workspace_id,
        user_id,
        name,
        prefix,
        secret_sha256,
    )
    return key_id


async def api_key_principal(conn: Connection, prefix: str) -> Record | None:
    """Find a live API key by prefix, with its user's role and display name."""
    return await conn.fetchrow(
        "SELECT k.id, k.secret_sha256, k.workspace_id, k.user_id, k.last_used_time, m.role,"
        " p.display_name"
        " FROM api_keys k"
        " JOIN memberships m USING (workspace_id, user_id)"
        " JOIN profiles p ON p.user_id = k.user_id"
        " WHERE k.prefix = $1 AND k.revoke_time IS NULL",
        prefix,
    )


async def profile_get(conn: Connection, user_id: uuid.UUID) -> Record | None:
    """Get a user's profile."""
    return await conn.fetchrow(
        "SELECT user_id, display_name FROM profiles WHERE user_id = $1", user_id
    )


async def profile_update(conn: Connection, user_id: uuid.UUID, display_name: str) -> Record | None:
    """Change a user's display name."""
    return await conn.fetchrow(
        "UPDATE profiles SET display_name = $2, update_time = now() WHERE user_id = $1"
        " RETURNING user_id, display_name",
        user_id,
        display_name,
    )


# ── sessions and messages ───────────────────────────────────────────────────────────────────

_SESSION_COLUMNS = (
    "s.id, s.title, s.instructions, s.metadata, s.model, s.run_timeout_seconds,"
    " s.create_time, s.update_time,"
    " (SELECT r.id FROM runs r WHERE r.session_id = s.id AND r.state IN ('queued', 'running'))"
    " AS active_run_id"
)


async def session_insert(
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
) -> Record:
    """Insert a session, or return the one an earlier call with the same request_id made."""
    row = await conn.fetchrow(
        "INSERT INTO sessions (id, workspace_id, created_by, title, instructions, metadata,"
        " model, request_id, run_timeout_seconds) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        " ON CONFLICT (workspace_id, request_id) DO NOTHING RETURNING id",
        uuid.uuid4(),
        workspace_id,
        created_by,
        title,
        instructions,
        metadata,
        model,
        request_id,
        run_timeout_seconds,
    )
    if row is None:
        row = await conn.fetchrow(
            "SELECT id FROM sessions WHERE workspace_id = $1 AND request_id = $2",
            workspace_id,
            request_id,
        )
    assert row is not None
    got = await session_get(conn, workspace_id, row["id"])
    assert got is not None
    return got


async def session_get(
    conn: Connection, workspace_id: uuid.UUID, session_id: uuid.UUID
) -> Record | None:
    """Get a session of the workspace."""
    return await conn.fetchrow(
        f"SELECT {_SESSION_COLUMNS} FROM sessions s WHERE s.workspace_id = $1 AND s.id = $2",
        workspace_id,
        session_id,
    )


async def session_exists(conn: Connection, workspace_id: uuid.UUID, session_id: uuid.UUID) -> bool:
    """Tell whether the workspace has the session."""
    found = await conn.fetchval(
        "SELECT 1 FROM sessions WHERE workspace_id = $1 AND id = $2", workspace_id, session_id
    )
    return found is not None


async def session_list(
    conn: Connection,
    workspace_id: uuid.UUID,
    *,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Record]:
    """List the workspace's sessions, newest first, after a keyset cursor."""
    if before is None:
        return await conn.fetch(
            f"SELECT {_SESSION_COLUMNS} FROM sessions s WHERE s.workspace_id = $1"
            " ORDER BY s.create_time DESC, s.id DESC LIMIT $2",
            workspace_id,
            limit,
        )
    return await conn.fetch(
        f"SELECT {_SESSION_COLUMNS} FROM sessions s WHERE s.workspace_id = $1"
        " AND (s.create_time, s.id) < ($2, $3)"
        " ORDER BY s.create_time DESC, s.id DESC LIMIT $4",
        workspace_id,
        before[0],
        before[1],
        limit,
    )


async def message_list(
    conn: Connection, session_id: uuid.UUID, *, after_position: int, limit: int
) -> list[Record]:
    """List a session's messages in transcript order, with their authors' display names."""
    return await conn.fetch(
        "SELECT m.id, m.position, m.role, m.text, m.run_id, m.create_time,"
        " coalesce(p.display_name, '') AS author_display_name"
        " FROM messages m LEFT JOIN profiles p ON p.user_id = m.author_user_id"
        " WHERE m.session_id = $1 AND m.position > $2 ORDER BY m.position LIMIT $3",
        session_id,
        after_position,
        limit,
    )


# ── runs ────────────────────────────────────────────────────────────────────────────────────

_RUN_COLUMNS = (
    "id, session_id, workspace_id, state, attempt, input_message_id, output_message_id,"
    " last_event_sequence, error_reason, error_message, input_tokens, output_tokens,"
    " reasoning_tokens, create_time, start_time, end_time"
)


class RunAlreadyActiveError(Exception):
    """The session already has a queued or running run."""

    def __init__(self, active_run_id: uuid.UUID | None) -> None:
        super().__init__("run already active")
        self.active_run_id = active_run_id


@dataclass(frozen=True)
class NewEvent:
    """An event ready to store: its dotted type and serialized body (positions come later)."""

    type: str
    body: bytes


# ── storing run events ──────────────────────────────────────────────────────────────────────
#
# Every statement that stores events has the same shape: a `run` CTE changes the run row and
# returns it, then _EVENTS_STORED (the one insert of run_events) gives the events the run's
# and the session's next sequences, stamps them with the transaction's time, and returns
# where they landed. The events travel as $1 (types) and $2 (bodies); a statement's own
# parameters start at $3. `run` must return id, session_id, state, attempt (the events'),
# last_event_sequence (after the events), create_time and touches_session (whether the
# session's update_time moves: a message was added or a run ended).

_EVENTS_STORED = """
ses AS (
  UPDATE sessions s
  SET last_event_sequence = s.last_event_sequence + cardinality($1::text[]),
      update_time = CASE WHEN run.touches_session THEN now() ELSE s.update_time END
  FROM run WHERE s.id = run.session_id
  RETURNING s.last_event_sequence),
ins AS (
  INSERT INTO run_events (run_id, session_id, sequence, session_sequence, attempt, type, body,
                          create_time)
  SELECT run.id, run.session_id,
         run.last_event_sequence - cardinality($1::text[]) + e.n,
         ses.last_event_sequence - cardinality($1::text[]) + e.n,
         run.attempt, e.type, e.body, now()
  FROM run, ses, unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS e(type, body, n))
SELECT run.*, ses.last_event_sequence AS session_sequence, now() AS event_time FROM run, ses
"""


def _storing_events(run_cte: str) -> str:
    """Complete a statement whose CTEs end with `run` by storing the events after it."""
    return f"{run_cte},{_EVENTS_STORED}"


def _event_args(events: Sequence[NewEvent]) -> tuple[list[str], list[bytes]]:
    return [e.type for e in events], [e.body for e in events]


_RUN_CREATE = _storing_events(
    f"""
WITH s AS (
  SELECT id FROM sessions WHERE id = $4 AND workspace_id = $3 FOR NO KEY UPDATE),
m AS (
  INSERT INTO messages (id, session_id, role, text, run_id, author_user_id)
  SELECT $7, s.id, 'user', $8, $6, $5 FROM s
  RETURNING id),
run AS (
  INSERT INTO runs (id, session_id, workspace_id, created_by, input_message_id, state,
                    last_event_sequence, request_id)
  SELECT $6, $4, $3, $5, m.id,
         CASE WHEN $10 AND EXISTS (SELECT 1 FROM runs x WHERE x.session_id = $4
                                   AND x.state IN ('waiting', 'queued', 'running'))
              THEN 'waiting' ELSE 'queued' END,
         cardinality($1::text[]), $9
  FROM m
  RETURNING {_RUN_COLUMNS}, true AS touches_session)"""
)

_RUN_END_NOW = _storing_events(
    """
WITH run AS (
  UPDATE runs
  SET state = $4, fencing_token = fencing_token + 1,
      last_event_sequence = last_event_sequence + cardinality($1::text[]),
      error_reason = $5, error_message = $6, end_time = now(),
      lease_owner = NULL, lease_expire_time = NULL
  WHERE id = $3
  RETURNING id, session_id, state, attempt, last_event_sequence, create_time,
            true AS touches_session)"""
)

_RUN_REQUEUE = _storing_events(
    """
WITH run AS (
  UPDATE runs
  SET state = 'queued', fencing_token = fencing_token + 1,
      last_event_sequence = last_event_sequence + cardinality($1::text[]),
      lease_owner = NULL, lease_expire_time = NULL
  WHERE id = $3 AND state = 'running' AND ($4::bigint IS NULL OR fencing_token = $4)
  RETURNING id, session_id, state, attempt + 1 AS attempt, last_event_sequence, create_time,
            false AS touches_session)"""
)

_RUN_EVENT_APPEND = _storing_events(
    """
WITH run AS (
  UPDATE runs SET last_event_sequence = $5
  WHERE id = $3 AND fencing_token = $4 AND state = 'running'
    AND last_event_sequence = $5 - cardinality($1::text[])
  RETURNING id, session_id, state, attempt, last_event_sequence, create_time, cancel_requested,
            false AS touches_session)"""
)

_RUN_FINISH = _storing_events(
    """
WITH run AS (
  UPDATE runs
  SET state = $6, last_event_sequence = last_event_sequence + cardinality($1::text[]),
      output_message_id = $7, error_reason = $8, error_message = $9,
      input_tokens = $10, output_tokens = $11, reasoning_tokens = $12,
      end_time = now(), lease_owner = NULL, lease_expire_time = NULL
  WHERE id = $3 AND fencing_token = $4 AND state = 'running'
    AND ($5::bigint = 0 OR last_event_sequence = $5 - 1)
  RETURNING id, session_id, state, attempt, last_event_sequence, create_time,
            true AS touches_session),
reply AS (
  INSERT INTO messages (id, session_id, role, text, run_id)
  SELECT $7, run.session_id, 'assistant', $13, run.id FROM run WHERE $13::text IS NOT NULL)"""
)


async def run_by_request_id(
    conn: Connection, workspace_id: uuid.UUID, request_id: str
) -> Record | None:
    """Find the run an earlier create with this request_id made."""
    return await conn.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE workspace_id = $1 AND request_id = $2",
        workspace_id,
        request_id,
    )


async def run_create(
    conn: Connection,
    *,
    workspace_id: uuid.UUID,
    session_id: uuid.UUID,
    created_by: uuid.UUID,
    input_text: str,
    request_id: str | None,
    queued_event: NewEvent,
    run_id: uuid.UUID,
    message_id: uuid.UUID,
    wait_behind_active: bool,
) -> Record | None:
    """Store the input message, the run and its first event; None if there is no such session.

    The run is 'queued' (claimable) unless `wait_behind_active` and the session already has
    a run, in which case it is 'waiting' behind it. One statement: one round trip, one
    implicit transaction; the session row lock orders concurrent creates of one session.
    """
    try:
        return await conn.fetchrow(
            _RUN_CREATE,
            *_event_args([queued_event]),
            workspace_id,
            session_id,
            created_by,
            run_id,
            message_id,
            input_text,
            request_id,
            wait_behind_active,
        )
    except asyncpg.UniqueViolationError as err:
        if err.constraint_name == "runs_one_active_per_session":
            active = await conn.fetchval(
                "SELECT id FROM runs WHERE session_id = $1 AND state IN ('queued', 'running')",
                session_id,
            )
            raise RunAlreadyActiveError(active) from None
        raise


async def session_lock(conn: Connection, workspace_id: uuid.UUID, session_id: uuid.UUID) -> bool:
    """Lock a session row of the workspace for the transaction; False if there is none."""
    found = await conn.fetchval(
        "SELECT 1 FROM sessions WHERE id = $1 AND workspace_id = $2 FOR UPDATE",
        session_id,
        workspace_id,
    )
    return found is not None


async def run_pending_in_session(conn: Connection, session_id: uuid.UUID) -> list[Record]:
    """Lock and return the session's waiting, queued and running runs, oldest first."""
    return await conn.fetch(
        f"SELECT {_RUN_COLUMNS}, cancel_requested FROM runs WHERE session_id = $1"
        " AND state IN ('waiting', 'queued', 'running') ORDER BY create_time FOR UPDATE",
        session_id,
    )


async def run_promote_next(conn: Connection, session_id: uuid.UUID) -> uuid.UUID | None:
    """Make the session's oldest waiting run claimable if no run of it is active."""
    try:
        promoted: uuid.UUID | None = await conn.fetchval(
            "UPDATE runs SET state = 'queued' WHERE id = ("
            "  SELECT id FROM runs WHERE session_id = $1 AND state = 'waiting'"
            "  ORDER BY create_time LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " AND NOT EXISTS (SELECT 1 FROM runs WHERE session_id = $1"
            "  AND state IN ('queued', 'running'))"
            " RETURNING id",
            session_id,
        )
    except asyncpg.UniqueViolationError:
        return None  # a concurrent create or promotion already made a run active
    return promoted


async def sessions_with_stalled_waiting(conn: Connection, limit: int) -> list[uuid.UUID]:
    """Find sessions whose waiting runs have no active run ahead of them."""
    rows = await conn.fetch(
        "SELECT DISTINCT w.session_id FROM runs w WHERE w.state = 'waiting'"
        " AND NOT EXISTS (SELECT 1 FROM runs a WHERE a.session_id = w.session_id"
        "  AND a.state IN ('queued', 'running')) LIMIT $1",
        limit,
    )
    return [r["session_id"] for r in rows]


async def run_end_now(
    conn: Connection,
    *,
    run_id: uuid.UUID,
    state: str,
    event: NewEvent,
    error_reason: str | None,
    error_message: str | None,
) -> Record | None:
    """End a run no worker holds (waiting, queued, or rescued) with its terminal event.

    The fence moves on, so a worker still holding the old token is refused from now on.
    """
    return await conn.fetchrow(
        _RUN_END_NOW, *_event_args([event]), run_id, state, error_reason, error_message
    )


async def run_requeue(
    conn: Connection,
    *,
    run_id: uuid.UUID,
    event: NewEvent,
    fencing_token: int | None = None,
) -> Record | None:
    """Put a running run back in the queue as a new attempt, starting with the given event.

    Returns the new attempt's number (the next claim takes it) with the event's positions.

    With `fencing_token`, only if the caller still holds the lease (a draining worker);
    without, unconditionally (its lease expired and the run is being rescued).
    """
    return await conn.fetchrow(_RUN_REQUEUE, *_event_args([event]), run_id, fencing_token)


async def run_attempt(conn: Connection, run_id: uuid.UUID) -> int | None:
    """Return a run's current attempt number."""
    attempt: int | None = await conn.fetchval("SELECT attempt FROM runs WHERE id = $1", run_id)
    return attempt


async def run_count_queued(conn: Connection) -> int:
    """Count the runs waiting for a worker to claim them."""
    count: int = await conn.fetchval("SELECT count(*) FROM runs WHERE state = 'queued'")
    return count


async def run_expired_leases(conn: Connection, limit: int) -> list[Record]:
    """Lock running runs whose lease expired and that no other replica is rescuing."""
    return await conn.fetch(
        "SELECT id, session_id, attempt, cancel_requested FROM runs"
        " WHERE state = 'running' AND lease_expire_time < now()"
        " ORDER BY lease_expire_time LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )


async def run_for_cancel(
    conn: Connection, workspace_id: uuid.UUID, session_id: uuid.UUID, run_id: uuid.UUID
) -> Record | None:
    """Lock a run of the workspace for cancelling."""
    return await conn.fetchrow(
        f"SELECT {_RUN_COLUMNS}, cancel_requested FROM runs"
        " WHERE workspace_id = $1 AND session_id = $2 AND id = $3 FOR UPDATE",
        workspace_id,
        session_id,
        run_id,
    )


async def run_request_cancel(conn: Connection, run_id: uuid.UUID) -> None:
    """Ask the worker holding a run to stop it."""
    await conn.execute("UPDATE runs SET cancel_requested = true WHERE id = $1", run_id)


async def run_get(
    conn: Connection, workspace_id: uuid.UUID, session_id: uuid.UUID, run_id: uuid.UUID
) -> Record | None:
    """Get a run of the workspace's session."""
    return await conn.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE workspace_id = $1 AND session_id = $2 AND id = $3",
        workspace_id,
        session_id,
        run_id,
    )


async def run_list(
    conn: Connection,
    session_id: uuid.UUID,
    *,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Record]:
    """List a session's runs, newest first, after a keyset cursor."""
    if before is None:
        return await conn.fetch(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE session_id = $1"
            " ORDER BY create_time DESC, id DESC LIMIT $2",
            session_id,
            limit,
        )
    return await conn.fetch(
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE session_id = $1"
        " AND (create_time, id) < ($2, $3) ORDER BY create_time DESC, id DESC LIMIT $4",
        session_id,
        before[0],
        before[1],
        limit,
    )


async def run_event_list(
    conn: Connection, run_id: uuid.UUID, *, after_sequence: int, limit: int
) -> list[Record]:
    """List a run's events after a sequence, in order."""
    return await conn.fetch(
        "SELECT run_id, session_id, sequence, session_sequence, attempt, body, create_time"
        " FROM run_events"
        " WHERE run_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
        run_id,
        after_sequence,
        limit,
    )


# ── dispatch ────────────────────────────────────────────────────────────────────────────────


async def run_claim(
    conn: Connection, *, worker_id: str, lease_seconds: float, default_timeout_seconds: float
) -> Record | None:
    """Claim the oldest queued run and lease it to the caller, with a new attempt and fence.

    The same statement loads what the worker needs: workspace, caller, session instructions,
    the input text and the transcript before it.
    """
    return await conn.fetchrow(
        "WITH next AS ("
        "  SELECT id FROM runs WHERE state = 'queued' ORDER BY create_time"
        "  LIMIT 1 FOR UPDATE SKIP LOCKED),"
        " c AS ("
        "  UPDATE runs r SET state = 'running', attempt = r.attempt + 1,"
        "   fencing_token = r.fencing_token + 1, lease_owner = $1,"
        "   lease_expire_time = now() + make_interval(secs => $2),"
        "   start_time = coalesce(r.start_time, now())"
        "  FROM next WHERE r.id = next.id"
        "  RETURNING r.id, r.session_id, r.workspace_id, r.created_by, r.input_message_id,"
        "   r.attempt, r.fencing_token, r.lease_expire_time, r.last_event_sequence,"
        "   r.start_time, r.create_time)"
        " SELECT c.*, w.display_name AS workspace_display_name, w.tools_version,"
        "  c.start_time + make_interval(secs => coalesce(s.run_timeout_seconds, $3))"
        "   AS deadline,"
        "  coalesce(p.display_name, '') AS caller_display_name,"
        "  coalesce(m.role, '') AS caller_role, s.instructions, i.text AS input_text,"
        "  (SELECT coalesce(jsonb_agg(jsonb_build_array(t.role, t.text) ORDER BY t.position),"
        "    '[]'::jsonb) FROM messages t"
        "   WHERE t.session_id = c.session_id AND t.position < i.position) AS transcript"
        " FROM c JOIN sessions s ON s.id = c.session_id"
        " JOIN workspaces w ON w.id = c.workspace_id"
        " JOIN messages i ON i.id = c.input_message_id"
        " LEFT JOIN profiles p ON p.user_id = c.created_by"
        " LEFT JOIN memberships m ON m.workspace_id = c.workspace_id AND m.user_id = c.created_by",
        worker_id,
        lease_seconds,
        default_timeout_seconds,
    )


async def session_event_list(
    conn: Connection, session_id: uuid.UUID, *, after_session_sequence: int, limit: int
) -> list[Record]:
    """List a session's events of all its runs after a session-level sequence, in order."""
    return await conn.fetch(
        "SELECT run_id, session_id, sequence, session_sequence, attempt, body, create_time"
        " FROM run_events WHERE session_id = $1 AND session_sequence > $2"
        " ORDER BY session_sequence LIMIT $3",
        session_id,
        after_session_sequence,
        limit,
    )


@dataclass(frozen=True)
class FenceCheck:
    """Why a fenced update matched no row."""

    fence_matches: bool
    running: bool
    last_event_sequence: int


async def run_fence_check(
    conn: Connection, run_id: uuid.UUID, fencing_token: int
) -> FenceCheck | None:
    """Explain a refused fenced update: lost lease, or a sequence that does not follow."""
    row = await conn.fetchrow(
        "SELECT state, fencing_token, last_event_sequence FROM runs WHERE id = $1", run_id
    )
    if row is None:
        return None
    return FenceCheck(
        fence_matches=row["fencing_token"] == fencing_token,
        running=row["state"] == "running",
        last_event_sequence=row["last_event_sequence"],
    )


async def run_events_append(
    conn: Connection,
    *,
    run_id: uuid.UUID,
    fencing_token: int,
    last_sequence: int,
    events: Sequence[NewEvent],
) -> Record | None:
    """Append events ending at `last_sequence` if the fence holds and they continue the log.

    None when refused. The fence check and the sequence check are in the statement that
    locks the run, so a worker whose lease was taken over cannot slip an event in.
    """
    return await conn.fetchrow(
        _RUN_EVENT_APPEND, *_event_args(events), run_id, fencing_token, last_sequence
    )


async def run_heartbeat(
    conn: Connection, *, run_id: uuid.UUID, fencing_token: int, lease_seconds: float
) -> Record | None:
    """Extend a lease the caller still holds; None when it was lost."""
    return await conn.fetchrow(
        "UPDATE runs SET lease_expire_time = now() + make_interval(secs => $3)"
        " WHERE id = $1 AND fencing_token = $2 AND state = 'running'"
        " RETURNING lease_expire_time, cancel_requested",
        run_id,
        fencing_token,
        lease_seconds,
    )


async def run_finish(
    conn: Connection,
    *,
    run_id: uuid.UUID,
    fencing_token: int,
    first_sequence: int,
    events: Sequence[NewEvent],
    state: str,
    reply_text: str | None,
    error_reason: str | None,
    error_message: str | None,
    usage: tuple[int, int, int],
    output_message_id: uuid.UUID | None,
) -> Record | None:
    """Store the last events (the terminal one last), the reply and the run's end at once.

    `first_sequence` is the worker's first event's, or 0 when only the terminal event is
    stored; None when the fence or the sequence does not hold.
    """
    return await conn.fetchrow(
        _RUN_FINISH,
        *_event_args(events),
        run_id,
        fencing_token,
        first_sequence,
        state,
        output_message_id,
        error_reason,
        error_message,
        *usage,
        reply_text,
    )


# ── workspaces, members and API keys (administration) ───────────────────────────────────────

_API_KEY_FROM = (
    "SELECT k.id, k.name, k.prefix, k.user_id, m.role, k.create_time, k.last_used_time"
    " FROM api_keys k JOIN memberships m USING (workspace_id, user_id)"
)
_MEMBER_COLUMNS = "m.user_id, m.role, m.create_time, p.display_name"


async def api_key_touch(conn: Connection, key_id: uuid.UUID) -> None:
    """Record that a key was used just now."""
    await conn.execute("UPDATE api_keys SET last_used_time = now() WHERE id = $1", key_id)


async def api_key_get(
    conn: Connection, workspace_id: uuid.UUID, key_id: uuid.UUID
) -> Record | None:
    """Get a live API key of a workspace, with its user's role there."""
    return await conn.fetchrow(
        f"{_API_KEY_FROM} WHERE k.workspace_id = $1 AND k.id = $2 AND k.revoke_time IS NULL",
        workspace_id,
        key_id,
    )


async def api_key_list(
    conn: Connection,
    workspace_id: uuid.UUID,
    *,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Record]:
    """List a workspace's live API keys, newest first, before a keyset cursor."""
    return await conn.fetch(
        f"{_API_KEY_FROM}"
        " WHERE k.workspace_id = $1 AND k.revoke_time IS NULL"
        " AND ($2::timestamptz IS NULL OR (k.create_time, k.id) < ($2, $3))"
        " ORDER BY k.create_time DESC, k.id DESC LIMIT $4",
        workspace_id,
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )


async def api_key_revoke(conn: Connection, workspace_id: uuid.UUID, key_id: uuid.UUID) -> bool:
    """Revoke a live API key of a workspace; say whether there was one."""
    status: str = await conn.execute(
        "UPDATE api_keys SET revoke_time = now()"
        " WHERE workspace_id = $1 AND id = $2 AND revoke_time IS NULL",
        workspace_id,
        key_id,
    )
    return status != "UPDATE 0"


async def workspace_get(
    conn: Connection, workspace_id: uuid.UUID, user_id: uuid.UUID
) -> Record | None:
    """Get a workspace with the user's role in it; None unless the user is a member."""
    return await conn.fetchrow(
        "SELECT w.id, w.display_name, w.create_time, m.role FROM workspaces w"
        " JOIN memberships m ON m.workspace_id = w.id WHERE w.id = $1 AND m.user_id = $2",
        workspace_id,
        user_id,
    )


async def workspace_list_for_user(
    conn: Connection,
    user_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Record]:
    """List the workspaces a user belongs to, oldest first, after a keyset cursor."""
    return await conn.fetch(
        "SELECT w.id, w.display_name, w.create_time, m.role FROM memberships m"
        " JOIN workspaces w ON w.id = m.workspace_id WHERE m.user_id = $1"
        " AND ($2::timestamptz IS NULL OR (w.create_time, w.id) > ($2, $3))"
        " ORDER BY w.create_time, w.id LIMIT $4",
        user_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )


async def workspace_rename(conn: Connection, workspace_id: uuid.UUID, display_name: str) -> None:
    """Change a workspace's display name."""
    await conn.execute(
        "UPDATE workspaces SET display_name = $2 WHERE id = $1", workspace_id, display_name
    )


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
    conn: Connection, workspace_id: uuid.UUID, user_id: uuid.UUID, *, lock: bool = False
) -> Record | None:
    """Get a member of a workspace (locked FOR UPDATE when asked)."""
    return await conn.fetchrow(
        f"SELECT {_MEMBER_COLUMNS} FROM memberships m JOIN profiles p USING (user_id)"
        " WHERE m.workspace_id = $1 AND m.user_id = $2" + (" FOR UPDATE OF m" if lock else ""),
        workspace_id,
        user_id,
    )


async def member_list(
    conn: Connection,
    workspace_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Record]:
    """List a workspace's members, oldest first, after a keyset cursor."""
    return await conn.fetch(
        f"SELECT {_MEMBER_COLUMNS} FROM memberships m JOIN profiles p USING (user_id)"
        " WHERE m.workspace_id = $1"
        " AND ($2::timestamptz IS NULL OR (m.create_time, m.user_id) > ($2, $3))"
        " ORDER BY m.create_time, m.user_id LIMIT $4",
        workspace_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )


async def member_owner_count(conn: Connection, workspace_id: uuid.UUID) -> int:
    """Count a workspace's owners, locking their rows so a concurrent demotion waits."""
    rows = await conn.fetch(
        "SELECT user_id FROM memberships WHERE workspace_id = $1 AND role = 'owner' FOR UPDATE",
        workspace_id,
    )
    return len(rows)


async def member_set_role(
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


@dataclass(frozen=True)
class ToolCallStart:
    """A tool call a tool_call.started event reports."""

    call_id: str
    tool: str
    arguments_json: str
    sequence: int


@dataclass(frozen=True)
class ToolCallEnd:
    """A tool call's end, as its tool_call.completed event reports it."""

    call_id: str
    result: str
    is_error: bool
    error_code: str
    truncated: bool
    duration_ms: int


async def tool_calls_record(
    conn: Connection,
    *,
    run_id: uuid.UUID,
    session_id: uuid.UUID,
    attempt: int,
    started: Sequence[ToolCallStart],
    ended: Sequence[ToolCallEnd],
) -> None:
    """Insert started calls and complete ended ones; a repeated report changes nothing.

    Times are the transaction's, as the events that report the calls have them.
    """
    if started:
        await conn.executemany(
            "INSERT INTO tool_calls (run_id, attempt, call_id, session_id, tool, arguments_json,"
            " start_sequence, start_time) VALUES ($1, $2, $3, $4, $5, $6, $7, now())"
            " ON CONFLICT DO NOTHING",
            [
                (run_id, attempt, s.call_id, session_id, s.tool, s.arguments_json, s.sequence)
                for s in started
            ],
        )
    if ended:
        await conn.executemany(
            "UPDATE tool_calls SET state = $4, result = $5, error_code = $6, truncated = $7,"
            " duration_ms = $8, end_time = now()"
            " WHERE run_id = $1 AND attempt = $2 AND call_id = $3 AND state = 'running'",
            [
                (
                    run_id,
                    attempt,
                    e.call_id,
                    "failed" if e.is_error else "succeeded",
                    e.result,
                    e.error_code,
                    e.truncated,
                    e.duration_ms,
                )
                for e in ended
            ],
        )


async def tool_call_list(
    conn: Connection, run_id: uuid.UUID, *, after_sequence: int, limit: int
) -> list[Record]:
    """List a run's tool calls in the order they started, after a start sequence."""
    return await conn.fetch(
        "SELECT * FROM tool_calls WHERE run_id = $1 AND start_sequence > $2"
        " ORDER BY start_sequence, call_id LIMIT $3",
        run_id,
        after_sequence,
        limit,
    )
