"""Measure run round trips against a running stack (`make run`), as a client sees them.

Phases: warm-up, then sequential latency (CreateRun → terminal event, and → first
output_text.delta, on one session), then throughput with concurrent clients that each loop
create → stream to terminal on their own session (a session has at most one active run).
Endpoint and API key come from the same configuration as the `ap` CLI.

Beside latency and throughput each measured phase prints what it cost per completed run: the
CPU seconds of every process of the stack (control plane, worker, Postgres with all its
backends, vault, gateway, HTTP edge, dev model) and of this client, read from /proc over the
phase's window, resident memory at its end, and the Postgres statements the services
executed (pg_stat_statements; `make run` preloads it). These are measured only when the
endpoint is a live `make run` stack of this clone. CPU per run is the figure to compare: on
a shared machine wall-clock latency moves with the neighbours' load, CPU per run does not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass, field

import grpc
from agentplatform import APError, AsyncClient, RunAlreadyActive

from ap_cli.config import ClientConfig, ConfigError, load_client_config
from devtools.measure import percentile
from devtools.resources import Window, find_stack
from devtools.stack.layout import DEV_MODEL_IDS

# The dev model's directives: 20 content tokens, no per-token delay, no reasoning.
INPUT_TEXT = "[[tokens=20]] [[reasoning=0]] bench"
# A session's active run clears with its terminal event; a create racing that commit retries.
BUSY_RETRY_S = 0.005
BUSY_RETRY_LIMIT = 400
# Own subchannel pools give each simulated client its own connection, as separate processes
# would have, instead of grpc multiplexing them all over one.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


@dataclass
class RunResult:
    """One run as the client measured it."""

    completed: bool
    outcome: str
    round_trip_s: float
    first_text_s: float | None
    end: float
    reconnects: int


@dataclass
class Phase:
    """The results of a phase's runs."""

    results: list[RunResult] = field(default_factory=list)
    busy_retries: int = 0
    # Every completed run, also those that ended after a --duration window (not in results):
    # they used CPU inside the measured window all the same.
    all_completed: int = 0

    @property
    def completed(self) -> list[RunResult]:
        """Return the runs that completed."""
        return [r for r in self.results if r.completed]

    def failures(self) -> Counter[str]:
        """Count the runs that did not complete, by outcome."""
        return Counter(r.outcome for r in self.results if not r.completed)


def describe_latency(label: str, values: list[float]) -> str:
    """Format `label  p50 … p99 … (n=…)` in milliseconds."""
    if not values:
        return f"  {label:<44} no samples"
    p50, p99 = percentile(values, 50), percentile(values, 99)
    return (
        f"  {label:<44} p50 {p50 * 1000:8.2f} ms   p99 {p99 * 1000:8.2f} ms"
        f"   (n={len(values)}, max {max(values) * 1000:.2f} ms)"
    )


async def create_run(client: AsyncClient, session: str, phase: Phase) -> str:
    """Create a run, retrying briefly if the session's previous run has not cleared yet."""
    for _ in range(BUSY_RETRY_LIMIT):
        try:
            run = await client.create_run(session, INPUT_TEXT)
        except RunAlreadyActive:
            phase.busy_retries += 1
            await asyncio.sleep(BUSY_RETRY_S)
            continue
        return run.name
    raise RunAlreadyActive(
        f"{session} kept an active run after its terminal event",
        reason="RUN_ALREADY_ACTIVE",
        code=grpc.StatusCode.FAILED_PRECONDITION,
    )


async def one_run(client: AsyncClient, session: str, phase: Phase) -> RunResult:
    """Create a run and stream its events from sequence 0 until the terminal one.

    `phase` only counts create retries; the caller decides whether the result counts.
    """
    start = time.perf_counter()
    name = await create_run(client, session, phase)
    stream = client.stream_run_events(name, after_sequence=0)
    first_text: float | None = None
    async with aclosing(aiter(stream)) as events:
        async for event in events:
            if first_text is None and event.WhichOneof("payload") == "output_text_delta":
                first_text = time.perf_counter() - start
    end = time.perf_counter()
    terminal = stream.terminal
    kind = terminal.WhichOneof("payload") if terminal is not None else None
    if kind == "run_failed" and terminal is not None:
        outcome = f"failed: {terminal.run_failed.reason or 'UNKNOWN'}"
    else:
        outcome = (kind or "ended without terminal event").removeprefix("run_")
    return RunResult(
        completed=kind == "run_completed",
        outcome=outcome,
        round_trip_s=end - start,
        first_text_s=first_text,
        end=end,
        reconnects=stream.reconnects,
    )


async def sequential(client: AsyncClient, session: str, runs: int) -> Phase:
    """Run `runs` runs one after another on one session."""
    phase = Phase()
    for _ in range(runs):
        phase.results.append(await one_run(client, session, phase))
    return phase


async def concurrent(
    clients: list[AsyncClient], sessions: list[str], *, duration_s: float, total_runs: int | None
) -> tuple[Phase, float]:
    """Loop create → stream on every client at once; return the counted runs and the window.

    With `total_runs`, runs are started until that many have been, and the window lasts until
    the last one ends. Otherwise the window is `duration_s`: runs ending after it are let
    finish (so no session is left busy) but are not counted.
    """
    phase = Phase()
    started = 0
    start = time.perf_counter()
    deadline = start + duration_s

    async def client_loop(client: AsyncClient, session: str) -> None:
        nonlocal started
        while True:
            if total_runs is not None:
                if started >= total_runs:
                    return
                started += 1
            elif time.perf_counter() >= deadline:
                return
            result = await one_run(client, session, phase)
            phase.all_completed += result.completed
            if total_runs is not None or result.end <= deadline:
                phase.results.append(result)

    await asyncio.gather(*(client_loop(c, s) for c, s in zip(clients, sessions, strict=True)))
    if total_runs is not None:
        window = max((r.end for r in phase.results), default=start) - start
    else:
        window = duration_s
    return phase, window


def report_failures(phase: Phase) -> None:
    """Print the runs that did not complete, by outcome, and the stream reconnects."""
    failures = phase.failures()
    if failures:
        print("  not completed: " + ", ".join(f"{n} {what}" for what, n in failures.items()))
    reconnects = sum(r.reconnects for r in phase.results)
    if reconnects or phase.busy_retries:
        print(
            f"  stream reconnects: {reconnects}; RUN_ALREADY_ACTIVE retries: {phase.busy_retries}"
        )


async def bench(config: ClientConfig, args: argparse.Namespace) -> None:
    """Run every phase and print the results."""
    clients = [AsyncClient(config=config)] + [
        AsyncClient(config=config, channel_options=OWN_CONNECTION) for _ in range(args.concurrency)
    ]
    try:
        sessions = [
            s.name
            for s in await asyncio.gather(
                *(
                    c.create_session(title=f"bench {i}", model=args.model)
                    for i, c in enumerate(clients)
                )
            )
        ]
        main_client, main_session = clients[0], sessions[0]

        warmup = await sequential(main_client, main_session, args.warmup)
        print(f"warm-up: {len(warmup.completed)}/{args.warmup} runs completed")
        report_failures(warmup)

        resources = find_stack(config.endpoint)
        window_cost = Window(resources)
        await window_cost.start()
        latency = await sequential(main_client, main_session, args.latency_runs)
        await window_cost.stop()
        done = latency.completed
        print(f"latency, 1 client, sequential ({len(done)}/{args.latency_runs} completed):")
        print(
            describe_latency(
                "round trip (CreateRun → terminal event)", [r.round_trip_s for r in done]
            )
        )
        print(
            describe_latency(
                "first output_text.delta (from CreateRun)",
                [r.first_text_s for r in done if r.first_text_s is not None],
            )
        )
        report_failures(latency)
        print("\n".join(window_cost.describe(len(done), statements_detail=args.statements)))

        window_cost = Window(resources)
        await window_cost.start()
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        load, window = await concurrent(
            clients[1:], sessions[1:], duration_s=args.duration, total_runs=args.runs
        )
        cpu = (time.process_time() - cpu_before) / (time.perf_counter() - wall_before)
        await window_cost.stop()
        done = load.completed
        print(f"throughput, {args.concurrency} concurrent clients, {window:.2f} s window:")
        rate = len(done) / window if window > 0 else 0.0
        print(f"  {'completed runs':<44} {len(done)}  →  {rate:.1f} runs/s")
        print(describe_latency("round trip under load", [r.round_trip_s for r in done]))
        print(
            f"  {'bench client CPU':<44} {cpu * 100:.0f}% of one core"
            + ("  (client-bound: numbers understate the server)" if cpu > 0.9 else "")
        )
        report_failures(load)
        print("\n".join(window_cost.describe(load.all_completed)))
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument(
        "--latency-runs", type=int, default=200, help="sequential runs measured (200)"
    )
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured runs first (10)")
    window = parser.add_mutually_exclusive_group()
    window.add_argument(
        "--duration", type=float, default=10.0, help="seconds of the concurrent phase (10)"
    )
    window.add_argument(
        "--runs", type=int, default=None, help="instead of --duration: runs in the concurrent phase"
    )
    parser.add_argument(
        "--api",
        choices=sorted(DEV_MODEL_IDS),
        default=None,
        help="the wire format: picks the model `make run` offers the dev model as in that "
        "format (default: the platform's default model)",
    )
    parser.add_argument(
        "--model", default="", help="instead of --api: the id of an offered model to use"
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="also list the most executed Postgres statements per run (sequential phase)",
    )
    args = parser.parse_args(argv)
    if args.api is not None:
        if args.model:
            parser.error("give --api or --model, not both")
        args.model = DEV_MODEL_IDS[args.api]
    if args.concurrency < 1 or args.latency_runs < 1 or args.warmup < 0:
        parser.error("--concurrency and --latency-runs must be at least 1, --warmup at least 0")
    if args.duration <= 0 or (args.runs is not None and args.runs < 1):
        parser.error("--duration must be positive and --runs at least 1")
    return args


def print_conditions(config: ClientConfig, args: argparse.Namespace) -> None:
    """Print what was measured, where and how, so results can be compared."""
    phase = f"{args.runs} runs" if args.runs is not None else f"{args.duration:g} s"
    print("Agent Platform run round-trip benchmark")
    print(f"  endpoint     {config.endpoint}")
    print(
        f"  machine      {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )
    print(f'  input        "{INPUT_TEXT}" (dev model: 20 content tokens, no delay, no reasoning)')
    print(f"  model        {args.model or 'the platform default'}")
    print(f"  warm-up      {args.warmup} sequential runs")
    print(f"  latency      {args.latency_runs} sequential runs, 1 client, 1 session")
    print(
        f"  throughput   {args.concurrency} concurrent clients, each with its own session and "
        f"connection, for {phase}"
    )
    print(
        "  timing       from the CreateRun call; streams open right after it with after_sequence=0"
    )
    print()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and return the exit status."""
    args = parse_args(argv)
    try:
        config = load_client_config()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_conditions(config, args)
    try:
        asyncio.run(bench(config, args))
    except APError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
