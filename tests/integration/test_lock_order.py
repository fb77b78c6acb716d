"""Creates and event writes lock a session's runs before the session, so they never deadlock.

A deadlock with a writer outside that order (an operator's statement) is broken by Postgres;
the aborted call answers ABORTED / CONCURRENT_UPDATE, which the worker tries again.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid

import asyncpg
import grpc
from agentplatform.dispatch.v1 import dispatch_service_pb2 as pb
from agentplatform.dispatch.v1 import dispatch_service_pb2_grpc
from agentplatform.v1 import run_pb2
from google.protobuf.duration_pb2 import Duration

from devtools.processes import eventually
from services.rpc.db import role_dsn
from tests.harness import expect_error, start_stack
from tests.integration.helpers import new_run, new_session


async def _blocked_on_a_lock(conn: asyncpg.Connection, but: int) -> bool:
    """Tell whether another backend than `but` waits for a lock."""
    waiting = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> $1",
        but,
    )
    return bool(waiting)


async def test_a_create_racing_an_append_to_the_active_run_does_not_deadlock(
    database: str,
) -> None:
    """A create arriving while a worker's append holds the active run waits, then is refused.

    The append locks the run, then the session (for the session sequence). A create that
    locked the session first and then waited on the run (its unique-index check) deadlocked
    with it: Postgres aborted one of the two, and the create answered INTERNAL.
    """
    token = secrets.token_urlsafe(16)
    async with start_stack(database, internal_token=token, with_worker=False) as stack:
        client = stack.owner
        session = await new_session(client)
        active = await new_run(client, session.name, "held by a worker")
        channel = grpc.aio.insecure_channel(stack.address)
        dispatch: dispatch_service_pb2_grpc.DispatchServiceAsyncStub = (
            dispatch_service_pb2_grpc.DispatchServiceStub(channel)
        )
        claimed = await dispatch.ClaimRun(
            pb.ClaimRunRequest(worker_id="w1", wait=Duration(seconds=5)),
            metadata=(("x-ap-internal-token", token),),
            timeout=10,
        )
        assert claimed.claim.run == active.name
        run_id = uuid.UUID(active.name.rsplit("/", 1)[1])
        session_id = uuid.UUID(session.name.rsplit("/", 1)[1])

        append = await asyncpg.connect(role_dsn(stack.admin_dsn, "ap_control_plane"))
        watcher = await asyncpg.connect(stack.admin_dsn)
        try:
            # An append in flight, as the worker's statement takes its locks: the run first...
            transaction = append.transaction()
            await transaction.start()
            await append.execute(
                "UPDATE runs SET last_event_sequence = last_event_sequence WHERE id = $1", run_id
            )
            create = asyncio.create_task(new_run(client, session.name, "a second run"))
            await eventually(lambda: _blocked_on_a_lock(watcher, append.get_server_pid()))
            # ...then the session. With the create holding the session, this deadlocked.
            await append.execute(
                "UPDATE sessions SET last_event_sequence = last_event_sequence WHERE id = $1",
                session_id,
            )
            await transaction.commit()
            await expect_error(create, grpc.StatusCode.FAILED_PRECONDITION, "RUN_ALREADY_ACTIVE")
        finally:
            await append.close()
            await watcher.close()
            await channel.close(None)


async def test_an_append_the_database_aborts_for_a_deadlock_answers_aborted(
    database: str,
) -> None:
    """An append that loses a deadlock is ABORTED / CONCURRENT_UPDATE, and its retry lands.

    A transaction outside the lock order (the session, then the run, as a hand-written
    DELETE FROM sessions locks them) deadlocks with the append, which waited first, so
    Postgres aborts the append. It answered INTERNAL, which the worker did not try again.
    """
    token = secrets.token_urlsafe(16)
    async with start_stack(database, internal_token=token, with_worker=False) as stack:
        client = stack.owner
        session = await new_session(client)
        await new_run(client, session.name, "held by a worker")
        channel = grpc.aio.insecure_channel(stack.address)
        dispatch: dispatch_service_pb2_grpc.DispatchServiceAsyncStub = (
            dispatch_service_pb2_grpc.DispatchServiceStub(channel)
        )
        md = (("x-ap-internal-token", token),)
        claim = (
            await dispatch.ClaimRun(
                pb.ClaimRunRequest(worker_id="w1", wait=Duration(seconds=5)),
                metadata=md,
                timeout=10,
            )
        ).claim
        run_id = uuid.UUID(claim.run.rsplit("/", 1)[1])
        session_id = uuid.UUID(session.name.rsplit("/", 1)[1])
        append = pb.AppendRunEventsRequest(
            run=claim.run,
            fencing_token=claim.fencing_token,
            events=[
                run_pb2.RunEvent(
                    sequence=claim.last_event_sequence + 1,
                    output_text_delta=run_pb2.TextDelta(text="a"),
                )
            ],
        )

        holder = await asyncpg.connect(role_dsn(stack.admin_dsn, "ap_control_plane"))
        watcher = await asyncpg.connect(stack.admin_dsn)
        try:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session_id)
            first = asyncio.ensure_future(dispatch.AppendRunEvents(append, metadata=md, timeout=30))
            await eventually(lambda: _blocked_on_a_lock(watcher, holder.get_server_pid()))
            # The append holds the run and waits for the session; taking the run closes the cycle.
            await holder.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run_id)
            await expect_error(first, grpc.StatusCode.ABORTED, "CONCURRENT_UPDATE")
            await transaction.rollback()
            again = await dispatch.AppendRunEvents(append, metadata=md, timeout=10)
            assert again.last_event_sequence == claim.last_event_sequence + 1
        finally:
            await holder.close()
            await watcher.close()
            await channel.close(None)
