"""A message in, a durable, streamed reply out: the core path over real gRPC and Postgres."""

from __future__ import annotations

import uuid

import asyncpg
from agentplatform.v1 import run_pb2, run_service_pb2, session_pb2, session_service_pb2

from services.rpc.db import role_dsn
from tests.harness import Stack
from tests.integration.helpers import new_run, new_session


async def test_run_completes_with_every_event_type_stored_and_streamed(stack: Stack) -> None:
    """A run streams queued, started, reasoning, output, usage and completed, all stored."""
    client = stack.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "hello there [[tokens=5]] [[reasoning=2]]")
    assert run.state == run_pb2.Run.QUEUED

    events = await client.stream(run.name)

    types = [e.type for e in events]
    assert types == [
        "run.queued",
        "run.started",
        "reasoning.summary.delta",
        "reasoning.summary.delta",
        *["output_text.delta"] * 5,
        "usage",
        "run.completed",
    ]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    reply = "".join(e.output_text_delta.text for e in events if e.type == "output_text.delta")
    assert len(reply.split()) == 5
    done = await client.runs.GetRun(
        run_service_pb2.GetRunRequest(name=run.name), metadata=client.auth, timeout=10
    )
    assert done.state == run_pb2.Run.COMPLETED
    assert done.last_event_sequence == len(events)
    assert done.usage.output_tokens > 0
    assert done.output_message == events[-1].run_completed.output_message

    listed = await client.runs.ListRunEvents(
        run_service_pb2.ListRunEventsRequest(parent=run.name), metadata=client.auth, timeout=10
    )
    assert list(listed.events) == events

    transcript = await client.sessions.ListMessages(
        session_service_pb2.ListMessagesRequest(parent=session.name),
        metadata=client.auth,
        timeout=10,
    )
    assert [(m.role, m.text) for m in transcript.messages] == [
        (session_pb2.Message.USER, "hello there [[tokens=5]] [[reasoning=2]]"),
        (session_pb2.Message.ASSISTANT, reply),
    ]
    assert transcript.messages[0].author_display_name == "Test workspace user"

    conn = await asyncpg.connect(role_dsn(stack.admin_dsn, "ap_control_plane"))
    try:
        stored = await conn.fetch(
            "SELECT sequence, type FROM run_events WHERE run_id = $1 ORDER BY sequence",
            uuid.UUID(run.name.rsplit("/", 1)[1]),
        )
    finally:
        await conn.close()
    assert [(r["sequence"], r["type"]) for r in stored] == [(e.sequence, e.type) for e in events]


async def test_second_run_sees_the_transcript(stack: Stack) -> None:
    """The worker sends the earlier turns of the session to the model."""
    client = stack.owner
    session = await new_session(client)
    first = await new_run(client, session.name, "first message [[tokens=3]]")
    await client.stream(first.name)
    second = await new_run(client, session.name, "second message [[tokens=3]]")
    await client.stream(second.name)

    sent = stack.devmodel.requests[-1]["messages"]
    assert sent[0]["role"] == "system"
    assert "owner" in sent[0]["content"]
    assert [m["role"] for m in sent[1:]] == ["user", "assistant", "user"]
    assert sent[1]["content"] == "first message [[tokens=3]]"
    assert sent[-1]["content"] == "second message [[tokens=3]]"
