"""StreamRunEvents: replay then tail, resume from any cursor, many subscribers."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
from agentplatform.v1 import run_service_pb2

from tests.harness import Client, Stack, start_control_plane
from tests.integration.helpers import new_run, new_session


async def test_resume_from_every_cursor_after_the_run_ended(stack: Stack) -> None:
    """Each cursor k yields exactly the stored events k+1..n, with no gap and no duplicate."""
    client = stack.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "resume me [[tokens=6]] [[reasoning=1]]")
    full = await client.stream(run.name)
    n = len(full)
    assert [e.sequence for e in full] == list(range(1, n + 1))
    for cursor in range(n + 1):
        resumed = await client.stream(run.name, after=cursor)
        if cursor < n:
            assert resumed == full[cursor:]
    # A cursor at or past the terminal event has nothing more to send: the stream ends empty.
    assert await client.stream(run.name, after=n) == []
    assert await client.stream(run.name, after=n + 10) == []


async def test_reconnecting_mid_run_continues_where_the_client_left(stack: Stack) -> None:
    """A client that drops the live stream and resumes from its last sequence sees the rest."""
    client = stack.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "slow [[tokens=12]] [[delay_ms=20]] [[reasoning=0]]")
    seen = []
    call = client.runs.StreamRunEvents(
        run_service_pb2.StreamRunEventsRequest(name=run.name), metadata=client.auth, timeout=30
    )
    async for response in call:
        seen.append(response.event)
        if response.event.type == "output_text.delta" and len(seen) >= 5:
            break
    call.cancel()
    assert seen[-1].type == "output_text.delta"
    rest = await client.stream(run.name, after=seen[-1].sequence)
    combined = seen + rest
    assert [e.sequence for e in combined] == list(range(1, len(combined) + 1))
    assert combined[-1].type == "run.completed"
    assert combined == await client.stream(run.name)


async def test_many_concurrent_subscribers_each_get_the_whole_log(stack: Stack) -> None:
    """Twenty subscribers opened while the run streams all receive the identical full log."""
    client = stack.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "fan out [[tokens=15]] [[delay_ms=10]]")
    subscribers = [stack.client(client.api_key) for _ in range(4)]
    results = await asyncio.gather(*(subscribers[i % 4].stream(run.name) for i in range(20)))
    expected = await client.stream(run.name)
    assert expected[-1].type == "run.completed"
    for events in results:
        assert events == expected


async def test_stream_subscribed_before_the_worker_starts_sees_everything(stack: Stack) -> None:
    """A subscriber waiting on a queued run receives every event once the run proceeds."""
    client = stack.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "early bird [[tokens=3]] [[delay_ms=5]]")
    events = await client.stream(run.name)
    assert events[0].type == "run.queued"
    assert events[-1].type == "run.completed"
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


async def test_a_run_streams_to_a_client_of_another_replica(stack: Stack) -> None:
    """A second control plane delivers the run live through NOTIFY, not through its poller."""
    replica = await start_control_plane(
        stack.admin_dsn,
        stack.internal_token,
        stack.control_plane.model,
        # Long enough that only the NOTIFY path can deliver this run in time.
        poll_interval_seconds=30.0,
    )
    channel = grpc.aio.insecure_channel(replica.address)
    try:
        remote = Client(channel, stack.owner.api_key)
        session = await new_session(stack.owner)
        run = await new_run(stack.owner, session.name, "cross [[tokens=10]] [[delay_ms=30]]")
        events = await asyncio.wait_for(remote.stream(run.name), 10)
        assert events == await stack.owner.stream(run.name)
        assert events[-1].type == "run.completed"
    finally:
        await channel.close(None)
        await replica.stop()


async def test_a_killed_listen_connection_reconnects_and_keeps_delivering(stack: Stack) -> None:
    """After its LISTEN backend is terminated, a replica reconnects and live delivery resumes."""
    replica = await start_control_plane(
        stack.admin_dsn,
        stack.internal_token,
        stack.control_plane.model,
        poll_interval_seconds=30.0,
    )
    channel = grpc.aio.insecure_channel(replica.address)
    admin = await asyncpg.connect(stack.admin_dsn)
    try:
        listener = replica.listener
        await asyncio.wait_for(listener.connected.wait(), 10)
        reconnected = listener.reconnects
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'ap-listener' AND datname = current_database()"
        )
        assert killed >= 1
        await asyncio.wait_for(listener.wait_reconnected(after=reconnected), 10)
        remote = Client(channel, stack.owner.api_key)
        session = await new_session(stack.owner)
        run = await new_run(stack.owner, session.name, "relisten [[tokens=10]] [[delay_ms=30]]")
        events = await asyncio.wait_for(remote.stream(run.name), 10)
        assert events == await stack.owner.stream(run.name)
    finally:
        await admin.close()
        await channel.close(None)
        await replica.stop()
