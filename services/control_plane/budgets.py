"""Monthly budgets: limits on tokens and cost of a workspace, or of the runs one API key
creates, and the refusals they cause.

    CreateRun while a month's total has reached a limit ─► RESOURCE_EXHAUSTED / BUDGET_EXCEEDED
    a run whose own usage goes past what was left at claim ─► run.failed / BUDGET_EXCEEDED
                                                              after its current model call

The checks ride on statements the run takes anyway: CreateRun's insert refuses the run
(store.run_create), ClaimRun's answer carries what is left (store.run_claim) and the worker
compares its run's usage with it. A run's usage joins the month's total when it ends, so runs
running side by side may together go past a limit by what they use after their claims.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from agentplatform.v1 import workspace_pb2

from services.control_plane import store
from services.rpc.errors import ApiError, Reason, invalid_argument


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


BUDGET_PATHS = frozenset(
    {"budget", "budget.monthly_token_limit", "budget.monthly_cost_limit_micros"}
)


@dataclass(frozen=True)
class BudgetChange:
    """The limits an update sets: each None to remove it, and which of the two it sets."""

    tokens: int | None
    cost_micros: int | None
    set_tokens: bool
    set_cost: bool


def budget_change(
    resource: str, budget: workspace_pb2.Budget, paths: set[str]
) -> BudgetChange | None:
    """Read the limits an update mask names on `resource` ("workspace", "api_key"); None: none."""
    set_tokens = bool(paths & {"budget", "budget.monthly_token_limit"})
    set_cost = bool(paths & {"budget", "budget.monthly_cost_limit_micros"})
    if not (set_tokens or set_cost):
        return None
    tokens, cost = budget_limits(resource, budget)
    return BudgetChange(tokens, cost, set_tokens, set_cost)


def budget_limits(resource: str, budget: workspace_pb2.Budget) -> tuple[int | None, int | None]:
    """Read the limits an update sets: (tokens, cost in micros), None for none."""
    for field, value in (
        (f"{resource}.budget.monthly_token_limit", budget.monthly_token_limit),
        (f"{resource}.budget.monthly_cost_limit_micros", budget.monthly_cost_limit_micros),
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


def budget_exceeded(budget: str, row: store.Record) -> ApiError | None:
    """Build the refusal of a run under a budget that is used up; None when it is not.

    `budget` names its owner: "workspaces/{workspace}" or "apiKeys/{api_key}".
    """
    over = exceeded(row)
    if over is None:
        return None
    limit, value, used = over
    unit = "tokens" if limit == "tokens" else "micro-USD of cost"
    raise_it = "UpdateApiKey" if budget.startswith("apiKeys/") else "UpdateWorkspace"
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.BUDGET_EXCEEDED,
        f"The monthly budget of {budget} is used up: {used} of {value} {unit} this month. "
        f"An owner can raise it ({raise_it}), or wait for next month.",
        metadata={
            "budget": budget,
            "limit": limit,
            "limit_value": str(value),
            "used": str(used),
            "period_start": row["period_start"].isoformat(),
        },
    )
