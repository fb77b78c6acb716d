"""The worker-facing dispatch API: leases, fencing, idempotent appends."""

from __future__ import annotations

import secrets

import grpc
from agentplatform.dispatch.v1 import dispatch_service_pb2 as pb
from agentplatform.dispatch.v1 import dispatch_service_pb2_grpc
from agentplatform.v1 import run_pb2
from google.protobuf.duration_pb2 import Duration

from tests.harness import expect_error, start_stack
from tests.integration.helpers import get_run, new_run, new_session


def delta(text: str, sequence: int) -> run_pb2.RunEvent:
    """Build an output delta event."""
    return run_pb2.RunEvent(sequence=sequence, output_text_delta=run_pb2.TextDelta(text=text))


async def test_claim_append_finish_and_fencing(database: str) -> None:
    """A hand-driven worker claims, appends idempotently, is fenced, and finishes once."""
    token = secrets.token_urlsafe(16)
    async with start_stack(database, internal_token=token, with_worker=False) as stack:
        client = stack.owner
        session = await new_session(client)
        run = await new_run(client, session.name, "by hand")
        channel = grpc.aio.insecure_channel(stack.address)
        md = (("x-ap-internal-token", token),)
        try:
            dispatch: dispatch_service_pb2_grpc.DispatchServiceAsyncStub = (
                dispatch_service_pb2_grpc.DispatchServiceStub(channel)
            )
            wait = Duration(seconds=5)
            claimed = await dispatch.ClaimRun(
                pb.ClaimRunRequest(worker_id="w1", wait=wait), metadata=md, timeout=10
            )
            claim = claimed.claim
            assert claim.run == run.name
            assert claim.attempt == 1
            assert claim.last_event_sequence == 1
            assert claim.caller_role == "owner"
            assert claim.input_text == "by hand"
            assert (await get_run(client, run.name)).state == run_pb2.Run.RUNNING

            nothing = await dispatch.ClaimRun(
                pb.ClaimRunRequest(worker_id="w2"), metadata=md, timeout=10
            )
            assert not nothing.HasField("claim")

            batch = pb.AppendRunEventsRequest(
                run=claim.run,
                fencing_token=claim.fencing_token,
                events=[delta("a", 2), delta("b", 3)],
            )
            first = await dispatch.AppendRunEvents(batch, metadata=md, timeout=10)
            assert first.last_event_sequence == 3
            retried = await dispatch.AppendRunEvents(batch, metadata=md, timeout=10)
            assert retried.last_event_sequence == 3

            await expect_error(
                dispatch.AppendRunEvents(
                    pb.AppendRunEventsRequest(
                        run=claim.run, fencing_token=claim.fencing_token, events=[delta("c", 7)]
                    ),
                    metadata=md,
                    timeout=10,
                ),
                grpc.StatusCode.FAILED_PRECONDITION,
                "SEQUENCE_MISMATCH",
            )
            stale = claim.fencing_token - 1
            await expect_error(
                dispatch.AppendRunEvents(
                    pb.AppendRunEventsRequest(
                        run=claim.run, fencing_token=stale, events=[delta("x", 4)]
                    ),
                    metadata=md,
                    timeout=10,
                ),
                grpc.StatusCode.FAILED_PRECONDITION,
                "LEASE_LOST",
            )
            await expect_error(
                dispatch.HeartbeatRun(
                    pb.HeartbeatRunRequest(run=claim.run, fencing_token=stale),
                    metadata=md,
                    timeout=10,
                ),
                grpc.StatusCode.FAILED_PRECONDITION,
                "LEASE_LOST",
            )
            beat = await dispatch.HeartbeatRun(
                pb.HeartbeatRunRequest(run=claim.run, fencing_token=claim.fencing_token),
                metadata=md,
                timeout=10,
            )
            assert beat.lease_expire_time.ToDatetime() >= claim.lease_expire_time.ToDatetime()

            finish = pb.FinishRunRequest(
                run=claim.run,
                fencing_token=claim.fencing_token,
                events=[delta("c", 4)],
                completed=pb.FinishRunRequest.Completed(text="abc"),
            )
            done = await dispatch.FinishRun(finish, metadata=md, timeout=10)
            assert done.terminal_sequence == 5
            again = await dispatch.FinishRun(finish, metadata=md, timeout=10)
            assert again.terminal_sequence == 5
        finally:
            await channel.close(None)

        events = await client.stream(run.name)
        assert [e.type for e in events] == [
            "run.queued",
            "output_text.delta",
            "output_text.delta",
            "output_text.delta",
            "run.completed",
        ]
        assert (await get_run(client, run.name)).state == run_pb2.Run.COMPLETED


async def test_a_waiting_worker_gets_a_new_run_without_polling(database: str) -> None:
    """A ClaimRun waiting with a long wait returns as soon as a run is created."""
    token = secrets.token_urlsafe(16)
    async with start_stack(database, internal_token=token, with_worker=False) as stack:
        client = stack.owner
        session = await new_session(client)
        channel = grpc.aio.insecure_channel(stack.address)
        try:
            dispatch: dispatch_service_pb2_grpc.DispatchServiceAsyncStub = (
                dispatch_service_pb2_grpc.DispatchServiceStub(channel)
            )
            waiting = dispatch.ClaimRun(
                pb.ClaimRunRequest(worker_id="w", wait=Duration(seconds=25)),
                metadata=(("x-ap-internal-token", token),),
                timeout=30,
            )
            run = await new_run(client, session.name, "wake up")
            # Well under the 1 s poll interval x 25: only the in-process wake-up can pass this.
            claimed = await grpc_with_deadline(waiting, 0.9)
            assert claimed.claim.run == run.name
        finally:
            await channel.close(None)


async def grpc_with_deadline(call: object, seconds: float) -> pb.ClaimRunResponse:
    """Await a call but fail the test if it takes longer than `seconds`."""
    import asyncio

    return await asyncio.wait_for(call, seconds)  # type: ignore[arg-type]
