"""The control plane's Prometheus metrics: the run queue, run outcomes, events and streams.

`docs/operations.md` says what each one means and how to read it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from services.control_plane import store
from services.rpc.metrics import refresh_before_scrape

RUN_STATUSES = ("completed", "failed", "cancelled")
_STATUS_OF_TERMINAL_EVENT = {f"run.{status}": status for status in RUN_STATUSES}

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
    """Count a new run and its run.queued event."""
    RUNS_CREATED.inc()
    EVENTS_APPENDED.inc()


def record_claim(attempt: int, create_time: datetime) -> None:
    """Record how long a run waited for its first claim; retries wait for other reasons."""
    if attempt == 1:
        CLAIM_LATENCY.observe(_seconds_since(create_time))


def record_run_finished(status: str, create_time: datetime, events: int) -> None:
    """Count a run's terminal state, its duration and the events stored with it."""
    RUNS_FINISHED.labels(status).inc()
    RUN_DURATION.labels(status).observe(_seconds_since(create_time))
    EVENTS_APPENDED.inc(events)


def record_event_announced(event_type: str, create_time: datetime) -> None:
    """Count an event the control plane stored itself: a cancel, a rescue or a release.

    A terminal event also counts its run as finished.
    """
    status = _STATUS_OF_TERMINAL_EVENT.get(event_type)
    if status is None:
        EVENTS_APPENDED.inc()
    else:
        record_run_finished(status, create_time, events=1)


def watch_queue_depth(pool: asyncpg.Pool) -> Callable[[], None]:
    """Read the queue depth from the database before each scrape; return how to stop."""

    async def sample() -> None:
        async with pool.acquire() as conn:
            QUEUE_DEPTH.set(await store.run_count_queued(conn))

    return refresh_before_scrape(sample)


def _seconds_since(then: datetime) -> float:
    return max((datetime.now(UTC) - then).total_seconds(), 0.0)
