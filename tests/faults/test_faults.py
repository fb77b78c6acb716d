"""Faults against real processes: kill -9, SIGSTOP, replica loss, lost responses, drain.

Each test checks the stored history exactly (the invariants of tests/faults/helpers.py).
Database outages are in test_database_outage.py, control-plane fail-over in test_failover.py.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import signal
import uuid

import asyncpg
import grpc
import pytest
from agentplatform.v1 import run_service_pb2

from devtools.devmodel import DevModel
from devtools.processes import cluster
from services.rpc.db import role_dsn
from tests.faults.helpers import (
    SLOW,
    Follower,
    assert_invariants,
    by_name,
    lease_owner,
    owner_key,
    stored_history,
    watch_new_run,
)
from tests.harness import Client
from tests.integration.helpers import new_session

pytestmark = pytest.mark.timeout(120)


async def test_kill_9_of_a_worker_mid_stream_is_rescued_on_another(
    database: str, devmodel: DevModel
) -> None:
    """The run finishes as attempt 2 on the surviving worker; the client sees no gap."""
    key = await owner_key(database)
    async with cluster(database, secrets.token_urlsafe(16), devmodel.base_url) as c:
        cp = await c.control_plane()
        workers = [await c.worker("w1", cp), await c.worker("w2", cp)]
        watched = await watch_new_run(cp, key, f"kill me {SLOW}")
        run = watched.run
        by_name(workers, await lease_owner(database, run.name)).signal(signal.SIGKILL)
        events = await watched.finish()
    assert events[-1].type == "run.completed", events[-1]
    assert "run.attempt_started" in [e.type for e in events]
    assert events[-1].attempt == 2
    await assert_invariants(database, run.name, events)


async def test_a_paused_worker_is_fenced_after_another_takes_over(
    database: str, devmodel: DevModel
) -> None:
    """SIGSTOP past the lease, takeover, SIGCONT: the zombie's writes are all refused."""
    key = await owner_key(database)
    async with cluster(database, secrets.token_urlsafe(16), devmodel.base_url) as c:
        cp = await c.control_plane()
        workers = [await c.worker("w1", cp), await c.worker("w2", cp)]
        watched = await watch_new_run(cp, key, f"pause me {SLOW}")
        run = watched.run
        zombie = by_name(workers, await lease_owner(database, run.name))
        zombie.signal(signal.SIGSTOP)
        await watched.follower.wait_for("run.attempt_started")
        events = await watched.finish()
        zombie.signal(signal.SIGCONT)
        # The zombie wakes up with buffered output and a stale fence; it must give up.
        await zombie.wait_for_line("lease_lost_run_abandoned", timeout=15)
    assert events[-1].type == "run.completed", events[-1]
    await assert_invariants(database, run.name, events)
    rows = await stored_history(database, run.name)
    takeover = next(r["sequence"] for r in rows if r["type"] == "run.attempt_started")
    assert all(r["attempt"] >= 2 for r in rows if r["sequence"] > takeover)


async def test_killing_the_streaming_replica_loses_nothing(
    database: str, devmodel: DevModel
) -> None:
    """A client whose replica dies resumes on another with its last sequence."""
    key = await owner_key(database)
    async with cluster(database, secrets.token_urlsafe(16), devmodel.base_url) as c:
        cp_a = await c.control_plane("cp-a")
        cp_b = await c.control_plane("cp-b")
        await c.worker("w1", cp_a)
        watched = await watch_new_run(
            cp_a, key, f"replicas {SLOW}", stream_from=[cp_b.address, cp_a.address]
        )
        run = watched.run
        cp_b.signal(signal.SIGKILL)
        events = await watched.finish()
    assert watched.follower.reconnects >= 1
    assert events[-1].type == "run.completed", events[-1]
    await assert_invariants(database, run.name, events)


async def test_a_lost_create_response_retried_with_its_request_id_makes_one_run(
    database: str, devmodel: DevModel
) -> None:
    """A create that times out at the client (maybe after commit) and is retried: one run."""
    key = await owner_key(database)
    async with cluster(database, secrets.token_urlsafe(16), devmodel.base_url) as c:
        cp = await c.control_plane()
        await c.worker("w1", cp)
        client = Client(grpc.aio.insecure_channel(cp.address), key)
        session = await new_session(client)
        request_id = str(uuid.uuid4())
        request = run_service_pb2.CreateRunRequest(
            parent=session.name, input_text="ambiguous [[tokens=2]]", request_id=request_id
        )
        blocker = await asyncpg.connect(role_dsn(database, "ap_control_plane"))
        try:
            # Hold the session row so the create cannot finish before the client gives up.
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute(
                "SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE",
                uuid.UUID(session.name.split("/")[1]),
            )
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                await client.runs.CreateRun(request, metadata=client.auth, timeout=0.3)
            assert lost.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await tx.rollback()
        finally:
            await blocker.close()
        retried = await client.runs.CreateRun(request, metadata=client.auth, timeout=10)
        again = await client.runs.CreateRun(request, metadata=client.auth, timeout=10)
        events = await Follower([cp.address], key, retried.name).follow()
        listed = await client.runs.ListRuns(
            run_service_pb2.ListRunsRequest(parent=session.name), metadata=client.auth, timeout=10
        )
        await client.channel.close(None)
    assert again.name == retried.name
    assert [r.name for r in listed.runs] == [retried.name]
    await assert_invariants(database, retried.name, events)


async def test_sigterm_drains_a_worker_without_running_anything_twice(
    database: str, devmodel: DevModel
) -> None:
    """A draining worker finishes its run itself: one attempt, no takeover, exit code 0."""
    key = await owner_key(database)
    async with cluster(database, secrets.token_urlsafe(16), devmodel.base_url) as c:
        cp = await c.control_plane()
        draining = await c.worker("w1", cp)
        watched = await watch_new_run(cp, key, f"drain me {SLOW}")
        run = watched.run
        await c.worker("w2", cp)
        draining.signal(signal.SIGTERM)
        events = await watched.finish()
        assert await draining.wait_exit() == 0
    assert events[-1].type == "run.completed", events[-1]
    assert "run.attempt_started" not in [e.type for e in events]
    assert events[-1].attempt == 1
    await assert_invariants(database, run.name, events)


async def test_a_drain_past_its_grace_hands_the_run_over_at_once(
    database: str, devmodel: DevModel
) -> None:
    """When the grace runs out, the worker releases the run and another finishes it."""
    key = await owner_key(database)
    async with cluster(database, secrets.token_urlsafe(16), devmodel.base_url) as c:
        cp = await c.control_plane(AP_LEASE_SECONDS="30")
        draining = await c.worker("w1", cp, AP_SHUTDOWN_GRACE_SECONDS="0.2")
        # 8 s of output: still going when the second worker is up and the grace is over,
        # even on a busy machine.
        watched = await watch_new_run(cp, key, "hand over [[tokens=200]] [[delay_ms=40]]")
        run = watched.run
        await c.worker("w2", cp)
        draining.signal(signal.SIGTERM)
        # The lease is 30 s: only the explicit release can get the run finished this soon.
        events = await watched.finish(timeout=25)
        assert await draining.wait_exit() == 0
    started = [e for e in events if e.type == "run.attempt_started"]
    assert [e.run_attempt_started.reason for e in started] == ["WORKER_DRAINED"]
    assert events[-1].type == "run.completed", events[-1]
    await assert_invariants(database, run.name, events)


async def test_cancel_during_model_streaming_stops_the_worker_run(
    database: str, devmodel: DevModel
) -> None:
    """CancelRun reaches the worker process within a heartbeat; the run ends cancelled."""
    key = await owner_key(database)
    async with cluster(database, secrets.token_urlsafe(16), devmodel.base_url) as c:
        cp = await c.control_plane()
        await c.worker("w1", cp)
        watched = await watch_new_run(cp, key, "cancel me [[tokens=300]] [[delay_ms=20]]")
        await watched.client.runs.CancelRun(
            run_service_pb2.CancelRunRequest(name=watched.run.name),
            metadata=watched.client.auth,
            timeout=10,
        )
        events = await watched.finish(timeout=10)
    assert events[-1].type == "run.cancelled"
    assert sum(e.type == "output_text.delta" for e in events) < 150
    await assert_invariants(database, watched.run.name, events)


async def test_enqueue_and_interrupt_under_concurrent_creates(
    database: str, devmodel: DevModel
) -> None:
    """Racing ENQUEUE creates all run, one at a time; an INTERRUPT cancels what is pending."""
    key = await owner_key(database)
    async with cluster(database, secrets.token_urlsafe(16), devmodel.base_url) as c:
        cp = await c.control_plane()
        await c.worker("w1", cp)
        await c.worker("w2", cp)
        client = Client(grpc.aio.insecure_channel(cp.address), key)
        session = await new_session(client)

        async def create(text: str, policy: run_service_pb2.ConcurrencyPolicy.ValueType) -> str:
            run = await client.runs.CreateRun(
                run_service_pb2.CreateRunRequest(
                    parent=session.name, input_text=text, concurrency_policy=policy
                ),
                metadata=client.auth,
                timeout=10,
            )
            return run.name

        queued = await asyncio.gather(
            *(
                create(f"q{i} [[tokens=3]] [[delay_ms=10]]", run_service_pb2.ENQUEUE)
                for i in range(6)
            )
        )
        finals = [await Follower([cp.address], key, name).follow() for name in queued]
        slow = await create(f"slow {SLOW}", run_service_pb2.ENQUEUE)
        behind = await create("behind it", run_service_pb2.ENQUEUE)
        winner = await create("now [[tokens=2]]", run_service_pb2.INTERRUPT)
        slow_events = await Follower([cp.address], key, slow).follow()
        behind_events = await Follower([cp.address], key, behind).follow()
        winner_events = await Follower([cp.address], key, winner).follow()
        runs = await client.runs.ListRuns(
            run_service_pb2.ListRunsRequest(parent=session.name), metadata=client.auth, timeout=10
        )
        await client.channel.close(None)
    assert all(f[-1].type == "run.completed" for f in finals)
    spans = sorted(
        (r.start_time.ToDatetime(), r.end_time.ToDatetime()) for r in runs.runs if r.name in queued
    )
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), "two enqueued runs overlapped"
    assert slow_events[-1].type == "run.cancelled"
    assert behind_events[-1].type == "run.cancelled"
    assert winner_events[-1].type == "run.completed"
    for name, events in [*zip(queued, finals, strict=True), (winner, winner_events)]:
        await assert_invariants(database, name, events)
