"""Faults against real processes: kill -9, SIGSTOP, replica loss, Postgres restart, drain.

Each test checks the stored history exactly (invariants I1-I5 of the research notes): every
acknowledged run ends in exactly one terminal event; sequences are 1..n without gaps; attempts
are monotone and each new attempt starts with run.attempt_started; completed runs have exactly
one assistant message; what a client streamed equals the stored log.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import signal
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio
from agentplatform.v1 import run_pb2, run_service_pb2

from devtools.devmodel import DevModel
from devtools.embedded_pg import EmbeddedPostgres
from devtools.processes import Service, cluster, eventually
from services.control_plane.bootstrap import create_workspace
from services.migrate import migrate_all
from services.rpc.db import role_dsn
from tests.harness import Client
from tests.integration.helpers import new_run, new_session

TERMINAL = {"run.completed", "run.failed", "run.cancelled"}
SLOW = "[[tokens=30]] [[delay_ms=40]] [[reasoning=0]]"

pytestmark = pytest.mark.timeout(120)


@pytest_asyncio.fixture(loop_scope="session")
async def devmodel() -> AsyncIterator[DevModel]:
    """Run the dev model in the test process; the services reach it over HTTP."""
    model = DevModel()
    await model.start()
    yield model
    await model.stop()


async def owner_key(admin_dsn: str) -> str:
    """Create a workspace and return its owner's API key."""
    conn = await asyncpg.connect(role_dsn(admin_dsn, "ap_control_plane"))
    try:
        made = await create_workspace(
            conn, workspace_display_name="Faults", owner_display_name="Fault owner"
        )
    finally:
        await conn.close()
    return made.api_key


class Follower:
    """A client that streams a run and reconnects (to the next replica) on UNAVAILABLE."""

    def __init__(self, addresses: Sequence[str], api_key: str, run: str) -> None:
        self.addresses = list(addresses)
        self.api_key = api_key
        self.run = run
        self.events: list[run_pb2.RunEvent] = []
        self.reconnects = 0
        self.changed = asyncio.Event()

    async def wait_for(self, event_type: str, timeout: float = 15.0) -> None:
        """Wait until the client has seen an event of this type."""
        async with asyncio.timeout(timeout):
            while not any(e.type == event_type for e in self.events):
                self.changed.clear()
                await self.changed.wait()

    async def follow(self) -> list[run_pb2.RunEvent]:
        """Stream to the terminal event, resuming after the last sequence on every drop."""
        attempt = 0
        while True:
            address = self.addresses[attempt % len(self.addresses)]
            channel = grpc.aio.insecure_channel(address)
            try:
                client = Client(channel, self.api_key)
                after = self.events[-1].sequence if self.events else 0
                call = client.runs.StreamRunEvents(
                    run_service_pb2.StreamRunEventsRequest(name=self.run, after_sequence=after),
                    metadata=client.auth,
                    timeout=60,
                )
                async for response in call:
                    self.events.append(response.event)
                    self.changed.set()
                    if response.event.type in TERMINAL:
                        return self.events
                return self.events
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                self.reconnects += 1
                attempt += 1
                await asyncio.sleep(0.05)  # back off before reconnecting, as real clients do
            finally:
                await channel.close(None)


async def stored_history(admin_dsn: str, run: str) -> list[asyncpg.Record]:
    """Read a run's stored events in order."""
    run_id = uuid.UUID(run.rsplit("/", 1)[1])
    conn = await asyncpg.connect(role_dsn(admin_dsn, "ap_control_plane"))
    try:
        return await conn.fetch(
            "SELECT sequence, type, attempt FROM run_events WHERE run_id = $1 ORDER BY sequence",
            run_id,
        )
    finally:
        await conn.close()


async def assert_invariants(admin_dsn: str, run: str, streamed: list[run_pb2.RunEvent]) -> None:
    """Check I1-I5 for one run against the database."""
    rows = await stored_history(admin_dsn, run)
    types = [r["type"] for r in rows]
    assert [r["sequence"] for r in rows] == list(range(1, len(rows) + 1)), "I2: gap or duplicate"
    assert sum(t in TERMINAL for t in types) == 1 and types[-1] in TERMINAL, "I1/I2: terminal"
    attempts = [r["attempt"] for r in rows]
    assert attempts == sorted(attempts), "I3: attempts go backwards"
    for i, row in enumerate(rows[1:], start=1):
        if row["attempt"] > rows[i - 1]["attempt"] and rows[i - 1]["attempt"] > 0:
            assert row["type"] == "run.attempt_started", "I3: a new attempt without its event"
    assert [(e.sequence, e.type) for e in streamed] == [(r["sequence"], r["type"]) for r in rows], (
        "I5: the client's stream differs from the stored log"
    )
    run_id = uuid.UUID(run.rsplit("/", 1)[1])
    conn = await asyncpg.connect(role_dsn(admin_dsn, "ap_control_plane"))
    try:
        replies = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE run_id = $1 AND role = 'assistant'", run_id
        )
    finally:
        await conn.close()
    assert replies == (1 if types[-1] == "run.completed" else 0), "I4: assistant messages"


async def lease_owner(admin_dsn: str, run: str) -> str | None:
    """Return the worker id holding a run's lease."""
    conn = await asyncpg.connect(role_dsn(admin_dsn, "ap_control_plane"))
    try:
        owner: str | None = await conn.fetchval(
            "SELECT lease_owner FROM runs WHERE id = $1", uuid.UUID(run.rsplit("/", 1)[1])
        )
        return owner
    finally:
        await conn.close()


def by_name(services: Sequence[Service], name: str | None) -> Service:
    """Find a service by name."""
    return next(s for s in services if s.name == name)


@dataclass
class WatchedRun:
    """A run being created and followed by a streaming client."""

    client: Client
    run: run_pb2.Run
    follower: Follower
    following: asyncio.Task[list[run_pb2.RunEvent]]

    async def finish(self, timeout: float = 30) -> list[run_pb2.RunEvent]:
        """Wait for the client to see the terminal event; close its channel."""
        try:
            return await asyncio.wait_for(self.following, timeout)
        finally:
            await self.client.channel.close(None)


async def watch_new_run(
    cp: Service, key: str, text: str, *, stream_from: Sequence[str] = ()
) -> WatchedRun:
    """Create a run through `cp` and follow it until its model output has started."""
    client = Client(grpc.aio.insecure_channel(cp.address), key)
    session = await new_session(client)
    run = await new_run(client, session.name, text)
    follower = Follower(list(stream_from) or [cp.address], key, run.name)
    following = asyncio.create_task(follower.follow())
    await follower.wait_for("output_text.delta")
    return WatchedRun(client, run, follower, following)


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
        watched = await watch_new_run(cp, key, f"hand over {SLOW}")
        run = watched.run
        await c.worker("w2", cp)
        draining.signal(signal.SIGTERM)
        # The lease is 30 s: only the explicit release can get the run finished this soon.
        events = await watched.finish(timeout=15)
        assert await draining.wait_exit() == 0
    started = [e for e in events if e.type == "run.attempt_started"]
    assert [e.run_attempt_started.reason for e in started] == ["WORKER_DRAINED"]
    assert events[-1].type == "run.completed", events[-1]
    await assert_invariants(database, run.name, events)


async def test_services_recover_from_a_postgres_restart_without_restarts(
    pg_data_dir: Path, devmodel: DevModel
) -> None:
    """Postgres restarts mid-run: the services reconnect; no run is lost or stuck."""
    server = EmbeddedPostgres(pg_data_dir, fast_unsafe=True)
    admin = await asyncio.to_thread(server.start)
    try:
        await migrate_all(admin)
        key = await owner_key(admin)
        async with cluster(admin, secrets.token_urlsafe(16), devmodel.base_url) as c:
            cp = await c.control_plane()
            await c.worker("w1", cp)
            client = Client(grpc.aio.insecure_channel(cp.address), key)
            sessions = [await new_session(client) for _ in range(3)]
            runs = [await new_run(client, s.name, f"survive {SLOW}") for s in sessions]
            followers = [Follower([cp.address], key, r.name) for r in runs]
            following = [asyncio.create_task(f.follow()) for f in followers]
            await followers[0].wait_for("output_text.delta")
            await asyncio.to_thread(server.restart)
            results = await asyncio.wait_for(asyncio.gather(*following), 60)

            async def created_after_restart() -> bool:
                try:
                    later = await new_run(client, sessions[0].name, "after restart [[tokens=2]]")
                except grpc.aio.AioRpcError as err:
                    # Right after the restart a call may still meet a dead pooled connection.
                    if err.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    return False
                tail = await Follower([cp.address], key, later.name).follow()
                return tail[-1].type == "run.completed"

            await eventually(created_after_restart, timeout=30)
            assert cp.proc.returncode is None
            await client.channel.close(None)
        for run, events in zip(runs, results, strict=True):
            assert events[-1].type in TERMINAL
            await assert_invariants(admin, run.name, events)
    finally:
        await asyncio.to_thread(server.stop)


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
