"""Inject faults at random moments under steady load; print what each kind of fault cost.

Starts its own embedded Postgres, two control-plane replicas, three workers (each given both
replicas, in different orders) and the dev model, keeps `--clients` sessions busy with runs
(each client talks to one replica and moves to the other when it fails), and injects
`--faults` times, cycling through the kinds in `--kinds`:

  worker     SIGKILL a random worker, start a replacement
  postgres   stop Postgres for `--pg-outage-seconds`, start it again
  replica    SIGKILL a random control-plane replica, start it again on the same port after
             `--replica-down-seconds`

Then it checks the stored history of every acknowledged run:

  lost runs           acknowledged creates that never reached a terminal event
  duplicated runs     more than one run for one request_id
  gaps / duplicates   run event sequences other than exactly 1..n
  terminal events     runs with other than exactly one terminal event, or not last

and, per kind of fault, the runs in flight when it struck (for a worker kill: the runs the
victim held), how many of those were lost, duplicated or gapped, and the attempts burned:
the `run.attempt_started` events it caused (a worker kill: the next one of each run the
victim held; any other: those of runs it hit, up to the next fault that hit them). A worker
kill burns one attempt per run it held; a Postgres restart shorter than the lease and a
replica kill should burn none. The rescue latency is from a worker kill to the
run.attempt_started of each run the victim held.

Resources: the soak samples the resident memory of every control-plane replica and worker
every `--sample-seconds` and prints the first, the largest and the last sample of each that
lived through the soak, and the CPU per completed run of the replicas, workers and Postgres
(devtools.resources) with the Postgres statements per run. `--duration 600 --faults 0`
is the 10-minute steady soak: load without faults, to show that memory does not grow.
"""

from __future__ import annotations

import os

# Before gRPC loads: restarting Postgres forks pg_ctl from this process, and gRPC's fork
# handlers can crash a child forked while other threads are inside gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import itertools
import platform
import random
import secrets
import signal
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncpg
import grpc
import psutil
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
from devtools.embedded_pg import EmbeddedPostgres, running_server
from devtools.measure import percentile
from devtools.processes import Cluster, Service, cluster
from devtools.resources import Processes, Window, describe_cpu
from services.control_plane.bootstrap import create_workspace
from services.migrate import migrate_all
from services.rpc.db import role_dsn

TERMINAL_STATES = ("completed", "failed", "cancelled")
KINDS = ("worker", "postgres", "replica")
Metadata = tuple[tuple[str, str], ...]
T = TypeVar("T")


class Replicas:
    """One client's channels to every control-plane replica; one of them current."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self._channels = [grpc.aio.insecure_channel(a) for a in addresses]
        self._current = 0

    @property
    def runs(self) -> run_service_pb2_grpc.RunServiceAsyncStub:
        """Return the run API on the current replica."""
        return run_service_pb2_grpc.RunServiceStub(self._channels[self._current])

    @property
    def sessions(self) -> session_service_pb2_grpc.SessionServiceAsyncStub:
        """Return the session API on the current replica."""
        return session_service_pb2_grpc.SessionServiceStub(self._channels[self._current])

    def next(self) -> None:
        """Move to the next replica."""
        self._current = (self._current + 1) % len(self._channels)

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels:
            await channel.close(None)


async def unavailable_retried(
    replicas: Replicas, call: Callable[[Replicas], Awaitable[T]], *, give_up_after: float
) -> T:
    """Make `call(replicas)`, moving to the next replica on UNAVAILABLE, for a while."""
    deadline = time.monotonic() + give_up_after
    while True:
        try:
            return await call(replicas)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        replicas.next()
        await asyncio.sleep(0.1)  # back off before trying again, as real clients do


async def client_loop(
    addresses: Sequence[str], key: str, text: str, created: list[str], stop: asyncio.Event
) -> None:
    """Create runs one after another in one session until told to stop."""
    md: Metadata = (("authorization", f"Bearer {key}"),)
    replicas = Replicas(addresses)
    try:
        session = await unavailable_retried(
            replicas,
            lambda r: r.sessions.CreateSession(
                session_service_pb2.CreateSessionRequest(session=session_pb2.Session(title="soak")),
                metadata=md,
                timeout=10,
            ),
            give_up_after=60,
        )
        while not stop.is_set():
            request = run_service_pb2.CreateRunRequest(
                parent=session.name, input_text=text, request_id=str(uuid.uuid4())
            )
            run = await create_run(replicas, request, md)
            created.append(request.request_id)
            await follow_to_end(replicas, run.name, md)
    finally:
        await replicas.close()


async def create_run(
    replicas: Replicas, request: run_service_pb2.CreateRunRequest, md: Metadata
) -> run_pb2.Run:
    """Create a run; a create whose answer was lost is retried with the same request_id."""
    return await unavailable_retried(
        replicas,
        lambda r: r.runs.CreateRun(request, metadata=md, timeout=10),
        give_up_after=60,
    )


async def follow_to_end(replicas: Replicas, run: str, md: Metadata) -> None:
    """Stream a run to its terminal event, resuming after the last sequence on UNAVAILABLE."""
    after = 0
    while True:
        try:
            call = replicas.runs.StreamRunEvents(
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
            replicas.next()
            await asyncio.sleep(0.05)


@dataclass
class Fault:
    """One injected fault: its kind, when, and the runs in flight then."""

    kind: str
    at: float
    affected: set[uuid.UUID]


@dataclass
class Soak:
    """The processes under test and what the soak did to them."""

    args: argparse.Namespace
    cluster: Cluster
    server: EmbeddedPostgres
    admin: str
    replicas: list[Service] = field(default_factory=list)
    workers: list[Service] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    killed: set[str] = field(default_factory=set)  # workers SIGKILLed so far
    spawned: itertools.count[int] = field(default_factory=lambda: itertools.count(3))

    async def start(self) -> None:
        """Start two replicas and three workers."""
        self.replicas = [await self._replica(f"cp-{i}") for i in range(2)]
        self.workers = [await self._worker(f"w{i}") for i in range(3)]

    async def _replica(self, name: str, port: int | None = None) -> Service:
        return await self.cluster.control_plane(
            name,
            port=port,
            AP_MAX_ATTEMPTS=str(self.args.max_attempts),
            AP_LEASE_SECONDS=str(self.args.lease_seconds),
        )

    async def _worker(self, name: str) -> Service:
        addresses = [r.address for r in self.replicas]
        if int(name[1:]) % 2:
            addresses.reverse()  # spread the workers over the replicas
        return await self.cluster.worker(
            name, self.replicas[0], AP_CONTROL_PLANE_ADDRESS=",".join(addresses)
        )

    async def running(self, worker: str | None = None) -> set[uuid.UUID]:
        """Return the runs leased now to `worker`, or else to any worker still alive."""
        conn = await asyncpg.connect(role_dsn(self.admin, "ap_control_plane"))
        try:
            rows = await conn.fetch(
                "SELECT id, lease_owner FROM runs WHERE state = 'running'"
                " AND ($1::text IS NULL OR lease_owner = $1)",
                worker,
            )
        finally:
            await conn.close()
        # A run its dead worker still holds waits for its rescue, whatever strikes next.
        return {r["id"] for r in rows if r["lease_owner"] not in self.killed}

    async def inject(self, kind: str, rng: random.Random) -> None:
        """Inject one fault of this kind and repair it."""
        if kind == "worker":
            victim = self.workers.pop(rng.randrange(len(self.workers)))
            held = await self.running(victim.name)
            victim.signal(signal.SIGKILL)
            self.killed.add(victim.name)
            self.faults.append(Fault(kind, time.time(), held))
            self.workers.append(await self._worker(f"w{next(self.spawned)}"))
        elif kind == "postgres":
            held = await self.running()
            self.faults.append(Fault(kind, time.time(), held))
            await asyncio.to_thread(self.server.stop)
            await asyncio.sleep(self.args.pg_outage_seconds)  # how long the database is away
            await asyncio.to_thread(self.server.start)
        else:
            index = rng.randrange(len(self.replicas))
            victim = self.replicas[index]
            held = await self.running()
            victim.signal(signal.SIGKILL)
            self.faults.append(Fault(kind, time.time(), held))
            await victim.wait_exit()
            await asyncio.sleep(self.args.replica_down_seconds)  # how long it stays dead
            self.replicas[index] = await self._replica(victim.name, victim.port)


async def soak(args: argparse.Namespace) -> None:
    """Run the soak and print its findings."""
    data_dir = Path(tempfile.mkdtemp(prefix="ap-soak-pg-"))
    server = EmbeddedPostgres(data_dir, fast_unsafe=True, track_statements=True)
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
            state = Soak(args, c, server, admin)
            created = await run_soak(state, key)
        await report(admin, args, state.faults, created)
    finally:
        await model.stop()
        await asyncio.to_thread(server.stop)


async def run_soak(state: Soak, key: str) -> list[str]:
    """Drive load and inject faults; return the acknowledged request ids."""
    args = state.args
    await state.start()
    created: list[str] = []
    stop = asyncio.Event()
    text = f"soak [[tokens={args.tokens}]] [[delay_ms={args.delay_ms}]] [[reasoning=0]]"
    addresses = [r.address for r in state.replicas]
    clients = [
        asyncio.create_task(
            client_loop(addresses[i % 2 :] + addresses[: i % 2], key, text, created, stop)
        )
        for i in range(args.clients)
    ]
    memory = Memory(state)
    sampling = asyncio.create_task(memory.sample_forever(args.sample_seconds))
    window = Window(None)
    window.use(memory.processes(), state.admin)
    await window.start()
    rng = random.Random(args.seed)  # noqa: S311 - a reproducible schedule, not a secret
    kinds = itertools.cycle(args.kinds)
    if args.duration:
        await asyncio.sleep(args.duration)  # steady load, the faults (if any) follow
    for n in range(args.faults):
        await asyncio.sleep(rng.uniform(0.1, 2 * args.mean_interval - 0.1))
        await state.inject(next(kinds), rng)
        if (n + 1) % 10 == 0:
            print(f"  {n + 1}/{args.faults} faults, {len(created)} runs created", flush=True)
    # Let the runs of the last fault be rescued before the load stops.
    await asyncio.sleep(2 * args.lease_seconds)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*clients), 180)
    window.use(memory.processes())
    await window.stop()
    sampling.cancel()
    memory.report()
    completed = await completed_runs(state.admin)
    print()
    if args.faults:
        print("  (CPU of processes killed during the soak is not counted)")
    counts = window.end.count if window.end else {}
    print("\n".join(describe_cpu(window.used, completed, counts=counts)))
    print(f"  Postgres statements per run  {(window.statements or 0) / max(completed, 1):.2f}")
    return created


async def completed_runs(admin: str) -> int:
    """Count the runs that completed."""
    conn = await asyncpg.connect(role_dsn(admin, "ap_control_plane"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM runs WHERE state = 'completed'"))
    finally:
        await conn.close()


class Memory:
    """Resident memory of every replica and worker over the soak, sampled periodically."""

    def __init__(self, state: Soak) -> None:
        self._state = state
        self.samples: dict[str, list[tuple[float, int]]] = {}
        self._start = time.monotonic()

    def processes(self) -> Processes:
        """Return the replicas and workers alive now, and Postgres."""
        pids = [s.proc.pid for s in (*self._state.replicas, *self._state.workers)]
        postmaster = running_server(self._state.server.data_dir)
        return Processes(pids, postmaster.pid if postmaster else None)

    def sample(self) -> None:
        """Record every live replica's and worker's RSS now."""
        now = time.monotonic() - self._start
        for service in (*self._state.replicas, *self._state.workers):
            if service.returncode is not None:
                continue
            try:
                rss = psutil.Process(service.proc.pid).memory_info().rss
            except psutil.Error:
                continue
            self.samples.setdefault(f"{service.name} (pid {service.proc.pid})", []).append(
                (now, rss)
            )

    async def sample_forever(self, every: float) -> None:
        """Sample until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(every)

    def report(self) -> None:
        """Print first, largest and last RSS of each process sampled more than once."""
        self.sample()
        print()
        print("  resident memory (MB)     first   largest   last   over")
        for name, series in sorted(self.samples.items()):
            if len(series) < 2:
                continue
            values = [rss / 1e6 for _, rss in series]
            span = series[-1][0] - series[0][0]
            print(
                f"  {name:<24} {values[0]:6.0f}   {max(values):6.0f}   {values[-1]:5.0f}"
                f"   {span:5.0f} s"
            )


@dataclass
class History:
    """What the database holds after the soak, checked run by run."""

    acknowledged: set[str]
    states: dict[str, int]
    lost_requests: list[str]
    lost: set[uuid.UUID]
    duplicated: set[uuid.UUID]
    gaps: set[uuid.UUID]
    bad_terminal: set[uuid.UUID]
    rescues: dict[uuid.UUID, list[float]]  # when each run.attempt_started was stored


async def read_history(admin: str, created: list[str]) -> History:
    """Read every run and event and check them."""
    conn = await asyncpg.connect(role_dsn(admin, "ap_control_plane"))
    try:
        runs = await conn.fetch("SELECT id, request_id, state FROM runs")
        events = await conn.fetch(
            "SELECT run_id, sequence, type FROM run_events ORDER BY run_id, sequence"
        )
        rescued = await conn.fetch(
            "SELECT run_id, create_time FROM run_events WHERE type = 'run.attempt_started'"
        )
    finally:
        await conn.close()
    by_request: dict[str, list[uuid.UUID]] = {}
    states: dict[str, int] = {}
    for run in runs:
        by_request.setdefault(run["request_id"], []).append(run["id"])
        states[run["state"]] = states.get(run["state"], 0) + 1
    per_run: dict[uuid.UUID, list[asyncpg.Record]] = {}
    for event in events:
        per_run.setdefault(event["run_id"], []).append(event)
    rescues: dict[uuid.UUID, list[float]] = {}
    for event in rescued:
        rescues.setdefault(event["run_id"], []).append(event["create_time"].timestamp())
    acknowledged = set(created)
    unfinished = {r["id"] for r in runs if r["state"] not in TERMINAL_STATES}
    lost_requests = [
        rid for rid in acknowledged if rid not in by_request or set(by_request[rid]) & unfinished
    ]
    return History(
        acknowledged=acknowledged,
        states=states,
        lost_requests=lost_requests,
        lost={run_id for rid in lost_requests for run_id in by_request.get(rid, [])},
        duplicated={run_id for ids in by_request.values() if len(ids) > 1 for run_id in ids},
        gaps={
            run_id
            for run_id, evs in per_run.items()
            if [e["sequence"] for e in evs] != list(range(1, len(evs) + 1))
        },
        bad_terminal={
            run_id
            for run_id, evs in per_run.items()
            if sum(e["type"] in TERMINAL_TYPES for e in evs) != 1
            or evs[-1]["type"] not in TERMINAL_TYPES
        },
        rescues=rescues,
    )


async def report(
    admin: str, args: argparse.Namespace, faults: list[Fault], created: list[str]
) -> None:
    """Check every acknowledged run's stored history and print the findings."""
    history = await read_history(admin, created)
    print()
    print("Agent Platform soak: faults under steady load")
    print(f"  machine        {os.cpu_count()} CPUs, {platform.platform()}")
    print(
        f"  load           {args.clients} clients over 2 control-plane replicas, 3 workers, "
        f"dev model {args.tokens} tokens x {args.delay_ms} ms"
    )
    print(
        f"  leases         {args.lease_seconds} s, heartbeat 0.2 s, "
        f"max attempts {args.max_attempts}"
    )
    print(
        f"  faults         {len(faults)} (mean interval {args.mean_interval} s): "
        f"{', '.join(args.kinds)}; Postgres away {args.pg_outage_seconds} s beyond its "
        f"restart, a replica dead {args.replica_down_seconds} s"
    )
    print(f"  runs           {len(history.acknowledged)} acknowledged, states {history.states}")
    print(f"  lost runs                  {len(history.lost_requests)}")
    print(f"  duplicated runs            {len(history.duplicated)}")
    print(f"  runs with gaps/duplicates  {len(history.gaps)}")
    print(f"  runs without one terminal  {len(history.bad_terminal)}")
    burned_total = sum(len(times) for times in history.rescues.values())
    print(f"  attempts burned (run.attempt_started)  {burned_total}")
    print()
    print_per_fault(args.kinds, faults, history)


def attribute_rescues(faults: list[Fault], history: History) -> dict[int, list[float]]:
    """Assign each rescue (run.attempt_started) to the fault that caused it.

    Returns, per fault index, the delays from the fault to the rescues it caused. A worker
    kill causes the next rescue of each run its victim held. Any other rescue belongs to the
    latest fault before it that hit its run; index -1 collects those that none did.
    """
    left = {run_id: sorted(times) for run_id, times in history.rescues.items()}
    caused: dict[int, list[float]] = {i: [] for i in range(-1, len(faults))}
    for i, fault in enumerate(faults):
        if fault.kind != "worker":
            continue
        for run_id in fault.affected:
            later = [t for t in left.get(run_id, []) if t >= fault.at]
            if later:
                left[run_id].remove(later[0])
                caused[i].append(later[0] - fault.at)
    for run_id, times in left.items():
        for t in times:
            before = [
                i
                for i, f in enumerate(faults)
                if f.kind != "worker" and f.at <= t and run_id in f.affected
            ]
            owner = before[-1] if before else -1
            caused[owner].append(t - faults[owner].at if before else 0.0)
    return caused


def print_per_fault(kinds: Sequence[str], faults: list[Fault], history: History) -> None:
    """Print, per kind of fault, the runs it hit and what they lost; then rescue latency."""
    caused = attribute_rescues(faults, history)
    print(
        f"  {'fault':<10} {'count':>5} {'runs hit':>8} {'lost':>5} {'dup':>5} {'gapped':>6}"
        f" {'attempts burned':>15}"
    )
    for kind in kinds:
        mine = [i for i, f in enumerate(faults) if f.kind == kind]
        hit: set[uuid.UUID] = set().union(*(faults[i].affected for i in mine))
        burned = sum(len(caused[i]) for i in mine)
        print(
            f"  {kind:<10} {len(mine):>5} {len(hit):>8} {len(hit & history.lost):>5}"
            f" {len(hit & history.duplicated):>5} {len(hit & history.gaps):>6} {burned:>15}"
        )
    if caused[-1]:
        print(f"  {'(no fault)':<10} {'':>5} {'':>8} {'':>5} {'':>5} {'':>6} {len(caused[-1]):>15}")
    latencies = [t for i, f in enumerate(faults) if f.kind == "worker" for t in caused[i]]
    if latencies:
        print()
        print(
            f"  rescue latency (worker kill → run.attempt_started)  p50 "
            f"{percentile(latencies, 50):.3f} s   p99 {percentile(latencies, 99):.3f} s"
            f"   max {max(latencies):.3f} s"
        )


def main() -> None:
    """Parse arguments and run the soak."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=100, help="faults to inject (100)")
    parser.add_argument(
        "--kinds",
        type=lambda s: s.split(","),
        default=["worker"],
        help=f"comma-separated kinds of fault, injected in turn: {','.join(KINDS)} (worker)",
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--mean-interval", type=float, default=0.6, help="seconds between faults")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--delay-ms", type=int, default=30)
    parser.add_argument("--max-attempts", type=int, default=10)
    parser.add_argument("--lease-seconds", type=float, default=1.0)
    parser.add_argument("--pg-outage-seconds", type=float, default=0.0)
    parser.add_argument("--replica-down-seconds", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--duration", type=float, default=0.0, help="seconds of steady load before the faults (0)"
    )
    parser.add_argument(
        "--sample-seconds", type=float, default=10.0, help="resident memory sampling (10)"
    )
    args = parser.parse_args()
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds of fault: {', '.join(sorted(unknown))}")
    asyncio.run(soak(args))


if __name__ == "__main__":
    main()
