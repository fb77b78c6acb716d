"""CreateRun rules: idempotent retries, one active run per session, model failures."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from agentplatform.v1 import run_pb2, session_pb2, session_service_pb2

from tests.harness import Stack, expect_error
from tests.integration.helpers import get_run, new_run, new_session


async def test_retried_create_with_the_same_request_id_returns_the_same_run(stack: Stack) -> None:
    """A create retried with its request_id returns the first run and stores nothing new."""
    client = stack.owner
    session = await new_session(client)
    request_id = str(uuid.uuid4())
    first = await new_run(client, session.name, "once [[tokens=2]]", request_id)
    again = await new_run(client, session.name, "once [[tokens=2]]", request_id)
    assert again.name == first.name
    await client.stream(first.name)
    after_finish = await new_run(client, session.name, "once [[tokens=2]]", request_id)
    assert after_finish.name == first.name
    messages = await client.sessions.ListMessages(
        session_service_pb2.ListMessagesRequest(parent=session.name),
        metadata=client.auth,
        timeout=10,
    )
    assert [m.role for m in messages.messages] == [
        session_pb2.Message.USER,
        session_pb2.Message.ASSISTANT,
    ]


async def test_concurrent_creates_with_one_request_id_make_one_run(stack: Stack) -> None:
    """Racing retries of one create all return the same run."""
    client = stack.owner
    session = await new_session(client)
    request_id = str(uuid.uuid4())
    runs = await asyncio.gather(
        *(new_run(client, session.name, "race [[tokens=2]]", request_id) for _ in range(8))
    )
    assert len({r.name for r in runs}) == 1
    await client.stream(runs[0].name)


async def test_session_create_is_idempotent_by_request_id(stack: Stack) -> None:
    """CreateSession retried with its request_id returns the same session."""
    client = stack.owner
    request = session_service_pb2.CreateSessionRequest(
        session=session_pb2.Session(title="idem"), request_id=str(uuid.uuid4())
    )
    first = await client.sessions.CreateSession(request, metadata=client.auth, timeout=10)
    again = await client.sessions.CreateSession(request, metadata=client.auth, timeout=10)
    assert first.name == again.name


async def test_second_create_while_a_run_is_active_is_refused_naming_it(stack: Stack) -> None:
    """A create while the session's run is active fails with RUN_ALREADY_ACTIVE and its name."""
    client = stack.owner
    session = await new_session(client)
    active = await new_run(client, session.name, "hold on [[hang]]")
    info = await expect_error(
        new_run(client, session.name, "me too"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RUN_ALREADY_ACTIVE",
    )
    assert info.metadata["active_run"] == active.name
    shown = await client.sessions.GetSession(
        session_service_pb2.GetSessionRequest(name=session.name), metadata=client.auth, timeout=10
    )
    assert shown.active_run == active.name
    # The hanging model call times out, which frees the session for the next run.
    events = await client.stream(active.name)
    assert events[-1].run_failed.reason == "MODEL_TIMEOUT"
    nxt = await new_run(client, session.name, "now [[tokens=1]]")
    assert (await client.stream(nxt.name))[-1].type == "run.completed"


async def test_concurrent_creates_in_one_session_start_only_one_run(stack: Stack) -> None:
    """Of many racing creates without request_id, exactly one wins; the rest are refused."""
    client = stack.owner
    session = await new_session(client)
    results = await asyncio.gather(
        # Slow enough that the winner is still active when the last create arrives.
        *(
            new_run(client, session.name, f"race {i} [[tokens=3]] [[delay_ms=300]]")
            for i in range(6)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, run_pb2.Run)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == 5
    assert all(e.code() == grpc.StatusCode.FAILED_PRECONDITION for e in losers)
    await client.stream(winners[0].name)


@pytest.mark.parametrize(
    ("directive", "reason"),
    [
        ("[[fail=500]]", "MODEL_ERROR"),
        ("[[fail=429]]", "MODEL_ERROR"),
        ("[[hang]]", "MODEL_TIMEOUT"),
        ("[[hang_after=2]]", "MODEL_TIMEOUT"),
        ("[[malformed]]", "MODEL_ERROR"),
    ],
)
async def test_model_failures_end_the_run_as_failed_with_a_reason(
    stack: Stack, directive: str, reason: str
) -> None:
    """HTTP errors, silence and malformed streams each end as run.failed, never a stuck run."""
    client = stack.owner
    session = await new_session(client)
    run = await new_run(client, session.name, f"break {directive}")
    events = await client.stream(run.name)
    assert events[-1].type == "run.failed"
    assert events[-1].run_failed.reason == reason
    assert events[-1].run_failed.message
    done = await get_run(client, run.name)
    assert done.state == run_pb2.Run.FAILED
    assert done.error_reason == reason
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    # A failed run leaves the session usable.
    nxt = await new_run(client, session.name, "after failure [[tokens=2]]")
    assert (await client.stream(nxt.name))[-1].type == "run.completed"
