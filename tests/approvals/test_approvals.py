"""Human approval of tool calls over real gRPC, Postgres, gateway and tool server."""

from __future__ import annotations

import json

import grpc
import pytest
from agentplatform import AsyncClient, ToolCallNotPending
from agentplatform.v1 import (
    run_pb2,
    run_service_pb2,
    session_pb2,
    session_service_pb2,
    tool_pb2,
    tool_service_pb2,
)

from services.rpc.names import parse_workspace_name
from tests.approvals.helpers import (
    ITEM,
    add_tool,
    approve,
    decide,
    deny,
    events_until,
    pending_calls,
    reply,
    restart_workers,
    start_another_worker,
    start_run,
)
from tests.gateway.helpers import GatewayStack
from tests.harness import Client, expect_error
from tests.tenancy.world import add_member

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
    assert decided.state != run_pb2.Run.REQUIRES_ACTION  # queued again (or claimed already)
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


async def _waiting(gw: GatewayStack, text: str, count: int = 1) -> tuple[str, list[str]]:
    """Start a run of `text` and wait until `count` calls wait; return it and their ids."""
    owner = gw.owner
    run = await start_run(owner, text)
    asked = pending_calls(
        await events_until(owner, run.name, count, "tool_call.approval_requested")
    )
    return run.name, [a.call_id for a in asked]


async def test_two_pending_calls_are_decided_one_by_one(gw_stack: GatewayStack) -> None:
    """The run waits until the last call of the turn is decided, then runs only the approved."""
    await add_tool(gw_stack, "ask_two", tool_pb2.ALWAYS_ASK)
    owner = gw_stack.owner
    run, (first, second) = await _waiting(
        gw_stack,
        'Both [[tool=ask_two args={"item": "t1"}]] [[tool=ask_two args={"item": "t2"}]]',
        2,
    )
    still = await decide(owner, run, approve(first))
    assert still.state == run_pb2.Run.REQUIRES_ACTION
    await expect_error(
        decide(owner, run, approve(first)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "TOOL_CALL_NOT_PENDING",
    )
    resumed = await decide(owner, run, deny(second))
    assert resumed.state != run_pb2.Run.REQUIRES_ACTION
    events = await owner.stream(run)
    assert events[-1].type == "run.completed"
    assert _received(gw_stack, "t1") == 1 and _received(gw_stack, "t2") == 0
    results = {
        e.tool_call_completed.call_id: e.tool_call_completed
        for e in events
        if e.type == "tool_call.completed"
    }
    assert not results[first].is_error and results[second].error_code == "DENIED"


async def test_a_double_submitted_approval_runs_the_tool_once(gw_stack: GatewayStack) -> None:
    """A retry with the same request_id returns the run; the tool still runs exactly once."""
    await add_tool(gw_stack, "ask_twice", tool_pb2.ALWAYS_ASK)
    owner = gw_stack.owner
    run, (call,) = await _waiting(gw_stack, 'Once [[tool=ask_twice args={"item": "once"}]]')
    await decide(owner, run, approve(call), request_id="3f5e0f3a-approve-once")
    again = await decide(owner, run, approve(call), request_id="3f5e0f3a-approve-once")
    assert again.name == run
    events = await owner.stream(run)
    assert events[-1].type == "run.completed"
    assert [e.type for e in events].count("tool_call.approved") == 1
    assert _received(gw_stack, "once") == 1


async def test_only_members_decide_and_other_workspaces_see_nothing(
    gw_stack: GatewayStack,
) -> None:
    """A viewer is PERMISSION_DENIED; another workspace's owner gets NOT_FOUND."""
    await add_tool(gw_stack, "ask_who", tool_pb2.ALWAYS_ASK)
    run, (call,) = await _waiting(gw_stack, 'Who [[tool=ask_who args={"item": "who"}]]')
    viewer_here = await _member_of(gw_stack, "viewer")
    await expect_error(
        decide(viewer_here, run, approve(call)),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    stranger = await gw_stack.stack.new_workspace("Strangers")
    await expect_error(decide(stranger, run, approve(call)), grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    await decide(gw_stack.owner, run, deny(call))
    assert (await gw_stack.owner.stream(run))[-1].type == "run.completed"


async def _member_of(gw: GatewayStack, role: str) -> Client:
    """Add a user with `role` to the owner's workspace and return their client."""
    workspace_id = parse_workspace_name(gw.owner.workspace, "workspace")
    _user, key = await add_member(gw.stack, workspace_id, role)
    return gw.stack.client(key, gw.owner.workspace)


async def test_a_never_tool_is_refused_to_the_model(gw_stack: GatewayStack) -> None:
    """NEVER: the call is answered TOOL_REFUSED at once, the tool never runs, no one is asked."""
    await add_tool(gw_stack, "never_tool", tool_pb2.NEVER)
    owner = gw_stack.owner
    run = await start_run(owner, 'No [[tool=never_tool args={"item": "nope"}]]')
    events = await owner.stream(run.name)
    types = [e.type for e in events]
    assert types[-1] == "run.completed" and "tool_call.approval_requested" not in types
    completed = next(e.tool_call_completed for e in events if e.type == "tool_call.completed")
    assert completed.is_error and completed.error_code == "TOOL_REFUSED"
    assert "TOOL_REFUSED" in reply(events) and _received(gw_stack, "nope") == 0


async def test_a_session_tightens_but_never_loosens(gw_stack: GatewayStack) -> None:
    """A session override makes an allowed tool ask; ALWAYS_ALLOW as override is refused."""
    await add_tool(gw_stack, "free_tool", tool_pb2.ALWAYS_ALLOW)
    owner = gw_stack.owner
    await expect_error(
        owner.sessions.CreateSession(
            session_service_pb2.CreateSessionRequest(
                session=session_pb2.Session(
                    tool_approval_overrides={"free_tool": tool_pb2.ALWAYS_ALLOW}
                )
            ),
            metadata=owner.auth,
            timeout=10,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    session = await owner.sessions.CreateSession(
        session_service_pb2.CreateSessionRequest(
            session=session_pb2.Session(tool_approval_overrides={"*": tool_pb2.ALWAYS_ASK})
        ),
        metadata=owner.auth,
        timeout=10,
    )
    assert dict(session.tool_approval_overrides) == {"*": tool_pb2.ALWAYS_ASK}
    run = await start_run(owner, 'Ask [[tool=free_tool args={"item": "tight"}]]', session)
    (asked,) = pending_calls(await events_until(owner, run.name, 1, "tool_call.approval_requested"))
    await decide(owner, run.name, approve(asked.call_id))
    assert (await owner.stream(run.name))[-1].type == "run.completed"
    assert _received(gw_stack, "tight") == 1


async def test_cancel_while_pending_ends_the_run_and_the_session_goes_on(
    gw_stack: GatewayStack,
) -> None:
    """CancelRun of a waiting run: asked, each call answered CANCELLED, cancelled; next run ok."""
    await add_tool(gw_stack, "ask_cancel", tool_pb2.ALWAYS_ASK)
    owner = gw_stack.owner
    run = await start_run(owner, 'Stop [[tool=ask_cancel args={"item": "cx"}]]')
    (asked,) = pending_calls(await events_until(owner, run.name, 1, "tool_call.approval_requested"))
    cancelled = await owner.runs.CancelRun(
        run_service_pb2.CancelRunRequest(name=run.name), metadata=owner.auth, timeout=10
    )
    assert cancelled.state == run_pb2.Run.CANCELLED
    events = await owner.stream(run.name)
    assert [e.type for e in events[-3:]] == [
        "run.cancel_requested",
        "tool_call.completed",
        "run.cancelled",
    ]
    assert events[-2].tool_call_completed.call_id == asked.call_id
    await expect_error(
        decide(owner, run.name, approve(asked.call_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "TOOL_CALL_NOT_PENDING",
    )
    session = run.name.rsplit("/runs/", 1)[0]
    after = await owner.runs.CreateRun(
        run_service_pb2.CreateRunRequest(parent=session, input_text="again [[tokens=2]]"),
        metadata=owner.auth,
        timeout=10,
    )
    assert (await owner.stream(after.name))[-1].type == "run.completed"
    assert _received(gw_stack, "cx") == 0


async def test_an_approval_given_while_no_worker_runs_is_executed_when_one_starts(
    gw_stack: GatewayStack,
) -> None:
    """Approved with every worker down, the run stays queued; a new worker resumes it."""
    await add_tool(gw_stack, "ask_down", tool_pb2.ALWAYS_ASK)
    owner = gw_stack.owner
    run, (call,) = await _waiting(gw_stack, 'Down [[tool=ask_down args={"item": "down"}]]')
    stack = gw_stack.stack
    assert stack.worker is not None
    await stack.worker.stop()
    decided = await decide(owner, run, approve(call))
    assert decided.state == run_pb2.Run.QUEUED
    stack.worker = await start_another_worker(gw_stack)
    events = await owner.stream(run)
    assert events[-1].type == "run.completed" and _received(gw_stack, "down") == 1
    assert [e.type for e in events].count("run.started") == 1


async def test_a_run_waits_across_restarts_of_control_plane_and_workers(
    gw_stack: GatewayStack,
) -> None:
    """Everything but Postgres restarts while a run waits; it still waits, then resumes."""
    await add_tool(gw_stack, "ask_restart", tool_pb2.ALWAYS_ASK)
    run, (call,) = await _waiting(gw_stack, 'Later [[tool=ask_restart args={"item": "rs"}]]')
    await restart_workers(gw_stack, control_plane=True)
    owner = gw_stack.owner
    got = await owner.runs.GetRun(
        run_service_pb2.GetRunRequest(name=run), metadata=owner.auth, timeout=10
    )
    assert got.state == run_pb2.Run.REQUIRES_ACTION
    await decide(owner, run, approve(call))
    events = await owner.stream(run)
    assert events[-1].type == "run.completed" and _received(gw_stack, "rs") == 1
    assert "Tool ask_restart returned:" in reply(events)


async def test_the_sdk_decides_with_typed_methods_and_errors(gw_stack: GatewayStack) -> None:
    """AsyncClient.update_tool and submit_tool_approvals; a repeat raises ToolCallNotPending."""
    await gw_stack.add_http_tool(
        gw_stack.owner, "sdk_tool", gw_stack.tools.base + "/echo/{item}", parameters=ITEM
    )
    async with AsyncClient(gw_stack.stack.address, gw_stack.owner.api_key) as client:
        tool = await client.update_tool("tools/sdk_tool", approval_policy="always_ask")
        assert tool.approval_policy == tool_pb2.ALWAYS_ASK
        run, (call,) = await _waiting(gw_stack, 'SDK [[tool=sdk_tool args={"item": "sdk"}]]')
        await client.submit_tool_approvals(run, deny={call: "use the other one"})
        with pytest.raises(ToolCallNotPending) as raised:
            await client.submit_tool_approvals(run, approve=[call])
        assert raised.value.call_id == call and raised.value.run == run
    events = await gw_stack.owner.stream(run)
    assert "use the other one" in reply(events)


async def test_a_worker_lost_while_an_approved_call_runs_leaves_no_call_without_result(
    gw_stack: GatewayStack,
) -> None:
    """The worker stops while the approved call hangs; the next attempt resumes from the log,
    does not make the call again, gives it a result, and the session's next run works."""
    await gw_stack.add_http_tool(gw_stack.owner, "ask_hang", gw_stack.tools.base + "/wait")
    await gw_stack.tool_api(gw_stack.owner).UpdateTool(
        tool_service_pb2.UpdateToolRequest(
            tool=tool_pb2.Tool(name="tools/ask_hang", approval_policy=tool_pb2.ALWAYS_ASK)
        ),
        metadata=gw_stack.owner.auth,
        timeout=10,
    )
    owner = gw_stack.owner
    run, (call,) = await _waiting(gw_stack, "Hang [[tool=ask_hang]]")
    waits = sum(1 for r in gw_stack.tools.received if r.get("path") == "/wait")
    await decide(owner, run, approve(call))
    await events_until(owner, run, 1, "tool_call.started")
    await restart_workers(gw_stack)  # the old worker hands the run back mid-call
    events = await owner.stream(run)
    types = [e.type for e in events]
    assert types[-1] == "run.completed", types
    assert "run.attempt_started" in types and types.count("tool_call.approved") == 1
    assert sum(1 for r in gw_stack.tools.received if r.get("path") == "/wait") == waits + 1
    results = [e.tool_call_completed for e in events if e.type == "tool_call.completed"]
    assert results and all(r.call_id == call and r.is_error for r in results)
    assert results[-1].error_code in ("CANCELLED", "WORKER_LOST")
    session = run.rsplit("/runs/", 1)[0]
    after = await owner.runs.CreateRun(
        run_service_pb2.CreateRunRequest(parent=session, input_text="next [[tokens=2]]"),
        metadata=owner.auth,
        timeout=10,
    )
    assert (await owner.stream(after.name))[-1].type == "run.completed"
