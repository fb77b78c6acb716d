"""SQL of tool call records: one row per call a run's tool_call.* events report."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.rpc.db import Connection

Record = asyncpg.Record


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


_TOOL_CALL_START = """
INSERT INTO tool_calls (run_id, attempt, call_id, session_id, tool, arguments_json,
                        start_sequence, start_time)
VALUES ($1, $2, $3, $4, $5, $6, $7, now())
ON CONFLICT DO NOTHING
"""

_TOOL_CALL_END = """
UPDATE tool_calls
SET state = $4, result = $5, error_code = $6, truncated = $7, duration_ms = $8, end_time = now()
WHERE run_id = $1 AND attempt = $2 AND call_id = $3 AND state = 'running'
"""


async def tool_call_record(
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
            _TOOL_CALL_START,
            [
                (run_id, attempt, s.call_id, session_id, s.tool, s.arguments_json, s.sequence)
                for s in started
            ],
        )
    if ended:
        await conn.executemany(
            _TOOL_CALL_END,
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


_TOOL_CALL_LIST = """
SELECT * FROM tool_calls
WHERE run_id = $1 AND start_sequence > $2
ORDER BY start_sequence, call_id
LIMIT $3
"""


async def tool_call_list(
    conn: Connection, run_id: uuid.UUID, *, after_sequence: int, limit: int
) -> list[Record]:
    """List a run's tool calls in the order they started, after a start sequence."""
    return await conn.fetch(_TOOL_CALL_LIST, run_id, after_sequence, limit)


_TOOL_CALL_LIST_WORKSPACE = """
SELECT c.* FROM tool_calls c JOIN sessions s ON s.id = c.session_id
WHERE s.workspace_id = $1
  AND ($2::timestamptz IS NULL OR (c.start_time, c.run_id, c.start_sequence) < ($2, $3, $4))
ORDER BY c.start_time DESC, c.run_id DESC, c.start_sequence DESC
LIMIT $5
"""


async def tool_call_list_workspace(
    conn: Connection,
    workspace_id: uuid.UUID,
    *,
    before: tuple[datetime, uuid.UUID, int] | None,
    limit: int,
) -> list[Record]:
    """List the tool calls of every run of a workspace, newest first, before a cursor.

    (start_time, run_id, start_sequence) orders them totally: calls one append reports
    share its transaction's time and run, never their start event's sequence.
    """
    time, run_id, sequence = before or (None, None, None)
    return await conn.fetch(_TOOL_CALL_LIST_WORKSPACE, workspace_id, time, run_id, sequence, limit)
