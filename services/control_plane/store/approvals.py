"""SQL of tool approvals: one row per tool call a run asked people to decide.

A row is inserted 'pending' by the statement that parks the run (`run_suspend`); a decision
or the expiry sweep moves it to 'approved', 'denied' or 'expired', and a cancel of the
waiting run to 'cancelled'. Every statement here runs with the run row locked first (the
order every event write takes), so decisions on one run are serialized.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from services.rpc.db import Connection

Record = asyncpg.Record


@dataclass(frozen=True)
class Decision:
    """What was decided about one pending call."""

    call_id: str
    state: str  # 'approved', 'denied' or 'expired'
    decided_by: uuid.UUID | None
    message: str


async def tool_approval_list(conn: Connection, run_id: uuid.UUID) -> list[Record]:
    """Return the run's approval rows, each asked-for call once, in the order they were asked."""
    return await conn.fetch(
        "SELECT call_id, tool, state, expire_time, request_time, request_id,"
        " expire_time <= now() AS expired FROM tool_approvals"
        " WHERE run_id = $1 ORDER BY request_time, call_id",
        run_id,
    )


async def tool_approval_request_seen(conn: Connection, run_id: uuid.UUID, request_id: str) -> bool:
    """Tell whether a submission with this request_id was already applied to the run."""
    seen: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM tool_approvals WHERE run_id = $1 AND request_id = $2)",
        run_id,
        request_id,
    )
    return seen


_TOOL_APPROVAL_DECIDE = """
UPDATE tool_approvals a
SET state = d.state, decided_by = d.decided_by, message = d.message, request_id = $2,
    decide_time = now()
FROM unnest($3::text[], $4::text[], $5::uuid[], $6::text[]) AS d(call_id, state, decided_by,
                                                                 message)
WHERE a.run_id = $1 AND a.call_id = d.call_id AND a.state = 'pending'
"""


async def tool_approval_decide(
    conn: Connection, run_id: uuid.UUID, decisions: Sequence[Decision], request_id: str | None
) -> None:
    """Record decisions on pending calls (others are left alone), with the submission's id."""
    await conn.execute(
        _TOOL_APPROVAL_DECIDE,
        run_id,
        request_id,
        [d.call_id for d in decisions],
        [d.state for d in decisions],
        [d.decided_by for d in decisions],
        [d.message for d in decisions],
    )


async def tool_approval_cancel_pending(conn: Connection, run_id: uuid.UUID) -> None:
    """Mark the run's undecided calls cancelled (its run ended while they waited)."""
    await conn.execute(
        "UPDATE tool_approvals SET state = 'cancelled', decide_time = now()"
        " WHERE run_id = $1 AND state = 'pending'",
        run_id,
    )


_TOOL_APPROVAL_EXPIRED_RUNS = """
SELECT DISTINCT a.run_id, a.session_id FROM tool_approvals a
WHERE a.state = 'pending' AND a.expire_time < now()
LIMIT $1
"""


async def tool_approval_expired_runs(conn: Connection, limit: int) -> list[Record]:
    """Find runs (run_id, session_id) with a pending call past its expiry."""
    return await conn.fetch(_TOOL_APPROVAL_EXPIRED_RUNS, limit)


async def tool_approval_pending_count(conn: Connection) -> int:
    """Count calls waiting for a decision, in every workspace (for metrics and tests)."""
    count: int = await conn.fetchval("SELECT count(*) FROM tool_approvals WHERE state = 'pending'")
    return count
