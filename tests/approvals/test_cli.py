"""The CLI decides tool calls: `ap runs approve|deny`, the watch hint, and the y/n prompt."""

from __future__ import annotations

import asyncio
import io
import os

import pytest
from agentplatform import Client
from agentplatform.v1 import tool_pb2

from ap_cli.approvals import decide_at_prompt
from ap_cli.context import Context
from tests.approvals.helpers import add_tool, events_until, pending_calls, reply, start_run
from tests.cli.test_commands import Ap
from tests.gateway.helpers import GatewayStack

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(90)]


def _ap(gw: GatewayStack) -> Ap:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
    env |= {"AP_ENDPOINT": gw.stack.address, "AP_API_KEY": gw.owner.api_key, "NO_COLOR": "1"}
    return Ap(env)


async def test_watch_shows_the_call_and_approve_and_deny_decide(gw_stack: GatewayStack) -> None:
    """`ap runs watch` prints the pending call and how to decide; `ap runs approve` runs it,
    `ap runs deny --message` tells the model."""
    await add_tool(gw_stack, "cli_tool", tool_pb2.ALWAYS_ALLOW)
    ap = _ap(gw_stack)
    set_policy = await ap("tools", "policy", "cli_tool", "always_ask")
    assert set_policy.code == 0, set_policy.err
    shown = await ap("tools", "show", "cli_tool")
    assert "always_ask" in shown.out
    owner = gw_stack.owner
    run = await start_run(
        owner,
        'Two [[tool=cli_tool args={"item": "c1"}]] [[tool=cli_tool args={"item": "c2"}]]',
    )
    watching = asyncio.create_task(ap("runs", "watch", run.name))
    first, second = pending_calls(
        await events_until(owner, run.name, 2, "tool_call.approval_requested")
    )
    approved = await ap("runs", "approve", run.name, first.call_id)
    assert approved.code == 0 and "the run waits for its other calls" in approved.out
    denied = await ap("runs", "deny", run.name, second.call_id, "--message", "not c2")
    assert denied.code == 0 and "the run continues" in denied.out
    watched = await watching
    assert watched.code == 0, watched.err
    assert "approval needed: cli_tool" in watched.out
    assert f"runs approve {run.name} {first.call_id}" in watched.err
    assert "approved by users/" in watched.out and "denied by users/" in watched.out
    assert "not c2" in watched.out and "[run completed]" in watched.out
    again = await ap("runs", "approve", run.name, first.call_id)
    assert again.code != 0 and "TOOL_CALL_NOT_PENDING" in again.err + again.out


async def test_the_prompt_approves_on_y_and_denies_with_a_message_on_n(
    gw_stack: GatewayStack,
) -> None:
    """The chat and watch prompt: y approves; n asks for a message and denies with it."""
    await add_tool(gw_stack, "prompt_tool", tool_pb2.ALWAYS_ASK)
    owner = gw_stack.owner
    run = await start_run(
        owner,
        'P [[tool=prompt_tool args={"item": "p1"}]] [[tool=prompt_tool args={"item": "p2"}]]',
    )
    first, second = pending_calls(
        await events_until(owner, run.name, 2, "tool_call.approval_requested")
    )
    answers = ["maybe", "y", "n", "try p3 instead"]
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return answers.pop(0)

    with Client(gw_stack.stack.address, owner.api_key) as client:
        ctx = Context(client=client, out=io.StringIO(), err=io.StringIO())
        await asyncio.to_thread(decide_at_prompt, ctx, run.name, first, ask)
        await asyncio.to_thread(decide_at_prompt, ctx, run.name, second, ask)
    assert asked[0] == "Run prompt_tool? [y/n] " and len(asked) == 4
    events = await owner.stream(run.name)
    assert events[-1].type == "run.completed" and "try p3 instead" in reply(events)
