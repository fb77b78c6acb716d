"""The control plane's Prometheus metrics: the run queue, run outcomes, events and streams.

`docs/operations.md` says what each one means and how to read it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import asyncpg
from agentplatform.events import is_terminal
from agentplatform.v1 import run_pb2
from prometheus_client import Counter, Gauge, Histogram

from services.control_plane import store
from services.rpc.metrics import refresh_before_scrape

RUN_STATUSES = ("completed", "failed", "cancelled")

RUNS_CREATED = Counter(
    "ap_runs_created", "Runs created; a CreateRun replayed by request_id is not."
)
RUNS_FINISHED = Counter(
    "ap_runs_finished", "Runs that reached a terminal state, by status.", ["status"]
)
RUN_DURATION = Histogram(
    "ap_run_duration_seconds",
    "Time from a run's creation to its terminal event, by status.",
    ["status"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
QUEUE_DEPTH = Gauge(
    "ap_run_queue_depth", "Runs queued and not yet claimed by a worker, read at scrape time."
)
CLAIM_LATENCY = Histogram(
    "ap_run_claim_latency_seconds",
    "Time a run waited in the queue, from its creation to a worker claiming its first attempt.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
EVENTS_APPENDED = Counter(
    "ap_run_events_appended", "Run events stored: run.queued, worker appends, terminal events."
)
STREAM_SUBSCRIBERS = Gauge(
    "ap_stream_subscribers", "Event streams (of runs and sessions) this process is serving now."
)
LEASE_RESCUES = Counter(
    "ap_lease_rescues", "Runs whose worker's lease expired and were taken back from it."
)

# Known label values start at 0, so a rate() over a status that has not happened yet works.
for _status in RUN_STATUSES:
    RUNS_FINISHED.labels(_status)
    RUN_DURATION.labels(_status)


def record_run_created() -> None:
    """Count a new run (its run.queued event is counted as it is announced)."""
    RUNS_CREATED.inc()


def record_claim(attempt: int, create_time: datetime) -> None:
    """Record how long a run waited for its first claim; retries wait for other reasons."""
    if attempt == 1:
        CLAIM_LATENCY.observe(_seconds_since(create_time))


def record_events_stored(
    events: Sequence[run_pb2.RunEvent], run_state: str, run_create_time: datetime
) -> None:
    """Count stored events; a terminal one also counts its run as finished, with its duration."""
    EVENTS_APPENDED.inc(len(events))
    if events and is_terminal(events[-1]):
        RUNS_FINISHED.labels(run_state).inc()
        RUN_DURATION.labels(run_state).observe(_seconds_since(run_create_time))


def watch_queue_depth(pool: asyncpg.Pool) -> Callable[[], None]:
    """Read the queue depth from the database before each scrape; return how to stop."""

    async def sample() -> None:
        async with pool.acquire() as conn:
            QUEUE_DEPTH.set(await store.run_queued_count(conn))

    return refresh_before_scrape(sample)


def _seconds_since(then: datetime) -> float:
    return max((datetime.now(UTC) - then).total_seconds(), 0.0)
