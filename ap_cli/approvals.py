"""Decide tool calls that wait for approval: `ap runs approve|deny` and the y/n prompt.

`ap chat` and `ap runs watch` show each "tool_call.approval_requested" as it arrives; on a
terminal they ask at once, elsewhere they print the commands that decide it, and the run
waits (no worker holds it) until someone does.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from agentplatform.v1 import run_pb2

from ap_cli.context import Context

Ask = Callable[[str], str]


def decide_at_prompt(
    ctx: Context, run: str, asked: run_pb2.ToolCallApprovalRequested, ask: Ask | None
) -> None:
    """Ask y/n about a pending call and submit the answer; without `ask`, say how to decide."""
    if ask is None:
        ctx.note(
            f"[waiting for approval: {ctx.ap} runs approve {run} {asked.call_id}  or  "
            f"{ctx.ap} runs deny {run} {asked.call_id} --message '...']"
        )
        return
    while True:
        answer = ask(f"Run {asked.tool}? [y/n] ").strip().lower()
        if answer in ("y", "yes", "n", "no"):
            break
    if answer.startswith("y"):
        ctx.client.submit_tool_approvals(run, approve=[asked.call_id])
        return
    message = ask("Message to the model (optional): ").strip()
    ctx.client.submit_tool_approvals(run, deny={asked.call_id: message})


def runs_approve(ctx: Context, args: argparse.Namespace) -> int:
    """Approve a pending tool call of a run."""
    run = ctx.client.submit_tool_approvals(args.run, approve=[args.call])
    ctx.say(f"approved {args.call}; {_after(run)}")
    return 0


def runs_deny(ctx: Context, args: argparse.Namespace) -> int:
    """Deny a pending tool call of a run, with an optional message to the model."""
    run = ctx.client.submit_tool_approvals(args.run, deny={args.call: args.message or ""})
    ctx.say(f"denied {args.call}; {_after(run)}")
    return 0


def _after(run: run_pb2.Run) -> str:
    if run.state == run_pb2.Run.REQUIRES_ACTION:
        return "the run waits for its other calls"
    return "the run continues"
