"""ListSessions for a dashboard: each session's run count, latest run state and stream
cursor, and the AIP-160 `filter` (title, labels, latest run state, free text)."""

from __future__ import annotations

import grpc
from agentplatform.v1 import run_pb2, session_pb2, session_service_pb2

from tests.harness import Client, Stack, expect_error
from tests.integration.helpers import new_run


async def _session(client: Client, title: str, **labels: str) -> session_pb2.Session:
    return await client.sessions.CreateSession(
        session_service_pb2.CreateSessionRequest(
            session=session_pb2.Session(title=title, metadata=labels)
        ),
        metadata=client.auth,
        timeout=10,
    )


async def _titles(client: Client, filter_: str, page_size: int = 100) -> list[str]:
    listed = await client.sessions.ListSessions(
        session_service_pb2.ListSessionsRequest(filter=filter_, page_size=page_size),
        metadata=client.auth,
        timeout=10,
    )
    return [s.title for s in listed.sessions]


async def test_sessions_carry_run_count_latest_state_and_cursor(stack: Stack) -> None:
    """A session says how many runs it had, its newest run's state, its last event."""
    owner = await stack.new_workspace("Counting")
    empty = await _session(owner, "empty")
    busy = await _session(owner, "busy")
    for text in ("one [[tokens=2]]", "two [[tokens=2]]"):
        run = await new_run(owner, busy.name, text)
        events = await owner.stream(run.name)
    listed = await owner.sessions.ListSessions(
        session_service_pb2.ListSessionsRequest(), metadata=owner.auth, timeout=10
    )
    by_title = {s.title: s for s in listed.sessions}
    assert by_title["empty"].run_count == 0
    assert by_title["empty"].latest_run_state == run_pb2.Run.STATE_UNSPECIFIED
    assert by_title["empty"].last_event_sequence == 0
    assert by_title["busy"].run_count == 2
    assert by_title["busy"].latest_run_state == run_pb2.Run.COMPLETED
    assert by_title["busy"].last_event_sequence == events[-1].session_sequence
    got = await owner.sessions.GetSession(
        session_service_pb2.GetSessionRequest(name=empty.name), metadata=owner.auth, timeout=10
    )
    assert got.run_count == 0


async def test_filter_by_title_labels_text_and_latest_run_state(stack: Stack) -> None:
    """Each kind of term narrows the list; terms joined by AND narrow it together."""
    owner = await stack.new_workspace("Filtering")
    await _session(owner, "Quarterly Report", team="finance")
    await _session(owner, "Weekly report", team="ops", env="prod")
    done = await _session(owner, "Incident 42", team="ops")
    await owner.stream((await new_run(owner, done.name, "[[tokens=2]]")).name)
    assert await _titles(owner, 'title:"report"') == ["Weekly report", "Quarterly Report"]
    assert await _titles(owner, "metadata.team=ops") == ["Incident 42", "Weekly report"]
    assert await _titles(owner, "metadata.env:*") == ["Weekly report"]
    assert await _titles(owner, '"finance"') == ["Quarterly Report"]  # a label value
    assert await _titles(owner, "incident") == ["Incident 42"]
    assert await _titles(owner, "latest_run_state=COMPLETED") == ["Incident 42"]
    assert await _titles(owner, "latest_run_state=NONE AND metadata.team=ops") == ["Weekly report"]
    assert await _titles(owner, 'title:"report" AND metadata.team="finance"') == [
        "Quarterly Report"
    ]
    assert await _titles(owner, 'title:"100%_"') == []  # no pattern characters


async def test_filtered_pages_continue_only_with_the_same_filter(stack: Stack) -> None:
    """A filtered list pages; its token is refused with another filter."""
    owner = await stack.new_workspace("Paging")
    for n in range(3):
        await _session(owner, f"page {n}", kind="paged")
    first = await owner.sessions.ListSessions(
        session_service_pb2.ListSessionsRequest(filter="metadata.kind=paged", page_size=2),
        metadata=owner.auth,
        timeout=10,
    )
    assert [s.title for s in first.sessions] == ["page 2", "page 1"]
    rest = await owner.sessions.ListSessions(
        session_service_pb2.ListSessionsRequest(
            filter="metadata.kind=paged", page_size=2, page_token=first.next_page_token
        ),
        metadata=owner.auth,
        timeout=10,
    )
    assert [s.title for s in rest.sessions] == ["page 0"] and not rest.next_page_token
    await expect_error(
        owner.sessions.ListSessions(
            session_service_pb2.ListSessionsRequest(
                filter="page", page_size=2, page_token=first.next_page_token
            ),
            metadata=owner.auth,
            timeout=10,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


async def test_a_filter_it_cannot_read_is_invalid_argument(stack: Stack) -> None:
    """Unknown fields, bad states and broken syntax fail naming `filter`, never INTERNAL."""
    owner = stack.owner
    for bad in (
        "owner=me",
        "latest_run_state=SLEEPING",
        'title:"unterminated',
        "title:",
        "a OR b",
        "metadata.team:x",
        "x" * 1001,
        'title:"\x00"',
    ):
        info = await expect_error(
            owner.sessions.ListSessions(
                session_service_pb2.ListSessionsRequest(filter=bad),
                metadata=owner.auth,
                timeout=10,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "LIMIT_EXCEEDED" if len(bad) > 1000 else "INVALID_ARGUMENT",
        )
        assert info is not None, bad
