"""What the approval tests share: tools with a policy, runs that wait, and decisions."""

from __future__ import annotations

import asyncio

from agentplatform.v1 import (
    run_pb2,
    run_service_pb2,
    session_pb2,
    session_service_pb2,
    tool_pb2,
    tool_service_pb2,
)
from google.protobuf import field_mask_pb2

from services.control_plane.app import ControlPlane
from services.worker.app import Worker
from tests.gateway.helpers import GatewayStack
from tests.harness import Client

APPROVE = run_service_pb2.ToolApprovalDecision.APPROVE
DENY = run_service_pb2.ToolApprovalDecision.DENY
ITEM = {
    "type": "object",
    "properties": {"item": {"type": "string"}},
    "required": ["item"],
    "additionalProperties": False,
}


async def add_tool(
    gw: GatewayStack, tool_id: str, policy: tool_pb2.ApprovalPolicy.ValueType
) -> tool_pb2.Tool:
    """Register an echo tool of the test server, then give it `policy` with UpdateTool."""
    await gw.add_http_tool(gw.owner, tool_id, gw.tools.base + "/echo/{item}", parameters=ITEM)
    return await gw.tool_api(gw.owner).UpdateTool(
        tool_service_pb2.UpdateToolRequest(
            tool=tool_pb2.Tool(name=f"tools/{tool_id}", approval_policy=policy),
            update_mask=field_mask_pb2.FieldMask(paths=["approval_policy"]),
        ),
        metadata=gw.owner.auth,
        timeout=10,
    )


async def start_run(
    client: Client, text: str, session: session_pb2.Session | None = None
) -> run_pb2.Run:
    """Create a session (unless given) and a run of `text` in it."""
    if session is None:
        session = await client.sessions.CreateSession(
            session_service_pb2.CreateSessionRequest(session=session_pb2.Session(title="a")),
            metadata=client.auth,
            timeout=10,
        )
    return await client.runs.CreateRun(
        run_service_pb2.CreateRunRequest(parent=session.name, input_text=text),
        metadata=client.auth,
        timeout=10,
    )


async def events_until(
    client: Client, run: str, count: int, event_type: str, timeout: float = 30.0
) -> list[run_pb2.RunEvent]:
    """Stream a run's events until `count` events of `event_type` (or the terminal) arrived."""
    seen: list[run_pb2.RunEvent] = []
    call = client.runs.StreamRunEvents(
        run_service_pb2.StreamRunEventsRequest(name=run), metadata=client.auth, timeout=timeout
    )
    try:
        async with asyncio.timeout(timeout):
            async for response in call:
                seen.append(response.event)
                if sum(e.type == event_type for e in seen) >= count:
                    break
    finally:
        call.cancel()
    return seen


def pending_calls(events: list[run_pb2.RunEvent]) -> list[run_pb2.ToolCallApprovalRequested]:
    """Return the approval requests among events, in order."""
    return [
        e.tool_call_approval_requested for e in events if e.HasField("tool_call_approval_requested")
    ]


def approve(call_id: str) -> run_service_pb2.ToolApprovalDecision:
    """Build the approval of a call."""
    return run_service_pb2.ToolApprovalDecision(call_id=call_id, decision=APPROVE)


def deny(call_id: str, message: str = "") -> run_service_pb2.ToolApprovalDecision:
    """Build the denial of a call, with a message to the model."""
    return run_service_pb2.ToolApprovalDecision(call_id=call_id, decision=DENY, message=message)


async def decide(
    client: Client,
    run: str,
    *decisions: run_service_pb2.ToolApprovalDecision,
    request_id: str = "",
) -> run_pb2.Run:
    """Submit decisions on a run's pending calls."""
    return await client.runs.SubmitToolApprovals(
        run_service_pb2.SubmitToolApprovalsRequest(
            run=run, request_id=request_id, decisions=list(decisions)
        ),
        metadata=client.auth,
        timeout=10,
    )


def reply(events: list[run_pb2.RunEvent]) -> str:
    """Return the reply text the events streamed."""
    return "".join(e.output_text_delta.text for e in events if e.type == "output_text.delta")


async def restart_workers(gw: GatewayStack, *, control_plane: bool = False) -> None:
    """Stop the worker (and with `control_plane`, the control plane), then start new ones.

    Nothing but Postgres carries state across: the new processes' objects share nothing with
    the old ones but their settings. The owner's client moves to the new control plane.
    """
    stack = gw.stack
    assert stack.worker is not None
    await stack.worker.stop()
    if control_plane:
        await stack.control_plane.stop()
        fresh = ControlPlane(stack.control_plane.settings, stack.control_plane.model)
        await fresh.start()
        stack.control_plane = fresh
        stack.owner = stack.client(stack.owner.api_key, stack.owner.workspace)
    stack.worker = await start_another_worker(gw)


async def start_another_worker(gw: GatewayStack) -> Worker:
    """Start a worker like the stack's own, attached to its current control plane."""
    old = gw.stack.worker
    assert old is not None
    settings = old.settings.model_copy(update={"control_plane_address": gw.stack.address})
    worker = Worker(settings, old.model)
    await worker.start()
    return worker
