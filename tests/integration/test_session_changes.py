"""UpdateSession and DeleteSession against real Postgres, real gRPC servers and a real worker."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from agentplatform.dispatch.v1 import dispatch_service_pb2 as pb
from agentplatform.dispatch.v1 import dispatch_service_pb2_grpc
from agentplatform.v1 import run_pb2, run_service_pb2, session_pb2, session_service_pb2
from google.protobuf import field_mask_pb2
from google.protobuf.duration_pb2 import Duration

from services.rpc.db import role_dsn
from tests.conftest import clone_database
from tests.harness import Client, Stack, expect_error, start_control_plane, start_stack
from tests.integration.helpers import get_run, new_run, new_session
from tests.tenancy.world import add_member

# No worker answers the hand-held runs, so a forced delete waits 3 heartbeats: keep them short.
FAST: dict[str, Any] = {
    "lease_seconds": 0.6,
    "heartbeat_seconds": 0.1,
    "poll_interval_seconds": 0.1,
}
TABLES = ("messages", "runs", "run_events", "tool_calls")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def one_slot(pg_admin_dsn: str, template_dsn: str) -> AsyncIterator[Stack]:
    """Run a stack whose worker runs one run at a time, so a slot still held shows."""
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    async with start_stack(
        dsn, internal_token=secrets.token_urlsafe(16), worker_settings={"worker_concurrency": 1}
    ) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def no_worker(database: str) -> AsyncIterator[Stack]:
    """Run a one_slot stack without a worker, so a test drives dispatch by hand."""
    async with start_stack(
        database, internal_token=secrets.token_urlsafe(16), with_worker=False, **FAST
    ) as running:
        yield running


async def update(
    client: Client, session: session_pb2.Session, paths: list[str] | None = None
) -> session_pb2.Session:
    """Call UpdateSession with the session as given and these mask paths."""
    return await client.sessions.UpdateSession(
        session_service_pb2.UpdateSessionRequest(
            session=session, update_mask=field_mask_pb2.FieldMask(paths=paths or [])
        ),
        metadata=client.auth,
        timeout=10,
    )


async def delete(
    client: Client, name: str, *, force: bool = False, allow_missing: bool = False
) -> None:
    """Call DeleteSession."""
    await client.sessions.DeleteSession(
        session_service_pb2.DeleteSessionRequest(
            name=name, force=force, allow_missing=allow_missing
        ),
        metadata=client.auth,
        timeout=20,
    )


async def get(client: Client, name: str) -> session_pb2.Session:
    """Call GetSession."""
    return await client.sessions.GetSession(
        session_service_pb2.GetSessionRequest(name=name), metadata=client.auth, timeout=10
    )


async def rows_of(stack: Stack, session: str) -> dict[str, int]:
    """Count the session's rows in every table that holds them, as the control plane's role."""
    session_id = uuid.UUID(session.removeprefix("sessions/"))
    conn = await asyncpg.connect(role_dsn(stack.admin_dsn, "ap_control_plane"))
    try:
        counts = {
            "sessions": await conn.fetchval(
                "SELECT count(*) FROM sessions WHERE id = $1", session_id
            )
        }
        for table in TABLES:
            counts[table] = await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE session_id = $1",
                session_id,
            )
        return counts
    finally:
        await conn.close()


class HandWorker:
    """A worker driven by the test through the real dispatch API."""

    def __init__(self, stack: Stack) -> None:
        self._channel = grpc.aio.insecure_channel(stack.address)
        self.stub: dispatch_service_pb2_grpc.DispatchServiceAsyncStub = (
            dispatch_service_pb2_grpc.DispatchServiceStub(self._channel)
        )
        self.md = (("x-ap-internal-token", stack.internal_token),)

    async def claim(self) -> pb.RunClaim:
        """Claim the oldest queued run."""
        response = await self.stub.ClaimRun(
            pb.ClaimRunRequest(worker_id="hand", wait=Duration(seconds=5)),
            metadata=self.md,
            timeout=10,
        )
        assert response.HasField("claim")
        return response.claim

    async def append(self, claim: pb.RunClaim, *events: run_pb2.RunEvent) -> int:
        """Append events after the claim's last sequence; return the new last sequence."""
        first = claim.last_event_sequence + 1
        for offset, event in enumerate(events):
            event.sequence, event.attempt = first + offset, claim.attempt
        response = await self.stub.AppendRunEvents(
            pb.AppendRunEventsRequest(
                run=claim.run, fencing_token=claim.fencing_token, events=events
            ),
            metadata=self.md,
            timeout=10,
        )
        claim.last_event_sequence = response.last_event_sequence
        return response.last_event_sequence

    async def complete(self, claim: pb.RunClaim, text: str) -> None:
        """Finish the run as completed."""
        await self.stub.FinishRun(
            pb.FinishRunRequest(
                run=claim.run,
                fencing_token=claim.fencing_token,
                completed=pb.FinishRunRequest.Completed(text=text),
            ),
            metadata=self.md,
            timeout=10,
        )

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(None)


def delta(text: str) -> run_pb2.RunEvent:
    """Return an output_text.delta event."""
    return run_pb2.RunEvent(output_text_delta=run_pb2.TextDelta(text=text))


# ── UpdateSession ───────────────────────────────────────────────────────────────────────────


async def test_a_rename_shows_in_get_and_list(one_slot: Stack) -> None:
    """A new title is what GetSession and ListSessions show; the other fields stay."""
    client = one_slot.owner
    created = await client.sessions.CreateSession(
        session_service_pb2.CreateSessionRequest(
            session=session_pb2.Session(title="Old", instructions="Be brief.", metadata={"k": "v"})
        ),
        metadata=client.auth,
        timeout=10,
    )
    renamed = await update(client, session_pb2.Session(name=created.name, title="New title"))
    assert renamed.title == "New title"
    assert (renamed.instructions, dict(renamed.metadata)) == ("Be brief.", {"k": "v"})
    assert renamed.update_time.ToDatetime() > created.update_time.ToDatetime()
    assert renamed.create_time == created.create_time
    assert (await get(client, created.name)) == renamed
    listed = await client.sessions.ListSessions(
        session_service_pb2.ListSessionsRequest(page_size=1000), metadata=client.auth, timeout=10
    )
    assert [s.title for s in listed.sessions if s.name == created.name] == ["New title"]


async def test_the_update_mask_names_what_changes(one_slot: Stack) -> None:
    """Empty mask: the fields set; named paths: only those, cleared when empty; "*": all."""
    client = one_slot.owner
    original = session_pb2.Session(title="T", instructions="I", metadata={"a": "1"})
    created = await client.sessions.CreateSession(
        session_service_pb2.CreateSessionRequest(session=original), metadata=client.auth, timeout=10
    )
    name = created.name

    # Empty mask: only the fields set in the request; an empty title is not "set".
    got = await update(client, session_pb2.Session(name=name, title="", instructions="I2"))
    assert (got.title, got.instructions, dict(got.metadata)) == ("T", "I2", {"a": "1"})
    # A named path changes even to empty; fields given but not named stay.
    got = await update(
        client, session_pb2.Session(name=name, title="", instructions="x"), ["title"]
    )
    assert (got.title, got.instructions) == ("", "I2")
    # metadata is replaced as a whole.
    got = await update(client, session_pb2.Session(name=name, metadata={"b": "2"}), ["metadata"])
    assert dict(got.metadata) == {"b": "2"}
    # "*": every updatable field takes the request's value, cleared when not given.
    got = await update(client, session_pb2.Session(name=name, title="Only"), ["*"])
    assert (got.title, got.instructions, dict(got.metadata)) == ("Only", "", {})
    # Nothing to change: the session comes back as it is.
    assert await update(client, session_pb2.Session(name=name)) == await get(client, name)
    assert got.model == created.model and got.create_time == created.create_time


@pytest.mark.parametrize(
    "path",
    ["colour", "metadata.a", "name", "model", "create_time", "update_time", "active_run",
     "run_timeout"],
)  # fmt: skip
async def test_an_unknown_output_only_or_immutable_path_is_refused(
    one_slot: Stack, path: str
) -> None:
    """Each such path is INVALID_ARGUMENT naming it, and nothing changes."""
    client = one_slot.owner
    created = await new_session(client, "Keep")
    info = await expect_error(
        update(client, session_pb2.Session(name=created.name, title="Changed"), ["title", path]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert dict(info.metadata) == {"field": "update_mask", "path": path}
    assert (await get(client, created.name)).title == "Keep"


async def test_updates_are_checked_as_creates_are(one_slot: Stack) -> None:
    """Limits and content rules of create apply; a star among other paths is refused."""
    client = one_slot.owner
    name = (await new_session(client)).name
    cases: list[tuple[session_pb2.Session, list[str], str, str]] = [
        (session_pb2.Session(name=name, title="x" * 201), [], "LIMIT_EXCEEDED", "session.title"),
        (
            session_pb2.Session(name=name, instructions="a\x00b"),
            [],
            "INVALID_ARGUMENT",
            "session.instructions",
        ),
        (
            session_pb2.Session(name=name, metadata={f"k{i}": "v" for i in range(33)}),
            ["metadata"],
            "LIMIT_EXCEEDED",
            "session.metadata",
        ),
        (
            session_pb2.Session(name=name, title="t"),
            ["*", "title"],
            "INVALID_ARGUMENT",
            "update_mask",
        ),
        (
            session_pb2.Session(name="sessions/nope", title="t"),
            [],
            "INVALID_ARGUMENT",
            "session.name",
        ),
    ]
    for session, paths, reason, field in cases:
        info = await expect_error(
            update(client, session, paths), grpc.StatusCode.INVALID_ARGUMENT, reason
        )
        assert info.metadata["field"] == field


async def test_another_workspaces_session_is_not_found_to_update_and_delete(
    one_slot: Stack,
) -> None:
    """Neither call reveals or touches a session of another workspace."""
    theirs = await new_session(one_slot.owner, "Theirs")
    other = await one_slot.new_workspace("Elsewhere")
    await expect_error(
        update(other, session_pb2.Session(name=theirs.name, title="Mine now")),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
    for force in (False, True):
        await expect_error(
            delete(other, theirs.name, force=force), grpc.StatusCode.NOT_FOUND, "NOT_FOUND"
        )
    await delete(other, theirs.name, allow_missing=True)  # OK, and still nothing happens
    assert (await get(one_slot.owner, theirs.name)).title == "Theirs"


# ── DeleteSession ───────────────────────────────────────────────────────────────────────────


async def test_delete_removes_the_session_and_everything_in_it(no_worker: Stack) -> None:
    """Messages, runs, run events and tool call records go; another session stays whole."""
    client = no_worker.owner
    doomed, kept = await new_session(client, "Doomed"), await new_session(client, "Kept")
    worker = HandWorker(no_worker)
    try:
        for session in (doomed, kept):
            run = await new_run(client, session.name, "use a tool")
            claim = await worker.claim()
            assert claim.run == run.name
            await worker.append(
                claim,
                run_pb2.RunEvent(run_started=run_pb2.RunStarted(model="m")),
                run_pb2.RunEvent(
                    tool_call_started=run_pb2.ToolCallStarted(
                        call_id="c1", tool="lookup", arguments_json="{}"
                    )
                ),
                run_pb2.RunEvent(
                    tool_call_completed=run_pb2.ToolCallCompleted(call_id="c1", result="42")
                ),
                delta("forty-two"),
            )
            await worker.complete(claim, "forty-two")
    finally:
        await worker.close()
    before = await rows_of(no_worker, doomed.name)
    assert all(before.values()), f"the test needs a row in each table: {before}"
    kept_before = await rows_of(no_worker, kept.name)
    doomed_run = (
        await client.runs.ListRuns(
            run_service_pb2.ListRunsRequest(parent=doomed.name), metadata=client.auth, timeout=10
        )
    ).runs[0]

    await delete(client, doomed.name)

    assert set((await rows_of(no_worker, doomed.name)).values()) == {0}
    assert await rows_of(no_worker, kept.name) == kept_before
    for call in (
        get(client, doomed.name),
        get_run(client, doomed_run.name),
        client.sessions.ListMessages(
            session_service_pb2.ListMessagesRequest(parent=doomed.name), metadata=client.auth
        ),
        client.runs.ListRunEvents(
            run_service_pb2.ListRunEventsRequest(parent=doomed_run.name), metadata=client.auth
        ),
        delete(client, doomed.name),  # AIP-135: deleting it again is NOT_FOUND
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    await delete(client, doomed.name, allow_missing=True)
    await delete(client, f"sessions/{uuid.uuid4()}", allow_missing=True)


async def test_a_session_with_an_active_run_is_refused_naming_it(no_worker: Stack) -> None:
    """Queued (with one waiting behind) or running: FAILED_PRECONDITION naming the active run."""
    client = no_worker.owner
    session = await new_session(client)
    first = await new_run(client, session.name, "first")
    await client.runs.CreateRun(
        run_service_pb2.CreateRunRequest(
            parent=session.name, input_text="second", concurrency_policy=run_service_pb2.ENQUEUE
        ),
        metadata=client.auth,
        timeout=10,
    )
    worker = HandWorker(no_worker)
    try:
        for state in (run_pb2.Run.QUEUED, run_pb2.Run.RUNNING):
            if state == run_pb2.Run.RUNNING:
                await worker.claim()
            assert (await get_run(client, first.name)).state == state
            info = await expect_error(
                delete(client, session.name),
                grpc.StatusCode.FAILED_PRECONDITION,
                "RUN_ALREADY_ACTIVE",
            )
            assert dict(info.metadata) == {"active_run": first.name}
            assert (await get(client, session.name)).active_run == first.name
    finally:
        await worker.close()
    kept = await rows_of(no_worker, session.name)
    assert (kept["sessions"], kept["messages"], kept["runs"]) == (1, 2, 2)


async def test_members_delete_their_own_sessions_and_admins_any(one_slot: Stack) -> None:
    """Below admin only your own session goes; an admin deletes a member's; members rename any."""
    workspace_id = uuid.UUID(one_slot.owner.workspace.removeprefix("workspaces/"))
    clients = {}
    for role in ("member", "admin", "viewer"):
        _, key = await add_member(one_slot, workspace_id, role)
        clients[role] = one_slot.client(key, one_slot.owner.workspace)
    member, admin, viewer = clients["member"], clients["admin"], clients["viewer"]
    owners = await new_session(one_slot.owner, "The owner's")
    renamed = await update(member, session_pb2.Session(name=owners.name, title="Renamed"))
    assert renamed.title == "Renamed"
    info = await expect_error(
        delete(member, owners.name), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"
    )
    assert dict(info.metadata) == {"role": "member", "required_role": "admin"}
    await expect_error(
        delete(viewer, owners.name), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"
    )
    await get(one_slot.owner, owners.name)
    await delete(member, (await new_session(member, "Mine")).name)
    await delete(admin, (await new_session(member, "A member's")).name)
    await delete(admin, owners.name)


async def test_force_cancels_a_running_run_and_its_worker_stops(
    one_slot: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """The worker hears the cancel and ends the run; the session goes; the worker goes on."""
    client = one_slot.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "long [[tokens=2000]] [[delay_ms=10]]")
    run_stream = client.runs.StreamRunEvents(
        run_service_pb2.StreamRunEventsRequest(name=run.name), metadata=client.auth, timeout=30
    )
    session_stream = client.runs.StreamSessionEvents(
        run_service_pb2.StreamSessionEventsRequest(name=session.name),
        metadata=client.auth,
        timeout=30,
    )
    seen: list[run_pb2.RunEvent] = []
    async for response in run_stream:
        seen.append(response.event)
        if response.event.type == "output_text.delta":
            break

    await delete(client, session.name, force=True)

    seen += [response.event async for response in run_stream]
    assert seen[-1].type == "run.cancelled", "the worker ended the run through the cancel"
    assert sum(e.type == "output_text.delta" for e in seen) < 1000
    session_events: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        async for in_session in session_stream:
            session_events.append(in_session.event.type)
    assert ended.value.code() == grpc.StatusCode.NOT_FOUND
    assert session_events[-1] == "run.cancelled"
    assert set((await rows_of(one_slot, session.name)).values()) == {0}
    # One worker slot: a new run can complete only if the worker let go of the deleted one.
    after = await new_session(client)
    nxt = await new_run(client, after.name, "next [[tokens=2]]")
    assert (await asyncio.wait_for(client.stream(nxt.name), 10))[-1].type == "run.completed"
    assert "run_execution_failed" not in capsys.readouterr().out


async def test_streams_of_a_deleted_session_end_not_found_on_every_replica(
    no_worker: Stack,
) -> None:
    """A run nobody stops in time is deleted anyway; its and its session's streams end."""
    client = no_worker.owner
    session = await new_session(client)
    run = await new_run(client, session.name, "held")
    worker = HandWorker(no_worker)
    replica = await start_control_plane(
        no_worker.admin_dsn, no_worker.internal_token, no_worker.control_plane.model, **FAST
    )
    remote = Client(grpc.aio.insecure_channel(replica.address), client.api_key)
    try:
        claim = await worker.claim()
        calls: list[grpc.aio.UnaryStreamCall[Any, Any]] = []
        for at in (client, remote):
            calls.append(
                at.runs.StreamRunEvents(
                    run_service_pb2.StreamRunEventsRequest(name=run.name),
                    metadata=at.auth,
                    timeout=30,
                )
            )
            calls.append(
                at.runs.StreamSessionEvents(
                    run_service_pb2.StreamSessionEventsRequest(name=session.name),
                    metadata=at.auth,
                    timeout=30,
                )
            )
        for call in calls:
            async for response in call:
                assert response.event.type == "run.queued"  # subscribed
                break

        await delete(client, session.name, force=True)

        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                async for _ in call:
                    pass
            assert ended.value.code() == grpc.StatusCode.NOT_FOUND

        # The worker that never heard of the cancel is refused cleanly from now on.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await worker.append(claim, delta("late"))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        await expect_error(
            worker.stub.HeartbeatRun(
                pb.HeartbeatRunRequest(run=claim.run, fencing_token=claim.fencing_token),
                metadata=worker.md,
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "LEASE_LOST",
        )
        await expect_error(worker.complete(claim, "late"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
        await expect_error(
            worker.stub.ReleaseRun(
                pb.ReleaseRunRequest(run=claim.run, fencing_token=claim.fencing_token),
                metadata=worker.md,
            ),
            grpc.StatusCode.NOT_FOUND,
            "NOT_FOUND",
        )
    finally:
        await worker.close()
        await remote.channel.close(None)
        await replica.stop()


async def test_a_worker_whose_run_vanishes_stops_at_its_next_append(database: str) -> None:
    """A run deleted under a streaming worker (a forced delete it did not hear) is abandoned.

    The heartbeat is far off, so only the append's refusal can free the one worker slot in
    time for the next run.
    """
    async with start_stack(
        database,
        internal_token=secrets.token_urlsafe(16),
        heartbeat_seconds=30.0,
        lease_seconds=60.0,
        worker_settings={"worker_concurrency": 1},
    ) as stack:
        client = stack.owner
        session = await new_session(client)
        run = await new_run(client, session.name, "long [[tokens=2000]] [[delay_ms=10]]")
        call = client.runs.StreamRunEvents(
            run_service_pb2.StreamRunEventsRequest(name=run.name), metadata=client.auth, timeout=30
        )
        async for response in call:
            if response.event.type == "output_text.delta":
                break
        call.cancel()
        conn = await asyncpg.connect(role_dsn(stack.admin_dsn, "ap_control_plane"))
        try:
            session_id = uuid.UUID(session.name.removeprefix("sessions/"))
            # The run before its session, in the order the worker's appends lock them: a
            # DELETE alone locks the session first, and deadlocks with an append.
            async with conn.transaction():
                await conn.execute(
                    "SELECT 1 FROM runs WHERE session_id = $1 FOR UPDATE", session_id
                )
                await conn.execute("DELETE FROM sessions WHERE id = $1", session_id)
        finally:
            await conn.close()
        after = await new_session(client)
        nxt = await new_run(client, after.name, "next [[tokens=2]]")
        events = await asyncio.wait_for(client.stream(nxt.name), 10)
        assert events[-1].type == "run.completed"
