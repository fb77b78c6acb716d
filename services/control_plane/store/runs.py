"""SQL of runs and their events: create, claim, lease, append, finish, requeue, end, read.

Every statement that stores events has one shape: a `run` CTE changes the run row and
returns it, then `_EVENTS_STORED`, the one insert into run_events, gives the events the run's
and the session's next sequences, stamps them with the transaction's time, and returns where
they landed (`event_time`, `session_sequence`). The events travel as $1 (types) and $2
(bodies); each statement's own parameters start at $3. Its `run` CTE returns id, session_id,
state, attempt (the events'), last_event_sequence (after the events), create_time and
touches_session (whether the session's update_time moves: a message came or a run ended).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.control_plane.store.usage import KEY_MONTH_USED, MONTH_USED, over_budget
from services.rpc.db import Connection

Record = asyncpg.Record

_RUN_COLUMNS = """
  id, session_id, workspace_id, state, attempt, input_message_id, output_message_id,
  last_event_sequence, error_reason, error_message, input_tokens, output_tokens,
  reasoning_tokens, cached_input_tokens, cost_micros, first_output_time, model_latency_ms,
  create_time, start_time, end_time"""

# What the statements that end a run return for `_USAGE_RECORDED`, beyond the usual columns.
_ENDED_RUN_COLUMNS = """
  workspace_id, api_key_id, model, input_tokens, output_tokens, reasoning_tokens,
  cached_input_tokens, cost_micros, first_output_time, model_latency_ms, end_time"""


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


@dataclass(frozen=True)
class RunUsage:
    """Token counts and cost: the sum of a batch's `usage` events (one per model call)."""

    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cached_input_tokens: int
    cost_micros: int


@dataclass(frozen=True)
class EventFacts:
    """What a batch of a worker's events says about the run, for its row.

    `usage`: what the batch's usage events add to the run's (None: nothing); `model`: from
    run.started (None: not in the batch); `output`: the batch holds text or reasoning.
    """

    usage: RunUsage | None = None
    model: str | None = None
    output: bool = False

    def args(
        self,
    ) -> tuple[int | None, int | None, int | None, int | None, int | None, str | None, bool]:
        """Return the facts as the statements' parameters, in their order."""
        u = self.usage
        tokens = (
            (
                u.input_tokens,
                u.output_tokens,
                u.reasoning_tokens,
                u.cached_input_tokens,
                u.cost_micros,
            )
            if u is not None
            else (None, None, None, None, None)
        )
        return (*tokens, self.model, self.output)


# Sets a run's usage columns from `EventFacts.args()` at $N…$N+6 (see `_facts_set`).
def _facts_set(n: int) -> str:
    """Return the SET items that store a batch's `EventFacts`, from parameter $n on."""
    return f"""
      input_tokens = input_tokens + coalesce(${n}::bigint, 0),
      output_tokens = output_tokens + coalesce(${n + 1}::bigint, 0),
      reasoning_tokens = reasoning_tokens + coalesce(${n + 2}::bigint, 0),
      cached_input_tokens = cached_input_tokens + coalesce(${n + 3}::bigint, 0),
      cost_micros = cost_micros + coalesce(${n + 4}::bigint, 0),
      model = coalesce(${n + 5}::text, model),
      first_output_time = CASE WHEN ${n + 6}::boolean THEN coalesce(first_output_time, now())
                               ELSE first_output_time END"""


@dataclass(frozen=True)
class FenceCheck:
    """Why a fenced update matched no row."""

    fence_matches: bool
    running: bool
    last_event_sequence: int


# ── storing events ──────────────────────────────────────────────────────────────────────────

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
  FROM run, ses, unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS e(type, body, n))"""

_EVENTS_STORED_RESULT = """
SELECT run.*, ses.last_event_sequence AS session_sequence, now() AS event_time FROM run, ses
"""

# The statements that end a run record its usage: the run_usage row every rollup reads, and
# the month's total the budget checks read. They read `ses`, so the session row is locked
# before the month's row, after the run's: the order every event write takes.
_USAGE_RECORDED = """,
used AS (
  INSERT INTO run_usage (run_id, workspace_id, session_id, api_key_id, model, state,
                         input_tokens, output_tokens, reasoning_tokens, cached_input_tokens,
                         cost_micros, time_to_first_token_ms, model_latency_ms, duration_ms,
                         create_time, end_time)
  SELECT run.id, run.workspace_id, run.session_id, run.api_key_id, run.model, run.state,
         run.input_tokens, run.output_tokens, run.reasoning_tokens, run.cached_input_tokens,
         run.cost_micros,
         round(extract(epoch FROM run.first_output_time - run.create_time) * 1000)::bigint,
         run.model_latency_ms,
         round(extract(epoch FROM run.end_time - run.create_time) * 1000)::bigint,
         run.create_time, run.end_time
  FROM run, ses
  ON CONFLICT (run_id) DO NOTHING),
monthly AS (
  INSERT INTO usage_monthly AS u (workspace_id, month, api_key_id, shard, tokens, cost_micros)
  SELECT run.workspace_id, date_trunc('month', run.end_time AT TIME ZONE 'UTC')::date,
         coalesce(run.api_key_id, '00000000-0000-0000-0000-000000000000'),
         get_byte(uuid_send(run.id), 15) % 8,
         run.input_tokens + run.output_tokens, run.cost_micros
  FROM run, ses
  WHERE run.input_tokens + run.output_tokens > 0 OR run.cost_micros > 0
  ON CONFLICT (workspace_id, month, api_key_id, shard)
  DO UPDATE SET tokens = u.tokens + excluded.tokens,
                cost_micros = u.cost_micros + excluded.cost_micros)"""


def _storing_events(run_ctes: str, *, ends_run: bool = False) -> str:
    """Complete a statement whose CTEs define `run` by storing the events after it.

    `ends_run`: the run CTE ends the run and returns `_ENDED_RUN_COLUMNS`; its usage is
    recorded in the same statement.
    """
    usage = _USAGE_RECORDED if ends_run else ""
    return f"{run_ctes},{_EVENTS_STORED}{usage}{_EVENTS_STORED_RESULT}"


def _event_args(events: Sequence[NewEvent]) -> tuple[list[str], list[bytes]]:
    return [e.type for e in events], [e.body for e in events]


_RUN_CREATE = _storing_events(
    f"""
WITH pending AS (
  SELECT id FROM runs WHERE session_id = $4
    AND state IN ('waiting', 'queued', 'running', 'requires_action')
  FOR UPDATE),
over AS (
  SELECT {over_budget("w", "u")} AS over
  FROM workspaces w CROSS JOIN LATERAL ({MONTH_USED}) u WHERE w.id = $3
  UNION ALL
  SELECT {over_budget("k", "u")}
  FROM api_keys k CROSS JOIN LATERAL ({KEY_MONTH_USED}) u WHERE k.id = $11),
s AS (
  SELECT id FROM sessions
  WHERE id = $4 AND workspace_id = $3 AND (SELECT count(*) FROM pending) >= 0
    AND NOT coalesce((SELECT bool_or(over) FROM over), false)
  FOR NO KEY UPDATE),
m AS (
  INSERT INTO messages (id, session_id, role, text, run_id, author_user_id)
  SELECT $7, s.id, 'user', $8, $6, $5 FROM s
  RETURNING id),
run AS (
  INSERT INTO runs (id, session_id, workspace_id, created_by, input_message_id, state,
                    last_event_sequence, request_id, api_key_id)
  SELECT $6, $4, $3, $5, m.id,
         CASE WHEN $10 AND EXISTS (SELECT 1 FROM runs x WHERE x.session_id = $4
                                   AND x.state IN ('waiting', 'queued', 'running',
                                                   'requires_action'))
              THEN 'waiting' ELSE 'queued' END,
         cardinality($1::text[]), $9, $11
  FROM m
  RETURNING {_RUN_COLUMNS}, true AS touches_session)"""
)


async def run_create(
    conn: Connection,
    *,
    workspace_id: uuid.UUID,
    session_id: uuid.UUID,
    created_by: uuid.UUID,
    api_key_id: uuid.UUID | None,
    input_text: str,
    request_id: str | None,
    queued_event: NewEvent,
    run_id: uuid.UUID,
    message_id: uuid.UUID,
    wait_behind_active: bool,
) -> Record | None:
    """Store the input message, the run and its first event; None if there is no such session
    or the workspace or the creating key is over its monthly budget (budgets.py says which).

    The run is 'queued' (claimable) unless `wait_behind_active` and the session already has
    a run, in which case it is 'waiting' behind it. One statement: one round trip, one
    implicit transaction; the session row lock orders concurrent creates of one session.

    Locks are taken in the order every event write takes them, runs before their session:
    the session's unfinished runs first (`pending`, which `s` waits for), then the session.
    Locking the session first deadlocked with a worker's append to the active run: the
    append held the run and waited for the session, while the create held the session and
    its unique-index check waited for the append's transaction.
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
            api_key_id,
        )
    except asyncpg.UniqueViolationError as err:
        if err.constraint_name == "runs_one_active_per_session":
            raise RunAlreadyActiveError(await run_active_id(conn, session_id)) from None
        raise


_RUN_EVENT_APPEND = _storing_events(
    f"""
WITH run AS (
  UPDATE runs SET last_event_sequence = $5,{_facts_set(6)}
  WHERE id = $3 AND fencing_token = $4 AND state = 'running'
    AND last_event_sequence = $5 - cardinality($1::text[])
  RETURNING id, session_id, state, attempt, last_event_sequence, create_time, cancel_requested,
            cancel_requested_by, false AS touches_session)"""
)


async def run_event_append(
    conn: Connection,
    *,
    run_id: uuid.UUID,
    fencing_token: int,
    last_sequence: int,
    events: Sequence[NewEvent],
    facts: EventFacts,
) -> Record | None:
    """Append events ending at `last_sequence` if the fence holds and they continue the log.

    None when refused. The fence check and the sequence check are in the statement that
    locks the run, so a worker whose lease was taken over cannot slip an event in. The same
    update keeps the run's usage, model and first output time as the events report them.
    """
    return await conn.fetchrow(
        _RUN_EVENT_APPEND,
        *_event_args(events),
        run_id,
        fencing_token,
        last_sequence,
        *facts.args(),
    )


_RUN_FINISH = _storing_events(
    f"""
WITH run AS (
  UPDATE runs
  SET state = $6, last_event_sequence = last_event_sequence + cardinality($1::text[]),
      output_message_id = $7, error_reason = $8, error_message = $9,
      model_latency_ms = model_latency_ms + $11,{_facts_set(12)},
      end_time = now(), lease_owner = NULL, lease_expire_time = NULL
  WHERE id = $3 AND fencing_token = $4 AND state = 'running'
    AND ($5::bigint = 0 OR last_event_sequence = $5 - 1)
  RETURNING id, session_id, state, attempt, last_event_sequence, create_time,
            true AS touches_session, {_ENDED_RUN_COLUMNS},
            -- Whether a run waits behind this one: only then is a promotion worth a statement.
            EXISTS (SELECT 1 FROM runs w WHERE w.session_id = runs.session_id
                    AND w.state = 'waiting') AS session_has_waiting),
reply AS (
  INSERT INTO messages (id, session_id, role, text, run_id)
  SELECT $7, run.session_id, 'assistant', $10, run.id FROM run WHERE $10::text IS NOT NULL)""",
    ends_run=True,
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
    facts: EventFacts,
    model_latency_ms: int,
    output_message_id: uuid.UUID | None,
) -> Record | None:
    """Store the last events (the terminal one last), the reply and the run's end at once.

    `first_sequence` is the worker's first event's, or 0 when only the terminal event is
    stored; None when the fence or the sequence does not hold. The run's usage is recorded
    in the same statement (`_USAGE_RECORDED`). `session_has_waiting` says whether the session
    has a run waiting behind this one (as of the statement's snapshot; a create that commits
    after it is promoted by the maintenance loop's stalled-queue sweep, as before).
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
        reply_text,
        model_latency_ms,
        *facts.args(),
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


async def run_requeue(
    conn: Connection, *, run_id: uuid.UUID, event: NewEvent, fencing_token: int | None = None
) -> Record | None:
    """Put a running run back in the queue as a new attempt, starting with the given event.

    Returns the new attempt's number (the next claim takes it) with the event's positions.

    With `fencing_token`, only if the caller still holds the lease (a draining worker);
    without, unconditionally (its lease expired and the run is being rescued).
    """
    return await conn.fetchrow(_RUN_REQUEUE, *_event_args([event]), run_id, fencing_token)


_RUN_END_NOW = _storing_events(
    f"""
WITH run AS (
  UPDATE runs
  SET state = $4, fencing_token = fencing_token + 1,
      last_event_sequence = last_event_sequence + cardinality($1::text[]),
      error_reason = $5, error_message = $6, end_time = now(),
      lease_owner = NULL, lease_expire_time = NULL
  WHERE id = $3
  RETURNING id, session_id, state, attempt, last_event_sequence, create_time,
            true AS touches_session, {_ENDED_RUN_COLUMNS})""",
    ends_run=True,
)


async def run_end_now(
    conn: Connection,
    *,
    run_id: uuid.UUID,
    state: str,
    events: Sequence[NewEvent],
    error_reason: str | None,
    error_message: str | None,
) -> Record | None:
    """End a run no worker holds (waiting, queued, waiting for approval, or rescued).

    `events` end with the terminal one. The fence moves on, so a worker still holding the old
    token is refused from now on. The usage its appends stored is recorded as for a finish.
    """
    return await conn.fetchrow(
        _RUN_END_NOW, *_event_args(events), run_id, state, error_reason, error_message
    )


_RUN_SUSPEND = _storing_events(
    f"""
WITH run AS (
  UPDATE runs
  SET state = 'requires_action', fencing_token = fencing_token + 1, last_event_sequence = $5,
      lease_owner = NULL, lease_expire_time = NULL, awaited_approval = true,
      suspend_time = now(),{_facts_set(9)}
  WHERE id = $3 AND fencing_token = $4 AND state = 'running'
    AND last_event_sequence = $5 - cardinality($1::text[])
  RETURNING id, session_id, workspace_id, state, attempt, last_event_sequence, create_time,
            cancel_requested, cancel_requested_by, false AS touches_session),
asked AS (
  INSERT INTO tool_approvals (run_id, call_id, session_id, tool, expire_time, request_time)
  SELECT run.id, a.call_id, run.session_id, a.tool, $8, now()
  FROM run, unnest($6::text[], $7::text[]) AS a(call_id, tool)
  ON CONFLICT DO NOTHING)"""
)


async def run_suspend(
    conn: Connection,
    *,
    run_id: uuid.UUID,
    fencing_token: int,
    last_sequence: int,
    events: Sequence[NewEvent],
    calls: Sequence[tuple[str, str]],
    expire_time: datetime,
    facts: EventFacts,
) -> Record | None:
    """Park a leased run in 'requires_action' with its last events and pending `calls`.

    `calls` are (call id, tool) of the approval requests among the events, each pending until
    `expire_time`. The lease ends and the fence moves on, so nothing is held while people
    decide; None when the fence or the sequence does not hold (as for an append).
    """
    return await conn.fetchrow(
        _RUN_SUSPEND,
        *_event_args(events),
        run_id,
        fencing_token,
        last_sequence,
        [c[0] for c in calls],
        [c[1] for c in calls],
        expire_time,
        *facts.args(),
    )


_RUN_ACTION_RECORD = _storing_events(
    """
WITH run AS (
  UPDATE runs
  SET last_event_sequence = last_event_sequence + cardinality($1::text[]),
      state = CASE WHEN $4 THEN 'queued' ELSE state END,
      resume_pending = resume_pending OR $4,
      waited_seconds = waited_seconds + CASE WHEN $4
          THEN extract(epoch FROM now() - coalesce(suspend_time, now())) ELSE 0 END,
      suspend_time = CASE WHEN $4 THEN NULL ELSE suspend_time END
  WHERE id = $3 AND state = 'requires_action'
  RETURNING id, session_id, state, attempt, last_event_sequence, create_time,
            false AS touches_session)"""
)


async def run_action_record(
    conn: Connection, *, run_id: uuid.UUID, events: Sequence[NewEvent], resume: bool
) -> Record | None:
    """Store people's decisions on a run waiting for approval; with `resume`, queue it again.

    The claim after a resume continues the attempt (no new attempt, no run.attempt_started),
    and the time spent waiting is added to the run's deadline.
    """
    return await conn.fetchrow(_RUN_ACTION_RECORD, *_event_args(events), run_id, resume)


# ── the queue and leases ────────────────────────────────────────────────────────────────────

_RUN_CLAIM = f"""
WITH next AS (
  SELECT id FROM runs WHERE state = 'queued' ORDER BY create_time
  LIMIT 1 FOR UPDATE SKIP LOCKED),
c AS (
  UPDATE runs r
  SET state = 'running', fencing_token = r.fencing_token + 1,
      -- After approvals the claim continues the attempt that asked for them.
      attempt = r.attempt + CASE WHEN r.resume_pending THEN 0 ELSE 1 END,
      resume_pending = false,
      lease_owner = $1, lease_expire_time = now() + make_interval(secs => $2),
      -- clock_timestamp(), not now(): now() is when the statement began, which on a busy
      -- machine can precede the snapshot that found the run queued, so a run promoted when
      -- the one before it ended would seem to start before that end_time.
      start_time = coalesce(r.start_time, clock_timestamp())
  FROM next WHERE r.id = next.id
  RETURNING r.id, r.session_id, r.workspace_id, r.created_by, r.input_message_id, r.attempt,
            r.fencing_token, r.lease_expire_time, r.last_event_sequence, r.start_time,
            r.create_time, r.awaited_approval, r.waited_seconds, r.input_tokens,
            r.output_tokens, r.reasoning_tokens, r.cached_input_tokens, r.cost_micros,
            r.api_key_id)
SELECT c.*, w.display_name AS workspace_display_name, w.tools_version,
       w.budget_monthly_tokens - u.tokens_used AS budget_tokens_left,
       w.budget_monthly_cost_micros - u.cost_used AS budget_cost_left,
       k.budget_monthly_tokens - ku.tokens_used AS key_budget_tokens_left,
       k.budget_monthly_cost_micros - ku.cost_used AS key_budget_cost_left,
       c.start_time + make_interval(secs => coalesce(s.run_timeout_seconds, $3)
                                            + c.waited_seconds) AS deadline,
       s.tool_approval_overrides,
       CASE WHEN c.awaited_approval THEN
         (SELECT array_agg(e.body ORDER BY e.sequence) FROM run_events e WHERE e.run_id = c.id)
       END AS run_events,
       coalesce(p.display_name, '') AS caller_display_name,
       coalesce(m.role, '') AS caller_role, s.instructions, s.model, i.text AS input_text,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(t.role, t.text) ORDER BY t.position),
                        '[]'::jsonb)
        FROM messages t WHERE t.session_id = c.session_id AND t.position < i.position)
         AS transcript
FROM c
JOIN sessions s ON s.id = c.session_id
JOIN workspaces w ON w.id = c.workspace_id
CROSS JOIN LATERAL ({MONTH_USED}) u
LEFT JOIN api_keys k ON k.id = c.api_key_id
LEFT JOIN LATERAL ({KEY_MONTH_USED}) ku ON true
JOIN messages i ON i.id = c.input_message_id
LEFT JOIN profiles p ON p.user_id = c.created_by
LEFT JOIN memberships m ON m.workspace_id = c.workspace_id AND m.user_id = c.created_by
"""


async def run_claim(
    conn: Connection, *, worker_id: str, lease_seconds: float, default_timeout_seconds: float
) -> Record | None:
    """Claim the oldest queued run and lease it to the caller, with a new attempt and fence.

    The same statement loads what the worker needs: workspace, caller, session instructions
    and model, the input text and the transcript before it, the run's usage so far (earlier
    attempts) and what is left of the workspace's and the creating key's monthly budgets
    (NULL: no limit).
    """
    return await conn.fetchrow(_RUN_CLAIM, worker_id, lease_seconds, default_timeout_seconds)


_RUN_HEARTBEAT = """
UPDATE runs SET lease_expire_time = now() + make_interval(secs => $3)
WHERE id = $1 AND fencing_token = $2 AND state = 'running'
RETURNING lease_expire_time, cancel_requested, cancel_requested_by
"""


async def run_heartbeat(
    conn: Connection, *, run_id: uuid.UUID, fencing_token: int, lease_seconds: float
) -> Record | None:
    """Extend a lease the caller still holds; None when it was lost."""
    return await conn.fetchrow(_RUN_HEARTBEAT, run_id, fencing_token, lease_seconds)


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


async def run_attempt(conn: Connection, run_id: uuid.UUID) -> int | None:
    """Return a run's current attempt number."""
    attempt: int | None = await conn.fetchval("SELECT attempt FROM runs WHERE id = $1", run_id)
    return attempt


async def run_queued_count(conn: Connection) -> int:
    """Count the runs waiting for a worker to claim them."""
    count: int = await conn.fetchval("SELECT count(*) FROM runs WHERE state = 'queued'")
    return count


_RUN_EXPIRED_LIST = """
SELECT id, session_id, attempt, cancel_requested, cancel_requested_by,
       EXISTS (SELECT 1 FROM run_events e WHERE e.run_id = runs.id
               AND e.type = 'run.cancel_requested') AS cancel_logged
FROM runs
WHERE state = 'running' AND lease_expire_time < now()
ORDER BY lease_expire_time LIMIT $1
FOR UPDATE SKIP LOCKED
"""


async def run_expired_list(conn: Connection, limit: int) -> list[Record]:
    """Lock running runs whose lease expired and that no other replica is rescuing."""
    return await conn.fetch(_RUN_EXPIRED_LIST, limit)


# ── a session's queue of runs ───────────────────────────────────────────────────────────────


async def run_active_id(conn: Connection, session_id: uuid.UUID) -> uuid.UUID | None:
    """Return the session's queued, running or approval-waiting run, if any."""
    active: uuid.UUID | None = await conn.fetchval(
        "SELECT id FROM runs WHERE session_id = $1"
        " AND state IN ('queued', 'running', 'requires_action')",
        session_id,
    )
    return active


_RUN_PENDING_LIST = f"""
SELECT {_RUN_COLUMNS}, cancel_requested FROM runs
WHERE session_id = $1 AND state IN ('waiting', 'queued', 'running', 'requires_action')
ORDER BY create_time
FOR UPDATE
"""


async def run_pending_list(conn: Connection, session_id: uuid.UUID) -> list[Record]:
    """Lock and return the session's waiting, queued, running and approval-waiting runs."""
    return await conn.fetch(_RUN_PENDING_LIST, session_id)


_RUN_LOCK_ALL = """
SELECT id, state FROM runs WHERE session_id = $1 ORDER BY create_time, id FOR UPDATE
"""


async def run_lock_all(conn: Connection, session_id: uuid.UUID) -> list[Record]:
    """Lock every run of a session (id, state) for the transaction, oldest first."""
    return await conn.fetch(_RUN_LOCK_ALL, session_id)


_RUN_LOCK_OTHERS_NOWAIT = """
SELECT id, state FROM runs WHERE session_id = $1 AND NOT id = ANY($2::uuid[])
ORDER BY create_time, id FOR UPDATE NOWAIT
"""


async def run_lock_others_nowait(
    conn: Connection, session_id: uuid.UUID, locked: Sequence[uuid.UUID]
) -> list[Record]:
    """Lock the session's runs other than `locked` (id, state), or fail at once.

    Raises asyncpg.LockNotAvailableError when another transaction holds one of them.
    """
    return await conn.fetch(_RUN_LOCK_OTHERS_NOWAIT, session_id, list(locked))


_RUN_PROMOTE_NEXT = """
UPDATE runs SET state = 'queued'
WHERE id = (SELECT id FROM runs WHERE session_id = $1 AND state = 'waiting'
            ORDER BY create_time LIMIT 1 FOR UPDATE SKIP LOCKED)
  AND NOT EXISTS (SELECT 1 FROM runs WHERE session_id = $1
                  AND state IN ('queued', 'running', 'requires_action'))
RETURNING id
"""


async def run_promote_next(conn: Connection, session_id: uuid.UUID) -> uuid.UUID | None:
    """Make the session's oldest waiting run claimable if no run of it is active."""
    try:
        promoted: uuid.UUID | None = await conn.fetchval(_RUN_PROMOTE_NEXT, session_id)
    except asyncpg.UniqueViolationError:
        return None  # a concurrent create or promotion already made a run active
    return promoted


_RUN_STALLED_SESSION_LIST = """
SELECT DISTINCT w.session_id FROM runs w
WHERE w.state = 'waiting'
  AND NOT EXISTS (SELECT 1 FROM runs a WHERE a.session_id = w.session_id
                  AND a.state IN ('queued', 'running', 'requires_action'))
LIMIT $1
"""


async def run_stalled_session_list(conn: Connection, limit: int) -> list[uuid.UUID]:
    """Find sessions whose waiting runs have no active run ahead of them."""
    return [r["session_id"] for r in await conn.fetch(_RUN_STALLED_SESSION_LIST, limit)]


async def run_request_cancel(
    conn: Connection, run_id: uuid.UUID, requested_by: uuid.UUID | None
) -> bool:
    """Ask the worker holding a run to stop it; False if someone had asked already."""
    status = await conn.execute(
        "UPDATE runs SET cancel_requested = true, cancel_requested_by = $2"
        " WHERE id = $1 AND NOT cancel_requested",
        run_id,
        requested_by,
    )
    return status != "UPDATE 0"


# ── reading runs and events ─────────────────────────────────────────────────────────────────

_RUN_GET = f"""
SELECT {_RUN_COLUMNS} FROM runs WHERE workspace_id = $1 AND session_id = $2 AND id = $3
"""


async def run_get(
    conn: Connection, workspace_id: uuid.UUID, session_id: uuid.UUID, run_id: uuid.UUID
) -> Record | None:
    """Get a run of the workspace's session."""
    return await conn.fetchrow(_RUN_GET, workspace_id, session_id, run_id)


_RUN_LOCK = f"""
SELECT {_RUN_COLUMNS}, cancel_requested FROM runs
WHERE workspace_id = $1 AND session_id = $2 AND id = $3
FOR UPDATE
"""


async def run_lock(
    conn: Connection, workspace_id: uuid.UUID, session_id: uuid.UUID, run_id: uuid.UUID
) -> Record | None:
    """Lock a run of the workspace's session for the transaction, e.g. to cancel it."""
    return await conn.fetchrow(_RUN_LOCK, workspace_id, session_id, run_id)


_RUN_LOCK_SKIP = """
SELECT id, session_id, workspace_id, state FROM runs WHERE id = $1 FOR UPDATE SKIP LOCKED
"""


async def run_lock_skip(conn: Connection, run_id: uuid.UUID) -> Record | None:
    """Lock a run for the transaction unless another transaction holds it (None then)."""
    return await conn.fetchrow(_RUN_LOCK_SKIP, run_id)


_RUN_GET_BY_REQUEST_ID = f"""
SELECT {_RUN_COLUMNS} FROM runs WHERE workspace_id = $1 AND request_id = $2
"""


async def run_get_by_request_id(
    conn: Connection, workspace_id: uuid.UUID, request_id: str
) -> Record | None:
    """Find the run an earlier create with this request_id made."""
    return await conn.fetchrow(_RUN_GET_BY_REQUEST_ID, workspace_id, request_id)


_RUN_LIST = f"""
SELECT {_RUN_COLUMNS} FROM runs
WHERE session_id = $1 AND ($2::timestamptz IS NULL OR (create_time, id) < ($2, $3))
ORDER BY create_time DESC, id DESC
LIMIT $4
"""


async def run_list(
    conn: Connection,
    session_id: uuid.UUID,
    *,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Record]:
    """List a session's runs, newest first, before a keyset cursor."""
    time, row_id = before or (None, None)
    return await conn.fetch(_RUN_LIST, session_id, time, row_id, limit)


_EVENT_COLUMNS = "run_id, session_id, sequence, session_sequence, attempt, body, create_time"

_RUN_EVENT_LIST = f"""
SELECT {_EVENT_COLUMNS} FROM run_events
WHERE run_id = $1 AND sequence > $2
ORDER BY sequence
LIMIT $3
"""


async def run_event_list(
    conn: Connection, run_id: uuid.UUID, *, after_sequence: int, limit: int
) -> list[Record]:
    """List a run's events after a sequence, in order."""
    return await conn.fetch(_RUN_EVENT_LIST, run_id, after_sequence, limit)


_RUN_EVENT_LIST_BY_SESSION = f"""
SELECT {_EVENT_COLUMNS} FROM run_events
WHERE session_id = $1 AND session_sequence > $2
ORDER BY session_sequence
LIMIT $3
"""


async def run_event_list_by_session(
    conn: Connection, session_id: uuid.UUID, *, after_session_sequence: int, limit: int
) -> list[Record]:
    """List the events of all a session's runs after a session-level sequence, in order."""
    return await conn.fetch(_RUN_EVENT_LIST_BY_SESSION, session_id, after_session_sequence, limit)


async def run_last_sequences(conn: Connection, run_ids: Sequence[uuid.UUID]) -> list[Record]:
    """Return (id, last_event_sequence) of each of the runs."""
    return await conn.fetch(
        "SELECT id, last_event_sequence FROM runs WHERE id = ANY($1::uuid[])", run_ids
    )
