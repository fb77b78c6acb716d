"""Implement `ap usage` (what runs consumed, grouped) and `ap budget` (monthly limits).

Costs travel in millionths of a US dollar; the CLI shows and takes dollars.
"""

from __future__ import annotations

import argparse
import datetime as dt

from agentplatform import UsageDimension
from agentplatform.v1 import usage_service_pb2, workspace_pb2

from ap_cli.context import Context, json_option
from ap_cli.format import format_seconds, format_table, format_time
from ap_cli.names import session_name
from ap_cli.tenancy import api_key_name

DIMENSIONS: tuple[UsageDimension, ...] = ("session", "api_key", "model", "day")
_MICROS = 1_000_000


def dimensions(value: str) -> list[UsageDimension]:
    """Parse `--by`: dimensions separated by commas, e.g. `session,day`."""
    given = [d.strip() for d in value.split(",") if d.strip()]
    unknown = [d for d in given if d not in DIMENSIONS]
    if unknown or not given:
        raise argparse.ArgumentTypeError(
            f"{value!r}: group by {', '.join(DIMENSIONS)} (comma-separated)"
        )
    return [d for d in DIMENSIONS if d in given]


def day_or_time(value: str) -> dt.datetime:
    """Parse a UTC date (2026-12-01) or an ISO time with its offset."""
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date or an ISO time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def dollars(micros: int) -> str:
    """Format millionths of a US dollar as dollars, e.g. $0.001234."""
    return f"${micros / _MICROS:.6f}".rstrip("0").rstrip(".") if micros else "$0"


def dollars_to_micros(value: str) -> int:
    """Parse a dollar amount such as 25 or 0.50 into millionths."""
    try:
        amount = float(value.strip().removeprefix("$"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an amount of dollars") from None
    if amount < 0:
        raise argparse.ArgumentTypeError("an amount of dollars cannot be negative")
    return round(amount * _MICROS)


def _group_label(group: usage_service_pb2.UsageGroup, by: list[UsageDimension]) -> list[str]:
    values = {"session": group.session, "api_key": group.api_key, "model": group.model}
    return [group.day if d == "day" else values[d] for d in by]


def usage(ctx: Context, args: argparse.Namespace) -> int:
    """Print what the workspace's runs consumed in a range (default: this month), grouped."""
    by: list[UsageDimension] = args.by or []
    groups = ctx.client.query_usage(
        start_time=args.since,
        end_time=args.until,
        group_by=by,
        session=args.session or "",
        api_key=args.key or "",
    )
    if ctx.json:
        ctx.emit_all(groups)
        return 0
    rows = [
        (
            *_group_label(g, by),
            str(g.run_count),
            str(g.usage.input_tokens),
            str(g.usage.cached_input_tokens),
            str(g.usage.output_tokens),
            str(g.usage.reasoning_tokens),
            dollars(g.usage.cost_micros),
            format_seconds(g.mean_time_to_first_token.ToTimedelta().total_seconds()),
        )
        for g in groups
    ]
    header = (
        *(d.upper() for d in by),
        "RUNS",
        "INPUT",
        "CACHED",
        "OUTPUT",
        "REASONING",
        "COST",
        "MEAN TTFT",
    )
    ctx.say(format_table(header, rows) if rows else "no runs ended in this range")
    return 0


def _show_budget(ctx: Context, workspace: workspace_pb2.Workspace) -> None:
    if ctx.json:
        ctx.emit(workspace.budget)
        return
    _say_budget(ctx, workspace.name, workspace.budget)


def _say_budget(ctx: Context, owner: str, b: workspace_pb2.Budget) -> None:
    tokens = f"{b.monthly_token_limit}" if b.monthly_token_limit else "no limit"
    cost = dollars(b.monthly_cost_limit_micros) if b.monthly_cost_limit_micros else "no limit"
    ctx.say(f"budget of {owner} since {format_time(b.period_start)}")
    ctx.say(f"  tokens  {b.month_tokens} used of {tokens}")
    ctx.say(f"  cost    {dollars(b.month_cost_micros)} used of {cost}")


def budget_show(ctx: Context, args: argparse.Namespace) -> int:
    """Print the workspace's monthly limits and this month's use."""
    workspace = ctx.client.get_workspace(ctx.client.get_profile().workspace)
    _show_budget(ctx, workspace)
    return 0


def budget_set(ctx: Context, args: argparse.Namespace) -> int:
    """Set one or both monthly limits (owners only); 0 removes a limit."""
    if args.tokens is None and args.cost is None:
        ctx.error("give --tokens, --cost or both")
        return 2
    workspace = ctx.client.update_workspace(
        ctx.client.get_profile().workspace,
        monthly_token_limit=args.tokens,
        monthly_cost_limit_micros=args.cost,
    )
    _show_budget(ctx, workspace)
    return 0


def key_budget(ctx: Context, args: argparse.Namespace) -> int:
    """Set one or both monthly limits of an API key's runs (owners only); 0 removes a limit."""
    if args.tokens is None and args.cost is None:
        ctx.error("give --tokens, --cost or both")
        return 2
    key = ctx.client.update_api_key(
        args.key, monthly_token_limit=args.tokens, monthly_cost_limit_micros=args.cost
    )
    if ctx.json:
        ctx.emit(key)
        return 0
    _say_budget(ctx, key.name, key.budget)
    return 0


def _non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError("a limit cannot be negative (0 removes it)")
    return number


def add_commands(groups: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `usage` command and the `budget` command group."""
    json_flag = json_option()
    cmd = groups.add_parser(
        "usage",
        parents=[json_flag],
        help="show what runs consumed: tokens by kind, cost, time to first token",
    )
    cmd.add_argument(
        "--by", type=dimensions, help="group by session, api_key, model, day (comma-separated)"
    )
    cmd.add_argument(
        "--since", type=day_or_time, help="from this date or time (default: month start, UTC)"
    )
    cmd.add_argument("--until", type=day_or_time, help="until this date or time (default: now)")
    cmd.add_argument("--session", type=session_name, help="only this session's runs")
    cmd.add_argument("--key", type=api_key_name, help="only this API key's runs (owners)")
    cmd.set_defaults(handler=usage)

    budget = groups.add_parser("budget", help="show or set the workspace's monthly budget")
    budget_cmds = budget.add_subparsers(dest="command", required=True, metavar="COMMAND")
    budget_cmds.add_parser(
        "show", parents=[json_flag], help="show the monthly limits and this month's use"
    ).set_defaults(handler=budget_show)
    setter = budget_cmds.add_parser(
        "set", parents=[json_flag], help="set the monthly limits (owners; 0 removes one)"
    )
    setter.add_argument("--tokens", type=_non_negative, help="tokens per month, input + output")
    setter.add_argument("--cost", type=dollars_to_micros, help="US dollars per month, e.g. 25")
    setter.set_defaults(handler=budget_set)
    for_key = budget_cmds.add_parser(
        "set-key", parents=[json_flag], help="set an API key's monthly limits (owners)"
    )
    for_key.add_argument("key", type=api_key_name, help="apiKeys/ID or ID")
    for_key.add_argument("--tokens", type=_non_negative, help="tokens per month, input + output")
    for_key.add_argument("--cost", type=dollars_to_micros, help="US dollars per month, e.g. 25")
    for_key.set_defaults(handler=key_budget)
