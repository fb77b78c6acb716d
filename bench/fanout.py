"""Measure fan-out against a running stack (`make run`): many subscribers of one session or run.

Two phases, each with `--subscribers` streams spread over `--channels` connections:

  live     every subscriber follows StreamSessionEvents of one session; once all have
           received a first run's terminal event (so all are live), `--runs` runs are created
           one after another and every delivery is timed from the event's create_time (its
           commit, stamped by Postgres) to its arrival at the client.
  joiners  one run streams `--join-tokens` tokens (dev model, `--join-delay-ms` per token);
           when it has stored `--join-after` events, every subscriber opens StreamRunEvents
           from sequence 0 at once, and the time to each one's first event, and to the event
           that was live when it joined, is measured.

Both print the control plane's resident memory and its Postgres connections (from
pg_stat_activity) before and during the phase. The streams are opened by `--processes`
subscriber processes (this script, run as children), since one Python process cannot read a
thousand busy streams fast enough; delivery times still include their queueing on a machine
they share with the server, and the CPU they used is printed. So are the control plane's
CPU and the Postgres statements over each phase (`devtools.resources`), the figures that
hold on a busy machine. Endpoint and API key come from the same configuration as `ap`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import grpc
import psutil
from agentplatform.v1 import (
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)

from ap_cli.config import ConfigError, load_client_config
from devtools.measure import percentile
from devtools.resources import StackResources, Window, find_stack

Metadata = tuple[tuple[str, str], ...]
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def describe(label: str, values: Sequence[float]) -> str:
    """Format p50/p90/p99/max in milliseconds."""
    if not values:
        return f"  {label:<40} no samples"
    v = list(values)
    return (
        f"  {label:<40} p50 {percentile(v, 50) * 1000:8.1f} ms   p90 "
        f"{percentile(v, 90) * 1000:8.1f} ms   p99 {percentile(v, 99) * 1000:8.1f} ms"
        f"   max {max(v) * 1000:8.1f} ms   (n={len(v)})"
    )


class Server:
    """What can be read about the control plane: resident memory, database connections."""

    def __init__(self, resources: StackResources | None) -> None:
        self._resources = resources
        self._window: Window | None = None

    async def start(self) -> None:
        """Start measuring a phase's CPU and statements."""
        self._window = Window(self._resources)
        await self._window.start()

    async def stop(self, deliveries: int) -> str:
        """Return the control plane's CPU and the statements since `start`, per delivery."""
        assert self._window is not None
        await self._window.stop()
        cpu = self._window.used.get("control_plane", 0.0)
        statements = self._window.statements
        per = f"{cpu * 1e6 / deliveries:.0f} µs per delivery" if deliveries else ""
        top = "".join(
            f"\n      {calls:6d}  {' '.join(query.split())[:90]}"
            for calls, query in self._window.top[:6]
        )
        return (
            f"control plane CPU {cpu:.1f} s ({per}); Postgres statements "
            f"{statements if statements is not None else 'not counted'}, the most run:{top}"
        )

    async def describe(self) -> str:
        """Return the control plane's RSS and Postgres connections now."""
        if self._resources is None:
            return "control plane: not a stack of this clone, not measured"
        sample = self._resources.processes.sample()
        rss = sample.rss.get("control_plane", 0) / 1e6
        connections = "?"
        if self._resources.admin_dsn:
            conn = await asyncpg.connect(self._resources.admin_dsn)
            try:
                connections = str(
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'ap_control_plane'"
                    )
                )
            finally:
                await conn.close()
        return f"control plane RSS {rss:.0f} MB, its Postgres connections {connections}"


class Clients:
    """`n` connections to the control plane, handed out round robin."""

    def __init__(self, endpoint: str, n: int) -> None:
        self.channels = [
            grpc.aio.insecure_channel(endpoint, options=OWN_CONNECTION) for _ in range(n)
        ]

    def runs(self, i: int) -> run_service_pb2_grpc.RunServiceAsyncStub:
        """Return the run API on connection i (mod n)."""
        return run_service_pb2_grpc.RunServiceStub(self.channels[i % len(self.channels)])

    def sessions(self, i: int) -> session_service_pb2_grpc.SessionServiceAsyncStub:
        """Return the session API on connection i (mod n)."""
        return session_service_pb2_grpc.SessionServiceStub(self.channels[i % len(self.channels)])

    async def close(self) -> None:
        """Close every connection."""
        await asyncio.gather(*(c.close(None) for c in self.channels))


async def new_session(clients: Clients, md: Metadata) -> str:
    """Create a session; return its name."""
    session = await clients.sessions(0).CreateSession(
        session_service_pb2.CreateSessionRequest(session=session_pb2.Session(title="fanout")),
        metadata=md,
    )
    return session.name


async def follow_run(clients: Clients, md: Metadata, run: str) -> None:
    """Stream a run to its end."""
    call = clients.runs(0).StreamRunEvents(
        run_service_pb2.StreamRunEventsRequest(name=run, after_sequence=0), metadata=md
    )
    async for _ in call:
        pass


async def stream_session(
    clients: Clients, md: Metadata, i: int, session: str
) -> AsyncIterator[run_pb2.RunEvent]:
    """Yield a session's events from the start; end quietly when cancelled."""
    call = clients.runs(i).StreamSessionEvents(
        run_service_pb2.StreamSessionEventsRequest(name=session, after_session_sequence=0),
        metadata=md,
    )
    async for response in call:
        yield response.event


async def child_live(args: argparse.Namespace, md: Metadata, clients: Clients) -> dict[str, Any]:
    """Follow one session with `--subscribers` streams; report every delivery delay."""
    delays: list[float] = []
    ready = done = 0
    all_ready, all_done = asyncio.Event(), asyncio.Event()

    async def subscriber(i: int) -> None:
        nonlocal ready, done
        terminals = 0
        async for event in stream_session(clients, md, i, args.child[1]):
            if event.WhichOneof("payload") != "run_completed":
                if terminals:
                    delays.append(time.time() - event.create_time.ToDatetime().timestamp())
                continue
            if terminals:
                delays.append(time.time() - event.create_time.ToDatetime().timestamp())
            terminals += 1
            if terminals == 1:
                ready += 1
                if ready == args.subscribers:
                    all_ready.set()
            if terminals == args.runs + 1:
                done += 1
                if done == args.subscribers:
                    all_done.set()
                return

    tasks = [asyncio.create_task(subscriber(i)) for i in range(args.subscribers)]
    await all_ready.wait()
    print("ready", flush=True)
    await all_done.wait()
    await asyncio.gather(*tasks)
    return {"delays": delays}


async def child_joiners(args: argparse.Namespace, md: Metadata, clients: Clients) -> dict[str, Any]:
    """On "go", open `--subscribers` streams of a run from sequence 0; time them."""
    run, live_at = args.child[1], int(args.child[2])
    # Connect before the signal, so the measured time is the streams', not the handshakes'.
    await asyncio.gather(*(c.channel_ready() for c in clients.channels))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    firsts: list[float] = []
    caught_up: list[float] = []
    counts: list[int] = []
    errors: Counter[str] = Counter()

    async def joiner(i: int) -> None:
        opened = time.perf_counter()
        got = 0
        call = clients.runs(i).StreamRunEvents(
            run_service_pb2.StreamRunEventsRequest(name=run, after_sequence=0), metadata=md
        )
        try:
            async for response in call:
                got += 1
                if got == 1:
                    firsts.append(time.perf_counter() - opened)
                if response.event.sequence == live_at:
                    caught_up.append(time.perf_counter() - opened)
        except grpc.aio.AioRpcError as err:
            errors[f"{err.code().name}: {err.details()}"] += 1
        counts.append(got)

    await asyncio.gather(*(joiner(i) for i in range(args.subscribers)))
    return {"firsts": firsts, "caught_up": caught_up, "counts": counts, "errors": errors}


async def run_child(args: argparse.Namespace) -> None:
    """Be one of the bench's subscriber processes; print the results as JSON."""
    config = load_client_config()
    md: Metadata = (("authorization", f"Bearer {config.api_key}"),)
    clients = Clients(config.endpoint, args.channels)
    try:
        phase = child_live if args.child[0] == "live" else child_joiners
        result = await phase(args, md, clients)
    finally:
        await clients.close()
    times = psutil.Process().cpu_times()
    result["cpu"] = times.user + times.system
    print(json.dumps(result), flush=True)


class Children:
    """The subscriber processes: each opens its share of the streams."""

    def __init__(self, args: argparse.Namespace, child: list[str]) -> None:
        self._args = args
        self._child = child
        self._procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        """Start them and wait until each says it is ready."""
        share = -(-self._args.subscribers // self._args.processes)
        left = self._args.subscribers
        while left > 0:
            n = min(share, left)
            left -= n
            channels = max(1, self._args.channels // self._args.processes)
            self._procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--subscribers", str(n),
                    "--channels", str(channels),
                    "--runs", str(self._args.runs),
                    "--child", *self._child,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )  # fmt: skip
        for proc in self._procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 180)
            if line.strip() != b"ready":
                raise RuntimeError(f"a subscriber process failed to start: {line!r}")

    def go(self) -> None:
        """Tell every child to start."""
        for proc in self._procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")

    async def results(self) -> list[dict[str, Any]]:
        """Wait for every child's results."""
        out = []
        for proc in self._procs:
            stdout, _ = await asyncio.wait_for(proc.communicate(), 600)
            out.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        return out


async def live_phase(
    clients: Clients, md: Metadata, args: argparse.Namespace, server: Server
) -> None:
    """Many subscribers of one session; time every delivery of `--runs` runs."""
    session = await new_session(clients, md)
    print(
        f"live: {args.subscribers} subscribers of one session in {args.processes} processes, "
        f"{args.runs} runs of {args.tokens} tokens x {args.delay_ms} ms; "
        f"{await server.describe()}"
    )
    # Each stream replays the session from its start: seeing this run's terminal event tells
    # a child that its stream is live.
    warm = await clients.runs(0).CreateRun(
        run_service_pb2.CreateRunRequest(parent=session, input_text="[[tokens=1]] warm"),
        metadata=md,
    )
    await follow_run(clients, md, warm.name)
    children = Children(args, ["live", session])
    await children.start()
    text = f"[[tokens={args.tokens}]] [[delay_ms={args.delay_ms}]] [[reasoning=0]] fanout"
    during = ""
    await server.start()
    started = time.perf_counter()
    for n in range(args.runs):
        run = await clients.runs(0).CreateRun(
            run_service_pb2.CreateRunRequest(parent=session, input_text=text), metadata=md
        )
        await follow_run(clients, md, run.name)
        if n == 0:
            during = await server.describe()
    results = await children.results()
    wall = time.perf_counter() - started
    delays = [d for r in results for d in r["delays"]]
    print(describe("delivery (commit → arrival)", delays))
    print(f"  {await server.stop(len(delays))}")
    cpu = sum(r["cpu"] for r in results)
    print(f"  during: {during}; subscriber processes used {cpu:.1f} CPU s in ~{wall:.1f} s")


async def joiners_phase(
    clients: Clients, md: Metadata, args: argparse.Namespace, server: Server
) -> None:
    """Many subscribers join a run that is already streaming; time their first events."""
    session = await new_session(clients, md)
    text = f"[[tokens={args.join_tokens}]] [[delay_ms={args.join_delay_ms}]] [[reasoning=0]] join"
    run = await clients.runs(0).CreateRun(
        run_service_pb2.CreateRunRequest(parent=session, input_text=text), metadata=md
    )
    children = Children(args, ["joiners", run.name, str(args.join_after)])
    await children.start()
    reached = asyncio.Event()

    async def watcher() -> None:
        call = clients.runs(0).StreamRunEvents(
            run_service_pb2.StreamRunEventsRequest(name=run.name, after_sequence=0), metadata=md
        )
        async for response in call:
            if response.event.sequence >= args.join_after:
                reached.set()

    watching = asyncio.create_task(watcher())
    await asyncio.wait_for(reached.wait(), 120)
    await server.start()
    children.go()
    print(
        f"joiners: {args.subscribers} subscribers in {args.processes} processes open "
        f"StreamRunEvents(after_sequence=0) at once on a run at event {args.join_after} of "
        f"~{args.join_tokens + 4} ({args.join_delay_ms} ms/token)"
    )
    await asyncio.sleep(0.5)  # a look at the server while the joiners replay
    during = await server.describe()
    results = await children.results()
    await watching
    measured = await server.stop(sum(c for r in results for c in r["counts"]))
    firsts = [v for r in results for v in r["firsts"]]
    caught_up = [v for r in results for v in r["caught_up"]]
    counts = [c for r in results for c in r["counts"]]
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    print(describe("first event (open → arrival)", firsts))
    print(describe(f"caught up (open → event {args.join_after})", caught_up))
    most = max(counts, default=0)
    whole = sum(c == most for c in counts)
    print(f"  {whole}/{len(counts)} joiners got the whole log ({most} events)")
    if errors:
        print("  streams that failed: " + "; ".join(f"{n} {what}" for what, n in errors.items()))
    print(f"  {measured}")
    print(
        f"  during: {during}; subscriber processes used {sum(r['cpu'] for r in results):.1f} CPU s"
    )


async def bench(args: argparse.Namespace) -> None:
    """Run the phases."""
    config = load_client_config()
    md: Metadata = (("authorization", f"Bearer {config.api_key}"),)
    server = Server(find_stack(config.endpoint))
    clients = Clients(config.endpoint, args.channels)
    try:
        if "live" in args.phases:
            await live_phase(clients, md, args, server)
        if "joiners" in args.phases:
            await joiners_phase(clients, md, args, server)
        print(f"after: {await server.describe()}")
    finally:
        await clients.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=20, help="client connections (20)")
    parser.add_argument(
        "--processes", type=int, default=4, help="subscriber processes sharing the streams (4)"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--phases", type=lambda s: s.split(","), default=["live", "joiners"])
    parser.add_argument("--runs", type=int, default=3, help="live: runs measured (3)")
    parser.add_argument("--tokens", type=int, default=20, help="live: tokens per run (20)")
    parser.add_argument("--delay-ms", type=int, default=20, help="live: ms per token (20)")
    parser.add_argument("--join-tokens", type=int, default=600)
    parser.add_argument("--join-delay-ms", type=int, default=10)
    parser.add_argument(
        "--join-after", type=int, default=300, help="events stored before the joiners"
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(run_child(args) if args.child else bench(args))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
