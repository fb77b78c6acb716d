"""Translate stored rows into public API messages."""

from __future__ import annotations

import uuid

from agentplatform.v1 import (
    api_key_pb2,
    invitation_pb2,
    run_pb2,
    session_pb2,
    tool_pb2,
    workspace_pb2,
)

from services.control_plane import store
from services.control_plane.budgets import budget_to_proto
from services.rpc.names import (
    api_key_name,
    invitation_name,
    member_name,
    message_name,
    run_name,
    session_name,
    user_name,
    workspace_name,
)

RUN_STATES = {
    "waiting": run_pb2.Run.QUEUED,
    "queued": run_pb2.Run.QUEUED,
    "running": run_pb2.Run.RUNNING,
    "completed": run_pb2.Run.COMPLETED,
    "failed": run_pb2.Run.FAILED,
    "cancelled": run_pb2.Run.CANCELLED,
    "requires_action": run_pb2.Run.REQUIRES_ACTION,
}
APPROVAL_POLICIES = {
    "always_allow": tool_pb2.ALWAYS_ALLOW,
    "always_ask": tool_pb2.ALWAYS_ASK,
    "never": tool_pb2.NEVER,
}
MESSAGE_ROLES = {"user": session_pb2.Message.USER, "assistant": session_pb2.Message.ASSISTANT}


def session_to_proto(row: store.Record) -> session_pb2.Session:
    """Build a Session from its row."""
    session = session_pb2.Session(
        name=session_name(row["id"]),
        title=row["title"],
        instructions=row["instructions"],
        metadata=row["metadata"],
        model=row["model"],
        tool_approval_overrides={
            tool: APPROVAL_POLICIES[policy]
            for tool, policy in row["tool_approval_overrides"].items()
        },
    )
    session.create_time.FromDatetime(row["create_time"])
    session.update_time.FromDatetime(row["update_time"])
    if row["active_run_id"] is not None:
        session.active_run = run_name(row["id"], row["active_run_id"])
    if row["run_timeout_seconds"] is not None:
        session.run_timeout.FromMilliseconds(round(row["run_timeout_seconds"] * 1000))
    session.run_count = row["run_count"]
    if row["latest_run_state"] is not None:
        session.latest_run_state = RUN_STATES[row["latest_run_state"]]
    session.last_event_sequence = row["last_event_sequence"]
    return session


def message_to_proto(session_id: uuid.UUID, row: store.Record) -> session_pb2.Message:
    """Build a Message from its row."""
    message = session_pb2.Message(
        name=message_name(session_id, row["id"]),
        role=MESSAGE_ROLES[row["role"]],
        text=row["text"],
        author_display_name=row["author_display_name"] or "assistant",
    )
    if row["run_id"] is not None:
        message.run = run_name(session_id, row["run_id"])
    message.create_time.FromDatetime(row["create_time"])
    return message


def run_to_proto(row: store.Record) -> run_pb2.Run:
    """Build a Run from its row."""
    session_id = row["session_id"]
    run = run_pb2.Run(
        name=run_name(session_id, row["id"]),
        state=RUN_STATES[row["state"]],
        input_message=message_name(session_id, row["input_message_id"]),
        attempt=row["attempt"],
        last_event_sequence=row["last_event_sequence"],
        error_reason=row["error_reason"] or "",
        error_message=row["error_message"] or "",
        usage=run_pb2.Usage(
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            reasoning_tokens=row["reasoning_tokens"],
            cached_input_tokens=row["cached_input_tokens"],
            cost_micros=row["cost_micros"],
        ),
    )
    if row["first_output_time"] is not None:
        run.time_to_first_token.FromTimedelta(row["first_output_time"] - row["create_time"])
    if row["end_time"] is not None:
        run.model_latency.FromMilliseconds(row["model_latency_ms"])
    if row["output_message_id"] is not None:
        run.output_message = message_name(session_id, row["output_message_id"])
    run.create_time.FromDatetime(row["create_time"])
    if row["start_time"] is not None:
        run.start_time.FromDatetime(row["start_time"])
    if row["end_time"] is not None:
        run.end_time.FromDatetime(row["end_time"])
    return run


def workspace_to_proto(row: store.Record) -> workspace_pb2.Workspace:
    """Build a Workspace, with the caller's role in it, from its row."""
    workspace = workspace_pb2.Workspace(
        name=workspace_name(row["id"]), display_name=row["display_name"], role=row["role"]
    )
    workspace.create_time.FromDatetime(row["create_time"])
    return workspace


def member_to_proto(row: store.Record) -> workspace_pb2.Member:
    """Build a Member from its row."""
    member = workspace_pb2.Member(
        name=member_name(row["user_id"]),
        user=user_name(row["user_id"]),
        role=row["role"],
        display_name=row["display_name"],
    )
    member.create_time.FromDatetime(row["create_time"])
    return member


def api_key_to_proto(row: store.Record) -> api_key_pb2.ApiKey:
    """Build an ApiKey's metadata from its row; the key itself is never stored."""
    key = api_key_pb2.ApiKey(
        name=api_key_name(row["id"]),
        display_name=row["name"],
        user=user_name(row["user_id"]),
        prefix=f"ap_{row['prefix']}",
        role=row["role"],
        personal=row["personal"],
    )
    key.create_time.FromDatetime(row["create_time"])
    if row["last_used_time"] is not None:
        key.last_use_time.FromDatetime(row["last_used_time"])
    key.budget.CopyFrom(budget_to_proto(row))
    return key


def invitation_to_proto(row: store.Record) -> invitation_pb2.Invitation:
    """Build an Invitation from its row; the token itself is never stored."""
    invitation = invitation_pb2.Invitation(
        name=invitation_name(row["id"]),
        role=row["role"],
        display_name=row["display_name"],
        inviter=user_name(row["created_by"]),
    )
    invitation.create_time.FromDatetime(row["create_time"])
    invitation.expire_time.FromDatetime(row["expire_time"])
    return invitation
