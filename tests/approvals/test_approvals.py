"""Human approval of tool calls over real gRPC, Postgres, gateway and tool server."""

from __future__ import annotations

import json

import pytest
from agentplatform.v1 import run_pb2, run_service_pb2, tool_pb2

from tests.approvals.helpers import (
    add_tool,
    approve,
    decide,
    deny,
    events_until,
    pending_calls,
    reply,
    start_run,
)
from tests.gateway.helpers import GatewayStack

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]


def _received(gw: GatewayStack, item: str) -> int:
    return sum(1 for r in gw.tools.received if r.get("item") == item)


async def test_an_approved_call_runs_once_and_the_run_completes(gw_stack: GatewayStack) -> None:
    """ALWAYS_ASK parks the run in REQUIRES_ACTION; approving runs the tool once, then replies."""
    tool = await add_tool(gw_stack, "ask_lookup", tool_pb2.ALWAYS_ASK)
    assert tool.approval_policy == tool_pb2.ALWAYS_ASK
    owner = gw_stack.owner
    run = await start_run(owner, 'Look [[tool=ask_lookup args={"item": "one"}]]')
    waiting = await events_until(owner, run.name, 1, "tool_call.approval_requested")
    (asked,) = pending_calls(waiting)
    assert asked.tool == "ask_lookup" and json.loads(asked.arguments_json) == {"item": "one"}
    assert list(asked.approver_roles) == ["member", "admin", "owner"]
    assert asked.expire_time.seconds > 0
    got = await owner.runs.GetRun(
        run_service_pb2.GetRunRequest(name=run.name),
        metadata=owner.auth,
        timeout=10,
    )
    assert got.state == run_pb2.Run.REQUIRES_ACTION
    assert _received(gw_stack, "one") == 0
    decided = await decide(owner, run.name, approve(asked.call_id))
    assert decided.state == run_pb2.Run.QUEUED
    events = await owner.stream(run.name)
    types = [e.type for e in events]
    assert types[-1] == "run.completed", types
    assert types.count("run.started") == 1 and "run.attempt_started" not in types
    approved = next(e.tool_call_approved for e in events if e.type == "tool_call.approved")
    assert approved.decided_by.startswith("users/")
    assert types.index("tool_call.approved") < types.index("tool_call.started")
    assert _received(gw_stack, "one") == 1
    assert "Tool ask_lookup returned:" in reply(events)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


async def test_a_denied_call_reaches_the_model_as_a_denial(gw_stack: GatewayStack) -> None:
    """Deny with a message: the tool never runs and the model answers from the denial."""
    await add_tool(gw_stack, "ask_deny", tool_pb2.ALWAYS_ASK)
    owner = gw_stack.owner
    run = await start_run(owner, 'Look [[tool=ask_deny args={"item": "two"}]]')
    (asked,) = pending_calls(await events_until(owner, run.name, 1, "tool_call.approval_requested"))
    await decide(owner, run.name, deny(asked.call_id, "not today"))
    events = await owner.stream(run.name)
    assert events[-1].type == "run.completed"
    denied = next(e.tool_call_denied for e in events if e.type == "tool_call.denied")
    assert denied.reason == "DENIED" and denied.message == "not today"
    completed = next(e.tool_call_completed for e in events if e.type == "tool_call.completed")
    assert completed.is_error and completed.error_code == "DENIED"
    assert "not today" in reply(events) and "DENIED" in reply(events)
    assert _received(gw_stack, "two") == 0
