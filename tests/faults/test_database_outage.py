"""A Postgres restart under load, against real processes: nothing lost, nothing retried.

While clients keep runs going, Postgres stops for a few seconds and starts again. The services
reconnect by themselves; every run completes on its first attempt (the outage is shorter than
a lease, so no worker loses one); every call the outage hit answered UNAVAILABLE, never
INTERNAL, and the worker stayed with its replica (which answered, only its database did not);
every line the processes wrote stayed one JSON object, tracebacks included.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest
from agentplatform.v1 import run_pb2

from devtools.devmodel import DevModel
from devtools.embedded_pg import EmbeddedPostgres
from devtools.processes import Service, cluster
from services.migrate import migrate_all
from services.rpc.db import role_dsn
from tests.faults.helpers import Follower, assert_invariants, owner_key
from tests.harness import Client
from tests.integration.helpers import new_run, new_session

pytestmark = pytest.mark.timeout(180)

CLIENTS = 6
# Longer than a worker's old retry budget (ten heartbeats), shorter than the lease.
OUTAGE_SECONDS = 3.0
RUN_TEXT = "outage [[tokens=20]] [[delay_ms=30]] [[reasoning=0]]"


async def create_retrying(client: Client, session: str) -> run_pb2.Run:
    """Create a run, retrying with one request_id while the database is unreachable."""
    request_id = str(uuid.uuid4())
    async with asyncio.timeout(60):
        while True:
            try:
                return await new_run(client, session, RUN_TEXT, request_id)
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            await asyncio.sleep(0.05)  # back off before retrying, as real clients do


class Load:
    """Clients that each run one session's runs back to back."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, list[run_pb2.RunEvent]]] = []
        # When each run's client saw its first reply text, and its terminal event.
        self.streamed: list[tuple[float, float]] = []
        self.streaming = asyncio.Event()  # a run is streaming, its client's second or later
        self.restarted = asyncio.Event()

    async def client(self, cp: Service, key: str) -> None:
        """Keep a session busy until one of its runs created after the restart has ended."""
        async with grpc.aio.insecure_channel(cp.address) as channel:
            client = Client(channel, key)
            session = await new_session(client)
            done = 0
            while True:
                after_restart = self.restarted.is_set()
                run = await create_retrying(client, session.name)
                follower = Follower([cp.address], key, run.name)
                following = asyncio.create_task(follower.follow())
                await follower.wait_for("output_text.delta", timeout=60)
                first_text = time.time()
                if done:
                    self.streaming.set()
                events = await following
                self.streamed.append((first_text, time.time()))
                self.finished.append((run.name, events))
                done += 1
                if after_restart:
                    return


def non_json_lines(services: list[Service]) -> list[str]:
    """Return every output line of these processes that is not one JSON object."""
    bad = []
    for service in services:
        for line in service.lines:
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                bad.append(f"{service.name}: {line.rstrip()[:200]}")
    return bad


async def test_a_postgres_restart_under_load_costs_no_attempt(
    pg_data_dir: Path, devmodel: DevModel
) -> None:
    """Runs in flight during a restart all complete as attempt 1; no call answers INTERNAL."""
    server = EmbeddedPostgres(pg_data_dir, fast_unsafe=True)
    admin = await asyncio.to_thread(server.start)
    try:
        await migrate_all(admin)
        key = await owner_key(admin)
        async with cluster(admin, secrets.token_urlsafe(16), devmodel.base_url) as c:
            # A lease longer than the restart: the worker keeps its runs through the outage.
            cp = await c.control_plane("cp-a", AP_LEASE_SECONDS="15")
            spare = await c.control_plane("cp-b", AP_LEASE_SECONDS="15")
            worker = await c.worker(
                "w1",
                cp,
                AP_WORKER_CONCURRENCY="8",
                AP_CONTROL_PLANE_ADDRESS=f"{cp.address},{spare.address}",
            )
            load = Load()
            clients = [asyncio.create_task(load.client(cp, key)) for _ in range(CLIENTS)]
            await asyncio.wait_for(load.streaming.wait(), 30)
            outage_began = time.time()
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(OUTAGE_SECONDS)  # how long the database stays away
            restart_began = time.time()
            await asyncio.to_thread(server.start)
            load.restarted.set()
            await asyncio.wait_for(asyncio.gather(*clients), 120)
            assert cp.proc.returncode is None
            services = list(c.services)
        conn = await asyncpg.connect(role_dsn(admin, "ap_control_plane"))
        try:
            attempts = await conn.fetch("SELECT attempt, count(*) AS n FROM runs GROUP BY 1")
        finally:
            await conn.close()
        for run, events in load.finished:
            assert events[-1].type == "run.completed", (run, events[-1])
            await assert_invariants(admin, run, events)
    finally:
        await asyncio.to_thread(server.stop)
    # Streaming before the database went away, and ended only after it was back.
    spanning = [(a, b) for a, b in load.streamed if a < outage_began and b > restart_began]
    assert spanning, "no run was in flight across the outage: the test proved nothing"
    assert {r["attempt"]: r["n"] for r in attempts} == {1: len(load.finished)}, "attempts burned"
    assert not non_json_lines(services), "\n".join(non_json_lines(services))
    internal = [line for s in services for line in s.lines if '"code": "INTERNAL"' in line]
    assert not internal, "\n".join(internal)
    # Its replica answered DATABASE_UNAVAILABLE: healthy, so the worker stayed with it.
    assert not [line for line in worker.lines if "control_plane_failover" in line]
