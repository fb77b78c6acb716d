"""SQL of usage and budgets: rollups of ended runs, month-to-date totals, monthly limits.

Ending a run writes its `run_usage` row and adds it to `usage_monthly` (store/runs.py,
`_USAGE_RECORDED`); these statements read them. The checks on a run's path are fragments of
the statements that create and claim it (`MONTH_USED`), never statements of their own.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from services.rpc.db import Connection

Record = asyncpg.Record

THIS_MONTH = "date_trunc('month', now() AT TIME ZONE 'UTC')::date"

# The month's totals of workspace `w` (a row in scope), summed only when it has a budget: the
# condition names no row of usage_monthly, so without a budget Postgres skips the scan.
MONTH_USED = f"""
SELECT coalesce(sum(tokens), 0)::bigint AS tokens_used,
       coalesce(sum(cost_micros), 0)::bigint AS cost_used
FROM usage_monthly
WHERE workspace_id = w.id AND month = {THIS_MONTH}
  AND (w.budget_monthly_tokens IS NOT NULL OR w.budget_monthly_cost_micros IS NOT NULL)"""

# The same for API key `k` (a row in scope): the runs it created this month.
KEY_MONTH_USED = f"""
SELECT coalesce(sum(tokens), 0)::bigint AS tokens_used,
       coalesce(sum(cost_micros), 0)::bigint AS cost_used
FROM usage_monthly
WHERE workspace_id = k.workspace_id AND month = {THIS_MONTH} AND api_key_id = k.id
  AND (k.budget_monthly_tokens IS NOT NULL OR k.budget_monthly_cost_micros IS NOT NULL)"""


def over_budget(limits: str, used: str) -> str:
    """Return the condition: a limit of `limits` is set and `used`'s total has reached it."""
    return f"""
(({limits}.budget_monthly_tokens IS NOT NULL
  AND {used}.tokens_used >= {limits}.budget_monthly_tokens)
 OR ({limits}.budget_monthly_cost_micros IS NOT NULL
  AND {used}.cost_used >= {limits}.budget_monthly_cost_micros))"""


_BUDGET_GET = f"""
SELECT w.budget_monthly_tokens, w.budget_monthly_cost_micros,
       coalesce(sum(u.tokens), 0)::bigint AS tokens_used,
       coalesce(sum(u.cost_micros), 0)::bigint AS cost_used,
       {THIS_MONTH}::timestamp AT TIME ZONE 'UTC' AS period_start
FROM workspaces w
LEFT JOIN usage_monthly u ON u.workspace_id = w.id AND u.month = {THIS_MONTH}
WHERE w.id = $1
GROUP BY w.id
"""


async def budget_get(conn: Connection, workspace_id: uuid.UUID) -> Record | None:
    """Return a workspace's monthly limits (NULL: none) and this month's totals so far."""
    return await conn.fetchrow(_BUDGET_GET, workspace_id)


_KEY_BUDGET_GET = f"""
SELECT k.budget_monthly_tokens, k.budget_monthly_cost_micros,
       coalesce(sum(u.tokens), 0)::bigint AS tokens_used,
       coalesce(sum(u.cost_micros), 0)::bigint AS cost_used,
       {THIS_MONTH}::timestamp AT TIME ZONE 'UTC' AS period_start
FROM api_keys k
LEFT JOIN usage_monthly u
  ON u.workspace_id = k.workspace_id AND u.month = {THIS_MONTH} AND u.api_key_id = k.id
WHERE k.workspace_id = $1 AND k.id = $2
GROUP BY k.id
"""


async def api_key_budget_get(
    conn: Connection, workspace_id: uuid.UUID, key_id: uuid.UUID
) -> Record | None:
    """Return a key's monthly limits (NULL: none) and this month's totals of its runs."""
    return await conn.fetchrow(_KEY_BUDGET_GET, workspace_id, key_id)


_KEY_BUDGET_SET = """
UPDATE api_keys
SET budget_monthly_tokens = CASE WHEN $5 THEN $3 ELSE budget_monthly_tokens END,
    budget_monthly_cost_micros = CASE WHEN $6 THEN $4 ELSE budget_monthly_cost_micros END
WHERE workspace_id = $1 AND id = $2 AND revoke_time IS NULL
RETURNING id
"""


async def api_key_budget_set(
    conn: Connection,
    workspace_id: uuid.UUID,
    key_id: uuid.UUID,
    *,
    tokens: int | None,
    cost_micros: int | None,
    set_tokens: bool,
    set_cost: bool,
) -> bool:
    """Set a live key's monthly limits (those flagged); False when there is no such key."""
    found = await conn.fetchval(
        _KEY_BUDGET_SET, workspace_id, key_id, tokens, cost_micros, set_tokens, set_cost
    )
    return found is not None


_BUDGET_SET = """
UPDATE workspaces
SET budget_monthly_tokens = CASE WHEN $4 THEN $2 ELSE budget_monthly_tokens END,
    budget_monthly_cost_micros = CASE WHEN $5 THEN $3 ELSE budget_monthly_cost_micros END
WHERE id = $1
"""


async def budget_set(
    conn: Connection,
    workspace_id: uuid.UUID,
    *,
    tokens: int | None,
    cost_micros: int | None,
    set_tokens: bool = True,
    set_cost: bool = True,
) -> None:
    """Set a workspace's monthly limits (those flagged); None removes one."""
    await conn.execute(_BUDGET_SET, workspace_id, tokens, cost_micros, set_tokens, set_cost)


_USAGE_QUERY = """
SELECT CASE WHEN $4 THEN session_id END AS session_id,
       CASE WHEN $5 THEN api_key_id END AS api_key_id,
       CASE WHEN $6 THEN model END AS model,
       CASE WHEN $7 THEN (end_time AT TIME ZONE 'UTC')::date END AS day,
       count(*) AS run_count,
       sum(input_tokens)::bigint AS input_tokens,
       sum(output_tokens)::bigint AS output_tokens,
       sum(reasoning_tokens)::bigint AS reasoning_tokens,
       sum(cached_input_tokens)::bigint AS cached_input_tokens,
       sum(cost_micros)::bigint AS cost_micros,
       sum(model_latency_ms)::bigint AS model_latency_ms,
       sum(duration_ms)::bigint AS duration_ms,
       avg(time_to_first_token_ms)::double precision AS mean_time_to_first_token_ms
FROM run_usage
WHERE workspace_id = $1 AND end_time >= $2 AND end_time < $3
  AND ($8::uuid IS NULL OR session_id = $8) AND ($9::uuid IS NULL OR api_key_id = $9)
GROUP BY 1, 2, 3, 4
ORDER BY 4 NULLS FIRST, 1 NULLS FIRST, 2 NULLS FIRST, 3 NULLS FIRST
OFFSET $10 LIMIT $11
"""


async def usage_query(
    conn: Connection,
    workspace_id: uuid.UUID,
    *,
    start: datetime,
    end: datetime,
    by_session: bool,
    by_api_key: bool,
    by_model: bool,
    by_day: bool,
    session_id: uuid.UUID | None,
    api_key_id: uuid.UUID | None,
    offset: int,
    limit: int,
) -> list[Record]:
    """Sum the usage of the workspace's runs that ended in [start, end), grouped as asked.

    A dimension not grouped by is NULL in every row; with none, one row holds the total (or
    none, when no run ended in the range). Rows are ordered by day, session, key, model.
    """
    return await conn.fetch(
        _USAGE_QUERY,
        workspace_id,
        start,
        end,
        by_session,
        by_api_key,
        by_model,
        by_day,
        session_id,
        api_key_id,
        offset,
        limit,
    )
