"""Durable runs in-process: cancel, concurrency policies, timeouts, rescue, release, fencing."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from agentplatform.dispatch.v1 import dispatch_service_pb2 as pb
from agentplatform.dispatch.v1 import dispatch_service_pb2_grpc
from agentplatform.v1 import run_pb2, run_service_pb2, session_pb2, session_service_pb2
from google.protobuf.duration_pb2 import Duration

from tests.harness import Client, Stack, expect_error, start_stack
from tests.integration.helpers import get_run, new_run, new_session

FAST_LEASES: dict[str, Any] = {
    "lease_seconds": 0.6,
    "heartbeat_seconds": 0.1,
    "poll_interval_seconds": 0.1,
    "max_attempts": 2,
}


@pytest_asyncio.fixture(loop_scope="session")
async def fast(database: str) -> AsyncIterator[Stack]:
    """Run a stack whose leases expire in 0.6 s and whose maintenance runs every 0.1 s."""
    async with start_stack(database, internal_token=secrets.token_urlsafe(16), **FAST_LEASES) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="session")
async def no_worker(database: str) -> AsyncIterator[Stack]:
    """Run a fast-lease stack without a worker, so tests can drive dispatch by hand."""
    async with start_stack(
        database, internal_token=secrets.token_urlsafe(16), with_worker=False, **FAST_LEASES
    ) as s:
        yield s


async def create(
    client: Client,
    session: str,
    text: str,
    policy: run_service_pb2.ConcurrencyPolicy.ValueType = run_service_pb2.REJECT,
) -> run_pb2.Run:
    """Create a run with a concurrency policy."""
    return await client.runs.CreateRun(
        run_service_pb2.CreateRunRequest(
            parent=session, input_text=text, concurrency_policy=policy
        ),
        metadata=client.auth,
        timeout=10,
    )


async def cancel(client: Client, run: str) -> run_pb2.Run:
    """Cancel a run."""
    return await client.runs.CancelRun(
        run_service_pb2.CancelRunRequest(name=run), metadata=client.auth, timeout=10
    )


def dispatch_stub(
    stack: Stack,
) -> tuple[dispatch_service_pb2_grpc.DispatchServiceAsyncStub, grpc.aio.Channel]:
    """Open a hand-driven worker's dispatch stub."""
    channel = grpc.aio.insecure_channel(stack.address)
    stub: dispatch_service_pb2_grpc.DispatchServiceAsyncStub = (
        dispatch_service_pb2_grpc.DispatchServiceStub(channel)
    )
    return stub, channel


async def claim(
    stub: dispatch_service_pb2_grpc.DispatchServiceAsyncStub,
    md: tuple[tuple[str, str], ...],
    worker: str,
    wait: Duration,
) -> pb.RunClaim:
    """Claim a run as a hand-driven worker, waiting up to `wait` for one."""
    response = await stub.ClaimRun(pb.ClaimRunRequest(worker_id=worker, wait=wait), metadata=md)
    return response.claim


def worker_md(stack: Stack) -> tuple[tuple[str, str], ...]:
    """Return the internal identity metadata."""
    return (("x-ap-internal-token", stack.internal_token),)


async def test_cancelling_a_queued_run_ends_it_at_once(no_worker: Stack) -> None:
    """A queued run is cancelled immediately, the request logged first; again changes nothing."""
    client = no_worker.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "never started")
    cancelled = await cancel(client, run.name)
    assert cancelled.state == run_pb2.Run.CANCELLED
    events = await client.stream(run.name)
    logged = ["run.queued", "run.cancel_requested", "run.cancelled"]
    assert [e.type for e in events] == logged
    assert events[1].run_cancel_requested.requested_by.startswith("users/")
    again = await cancel(client, run.name)
    assert again.state == run_pb2.Run.CANCELLED
    assert [e.type for e in await client.stream(run.name)] == logged


async def test_cancelling_a_running_run_stops_the_model_within_a_heartbeat(fast: Stack) -> None:
    """The worker learns of the cancel, stops streaming and ends the run as cancelled."""
    client = fast.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "long [[tokens=400]] [[delay_ms=20]]")
    seen = []
    call = client.runs.StreamRunEvents(
        run_service_pb2.StreamRunEventsRequest(name=run.name), metadata=client.auth, timeout=30
    )
    async for response in call:
        seen.append(response.event)
        if response.event.type == "output_text.delta":
            break
    call.cancel()
    await cancel(client, run.name)
    events = await asyncio.wait_for(client.stream(run.name), 5)
    assert events[-1].type == "run.cancelled"
    # Asked, then done: the worker logs who asked before the one terminal event.
    assert events[-2].type == "run.cancel_requested"
    assert events[-2].run_cancel_requested.requested_by.startswith("users/")
    assert [e.type for e in events].count("run.cancelled") == 1
    deltas = [e for e in events if e.type == "output_text.delta"]
    assert len(deltas) < 100, "the model call went on long after the cancel"
    assert (await get_run(client, run.name)).state == run_pb2.Run.CANCELLED
    completed = await client.runs.CancelRun(
        run_service_pb2.CancelRunRequest(name=run.name), metadata=client.auth, timeout=10
    )
    assert completed.state == run_pb2.Run.CANCELLED
    nxt = await new_run(client, session.name, "after cancel [[tokens=2]]")
    assert (await client.stream(nxt.name))[-1].type == "run.completed"


async def test_cancelling_a_finished_run_is_a_harmless_no_op(fast: Stack) -> None:
    """A completed run stays completed, with the same events."""
    client = fast.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "done [[tokens=2]]")
    before = await client.stream(run.name)
    after_cancel = await cancel(client, run.name)
    assert after_cancel.state == run_pb2.Run.COMPLETED
    assert await client.stream(run.name) == before


async def test_enqueue_runs_in_order_after_the_active_run(fast: Stack) -> None:
    """Enqueued runs wait, then run one at a time in creation order."""
    client = fast.owner
    session = await new_session(client)
    runs = [
        await create(
            client, session.name, f"q{i} [[tokens=2]] [[delay_ms=5]]", run_service_pb2.ENQUEUE
        )
        for i in range(4)
    ]
    finals = [await asyncio.wait_for(client.stream(r.name), 10) for r in runs]
    assert all(f[-1].type == "run.completed" for f in finals)
    done = [await get_run(client, r.name) for r in runs]
    for earlier, later in itertools.pairwise(done):
        assert earlier.end_time.ToDatetime() <= later.start_time.ToDatetime()
    messages = await client.sessions.ListMessages(
        session_service_pb2.ListMessagesRequest(parent=session.name),
        metadata=client.auth,
        timeout=10,
    )
    users = [m.text for m in messages.messages if m.role == session_pb2.Message.USER]
    assert users == [f"q{i} [[tokens=2]] [[delay_ms=5]]" for i in range(4)]
    assert len(messages.messages) == 8


async def test_concurrent_enqueue_creates_all_run_and_never_overlap(fast: Stack) -> None:
    """Racing enqueue creates all complete, each after the previous one ended."""
    client = fast.owner
    session = await new_session(client)
    runs = await asyncio.gather(
        *(
            create(client, session.name, f"race {i} [[tokens=1]]", run_service_pb2.ENQUEUE)
            for i in range(6)
        )
    )
    for r in runs:
        assert (await asyncio.wait_for(client.stream(r.name), 10))[-1].type == "run.completed"
    done = sorted(
        [await get_run(client, r.name) for r in runs], key=lambda r: r.start_time.ToDatetime()
    )
    for earlier, later in itertools.pairwise(done):
        assert earlier.end_time.ToDatetime() <= later.start_time.ToDatetime()


async def test_interrupt_cancels_the_active_run_then_starts(fast: Stack) -> None:
    """An interrupting create cancels the running and queued runs; the new one completes."""
    client = fast.owner
    session = await new_session(client)
    slow = await new_run(client, session.name, "slow [[tokens=300]] [[delay_ms=20]]")
    waiting = await create(client, session.name, "queued behind", run_service_pb2.ENQUEUE)
    interrupting = await create(client, session.name, "now [[tokens=2]]", run_service_pb2.INTERRUPT)
    assert (await asyncio.wait_for(client.stream(slow.name), 5))[-1].type == "run.cancelled"
    assert (await client.stream(waiting.name))[-1].type == "run.cancelled"
    assert (await asyncio.wait_for(client.stream(interrupting.name), 5))[-1].type == "run.completed"


async def test_a_run_past_its_session_timeout_fails_with_run_timeout(fast: Stack) -> None:
    """A session's run_timeout ends a slow run as run.failed / RUN_TIMEOUT."""
    client = fast.owner
    session = await client.sessions.CreateSession(
        session_service_pb2.CreateSessionRequest(
            session=session_pb2.Session(title="hurry", run_timeout=Duration(nanos=400_000_000))
        ),
        metadata=client.auth,
        timeout=10,
    )
    assert session.run_timeout.ToMilliseconds() == 400
    run = await new_run(client, session.name, "slow [[tokens=200]] [[delay_ms=20]]")
    events = await asyncio.wait_for(client.stream(run.name), 10)
    assert events[-1].run_failed.reason == "RUN_TIMEOUT"


async def test_an_expired_lease_is_rescued_as_a_new_attempt(no_worker: Stack) -> None:
    """A worker that stops heartbeating loses the run; the next claim is attempt 2."""
    client = no_worker.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "orphan")
    stub, channel = dispatch_stub(no_worker)
    md = worker_md(no_worker)
    try:
        wait = Duration(seconds=5)
        first = await claim(stub, md, "a", wait)
        await stub.AppendRunEvents(
            pb.AppendRunEventsRequest(
                run=first.run,
                fencing_token=first.fencing_token,
                events=[
                    run_pb2.RunEvent(
                        sequence=2, output_text_delta=run_pb2.TextDelta(text="partial")
                    )
                ],
            ),
            metadata=md,
        )
        # Worker "a" now goes silent; the rescue hands the run to worker "b".
        second = await claim(stub, md, "b", wait)
        assert second.run == run.name
        assert second.attempt == 2
        assert second.fencing_token > first.fencing_token
        # The zombie's writes are all refused.
        await expect_error(
            stub.AppendRunEvents(
                pb.AppendRunEventsRequest(
                    run=first.run,
                    fencing_token=first.fencing_token,
                    events=[
                        run_pb2.RunEvent(
                            sequence=4, output_text_delta=run_pb2.TextDelta(text="late")
                        )
                    ],
                ),
                metadata=md,
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "LEASE_LOST",
        )
        await expect_error(
            stub.FinishRun(
                pb.FinishRunRequest(
                    run=first.run,
                    fencing_token=first.fencing_token,
                    completed=pb.FinishRunRequest.Completed(text="zombie reply"),
                ),
                metadata=md,
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "LEASE_LOST",
        )
        await stub.FinishRun(
            pb.FinishRunRequest(
                run=second.run,
                fencing_token=second.fencing_token,
                completed=pb.FinishRunRequest.Completed(text="real reply"),
            ),
            metadata=md,
        )
    finally:
        await channel.close(None)
    events = await client.stream(run.name)
    assert [e.type for e in events] == [
        "run.queued",
        "output_text.delta",
        "run.attempt_started",
        "run.completed",
    ]
    assert events[2].run_attempt_started.reason == "WORKER_LOST"
    assert [e.attempt for e in events] == [0, 1, 2, 2]
    messages = await client.sessions.ListMessages(
        session_service_pb2.ListMessagesRequest(parent=session.name),
        metadata=client.auth,
        timeout=10,
    )
    assert [m.text for m in messages.messages] == ["orphan", "real reply"]


async def test_a_run_whose_workers_keep_dying_fails_with_worker_lost(no_worker: Stack) -> None:
    """After max_attempts lost leases the run fails WORKER_LOST and is never claimed again."""
    client = no_worker.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "cursed")
    stub, channel = dispatch_stub(no_worker)
    md = worker_md(no_worker)
    try:
        wait = Duration(seconds=5)
        for attempt in (1, 2):
            claimed = await claim(stub, md, "w", wait)
            assert claimed.attempt == attempt
        events = await asyncio.wait_for(client.stream(run.name), 10)
        nothing = await stub.ClaimRun(
            pb.ClaimRunRequest(worker_id="w", wait=Duration(nanos=300_000_000)), metadata=md
        )
        assert not nothing.HasField("claim")
    finally:
        await channel.close(None)
    assert [e.type for e in events] == ["run.queued", "run.attempt_started", "run.failed"]
    assert events[-1].run_failed.reason == "WORKER_LOST"
    assert (await get_run(client, run.name)).error_reason == "WORKER_LOST"


async def test_a_released_run_is_claimable_at_once_as_a_new_attempt(no_worker: Stack) -> None:
    """A draining worker's ReleaseRun requeues the run with run.attempt_started."""
    client = no_worker.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "hand back")
    stub, channel = dispatch_stub(no_worker)
    md = worker_md(no_worker)
    try:
        wait = Duration(seconds=5)
        first = await claim(stub, md, "a", wait)
        await stub.ReleaseRun(
            pb.ReleaseRunRequest(run=first.run, fencing_token=first.fencing_token), metadata=md
        )
        second = await claim(stub, md, "b", Duration(nanos=200_000_000))
        assert second.run == run.name
        assert second.attempt == 2
    finally:
        await channel.close(None)
    events = await client.runs.ListRunEvents(
        run_service_pb2.ListRunEventsRequest(parent=run.name), metadata=client.auth, timeout=10
    )
    assert [e.type for e in events.events] == ["run.queued", "run.attempt_started"]
    assert events.events[1].run_attempt_started.reason == "WORKER_DRAINED"


async def test_session_stream_carries_every_run_and_resumes_from_its_cursor(fast: Stack) -> None:
    """StreamSessionEvents orders all runs' events by a session cursor, resumable anywhere."""
    client = fast.owner
    session = await new_session(client)
    first = await new_run(client, session.name, "one [[tokens=2]]")
    await client.stream(first.name)
    second = await new_run(client, session.name, "two [[tokens=2]]")
    await client.stream(second.name)
    expected = (await client.stream(first.name)) + (await client.stream(second.name))

    async def read_session(after: int, count: int) -> list[run_pb2.RunEvent]:
        call = client.runs.StreamSessionEvents(
            run_service_pb2.StreamSessionEventsRequest(
                name=session.name, after_session_sequence=after
            ),
            metadata=client.auth,
            timeout=10,
        )
        got = []
        async for response in call:
            got.append(response.event)
            if len(got) == count:
                break
        call.cancel()
        return got

    everything = await read_session(0, len(expected))
    assert [e.session_sequence for e in everything] == list(range(1, len(expected) + 1))
    assert [(e.name, e.type) for e in everything] == [(e.name, e.type) for e in expected]
    resumed = await read_session(3, len(expected) - 3)
    assert resumed == everything[3:]

    # Live: a third run shows up on an open session stream.
    call = client.runs.StreamSessionEvents(
        run_service_pb2.StreamSessionEventsRequest(
            name=session.name, after_session_sequence=len(expected)
        ),
        metadata=client.auth,
        timeout=10,
    )
    third = await new_run(client, session.name, "three [[tokens=1]]")
    live = []
    async for response in call:
        live.append(response.event)
        if response.event.type == "run.completed":
            break
    call.cancel()
    assert all(e.name.startswith(third.name) for e in live)
    assert live[0].session_sequence == len(expected) + 1


async def test_a_stopping_control_plane_ends_streams_with_a_reconnect_status(database: str) -> None:
    """On stop, open streams end with UNAVAILABLE / SERVER_SHUTTING_DOWN at once."""
    async with start_stack(
        database, internal_token=secrets.token_urlsafe(16), with_worker=False
    ) as s:
        client = s.owner
        session = await new_session(client)
        run = await new_run(client, session.name, "waiting forever")
        call = client.runs.StreamRunEvents(
            run_service_pb2.StreamRunEventsRequest(name=run.name), metadata=client.auth, timeout=10
        )
        first = await call.read()
        assert isinstance(first, run_service_pb2.StreamRunEventsResponse)
        assert first.event.type == "run.queued"
        stopping = asyncio.create_task(s.control_plane.stop())
        await expect_error(call.read(), grpc.StatusCode.UNAVAILABLE, "SERVER_SHUTTING_DOWN")
        await stopping


@pytest.mark.parametrize("policy", [99, -1])
async def test_unknown_concurrency_policies_are_invalid(
    fast: Stack, policy: run_service_pb2.ConcurrencyPolicy.ValueType
) -> None:
    """A policy outside the enum is refused."""
    client = fast.owner
    session = await new_session(client)
    await expect_error(
        create(client, session.name, "x", policy),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


class SessionWatcher:
    """Collect a session's live events from an open StreamSessionEvents."""

    def __init__(self, client: Client, session: str) -> None:
        self.events: list[run_pb2.RunEvent] = []
        self._changed = asyncio.Event()
        self._call = client.runs.StreamSessionEvents(
            run_service_pb2.StreamSessionEventsRequest(name=session), metadata=client.auth
        )
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for response in self._call:
            self.events.append(response.event)
            self._changed.set()

    async def wait_for(self, run: str, event_type: str, timeout: float = 10) -> None:
        """Wait until the stream has delivered an event of this type for the run."""
        async with asyncio.timeout(timeout):
            while not any(e.name.startswith(run) and e.type == event_type for e in self.events):
                self._changed.clear()
                await self._changed.wait()

    def of(self, run: str) -> list[run_pb2.RunEvent]:
        """Return the run's events as they were streamed."""
        return [e for e in self.events if e.name.startswith(f"{run}/")]

    async def close(self) -> None:
        """Stop streaming."""
        self._call.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_every_live_event_is_byte_identical_to_the_listed_one(no_worker: Stack) -> None:
    """Create, append, finish, release, rescue, cancel: live events equal ListRunEvents'."""
    client = no_worker.owner
    session = await new_session(client)
    watcher = SessionWatcher(client, session.name)
    stub, channel = dispatch_stub(no_worker)
    md = worker_md(no_worker)
    wait = Duration(seconds=5)
    try:
        # A: appended to, its lease lost and rescued, then finished by a second worker.
        rescued = await new_run(client, session.name, "rescued")
        first = await claim(stub, md, "a", wait)
        await stub.AppendRunEvents(
            pb.AppendRunEventsRequest(
                run=first.run,
                fencing_token=first.fencing_token,
                events=[
                    run_pb2.RunEvent(sequence=2, output_text_delta=run_pb2.TextDelta(text="p"))
                ],
            ),
            metadata=md,
        )
        second = await claim(stub, md, "b", wait)
        await stub.FinishRun(
            pb.FinishRunRequest(
                run=second.run,
                fencing_token=second.fencing_token,
                events=[
                    run_pb2.RunEvent(sequence=4, output_text_delta=run_pb2.TextDelta(text="r"))
                ],
                completed=pb.FinishRunRequest.Completed(text="r"),
            ),
            metadata=md,
        )
        await watcher.wait_for(rescued.name, "run.completed")
        # B: released by a draining worker, then cancelled while queued.
        released = await new_run(client, session.name, "released")
        held = await claim(stub, md, "c", wait)
        await stub.ReleaseRun(
            pb.ReleaseRunRequest(run=held.run, fencing_token=held.fencing_token), metadata=md
        )
        await watcher.wait_for(released.name, "run.attempt_started")
        await cancel(client, released.name)
        await watcher.wait_for(released.name, "run.cancelled")
        # C: its worker lost on every attempt, failed by the rescue.
        lost = await new_run(client, session.name, "lost")
        for worker in ("d", "e"):
            await claim(stub, md, worker, wait)
        await watcher.wait_for(lost.name, "run.failed")
    finally:
        await channel.close(None)
        await watcher.close()
    for run in (rescued, released, lost):
        listed = await client.runs.ListRunEvents(
            run_service_pb2.ListRunEventsRequest(parent=run.name), metadata=client.auth, timeout=10
        )
        assert [e.SerializeToString() for e in watcher.of(run.name)] == [
            e.SerializeToString() for e in listed.events
        ], run.name
    assert [e.type for e in watcher.of(rescued.name)] == [
        "run.queued",
        "output_text.delta",
        "run.attempt_started",
        "output_text.delta",
        "run.completed",
    ]
