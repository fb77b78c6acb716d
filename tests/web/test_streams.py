"""Run and session streams as server-sent events: exact resume, replicas, sharing, cleanup."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import httpx
from agentplatform.events import TERMINAL_TYPES as TERMINAL
from prometheus_client import REGISTRY
from starlette.types import Message

from services.web.app import Edge
from services.web.login import Credentials
from services.web.streams import EventStreamResponse
from services.web.transcode import build_request
from tests.harness import Stack
from tests.integration.helpers import new_member, new_run, new_session
from tests.web.helpers import EventReader, SseEvent, bearer, read_events, running_edge


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _dropped() -> float:
    return sum(
        REGISTRY.get_sample_value("ap_sse_dropped_subscribers_total", {"reason": reason}) or 0.0
        for reason in ("slow", "send_timeout")
    )


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait until `condition()` holds (a metric: it has no change event to await), bounded."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert condition(), what


async def _events(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], **params: str
) -> list[SseEvent]:
    async with http.stream("GET", url, headers=headers, params=params) as response:
        if response.status_code == 204:
            return []
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        return await read_events(response)


async def test_resume_from_every_cursor_gives_exactly_the_suffix(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """After the run, Last-Event-ID or ?after=N yields events N+1… then ends; at the end, 204."""
    auth = bearer(stack.owner.api_key)
    session = await new_session(stack.owner)
    run = await new_run(stack.owner, session.name, "hi [[tokens=6]]")
    url = f"/v1/{run.name}:streamEvents"
    full = await _events(http, url, auth)
    n = len(full)
    assert [int(e.id) for e in full] == list(range(1, n + 1))
    assert full[-1].event in TERMINAL
    assert [e.event for e in full] == [e.data["type"] for e in full]
    for cursor in range(n + 1):
        by_header = await _events(http, url, auth | {"last-event-id": str(cursor)})
        by_query = await _events(http, url, auth, after=str(cursor))
        assert [e.id for e in by_header] == [e.id for e in full[cursor:]]
        assert [e.data for e in by_query] == [e.data for e in full[cursor:]]
    async with http.stream("GET", url, headers=auth | {"last-event-id": str(n)}) as response:
        assert response.status_code == 204  # EventSource stops reconnecting


async def test_last_event_id_wins_over_the_urls_after(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """An EventSource made with ?after=2 reconnects to that URL with a later Last-Event-ID."""
    auth = bearer(stack.owner.api_key)
    session = await new_session(stack.owner)
    run = await new_run(stack.owner, session.name, "hi [[tokens=4]]")
    url = f"/v1/{run.name}:streamEvents"
    full = await _events(http, url, auth)
    resumed = await _events(http, url, auth | {"last-event-id": "5"}, after="2")
    assert [e.id for e in resumed] == [e.id for e in full[5:]]


async def test_a_live_stream_resumes_on_another_replica_without_gap(
    stack: Stack, edge: Edge
) -> None:
    """Read part of a live run from one edge, disconnect, resume on a second: every event once."""
    auth = bearer(stack.owner.api_key)
    session = await new_session(stack.owner)
    run = await new_run(stack.owner, session.name, "hi [[tokens=30]] [[delay_ms=20]]")
    url = f"/v1/{run.name}:streamEvents"
    async with running_edge(stack.address) as other:
        async with (
            httpx.AsyncClient(base_url=edge.url, timeout=15) as first,
            first.stream("GET", url, headers=auth) as response,
        ):
            head = await read_events(response, until={"output_text.delta"})
        async with httpx.AsyncClient(base_url=other.url, timeout=15) as second:
            tail = await _events(second, url, auth | {"last-event-id": head[-1].id})
            full = head + tail
            ids = [int(e.id) for e in full]
            assert ids == list(range(1, len(ids) + 1))
            assert tail[-1].event == "run.completed"
            # After the end, either replica serves exactly the suffix of every cursor.
            async with httpx.AsyncClient(base_url=edge.url, timeout=15) as first:
                for cursor in range(len(full) + 1):
                    client = (first, second)[cursor % 2]
                    resumed = await _events(client, url, auth | {"last-event-id": str(cursor)})
                    assert [e.data for e in resumed] == [e.data for e in full[cursor:]]


async def test_stream_errors_are_http_statuses_before_the_stream_opens(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """A stream the control plane refuses answers its status as JSON, not an event stream."""
    missing = (
        "sessions/00000000-0000-4000-8000-000000000000/runs/00000000-0000-4000-8000-000000000000"
    )
    url = f"/v1/{missing}:streamEvents"
    not_found = await http.get(url, headers=bearer(stack.owner.api_key))
    assert not_found.status_code == 404
    assert not_found.json()["error"]["status"] == "NOT_FOUND"
    unauthenticated = await http.get(url)
    assert unauthenticated.status_code == 401
    bad_cursor = await http.get(
        url, headers=bearer(stack.owner.api_key) | {"last-event-id": "seven"}
    )
    assert bad_cursor.status_code == 400


async def test_a_client_that_disconnects_frees_its_upstream_stream_at_once(
    stack: Stack, edge: Edge
) -> None:
    """Closing an idle session stream ends the edge's subscriber and the control plane's stream."""
    session = await new_session(stack.owner)
    baseline = _sample("ap_stream_subscribers")
    async with (
        httpx.AsyncClient(base_url=edge.url, timeout=15) as http,
        http.stream(
            "GET", f"/v1/{session.name}:streamEvents", headers=bearer(stack.owner.api_key)
        ) as response,
    ):
        assert response.status_code == 200
        await _until(lambda: _sample("ap_stream_subscribers") == baseline + 1, "upstream opened")
        assert _sample("ap_sse_subscribers") >= 1
    await _until(lambda: _sample("ap_stream_subscribers") == baseline, "upstream cancelled")
    await _until(lambda: _sample("ap_sse_subscribers") == 0, "subscriber released")


async def test_an_idle_stream_sends_keep_alive_comments(stack: Stack) -> None:
    """While nothing happens, comments keep proxies from closing the stream."""
    session = await new_session(stack.owner)
    async with (
        running_edge(stack.address, sse_keepalive_seconds=0.05) as edge,
        httpx.AsyncClient(base_url=edge.url, timeout=15) as http,
        http.stream(
            "GET", f"/v1/{session.name}:streamEvents", headers=bearer(stack.owner.api_key)
        ) as response,
    ):
        lines = response.aiter_lines()
        assert await anext(lines) == "retry: 1000"
        seen = [await anext(lines) for _ in range(4)]
        assert ": keep-alive" in seen


async def test_the_session_stream_carries_every_run_with_the_session_cursor(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """Session streams use session_sequence as the id, across runs, and resume by it."""
    auth = bearer(stack.owner.api_key)
    session = await new_session(stack.owner)
    for text in ("one [[tokens=2]]", "two [[tokens=2]]"):
        run = await new_run(stack.owner, session.name, text)
        await stack.owner.stream(run.name)
    url = f"/v1/{session.name}:streamEvents"
    async with http.stream("GET", url, headers=auth) as response:
        events = await _until_terminals(EventReader(response), 2)
    ids = [int(e.id) for e in events]
    assert ids == list(range(1, len(ids) + 1))
    assert [e.id for e in events] == [e.data["sessionSequence"] for e in events]
    async with http.stream("GET", url, headers=auth | {"last-event-id": "3"}) as response:
        resumed = await _until_terminals(EventReader(response), 2)
    assert [e.id for e in resumed] == [e.id for e in events[3:]]


async def _until_terminals(reader: EventReader, terminals: int) -> list[SseEvent]:
    events: list[SseEvent] = []
    while sum(e.event in TERMINAL for e in events) < terminals:
        events += await reader.read(until=TERMINAL)
    return events


async def test_subscribers_with_one_key_share_one_upstream_stream(stack: Stack, edge: Edge) -> None:
    """Ten clients of one run and key cost one upstream stream; each gets its exact suffix."""
    auth = bearer(stack.owner.api_key)
    session = await new_session(stack.owner)
    run = await new_run(stack.owner, session.name, "hi [[tokens=20]] [[delay_ms=30]]")
    url = f"/v1/{run.name}:streamEvents"
    joins = _sample("ap_sse_shared_joins_total")
    async with (
        httpx.AsyncClient(base_url=edge.url, timeout=15) as http,
        http.stream("GET", url, headers=auth) as first,
    ):
        reader = EventReader(first)
        head = await reader.read(until={"output_text.delta"})
        results = await asyncio.gather(
            *(_events(http, url, auth | {"last-event-id": str(cursor)}) for cursor in range(1, 10))
        )
        rest = await reader.read()
    full = head + rest
    assert [int(e.id) for e in full] == list(range(1, len(full) + 1))
    for cursor, events in zip(range(1, 10), results, strict=True):
        assert [e.id for e in events] == [e.id for e in full[cursor:]]
    assert _sample("ap_sse_shared_joins_total") - joins >= 9


async def test_a_revoked_key_cannot_join_a_feed_it_opened(stack: Stack, edge: Edge) -> None:
    """Sharing never skips the control plane: a joiner with a since-revoked key is refused."""
    owner = bearer(stack.owner.api_key)
    session = await new_session(stack.owner)
    async with httpx.AsyncClient(base_url=edge.url, timeout=15) as http:
        created = await http.post("/v1/apiKeys", json={"displayName": "joiner"}, headers=owner)
        assert created.status_code == 200, created.text
        key = bearer(created.json()["key"])
        url = f"/v1/{session.name}:streamEvents"
        async with http.stream("GET", url, headers=key) as first:
            assert first.status_code == 200
            revoked = await http.delete(f"/v1/{created.json()['apiKey']['name']}", headers=owner)
            assert revoked.status_code == 200, revoked.text
            joiner = await http.get(url, headers=key)
            assert joiner.status_code == 401
            assert joiner.json()["error"]["status"] == "UNAUTHENTICATED"


async def test_revoking_a_key_ends_its_shared_feed_for_every_subscriber(
    stack: Stack, edge: Edge
) -> None:
    """The control plane ends the upstream; each subscriber of the feed gets the error event."""
    owner = bearer(stack.owner.api_key)
    session = await new_session(stack.owner)
    async with httpx.AsyncClient(base_url=edge.url, timeout=15) as http:
        created = await http.post("/v1/apiKeys", json={"displayName": "sse"}, headers=owner)
        assert created.status_code == 200, created.text
        key = bearer(created.json()["key"])
        url = f"/v1/{session.name}:streamEvents"
        joins = _sample("ap_sse_shared_joins_total")
        async with (
            http.stream("GET", url, headers=key) as first,
            http.stream("GET", url, headers=key) as second,
        ):
            assert _sample("ap_sse_shared_joins_total") == joins + 1  # one upstream for both
            readers = [EventReader(first), EventReader(second)]
            await new_run(stack.owner, session.name, "hi [[tokens=2]]")
            for reader in readers:
                await reader.read(until=TERMINAL)
            revoked = await http.delete(f"/v1/{created.json()['apiKey']['name']}", headers=owner)
            assert revoked.status_code == 200, revoked.text
            for reader in readers:
                async with asyncio.timeout(1.0):
                    (*_, last) = await reader.read(until={"error"})
                    assert await reader.read() == []  # and the response ends
                error = last.data["error"]
                assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")
                assert [d["reason"] for d in error["details"]] == ["UNAUTHENTICATED"]


async def _new_key(http: httpx.AsyncClient, owner: dict[str, str], name: str) -> tuple[str, str]:
    """Create an API key of the owner's workspace; return (its Authorization, its name)."""
    created = await http.post("/v1/apiKeys", json={"displayName": name}, headers=owner)
    assert created.status_code == 200, created.text
    return f"Bearer {created.json()['key']}", created.json()["apiKey"]["name"]


async def test_two_keys_on_one_run_share_one_upstream_each_from_its_cursor(
    stack: Stack, edge: Edge
) -> None:
    """A second key joins the first key's feed (one upstream, one guard): exact suffixes."""
    owner = bearer(stack.owner.api_key)
    session = await new_session(stack.owner)
    upstreams, guards = _sample("ap_sse_upstream_streams"), _sample("ap_sse_guard_streams")
    async with httpx.AsyncClient(base_url=edge.url, timeout=15) as http:
        other, _ = await _new_key(http, owner, "second")
        run = await new_run(stack.owner, session.name, "hi [[tokens=20]] [[delay_ms=30]]")
        url = f"/v1/{run.name}:streamEvents"
        joins = _sample("ap_sse_shared_joins_total")
        async with http.stream("GET", url, headers=owner) as first:
            reader = EventReader(first)
            head = await reader.read(until={"output_text.delta"})
            async with http.stream(
                "GET", url, headers={"authorization": other, "last-event-id": "2"}
            ) as second:
                assert second.status_code == 200
                assert _sample("ap_sse_shared_joins_total") == joins + 1
                assert _sample("ap_sse_upstream_streams") == upstreams + 1
                assert _sample("ap_sse_guard_streams") == guards + 1
                assert edge.hub is not None and edge.hub.upstream_count == 1
                joined = await read_events(second)
            full = head + await reader.read()
    assert full[-1].event in TERMINAL
    assert [int(e.id) for e in full] == list(range(1, len(full) + 1))
    assert [e.id for e in joined] == [e.id for e in full[2:]]
    await _until(lambda: _sample("ap_sse_upstream_streams") == upstreams, "upstream closed")
    await _until(lambda: _sample("ap_sse_guard_streams") == guards, "guard closed")


async def test_revoking_a_joined_key_ends_only_its_subscriber(stack: Stack, edge: Edge) -> None:
    """The second key's guard ends with its revocation; the first key's stream goes on."""
    owner = bearer(stack.owner.api_key)
    session = await new_session(stack.owner)
    url = f"/v1/{session.name}:streamEvents"
    async with httpx.AsyncClient(base_url=edge.url, timeout=15) as http:
        other, other_name = await _new_key(http, owner, "joined")
        async with (
            http.stream("GET", url, headers=owner) as first,
            http.stream("GET", url, headers={"authorization": other}) as second,
        ):
            assert edge.hub is not None and edge.hub.upstream_count == 1
            readers = [EventReader(first), EventReader(second)]
            await new_run(stack.owner, session.name, "hi [[tokens=2]]")
            before = [await reader.read(until=TERMINAL) for reader in readers]
            assert [e.id for e in before[0]] == [e.id for e in before[1]]
            revoked = await http.delete(f"/v1/{other_name}", headers=owner)
            assert revoked.status_code == 200, revoked.text
            async with asyncio.timeout(5.0):
                (*_, last) = await readers[1].read(until={"error"})
                assert await readers[1].read() == []  # and the response ends
            assert last.data["error"]["status"] == "UNAUTHENTICATED"
            await new_run(stack.owner, session.name, "again [[tokens=2]]")
            after = await readers[0].read(until=TERMINAL)
            assert int(after[0].id) == int(before[0][-1].id) + 1
            assert after[-1].event in TERMINAL


async def test_revoking_the_key_a_shared_upstream_runs_as_hands_it_over_without_gap(
    stack: Stack, edge: Edge
) -> None:
    """The feed's first key is revoked: its subscriber ends; the other resumes gaplessly."""
    owner = bearer(stack.owner.api_key)
    session = await new_session(stack.owner)
    url = f"/v1/{session.name}:streamEvents"
    async with httpx.AsyncClient(base_url=edge.url, timeout=15) as http:
        first_key, first_name = await _new_key(http, owner, "first")
        handovers = _sample("ap_sse_upstream_handovers_total")
        async with (
            http.stream("GET", url, headers={"authorization": first_key}) as first,
            http.stream("GET", url, headers=owner) as second,
        ):
            assert edge.hub is not None and edge.hub.upstream_count == 1
            readers = [EventReader(first), EventReader(second)]
            await new_run(stack.owner, session.name, "hi [[tokens=2]]")
            before = [await reader.read(until=TERMINAL) for reader in readers]
            revoked = await http.delete(f"/v1/{first_name}", headers=owner)
            assert revoked.status_code == 200, revoked.text
            async with asyncio.timeout(5.0):
                (*_, last) = await readers[0].read(until={"error"})
                assert await readers[0].read() == []
            assert last.data["error"]["status"] == "UNAUTHENTICATED"
            await _until(
                lambda: _sample("ap_sse_upstream_handovers_total") == handovers + 1, "handover"
            )
            await new_run(stack.owner, session.name, "again [[tokens=2]] [[delay_ms=20]]")
            after = await readers[1].read(until=TERMINAL)
            ids = [int(e.id) for e in before[1] + after]
            assert ids == list(range(ids[0], ids[0] + len(ids)))
            assert edge.hub.upstream_count == 1


async def test_removing_a_joined_member_ends_only_their_subscriber(
    stack: Stack, edge: Edge
) -> None:
    """DeleteMember ends the member's guard with PERMISSION_DENIED; the owner's stream goes on."""
    owner = bearer(stack.owner.api_key)
    session = await new_session(stack.owner)
    url = f"/v1/{session.name}:streamEvents"
    member, key = await new_member(stack.owner, "member")
    async with (
        httpx.AsyncClient(base_url=edge.url, timeout=15) as http,
        http.stream("GET", url, headers=owner) as first,
        http.stream("GET", url, headers=bearer(key)) as second,
    ):
        assert edge.hub is not None and edge.hub.upstream_count == 1
        readers = [EventReader(first), EventReader(second)]
        await new_run(stack.owner, session.name, "hi [[tokens=2]]")
        before = [await reader.read(until=TERMINAL) for reader in readers]
        removed = await http.delete(f"/v1/{member}", headers=owner)
        assert removed.status_code == 200, removed.text
        async with asyncio.timeout(5.0):
            (*_, last) = await readers[1].read(until={"error"})
            assert await readers[1].read() == []
        assert last.data["error"]["status"] == "PERMISSION_DENIED"
        await new_run(stack.owner, session.name, "again [[tokens=2]]")
        after = await readers[0].read(until=TERMINAL)
        assert int(after[0].id) == int(before[0][-1].id) + 1


async def test_a_client_that_stops_reading_is_dropped_and_resumes_exactly(stack: Stack) -> None:
    """A client whose connection accepts no more bytes is cut off; Last-Event-ID loses nothing.

    Loopback's socket buffers hold megabytes, so the stalled connection is an ASGI `send`
    that never returns after a few writes, as one does when the peer's TCP window is shut.
    """
    session = await new_session(stack.owner)
    run = await new_run(stack.owner, session.name, "hi [[tokens=40]] [[delay_ms=20]]")
    async with running_edge(stack.address, sse_send_timeout_seconds=0.3) as edge:
        assert edge.hub is not None
        route, values = edge.router.match("GET", f"/v1/{run.name}:streamEvents") or (None, {})
        assert route is not None
        request = build_request(route, values, [], b"")
        subscriber = await edge.hub.subscribe(
            route, request, Credentials(f"Bearer {stack.owner.api_key}")
        )
        written: list[bytes] = []
        stalled = asyncio.Event()

        async def send(message: Message) -> None:
            if message["type"] == "http.response.body" and len(written) >= 4:
                stalled.set()
                await asyncio.Event().wait()  # the peer's window stays shut
            written.append(bytes(message.get("body", b"")))

        async def receive() -> Message:
            await asyncio.Event().wait()  # the client never hangs up
            return {"type": "http.disconnect"}

        dropped = _dropped()
        response = EventStreamResponse(subscriber, retry_ms=1000)
        async with asyncio.timeout(10):
            await response({"type": "http"}, receive, send)
        assert stalled.is_set()
        assert _dropped() == dropped + 1
        assert subscriber.feed is None  # released: the upstream call is cancelled
        seen = [int(m) for chunk in written for m in re.findall(rb"^id: (\d+)$", chunk, re.M)]
        assert seen, "nothing was written before the stall"
        async with httpx.AsyncClient(base_url=edge.url, timeout=30) as http:
            rest = await _events(
                http,
                f"/v1/{run.name}:streamEvents",
                bearer(stack.owner.api_key) | {"last-event-id": str(seen[-1])},
            )
    ids = seen + [int(e.id) for e in rest]
    assert ids == list(range(1, len(ids) + 1))
    assert rest[-1].event == "run.completed"


async def test_events_queued_while_a_send_is_blocked_are_all_delivered(stack: Stack) -> None:
    """A client that pauses (its window shut for a while) then reads on loses no event."""
    session = await new_session(stack.owner)
    run = await new_run(stack.owner, session.name, "hi [[tokens=30]] [[delay_ms=10]]")
    async with running_edge(stack.address) as edge:
        assert edge.hub is not None
        route, values = edge.router.match("GET", f"/v1/{run.name}:streamEvents") or (None, {})
        assert route is not None
        subscriber = await edge.hub.subscribe(
            route,
            build_request(route, values, [], b""),
            Credentials(f"Bearer {stack.owner.api_key}"),
        )
        written: list[bytes] = []
        paused_at: int | None = None

        async def send(message: Message) -> None:
            nonlocal paused_at
            if message["type"] == "http.response.body" and len(written) == 3:
                paused_at = subscriber.cursor
                async with asyncio.timeout(10):  # until more events queued behind the pause
                    while subscriber.cursor < paused_at + 5:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
            written.append(bytes(message.get("body", b"")))

        async def receive() -> Message:
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async with asyncio.timeout(20):
            await EventStreamResponse(subscriber, retry_ms=1000)({"type": "http"}, receive, send)
    seen = [int(m) for chunk in written for m in re.findall(rb"^id: (\d+)$", chunk, re.M)]
    assert paused_at is not None
    assert seen == list(range(1, len(seen) + 1)), seen
    assert b"event: run.completed" in written[-2]
