"""What the fault tests share: clients that follow runs across replicas, and the invariants.

The invariants (I1-I5 of the research notes): every acknowledged run ends in exactly one
terminal event; sequences are 1..n without gaps; attempts are monotone and each new attempt
starts with run.attempt_started; completed runs have exactly one assistant message; what a
client streamed equals the stored log and is, byte for byte, what ListRunEvents returns.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import grpc
from agentplatform.events import TERMINAL_TYPES
from agentplatform.v1 import run_pb2, run_service_pb2

from devtools.processes import Service
from services.control_plane.bootstrap import create_workspace
from services.rpc.db import role_dsn
from tests.harness import Client
from tests.integration.helpers import new_run, new_session

SLOW = "[[tokens=30]] [[delay_ms=40]] [[reasoning=0]]"


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
                    if response.event.type in TERMINAL_TYPES:
                        break
                await self._check_listed_matches(client)
                return self.events
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                self.reconnects += 1
                attempt += 1
                await asyncio.sleep(0.05)  # back off before reconnecting, as real clients do
            finally:
                await channel.close(None)

    async def _check_listed_matches(self, client: Client) -> None:
        """I5: what was streamed is, byte for byte, what ListRunEvents returns (same replica)."""
        listed = await client.runs.ListRunEvents(
            run_service_pb2.ListRunEventsRequest(parent=self.run, page_size=5000),
            metadata=client.auth,
            timeout=30,
        )
        assert [e.SerializeToString() for e in self.events] == [
            e.SerializeToString() for e in listed.events
        ], "I5: the client's stream differs from what ListRunEvents returns"


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
    assert sum(t in TERMINAL_TYPES for t in types) == 1 and types[-1] in TERMINAL_TYPES, (
        "I1/I2: terminal"
    )
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
