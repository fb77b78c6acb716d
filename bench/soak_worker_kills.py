"""Kill workers at random moments under steady load; print what was lost (it must be nothing).

Starts its own embedded Postgres, a control plane, three workers and the dev model, keeps
`--clients` sessions busy with runs, and SIGKILLs a random worker `--kills` times (starting a
replacement each time). Then it checks the stored history of every acknowledged run:

  lost runs           acknowledged creates that never reached a terminal event
  duplicated runs     more than one run for one request_id
  gaps / duplicates   run event sequences other than exactly 1..n
  terminal events     runs with other than exactly one terminal event, or not last

and the rescue latency: from a kill to the run.attempt_started of each run the victim held.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import secrets
import signal
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
from agentplatform.events import TERMINAL_TYPES
from agentplatform.v1 import (
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)

from devtools.devmodel import DevModel
from devtools.embedded_pg import EmbeddedPostgres
from devtools.measure import percentile
from devtools.processes import Cluster, Service, cluster
from services.control_plane.bootstrap import create_workspace
from services.migrate import migrate_all
from services.rpc.db import role_dsn

TERMINAL_STATES = ("completed", "failed", "cancelled")


async def client_loop(
    address: str, key: str, text: str, created: list[str], stop: asyncio.Event
) -> None:
    """Create runs one after another in one session until told to stop."""
    md = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        sessions = session_service_pb2_grpc.SessionServiceStub(channel)
        runs: run_service_pb2_grpc.RunServiceAsyncStub = run_service_pb2_grpc.RunServiceStub(
            channel
        )
        session = await sessions.CreateSession(
            session_service_pb2.CreateSessionRequest(session=session_pb2.Session(title="soak")),
            metadata=md,
            timeout=10,
        )
        while not stop.is_set():
            request_id = str(uuid.uuid4())
            request = run_service_pb2.CreateRunRequest(
                parent=session.name, input_text=text, request_id=request_id
            )
            run = await create_with_retries(runs, request, md)
            created.append(request_id)
            await follow_to_end(runs, run.name, md)


async def create_with_retries(
    runs: run_service_pb2_grpc.RunServiceAsyncStub,
    request: run_service_pb2.CreateRunRequest,
    md: tuple[tuple[str, str], ...],
) -> run_pb2.Run:
    """Create a run, retrying with the same request_id while the platform is unreachable."""
    for _ in range(50):
        try:
            return await runs.CreateRun(request, metadata=md, timeout=10)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        await asyncio.sleep(0.1)
    raise RuntimeError("the control plane stayed unavailable")


async def follow_to_end(
    runs: run_service_pb2_grpc.RunServiceAsyncStub, run: str, md: tuple[tuple[str, str], ...]
) -> None:
    """Stream a run to its terminal event, resuming after the last sequence on UNAVAILABLE."""
    after = 0
    while True:
        try:
            call = runs.StreamRunEvents(
                run_service_pb2.StreamRunEventsRequest(name=run, after_sequence=after),
                metadata=md,
                timeout=120,
            )
            async for response in call:
                after = response.event.sequence
            return
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE:
                raise


async def soak(args: argparse.Namespace) -> None:
    """Run the soak and print its findings."""
    data_dir = Path(tempfile.mkdtemp(prefix="ap-soak-pg-"))
    server = EmbeddedPostgres(data_dir, fast_unsafe=True)
    admin = await asyncio.to_thread(server.start)
    model = DevModel()
    await model.start()
    try:
        await migrate_all(admin)
        conn = await asyncpg.connect(role_dsn(admin, "ap_control_plane"))
        key = (
            await create_workspace(conn, workspace_display_name="Soak", owner_display_name="Soak")
        ).api_key
        await conn.close()
        async with cluster(admin, secrets.token_urlsafe(16), model.base_url) as c:
            kills, created = await run_soak(args, c, key, admin)
        await report(admin, args, kills, created)
    finally:
        await model.stop()
        await asyncio.to_thread(server.stop)


# A kill: when, and which runs the victim held at that moment.
Kill = tuple[float, list[uuid.UUID]]


async def run_soak(
    args: argparse.Namespace, c: Cluster, key: str, admin: str
) -> tuple[list[Kill], list[str]]:
    """Drive load and kill workers; return the kills and the acknowledged request ids."""
    cp = await c.control_plane(
        AP_MAX_ATTEMPTS=str(args.max_attempts), AP_LEASE_SECONDS=str(args.lease_seconds)
    )
    workers: list[Service] = [await c.worker(f"w{i}", cp) for i in range(3)]
    created: list[str] = []
    stop = asyncio.Event()
    text = f"soak [[tokens={args.tokens}]] [[delay_ms={args.delay_ms}]] [[reasoning=0]]"
    clients = [
        asyncio.create_task(client_loop(cp.address, key, text, created, stop))
        for _ in range(args.clients)
    ]
    rng = random.Random(args.seed)  # noqa: S311 - a reproducible schedule, not a secret
    kills: list[Kill] = []
    watcher = await asyncpg.connect(role_dsn(admin, "ap_control_plane"))
    for n in range(args.kills):
        await asyncio.sleep(rng.uniform(0.1, 2 * args.mean_interval - 0.1))
        victim = workers.pop(rng.randrange(len(workers)))
        held = await watcher.fetch(
            "SELECT id FROM runs WHERE lease_owner = $1 AND state = 'running'", victim.name
        )
        victim.signal(signal.SIGKILL)
        kills.append((time.time(), [r["id"] for r in held]))
        workers.append(await c.worker(f"w{3 + n}", cp))
        if (n + 1) % 10 == 0:
            print(f"  {n + 1}/{args.kills} kills, {len(created)} runs created", flush=True)
    await watcher.close()
    stop.set()
    await asyncio.wait_for(asyncio.gather(*clients), 120)
    return kills, created


async def report(
    admin: str, args: argparse.Namespace, kills: list[Kill], created: list[str]
) -> None:
    """Check every acknowledged run's stored history and print the findings."""
    conn = await asyncpg.connect(role_dsn(admin, "ap_control_plane"))
    try:
        runs = await conn.fetch("SELECT id, request_id, state, attempt, error_reason FROM runs")
        events = await conn.fetch(
            "SELECT run_id, sequence, type FROM run_events ORDER BY run_id, sequence"
        )
        rescued = await conn.fetch(
            "SELECT run_id, create_time FROM run_events WHERE type = 'run.attempt_started'"
        )
    finally:
        await conn.close()
    by_request: dict[str, int] = {}
    for run in runs:
        by_request[run["request_id"]] = by_request.get(run["request_id"], 0) + 1
    per_run: dict[uuid.UUID, list[asyncpg.Record]] = {}
    for event in events:
        per_run.setdefault(event["run_id"], []).append(event)
    acknowledged = set(created)
    unfinished = {r["request_id"] for r in runs if r["state"] not in TERMINAL_STATES}
    lost = [rid for rid in acknowledged if rid not in by_request or rid in unfinished]
    duplicated = [rid for rid, n in by_request.items() if n > 1]
    gaps = [
        run_id
        for run_id, evs in per_run.items()
        if [e["sequence"] for e in evs] != list(range(1, len(evs) + 1))
    ]
    bad_terminal = [
        run_id
        for run_id, evs in per_run.items()
        if sum(e["type"] in TERMINAL_TYPES for e in evs) != 1
        or evs[-1]["type"] not in TERMINAL_TYPES
    ]
    rescues: dict[uuid.UUID, list[float]] = {}
    for event in rescued:
        rescues.setdefault(event["run_id"], []).append(event["create_time"].timestamp())
    latencies = []
    for killed_at, held in kills:
        for run_id in held:
            after = [t for t in rescues.get(run_id, []) if t >= killed_at]
            if after:
                latencies.append(min(after) - killed_at)
    states: dict[str, int] = {}
    for run in runs:
        states[run["state"]] = states.get(run["state"], 0) + 1
    print()
    print("Agent Platform soak: worker SIGKILLs under steady load")
    print(f"  machine        {os.cpu_count()} CPUs, {platform.platform()}")
    print(
        f"  load           {args.clients} clients, dev model {args.tokens} tokens x "
        f"{args.delay_ms} ms; lease {args.lease_seconds} s, heartbeat 0.2 s, "
        f"max attempts {args.max_attempts}"
    )
    print(f"  kills          {len(kills)} (mean interval {args.mean_interval} s)")
    print(f"  runs           {len(acknowledged)} acknowledged, states {states}")
    print(f"  lost runs                  {len(lost)}")
    print(f"  duplicated runs            {len(duplicated)}")
    print(f"  runs with gaps/duplicates  {len(gaps)}")
    print(f"  runs without one terminal  {len(bad_terminal)}")
    print(f"  rescues (run.attempt_started)  {len(rescued)}")
    if latencies:
        print(
            f"  rescue latency (kill → run.attempt_started)  p50 {percentile(latencies, 50):.3f} s"
            f"   p99 {percentile(latencies, 99):.3f} s   max {max(latencies):.3f} s"
        )


def main() -> None:
    """Parse arguments and run the soak."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--mean-interval", type=float, default=0.6, help="seconds between kills")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--delay-ms", type=int, default=30)
    parser.add_argument("--max-attempts", type=int, default=10)
    parser.add_argument("--lease-seconds", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    main()
