"""Monthly budgets: a workspace's limits on tokens and cost, and the refusals they cause.

    CreateRun while the month's total has reached a limit ─► RESOURCE_EXHAUSTED / BUDGET_EXCEEDED
    a run whose own usage goes past what was left at claim ─► run.failed / BUDGET_EXCEEDED
                                                              after its current model call

The checks ride on statements the run takes anyway: CreateRun's insert refuses the run
(store.run_create), ClaimRun's answer carries what is left (store.run_claim) and the worker
compares its run's usage with it. A run's usage joins the month's total when it ends, so runs
running side by side may together go past a limit by what they use after their claims.
"""

from __future__ import annotations

import uuid

import grpc
from agentplatform.v1 import workspace_pb2

from services.control_plane import store
from services.rpc.errors import ApiError, Reason, invalid_argument
from services.rpc.names import workspace_name


def budget_to_proto(row: store.Record) -> workspace_pb2.Budget:
    """Build a Budget from `store.budget_get`'s row."""
    budget = workspace_pb2.Budget(
        monthly_token_limit=row["budget_monthly_tokens"] or 0,
        monthly_cost_limit_micros=row["budget_monthly_cost_micros"] or 0,
        month_tokens=row["tokens_used"],
        month_cost_micros=row["cost_used"],
    )
    budget.period_start.FromDatetime(row["period_start"])
    return budget


def budget_limits(budget: workspace_pb2.Budget) -> tuple[int | None, int | None]:
    """Read the limits an UpdateWorkspace sets: (tokens, cost in micros), None for none."""
    for field, value in (
        ("workspace.budget.monthly_token_limit", budget.monthly_token_limit),
        ("workspace.budget.monthly_cost_limit_micros", budget.monthly_cost_limit_micros),
    ):
        if value < 0:
            raise invalid_argument(field, f"{field} must be 0 (no limit) or positive.")
    return budget.monthly_token_limit or None, budget.monthly_cost_limit_micros or None


def exceeded(row: store.Record) -> tuple[str, int, int] | None:
    """Say which limit the month's total has reached: (limit, its value, used), or None."""
    tokens, cost = row["budget_monthly_tokens"], row["budget_monthly_cost_micros"]
    if tokens is not None and row["tokens_used"] >= tokens:
        return "tokens", tokens, row["tokens_used"]
    if cost is not None and row["cost_used"] >= cost:
        return "cost_micros", cost, row["cost_used"]
    return None


def budget_exceeded(workspace_id: uuid.UUID, row: store.Record) -> ApiError | None:
    """Build the refusal of a run in a workspace over its budget; None when it is not."""
    over = exceeded(row)
    if over is None:
        return None
    limit, value, used = over
    budget = workspace_name(workspace_id)
    unit = "tokens" if limit == "tokens" else "micro-USD of cost"
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.BUDGET_EXCEEDED,
        f"The monthly budget of {budget} is used up: {used} of {value} {unit} this month. "
        "An owner can raise it (UpdateWorkspace), or wait for next month.",
        metadata={
            "budget": budget,
            "limit": limit,
            "limit_value": str(value),
            "used": str(used),
            "period_start": row["period_start"].isoformat(),
        },
    )
